//! The daemon as an operator meets it: graceful shutdown, `check`, `ca` and the embedded demo.

use std::process::Command;

use mtlsd_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TD: &str = "example.org";

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_transfer_then_exits_zero() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let mut daemon = pki.start_daemon(&format!(
        "\n[shutdown]\ngrace = \"20s\"\n{}",
        pki.inbound("web", upstream.addr, "")
    ));
    let addr = daemon.addr("web");
    let client = pki.client("/frontend");
    let mut tls = tls_connect(addr, client).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"first half").await.unwrap(),
        b"first half"
    );

    daemon.terminate();
    let draining = daemon.wait_for_log("draining", |l| l["message"] == "draining");
    assert_eq!(draining["open_connections"], 1);
    // No new connections once draining...
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepting while draining"
    );
    // ...but the established one finishes its transfer.
    let rest = vec![42u8; 1024 * 1024];
    assert_eq!(echo_round_trip(&mut tls, &rest).await.unwrap(), rest);
    tls.shutdown().await.unwrap();
    let mut tail = Vec::new();
    tls.read_to_end(&mut tail).await.unwrap();

    let status = daemon.wait_exit();
    assert!(status.success(), "exit status {status}");
    let closed = daemon.logs_where(|l| l["message"] == "connection closed");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["reason"], "completed");
    assert_eq!(closed[0]["bytes_from_peer"], 10 + 1024 * 1024);
    assert!(
        daemon
            .logs_where(|l| l["message"] == "shutdown grace elapsed; closing remaining connections")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_still_open_after_the_grace_period_are_closed() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let mut daemon = pki.start_daemon(&format!(
        "\n[shutdown]\ngrace = \"1s\"\n{}",
        pki.inbound("web", upstream.addr, "")
    ));
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"x").await.unwrap(), b"x");
    daemon.terminate();
    let status = daemon.wait_exit();
    assert!(status.success(), "exit status {status}");
    let closed = daemon.wait_for_log("closed", |l| l["message"] == "connection closed");
    assert_eq!(closed["reason"], "shutdown_grace_elapsed");
}

fn mtlsd(args: &[&str]) -> std::process::Output {
    Command::new(mtlsd_bin()).args(args).output().unwrap()
}

#[test]
fn check_accepts_a_good_config_and_points_at_the_bad_line_and_key() {
    let pki = Pki::new(TD);
    let identity = identity_toml(&pki, &pki.issue(&format!("spiffe://{TD}/web")));
    let dir = tempfile::tempdir().unwrap();

    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("{identity}\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:15443\"\nforward = \"127.0.0.1:8080\"\nallow = [\"spiffe://{TD}/a\"]\n")).unwrap();
    let out = mtlsd(&["check", "--config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("config is valid"));

    let bad = dir.path().join("bad.toml");
    let body = format!(
        "{identity}\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:15443\"\nforward = \"127.0.0.1:8080\"\nallow = [\"spiffe://{TD}/a\", \"spiffe://{TD}/b*\"]\n"
    );
    let line = body.lines().position(|l| l.starts_with("allow")).unwrap() + 1;
    std::fs::write(&bad, body).unwrap();
    let out = mtlsd(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:{line}:36: inbound[0].allow[1]: '*' is only allowed as the whole last path segment",
        bad.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");

    // A config whose key file other users can read is refused with the file named.
    let svid = pki.issue(&format!("spiffe://{TD}/loose"));
    std::fs::set_permissions(
        &svid.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let loose = dir.path().join("loose.toml");
    std::fs::write(&loose, format!("{}\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nforward = \"127.0.0.1:2\"\nallow = [\"spiffe://{TD}\"]\n", identity_toml(&pki, &svid))).unwrap();
    let out = mtlsd(&["check", "--config", loose.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("key file {} has mode 0644", svid.key.display())),
        "{stderr}"
    );
}

#[test]
fn check_of_a_ca_issued_identity_does_not_issue_anything() {
    let pki = Pki::new(TD);
    let ca_dir = pki.ca.bundle_path().parent().unwrap().to_owned();
    let before = pki.ca.issued().unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, td_of_id: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[identity]\ntrust_domain = \"{TD}\"\nca_dir = \"{}\"\nid = \"spiffe://{td_of_id}/web\"\n\
                 [[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nforward = \"127.0.0.1:2\"\nallow = [\"spiffe://{TD}\"]\n",
                ca_dir.display()
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.toml", TD);
    let out = mtlsd(&["check", "--config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pki.ca.issued().unwrap().len(),
        before,
        "check issued a certificate"
    );

    let foreign = write("foreign.toml", "elsewhere.org");
    let out = mtlsd(&["check", "--config", foreign.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("identity.id is spiffe://elsewhere.org/web"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ca_commands_make_a_chain_that_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = mtlsd(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--trust-domain",
        "example.org",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = dir.path().join("web.pem");
    let key = dir.path().join("web.key");
    let out = mtlsd(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--id",
        "spiffe://example.org/ns/web",
        "--ttl",
        "2h",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    run_ok(
        Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(ca.join("bundle.pem"))
            .arg("-untrusted")
            .arg(&cert)
            .arg(&cert),
    );
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&cert),
    );
    assert!(text.contains("URI:spiffe://example.org/ns/web"));

    // Issuing outside the CA's trust domain is refused.
    let out = mtlsd(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--id",
        "spiffe://other.org/x",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

/// The README's first command: `mtlsd run` with no config serves the demo that curl can
/// reach, on its default ports, or on free ones it prints when a default port is taken.
#[test]
fn the_embedded_demo_serves_curl_through_both_listeners_even_when_a_port_is_taken() {
    // Hold the demo's inbound port, as another program might (it may be held already).
    let _taken = std::net::TcpListener::bind("127.0.0.1:15443");
    let state = tempfile::tempdir().unwrap();
    let placeholder = tempfile::NamedTempFile::new().unwrap();
    let daemon = Daemon::spawn(
        &["run", "--state-dir", state.path().to_str().unwrap()],
        placeholder,
    );
    let moved = daemon.wait_for_log("inbound port moved", |l| {
        l["message"] == "demo port in use; using a free one instead" && l["preferred"] == 15443
    });
    let (inbound, outbound) = (daemon.addr("demo-inbound"), daemon.addr("demo-outbound"));
    assert_eq!(moved["port"], inbound.port());
    daemon.wait_for_log("instructions", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("curl http://{outbound}/")))
    });

    let url = format!("http://{outbound}/");
    let body = run_ok(Command::new("curl").args(["-sS", "--max-time", "20", &url]));
    assert!(body.starts_with("hello spiffe://mtlsd.demo/demo/mtlsd\n"));

    let s = state.path();
    let curl = CertFiles {
        cert: s.join("curl.pem"),
        key: s.join("curl.key"),
    };
    let body = curl_https(inbound, &s.join("ca/bundle.pem"), &curl);
    assert!(body.starts_with("hello spiffe://mtlsd.demo/demo/curl\n"));
}
