//! Certificates that run themselves: rotation under load, watched files, revocation, bundle
//! rotation and self-renewal from the built-in CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mtlsd::ca::{LeafSpec, Revoke};
use mtlsd_e2e::*;
use rustls::client::Resumption;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const TD: &str = "example.org";

/// A one-hour leaf for `id`, also valid for DNS `localhost` (the test clients check it).
fn leaf_spec(id: &str) -> LeafSpec {
    let mut spec = LeafSpec::new(id.parse().unwrap(), Duration::from_secs(3600));
    spec.dns_names.push("localhost".into());
    spec
}

/// A client that never resumes: every connection is a full handshake that sees the current certificate.
fn fresh_client(pki: &Pki, path: &str) -> Arc<rustls::ClientConfig> {
    let mut config = (*pki.client(path)).clone();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The leaf certificate the server presented.
async fn server_leaf(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let mut tls = tls_connect(addr, client.clone()).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(echo_round_trip(&mut tls, b"?").await.unwrap(), b"?");
    leaf
}

fn leaf_of(chain_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

/// Waits (bounded) until new connections see `leaf`.
async fn wait_for_leaf(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    leaf: &CertificateDer<'_>,
) {
    for _ in 0..200 {
        if server_leaf(addr, client).await == *leaf {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server never presented the new certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_rotations_under_load_fail_no_handshake_and_drop_no_connection() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let web = pki.id("/web");
    let files = pki.write("svid", &pki.ca.issue(&leaf_spec(&web)).unwrap());
    let daemon =
        Daemon::start(&(identity_toml(&pki, &files) + &pki.inbound("web", upstream.addr, "")));
    let addr = daemon.addr("web");

    let stop = Arc::new(AtomicBool::new(false));
    // Connections opened continuously, each a full handshake.
    let (opened, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let churn = tokio::spawn({
        let (client, stop, opened, failed) = (
            fresh_client(&pki, "/churn"),
            stop.clone(),
            opened.clone(),
            failed.clone(),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match tls_connect(addr, client.clone()).await {
                    Ok(mut tls) => echo_round_trip(&mut tls, b"new").await.is_ok(),
                    Err(_) => false,
                };
                let counter = if ok { &opened } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Established connections streaming throughout.
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut tls = tls_connect(addr, pki.client(&format!("/stream/{i}")))
            .await
            .unwrap();
        let stop = stop.clone();
        streams.push(tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(echo_round_trip(&mut tls, b"stream").await?, b"stream");
                rounds += 1;
            }
            std::io::Result::Ok(rounds)
        }));
    }

    let probe = fresh_client(&pki, "/probe");
    for n in 1..=50 {
        let issued = pki.ca.issue(&leaf_spec(&web)).unwrap();
        // Key first, then the chain, each replaced atomically, as cert-manager-style writers do.
        issued.write(&files.cert, &files.key).unwrap();
        daemon.signal("HUP");
        wait_for_leaf(addr, &probe, &leaf_of(&issued.chain_pem)).await;
        assert!(
            failed.load(Ordering::Relaxed) == 0,
            "a handshake failed during rotation {n}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    for s in streams {
        let rounds = s
            .await
            .unwrap()
            .expect("an established connection was dropped");
        assert!(rounds > 0);
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        opened.load(Ordering::Relaxed) > 50,
        "the churn kept handshaking: {opened:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watched_files_reload_on_their_own_and_a_half_written_file_keeps_the_old_identity() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let web = pki.id("/web");
    let first = pki.ca.issue(&leaf_spec(&web)).unwrap();
    let files = pki.write("svid", &first);
    let daemon =
        Daemon::start(&(identity_toml(&pki, &files) + &pki.inbound("web", upstream.addr, "")));
    let addr = daemon.addr("web");
    let client = fresh_client(&pki, "/client");
    assert_eq!(server_leaf(addr, &client).await, leaf_of(&first.chain_pem));

    // An external writer rewrites the chain in place and stops halfway.
    let half = &first.chain_pem[..first.chain_pem.len() / 2];
    std::fs::write(&files.cert, half).unwrap();
    let rejected = daemon.wait_for_log("rejected reload", |l| {
        l["message"] == "reload rejected; the previous configuration keeps serving"
    });
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains(files.cert.to_str().unwrap()),
        "{rejected}"
    );
    assert_eq!(
        server_leaf(addr, &client).await,
        leaf_of(&first.chain_pem),
        "the old identity keeps serving"
    );

    // The writer finishes with a new key and chain (atomic renames): picked up without a signal.
    let second = pki.ca.issue(&leaf_spec(&web)).unwrap();
    second.write(&files.cert, &files.key).unwrap();
    wait_for_leaf(addr, &client, &leaf_of(&second.chain_pem)).await;
    assert!(
        !daemon
            .logs_where(|l| l["message"] == "identity files changed: reloading them")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_client_is_refused_on_full_and_resumed_handshakes_after_one_reload() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let crl = format!("crl = \"{}\"\n", pki.ca.crl_path().display());
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &crl
            + &pki.inbound("web", upstream.addr, "")),
    );
    let addr = daemon.addr("web");
    let victim = pki.client("/victim");
    let victim_serial = pki.ca.issued().unwrap().last().unwrap().serial.clone();
    let bystander = pki.client("/bystander");
    for client in [&victim, &victim, &bystander] {
        let mut tls = tls_connect(addr, client.clone()).await.unwrap();
        assert_eq!(echo_round_trip(&mut tls, b"ok").await.unwrap(), b"ok");
    }

    pki.ca
        .revoke(&Revoke::Serial(victim_serial.clone()))
        .unwrap();
    daemon.wait_for_log("reload after the CRL changed", |l| {
        l["message"] == "configuration reloaded"
    });

    // The victim's ticket still resumes, and is refused; so is a full handshake with the same certificate.
    let tls = tls_connect(addr, victim.clone()).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(refused_on_read(tls).await);
    let mut full = (*victim).clone();
    full.resumption = Resumption::disabled();
    let tls = tls_connect(addr, Arc::new(full)).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert!(refused_on_read(tls).await);
    let refusals = daemon.wait_for_logs("two revoked", 2, |l| {
        l["message"] == "connection refused" && l["reason"] == "revoked"
    });
    assert!(
        refusals[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&victim_serial),
        "{}",
        refusals[0]
    );
    // Everyone else is untouched.
    let mut tls = tls_connect(addr, bystander.clone()).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"fine").await.unwrap(), b"fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_rotation_with_overlapping_bundles_keeps_both_generations_working_until_the_old_is_removed()
 {
    let old = Pki::new(TD);
    let new = Pki::new(TD);
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let both = std::fs::read_to_string(old.bundle()).unwrap()
        + &std::fs::read_to_string(new.bundle()).unwrap();
    std::fs::write(&bundle, &both).unwrap();
    let svid = old.issue(&old.id("/web"));
    let config = |svid: &CertFiles| {
        format!(
            "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n{}",
            svid.cert.display(),
            svid.key.display(),
            bundle.display(),
            old.inbound("web", upstream.addr, "")
        )
    };
    let daemon = Daemon::start(&config(&svid));
    let addr = daemon.addr("web");
    // Peers trust both roots during the overlap.
    let peer = |pki: &Pki, path: &str| client_config(&bundle, Some(&pki.issue(&pki.id(path))));
    let (old_peer, new_peer) = (peer(&old, "/old-peer"), peer(&new, "/new-peer"));
    for client in [&old_peer, &new_peer] {
        let mut tls = tls_connect(addr, client.clone()).await.unwrap();
        assert_eq!(
            echo_round_trip(&mut tls, b"overlap").await.unwrap(),
            b"overlap"
        );
    }

    // The daemon moves to the new CA and the old root leaves the bundle.
    let moved = new.issue(&new.id("/web"));
    std::fs::write(daemon.config_path(), config(&moved)).unwrap();
    std::fs::write(&bundle, std::fs::read_to_string(new.bundle()).unwrap()).unwrap();
    assert_eq!(daemon.reload(1)["message"], "configuration reloaded");
    let mut tls = tls_connect(addr, new_peer.clone()).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"new").await.unwrap(), b"new");
    let mut fresh_old = (*old_peer).clone();
    fresh_old.resumption = Resumption::disabled();
    if let Ok(tls) = tls_connect(addr, Arc::new(fresh_old)).await {
        assert!(
            refused_on_read(tls).await,
            "a peer of the removed CA must be refused"
        );
    }
    // Its session ticket does not help either: the trust configuration changed, so it no longer decrypts.
    if let Ok(tls) = tls_connect(addr, old_peer.clone()).await {
        assert_ne!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        assert!(refused_on_read(tls).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_issues_and_renews_its_own_svid_from_the_built_in_ca() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let ca_dir = pki.ca.bundle_path().parent().unwrap().to_owned();
    // A 4 s SVID renews after 1.6–2.4 s; the wait below is the behaviour under test.
    let daemon = Daemon::start(&format!(
        "[identity]\ntrust_domain = \"{TD}\"\nca_dir = \"{}\"\nid = \"{}\"\nsvid_ttl = \"4s\"\ndns = [\"localhost\"]\n{}",
        ca_dir.display(),
        pki.id("/self-issued"),
        pki.inbound("web", upstream.addr, "")
    ));
    let addr = daemon.addr("web");
    let client = fresh_client(&pki, "/client");
    let first = server_leaf(addr, &client).await;
    daemon.wait_for_logs("a renewal", 2, |l| {
        l["message"] == "SVID issued by the built-in CA"
    });
    let renewed = daemon.wait_for_log("renewal", |l| {
        l["message"] == "renewing our SVID from the built-in CA"
    });
    assert!(renewed.is_object());
    daemon.wait_for_logs("reloaded", 1, |l| l["message"] == "configuration reloaded");
    let second = server_leaf(addr, &client).await;
    assert_ne!(first, second, "new connections see the renewed certificate");
    // Both are in the CA's ledger, under the daemon's SPIFFE ID.
    let issued: Vec<_> = pki
        .ca
        .issued()
        .unwrap()
        .into_iter()
        .filter(|r| r.id == pki.id("/self-issued"))
        .collect();
    assert!(issued.len() >= 2, "{issued:?}");
}
