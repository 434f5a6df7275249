//! Federation: peers of another trust domain are accepted when that domain's bundle is
//! configured, verified against that bundle only, and named in policy like our own.

use mtlsd_e2e::{
    CertFiles, Daemon, Pki, client_config, echo_round_trip, echo_upstream, tls_connect,
};

/// A certificate for `id` (in `pki`'s CA's name, but another trust domain) signed by `pki`'s
/// intermediate CA: what a CA of domain A would produce to impersonate domain B.
fn cross_signed(pki: &Pki, id: &str) -> CertFiles {
    let dir = pki.dir.path().join("ca");
    let ca_pem = std::fs::read_to_string(dir.join("intermediate.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("intermediate.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(id.try_into().unwrap()),
        rcgen::SanType::DnsName("localhost".try_into().unwrap()),
    ];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = CertFiles {
        cert: pki.dir.path().join("cross.pem"),
        key: pki.dir.path().join("cross.key"),
    };
    std::fs::write(&files.cert, cert.pem() + &ca_pem).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_federated_domains_peers_are_verified_against_its_own_bundle_only() {
    let ours = Pki::new("a.test");
    let theirs = Pki::new("b.test");
    let upstream = echo_upstream().await;
    let svid = ours.issue(&ours.id("/web"));
    // Clients trust both domains' CAs (the server is in a.test).
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("both.pem");
    let read = |p: &Pki| std::fs::read_to_string(p.bundle()).unwrap();
    std::fs::write(&both, read(&ours) + &read(&theirs)).unwrap();
    let config = format!(
        "[identity]\ntrust_domain = \"a.test\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\
         [[identity.federated]]\ntrust_domain = \"b.test\"\nbundle = \"{}\"\n\
         [[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\
         allow = [\"spiffe://b.test/partner\", \"spiffe://a.test/local\"]\n",
        svid.cert.display(),
        svid.key.display(),
        ours.bundle().display(),
        theirs.bundle().display(),
        upstream.addr,
    );
    let daemon = Daemon::start(&config);
    let addr = daemon.addr("web");
    let client = |files: &CertFiles| client_config(&both, Some(files));

    // A peer of the federated domain, named by the policy, is served.
    let partner = theirs.issue(&theirs.id("/partner"));
    let mut tls = tls_connect(addr, client(&partner)).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"hi").await.unwrap(), b"hi");
    drop(tls);
    let line = daemon.wait_for_log("partner served", |l| {
        l["message"] == "connection closed" && l["peer_id"] == "spiffe://b.test/partner"
    });
    assert_eq!(line["rule"], "spiffe://b.test/partner", "{line}");
    // So is one of ours.
    let local = ours.issue(&ours.id("/local"));
    let mut tls = tls_connect(addr, client(&local)).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"hi").await.unwrap(), b"hi");

    // Our own CA signing a b.test identity: verified against b.test's bundle, refused.
    let forged = cross_signed(&ours, "spiffe://b.test/partner");
    let result = tls_connect(addr, client(&forged)).await;
    if let Ok(mut tls) = result {
        assert!(echo_round_trip(&mut tls, b"hi").await.is_err());
    }
    let refused = daemon.refused("unknown_issuer");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or("")
            .contains("UnknownIssuer"),
        "{refused}"
    );
    // A third domain, whose bundle is not configured, is foreign.
    let stranger = Pki::new("c.test");
    let strangers = dir.path().join("c.pem");
    std::fs::write(&strangers, read(&ours) + &read(&stranger)).unwrap();
    let files = stranger.issue(&stranger.id("/x"));
    let result = tls_connect(addr, client_config(&strangers, Some(&files))).await;
    if let Ok(mut tls) = result {
        assert!(echo_round_trip(&mut tls, b"hi").await.is_err());
    }
    let refusals = daemon.wait_for_logs("two unknown issuers", 2, |l| {
        l["message"] == "connection refused" && l["reason"] == "unknown_issuer"
    });
    assert_eq!(refusals.len(), 2);
}
