//! Crypto backends end to end: keys and CA roots in SoftHSM2, the OpenSSL ENGINE path, and a slow device.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mtlsd::ca::LeafSpec;
use mtlsd_crypto::KeyRef;
use mtlsd_crypto::pkcs11::EcCurve;
use mtlsd_crypto::test_support::SoftHsm;
use mtlsd_e2e::*;

const TD: &str = "example.org";

/// A key generated inside a fresh token of the process-wide SoftHSM, and a certificate for it.
struct HsmSvid {
    uri: String,
    cert: PathBuf,
}

fn hsm_svid(hsm: &SoftHsm, pki: &Pki, token: &str, id: &str) -> HsmSvid {
    let token = hsm.token(token);
    let backend = hsm.backend(1);
    let KeyRef::Pkcs11(uri) = backend
        .generate_ec_key(&token, "svid", b"\x01", EcCurve::P256)
        .unwrap()
    else {
        panic!("a pkcs11 key reference");
    };
    let key = backend.load_key(&uri).unwrap();
    let mut spec = LeafSpec::new(id.parse().unwrap(), Duration::from_secs(3600));
    spec.dns_names.push("localhost".into());
    let issued = pki.ca.issue_for_key(&spec, &key).unwrap();
    let cert = pki.dir.path().join(format!("{token}.pem"));
    std::fs::write(&cert, &issued.chain_pem).unwrap();
    HsmSvid { uri, cert }
}

