//! Inbound authentication and authorization with real clients: rustls, curl and openssl s_client.

use std::time::Duration;

use mtlsd::ca::LeafSpec;
use mtlsd_e2e::*;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

const TD: &str = "example.org";

fn config(pki: &Pki, server: &CertFiles, forward: std::net::SocketAddr) -> String {
    format!(
        "{}\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\
         allow = [\"spiffe://{TD}/frontend\", \"spiffe://{TD}/batch/*\"]\n\
         deny = [\"spiffe://{TD}/batch/untrusted\"]\n",
        identity_toml(pki, server)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_peer_reaches_the_upstream() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(&config(
        &pki,
        &pki.issue(&format!("spiffe://{TD}/web")),
        upstream.addr,
    ));
    let client = pki.issue(&format!("spiffe://{TD}/batch/job-1"));

    let mut tls = tls_connect(
        daemon.addr("web"),
        client_config(&pki.bundle(), Some(&client)),
    )
    .await
    .unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"hello through mtlsd")
            .await
            .unwrap(),
        b"hello through mtlsd"
    );
    drop(tls);

    let closed = daemon.wait_for_log("connection closed", |l| l["message"] == "connection closed");
    assert_eq!(closed["peer_id"], format!("spiffe://{TD}/batch/job-1"));
    assert_eq!(closed["rule"], format!("spiffe://{TD}/batch/*"));
    assert_eq!(closed["bytes_from_peer"], 19);
    assert_eq!(closed["bytes_to_peer"], 19);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_openssl_s_client_are_served() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("hello from upstream\n").await;
    let daemon = Daemon::start(&config(
        &pki,
        &pki.issue(&format!("spiffe://{TD}/web")),
        upstream.addr,
    ));
    let client = pki.issue(&format!("spiffe://{TD}/frontend"));
    let addr = daemon.addr("web");

    assert_eq!(
        curl_https(addr, &pki.bundle(), &client),
        "hello from upstream\n"
    );
    for version in ["-tls1_3", "-tls1_2"] {
        // -quiet ignores EOF on stdin, so s_client reads until the server closes.
        let out = s_client(
            addr,
            &pki.bundle(),
            &client,
            &["-quiet", version],
            b"GET / HTTP/1.0\r\n\r\n",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.ends_with("hello from upstream\n"),
            "openssl {version}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(upstream.connections(), 3);
}

/// Each way a peer can fail to be who the policy wants, with the reason the daemon logs.
#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_peers_are_refused_with_distinct_reasons_and_never_reach_the_upstream() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(&config(
        &pki,
        &pki.issue(&format!("spiffe://{TD}/web")),
        upstream.addr,
    ));
    let addr = daemon.addr("web");
    let bundle = pki.bundle();

    let other_domain = Pki::new("other.org");
    let now = OffsetDateTime::now_utc();
    let mut expired = LeafSpec::new(
        format!("spiffe://{TD}/frontend").parse().unwrap(),
        Duration::from_secs(60),
    );
    expired.not_before = now - Duration::from_secs(7200);
    expired.not_after = now - Duration::from_secs(3600);
    let expired = pki.write("expired", &pki.ca.issue(&expired).unwrap());
    let no_uri = {
        let mut params =
            rcgen::CertificateParams::new(vec!["frontend.example.org".to_owned()]).unwrap();
        params.not_after = now + Duration::from_secs(3600);
        pki.write("no-uri", &pki.ca.sign(params).unwrap())
    };
    let two_uris = {
        let mut params = rcgen::CertificateParams::default();
        for id in [
            "spiffe://example.org/frontend",
            "spiffe://example.org/other",
        ] {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(id.try_into().unwrap()));
        }
        params.not_after = now + Duration::from_secs(3600);
        pki.write("two-uris", &pki.ca.sign(params).unwrap())
    };
    let foreign_id = {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://other.org/frontend".try_into().unwrap(),
        ));
        params.not_after = now + Duration::from_secs(3600);
        pki.write("foreign-id", &pki.ca.sign(params).unwrap())
    };

    let cases: Vec<(&str, Option<CertFiles>, &str)> = vec![
        (
            "ID not on the allow list",
            Some(pki.issue(&format!("spiffe://{TD}/stranger"))),
            "not_allowed",
        ),
        (
            "ID on the deny list",
            Some(pki.issue(&format!("spiffe://{TD}/batch/untrusted"))),
            "denied",
        ),
        (
            "another trust domain's CA",
            Some(other_domain.issue("spiffe://other.org/frontend")),
            "unknown_issuer",
        ),
        (
            "our CA, another trust domain's ID",
            Some(foreign_id),
            "foreign_trust_domain",
        ),
        ("expired certificate", Some(expired), "cert_expired"),
        ("no client certificate", None, "no_client_cert"),
        (
            "certificate without a SPIFFE URI",
            Some(no_uri),
            "no_spiffe_id",
        ),
        ("certificate with two URIs", Some(two_uris), "no_spiffe_id"),
    ];
    for (i, (what, cert, reason)) in cases.iter().enumerate() {
        let config = client_config(&bundle, cert.as_ref());
        if let Ok(stream) = tls_connect(addr, config).await {
            assert!(
                refused_on_read(stream).await,
                "{what}: got application data"
            );
        }
        let refusals = daemon.wait_for_logs(what, i + 1, |l| l["message"] == "connection refused");
        assert_eq!(refusals[i]["reason"], *reason, "{what}: {}", refusals[i]);
    }
    // Policy refusals name the peer they refused.
    let denied = daemon.refused("denied");
    assert_eq!(denied["peer_id"], format!("spiffe://{TD}/batch/untrusted"));
    assert_eq!(
        upstream.connections(),
        0,
        "a refused peer reached the upstream"
    );
}