/// An HTTP GET through openssl s_client; returns what it printed.
fn s_client_get(addr: std::net::SocketAddr, pki: &Pki, client: &CertFiles) -> String {
    let out = s_client(
        addr,
        &pki.bundle(),
        client,
        &["-quiet"],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pkcs11_crypto(hsm: &SoftHsm) -> String {
    format!(
        "\n[crypto]\nbackend = \"pkcs11\"\n[crypto.pkcs11]\nmodule = \"{}\"\npin_file = \"{}\"\npool_size = 2\n",
        hsm.module().display(),
        hsm.pin_file().display()
    )
}

/// For a test that needs a key in a token: the process-wide SoftHSM, a PKI, and a `/web` key
/// generated in a fresh token named `token`; `None` (skip) when softhsm2 is not installed.
fn hsm_with_svid(token: &str) -> Option<(&'static SoftHsm, Pki, HsmSvid)> {
    if !SoftHsm::available() {
        return None;
    }
    let hsm = SoftHsm::process();
    let pki = Pki::new(TD);
    let svid = hsm_svid(hsm, &pki, token, &pki.id("/web"));
    Some((hsm, pki, svid))
}

fn identity(pki: &Pki, cert: &Path, key: &str) -> String {
    format!(
        "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{key}\"\nbundle = \"{}\"\n",
        cert.display(),
        pki.bundle().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_in_softhsm_serves_curl_and_openssl_s_client() {
    let Some((hsm, pki, svid)) = hsm_with_svid("leaf-token") else {
        return;
    };
    let upstream = http_upstream("hello from behind the HSM\n").await;
    let daemon = Daemon::start(
        &(identity(&pki, &svid.cert, &svid.uri)
            + &pkcs11_crypto(hsm)
            + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            + &pki.inbound("web", upstream.addr, "")),
    );
    let addr = daemon.addr("web");
    let client = pki.issue(&pki.id("/frontend"));
    assert_eq!(
        curl_https(addr, &pki.bundle(), &client),
        "hello from behind the HSM\n"
    );
    assert!(s_client_get(addr, &pki, &client).ends_with("hello from behind the HSM\n"));

    let (_, text) = admin_request(daemon.admin_addr(), "/metrics", None);
    let labels = format!(r#"{{backend="pkcs11",key="{}"}}"#, svid.uri);
    let ops = metric(&text, &format!("mtlsd_crypto_operations_total{labels}")).unwrap();
    assert!(
        ops >= 2.0,
        "one signature per handshake went through the token: {ops}\n{text}"
    );
    assert_eq!(
        metric(&text, &format!("mtlsd_crypto_device_healthy{labels}")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, &format!("mtlsd_crypto_errors_total{labels}")),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_whose_root_key_never_leaves_the_token_issues_chains_openssl_and_curl_accept() {
    if !SoftHsm::available() {
        return;
    }
    let hsm = SoftHsm::new();
    let token = hsm.token("ca-root");
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let uri = format!("pkcs11:token={token};object=root");
    run_ok(
        Command::new(mtlsd_bin())
            .args(["ca", "init", "--trust-domain", TD, "--dir"])
            .arg(&ca_dir)
            .args(["--root-key", &uri, "--create-root-key", "--pkcs11-module"])
            .arg(hsm.module())
            .arg("--pin-file")
            .arg(hsm.pin_file())
            .envs(hsm.env()),
    );
    assert!(
        !ca_dir.join("root.key").exists(),
        "the root key must not be written out"
    );
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("root.uri"))
            .unwrap()
            .trim(),
        uri
    );

    // Day-to-day issuance uses the intermediate; the chain ends at the HSM-signed root.
    let leaf = dir.path().join("leaf.pem");
    let key = dir.path().join("leaf.key");
    run_ok(
        Command::new(mtlsd_bin())
            .args(["ca", "issue", "--dir"])
            .arg(&ca_dir)
            .args([
                "--id",
                &format!("spiffe://{TD}/web"),
                "--dns",
                "localhost",
                "--cert",
            ])
            .arg(&leaf)
            .arg("--key")
            .arg(&key),
    );
    run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(ca_dir.join("root.pem"))
            .arg("-untrusted")
            .arg(ca_dir.join("intermediate.pem"))
            .arg(&leaf),
    );

    // curl trusts the HSM-rooted bundle when talking to a daemon holding that leaf.
    let upstream = http_upstream("rooted in the HSM\n").await;
    let bundle = ca_dir.join("bundle.pem");
    let client_cert = dir.path().join("client.pem");
    let client_key = dir.path().join("client.key");
    run_ok(
        Command::new(mtlsd_bin())
            .args(["ca", "issue", "--dir"])
            .arg(&ca_dir)
            .args(["--id", &format!("spiffe://{TD}/frontend"), "--cert"])
            .arg(&client_cert)
            .arg("--key")
            .arg(&client_key),
    );
    let daemon = Daemon::start(&format!(
        "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\
         [[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\nallow = [\"spiffe://{TD}\"]\n",
        leaf.display(),
        key.display(),
        bundle.display(),
        upstream.addr
    ));
    let client = CertFiles {
        cert: client_cert,
        key: client_key,
    };
    assert_eq!(
        curl_https(daemon.addr("web"), &bundle, &client),
        "rooted in the HSM\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_device_does_not_stall_established_connections() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    // Every signature takes 2 s: long enough that the ordering below cannot be a race.
    let daemon = pki.start_daemon(&format!(
        "\n[crypto]\nsimulate_latency = \"2s\"\n{}",
        pki.inbound("web", upstream.addr, "")
    ));
    let addr = daemon.addr("web");
    // Established before the storm (it paid its 2 s once).
    let mut established = tls_connect(addr, pki.client("/steady")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut established, b"warm").await.unwrap(),
        b"warm"
    );

    let completed = Arc::new(AtomicUsize::new(0));
    let mut storm = Vec::new();
    for i in 0..50 {
        let (client, completed) = (pki.client(&format!("/storm/{i}")), completed.clone());
        storm.push(tokio::spawn(async move {
            let mut tls = tls_connect(addr, client).await?;
            let echoed = echo_round_trip(&mut tls, b"late").await?;
            completed.fetch_add(1, Ordering::SeqCst);
            std::io::Result::Ok(echoed)
        }));
    }
    // While the 50 handshakes wait on the device, the established stream keeps flowing.
    for i in 0..20 {
        let msg = format!("round {i}");
        assert_eq!(
            echo_round_trip(&mut established, msg.as_bytes())
                .await
                .unwrap(),
            msg.as_bytes()
        );
    }
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "20 round trips finished before any 2-second handshake could"
    );
    // And the device keeps many operations in flight: all 50 complete.
    for h in storm {
        let echoed = tokio::time::timeout(WAIT, h)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"late");
    }
    assert_eq!(completed.load(Ordering::SeqCst), 50);
}

#[cfg(feature = "openssl")]
#[tokio::test(flavor = "multi_thread")]
async fn the_openssl_engine_path_signs_with_a_token_key_through_libp11() {
    let Some((hsm, pki, svid)) = hsm_with_svid("engine-token") else {
        return;
    };
    let upstream = http_upstream("signed through the pkcs11 engine\n").await;
    let crypto = format!(
        "\n[crypto]\nbackend = \"openssl\"\n[crypto.openssl]\nengine = \"pkcs11\"\n\
         engine_ctrl = [[\"MODULE_PATH\", \"{}\"], [\"PIN\", \"{}\"]]\n",
        hsm.module().display(),
        mtlsd_crypto::test_support::USER_PIN
    );
    let daemon = Daemon::start(
        &(identity(&pki, &svid.cert, &svid.uri) + &crypto + &pki.inbound("web", upstream.addr, "")),
    );
    let client = pki.issue(&pki.id("/frontend"));
    assert_eq!(
        curl_https(daemon.addr("web"), &pki.bundle(), &client),
        "signed through the pkcs11 engine\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_refuses_new_handshakes_with_a_reason_and_turns_readiness_off() {
    let Some((hsm, pki, svid)) = hsm_with_svid("failing-token") else {
        return;
    };
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity(&pki, &svid.cert, &svid.uri)
            + &pkcs11_crypto(hsm)
            + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            + &pki.inbound("web", upstream.addr, "")),
    );
    let addr = daemon.addr("web");
    let admin = daemon.admin_addr();
    let mut established = tls_connect(addr, pki.client("/before")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut established, b"up").await.unwrap(),
        b"up"
    );
    assert_eq!(admin_request(admin, "/ready", None).0, 200);

    // Take the key objects out of the token, as a pulled or wiped HSM would.
    let away = tempfile::tempdir().unwrap();
    for token in std::fs::read_dir(hsm.dir().join("tokens")).unwrap() {
        for object in std::fs::read_dir(token.unwrap().path()).unwrap() {
            let path = object.unwrap().path();
            let name = path.file_name().unwrap().to_owned();
            if name != "token.object" && path.extension().is_some_and(|e| e == "object") {
                std::fs::rename(&path, away.path().join(name)).unwrap();
            }
        }
    }

    if let Ok(tls) = tls_connect(addr, pki.client("/after")).await {
        assert!(refused_on_read(tls).await);
    }
    let refused = daemon.refused("key_unavailable");
    assert!(
        refused["detail"].as_str().unwrap().contains(&svid.uri),
        "the refusal names the key: {refused}"
    );
    let (status, body) = admin_request(admin, "/ready", None);
    assert_eq!(status, 503);
    assert!(body.contains("pkcs11 device holding our key"), "{body}");
    let (_, metrics) = admin_request(admin, "/metrics", None);
    let labels = format!(r#"{{backend="pkcs11",key="{}"}}"#, svid.uri);
    assert_eq!(
        metric(&metrics, &format!("mtlsd_crypto_device_healthy{labels}")),
        Some(0.0)
    );
    assert!(metric(&metrics, &format!("mtlsd_crypto_errors_total{labels}")).unwrap() >= 1.0);
    // The established connection does not need the key and keeps flowing.
    assert_eq!(
        echo_round_trip(&mut established, b"still").await.unwrap(),
        b"still"
    );
}