/// A peer the policy refuses hears it as a TLS `access_denied` alert: curl says so instead of
/// "Empty reply from server", and an outbound route logs the remote's refusal as `peer_alert`.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_refusal_is_an_access_denied_alert_that_curl_and_outbound_report() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("ok\n").await;
    let server = pki.start_daemon(&format!(
        "\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\
         allow = [\"spiffe://{TD}/frontend\"]\n",
        upstream.addr
    ));
    let addr = server.addr("web");
    let stranger = pki.issue(&pki.id("/stranger"));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.bundle())
        .arg("--cert")
        .arg(&stranger.cert)
        .arg("--key")
        .arg(&stranger.key)
        .arg(format!("https://localhost:{}/", addr.port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("access denied"), "curl said: {stderr}");
    let refused = server.refused("not_allowed");
    assert_eq!(refused["peer_id"], pki.id("/stranger"));
    assert_eq!(upstream.connections(), 0);

    // The same refusal seen from an outbound route whose identity the remote does not admit.
    let client_side = Daemon::start(
        &(identity_toml(&pki, &stranger)
            + &format!(
                "\n[[outbound]]\nname = \"to-web\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{addr}\"\n\
                 server_id = \"{}\"\n",
                pki.id("/web")
            )),
    );
    let mut local = tokio::net::TcpStream::connect(client_side.addr("to-web"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut local, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut local, &mut answer).await;
    assert!(answer.is_empty());
    let closed = client_side.wait_for_log("outbound closed", |l| {
        l["message"] == "connection closed" || l["message"] == "connection refused"
    });
    assert_eq!(closed["reason"], "peer_alert", "{closed}");
    assert!(
        closed["error"]
            .as_str()
            .unwrap_or("")
            .contains("AccessDenied"),
        "{closed}"
    );
}

/// The daemon's counts of certificate signatures: (verified by computation, remembered).
fn signature_counts(daemon: &Daemon) -> (f64, f64) {
    let (_, text) = admin_request(daemon.admin_addr(), "/metrics", None);
    let read = |name: &str| metric(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
    (
        read("mtlsd_certificate_signatures_verified_total"),
        read("mtlsd_certificate_signatures_remembered_total"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_peer_s_signatures_are_verified_once_and_a_forged_one_is_still_refused() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("hello\n").await;
    let daemon = Daemon::start(
        &(config(
            &pki,
            &pki.issue(&format!("spiffe://{TD}/web")),
            upstream.addr,
        ) + "[admin]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let client = pki.issue(&format!("spiffe://{TD}/frontend"));
    let request = b"GET / HTTP/1.0\r\n\r\n";
    // openssl s_client, a fresh process each time: a full handshake, no resumption.
    // (-quiet ignores EOF on stdin, so s_client reads until the server closes.)
    let connect = || {
        let out = s_client(
            daemon.addr("web"),
            &pki.bundle(),
            &client,
            &["-quiet"],
            request,
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("hello\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let before = signature_counts(&daemon);
    connect();
    let first = signature_counts(&daemon);
    let computed = first.0 - before.0;
    assert!(computed >= 1.0, "{before:?} → {first:?}");
    connect();
    let second = signature_counts(&daemon);
    assert_eq!(
        second.0, first.0,
        "nothing is computed again: {first:?} → {second:?}"
    );
    assert!(second.1 - first.1 >= computed, "{first:?} → {second:?}");

    // The same certificate with one bit of its signature changed (its last byte is the end of
    // the ECDSA `s`, so the DER still parses): the remembered answer must not apply.
    let mut chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&client.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut forged = chain[0].to_vec();
    *forged.last_mut().unwrap() ^= 1;
    chain[0] = forged.into();
    let config = client_config_presenting(&pki.bundle(), chain, &client.key);
    // TLS 1.3: the client finishes first and learns of the refusal when it reads.
    let refused = match tls_connect(daemon.addr("web"), config).await {
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut reply = Vec::new();
            tls.write_all(request).await.is_err() || tls.read_to_end(&mut reply).await.is_err()
        }
        Err(_) => true,
    };
    assert!(refused, "a forged signature was accepted");
    let after = signature_counts(&daemon);
    assert!(
        after.0 > second.0,
        "the forgery was not computed: {second:?} → {after:?}"
    );
    let log = daemon.wait_for_log("refusal", |l| l["message"] == "connection refused");
    // Not signed by the CA it names: not issued by anything we trust.
    assert_eq!(log["reason"], "unknown_issuer", "{log}");
    assert!(
        log["detail"].as_str().unwrap().contains("BadSignature"),
        "{log}"
    );
    assert_eq!(upstream.connections(), 2);
}
