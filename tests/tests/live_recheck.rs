//! Authorization that follows identity on open connections: a revocation, a new policy or a
//! rotated-out CA closes the open connections it now refuses, with their own reason, while
//! every other connection keeps flowing; `max_connection_lifetime` closes old ones.

use std::sync::Arc;

use mtlsd::ca::Revoke;
use mtlsd_e2e::{
    Daemon, Pki, admin_request, client_config, echo_round_trip, echo_upstream, identity_toml,
    metric, tls_connect,
};
use rustls::ClientConfig;
use serde_json::Value;
use tokio::io::AsyncReadExt;

const TD: &str = "live.test";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An open, working connection through the `web` listener.
async fn open(daemon: &Daemon, client: Arc<ClientConfig>) -> Stream {
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"hello").await.unwrap(), b"hello");
    tls
}

/// Waits for the daemon to close `tls`: a read ends (EOF or error) within the bound.
async fn closed_by_daemon(mut tls: Stream) {
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(mtlsd_e2e::WAIT, tls.read(&mut buf))
        .await
        .expect("the connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// The "connection closed" line of `peer`.
fn closed_line(daemon: &Daemon, peer: &str) -> Value {
    let peer = peer.to_owned();
    daemon.wait_for_log("connection closed", move |l| {
        l["message"] == "connection closed" && l["peer_id"] == peer
    })
}

fn closed_metric(daemon: &Daemon, reason: &str) -> Option<f64> {
    let (_, text) = admin_request(daemon.admin_addr(), "/metrics", None);
    let series = format!(
        "mtlsd_connections_closed_while_open_total{{listener=\"web\",direction=\"inbound\",reason=\"{reason}\"}}"
    );
    metric(&text, &series)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_policy_closes_only_the_open_connections_it_no_longer_admits() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let head = identity_toml(&pki, &pki.issue(&pki.id("/web"))) + ADMIN;
    let listener = |allow: &str| {
        format!(
            "[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\nallow = [{allow}]\n",
            upstream.addr
        )
    };
    let both = format!("\"{}\", \"{}\"", pki.id("/a"), pki.id("/b"));
    let daemon = Daemon::start(&(head.clone() + &listener(&both)));
    let a = open(&daemon, pki.client("/a")).await;
    let mut b = open(&daemon, pki.client("/b")).await;

    std::fs::write(
        daemon.config_path(),
        head + &listener(&format!("\"{}\"", pki.id("/b"))),
    )
    .unwrap();
    daemon.reload(1);
    closed_by_daemon(a).await;
    let line = closed_line(&daemon, &pki.id("/a"));
    assert_eq!(line["reason"], "deauthorized_while_open", "{line}");
    let warned = daemon.wait_for_log("closing", |l| l["message"] == "closing an open connection");
    assert_eq!(warned["detail"], "no allow rule matches it any more");
    // /b is still allowed: its connection carries on, and the reload kept the socket.
    assert_eq!(echo_round_trip(&mut b, b"still").await.unwrap(), b"still");
    assert_eq!(closed_metric(&daemon, "deauthorized_while_open"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_closes_the_revoked_peers_open_connection() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let crl = format!("crl = \"{}\"\n", pki.ca.crl_path().display());
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &crl
            + ADMIN
            + &pki.inbound("web", upstream.addr, "")),
    );
    let victim = open(&daemon, pki.client("/victim")).await;
    let serial = pki.ca.issued().unwrap().last().unwrap().serial.clone();
    let mut bystander = open(&daemon, pki.client("/bystander")).await;

    pki.ca.revoke(&Revoke::Serial(serial.clone())).unwrap();
    closed_by_daemon(victim).await;
    let line = closed_line(&daemon, &pki.id("/victim"));
    assert_eq!(line["reason"], "revoked_while_open", "{line}");
    let warned = daemon.wait_for_log("closing", |l| l["message"] == "closing an open connection");
    let detail = warned["detail"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        detail.contains(&serial.to_ascii_lowercase().replace(':', "")),
        "{warned}"
    );
    assert_eq!(
        echo_round_trip(&mut bystander, b"fine").await.unwrap(),
        b"fine"
    );
    assert_eq!(closed_metric(&daemon, "revoked_while_open"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_removed_from_the_bundle_closes_the_connections_it_anchored() {
    // Two CAs of one trust domain, both in the bundle at first.
    let old = Pki::new(TD);
    let kept = Pki::new(TD);
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let read = |p: &Pki| std::fs::read_to_string(p.bundle()).unwrap();
    std::fs::write(&bundle, read(&kept) + &read(&old)).unwrap();
    let svid = kept.issue(&kept.id("/web"));
    let identity = format!(
        "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n",
        svid.cert.display(),
        svid.key.display(),
        bundle.display()
    );
    let daemon = Daemon::start(&(identity + ADMIN + &kept.inbound("web", upstream.addr, "")));
    // The clients trust both CAs too: they share a name, only their keys differ.
    let client = |p: &Pki, path: &str| client_config(&bundle, Some(&p.issue(&p.id(path))));
    let from_old = open(&daemon, client(&old, "/legacy")).await;
    let mut from_kept = open(&daemon, client(&kept, "/current")).await;

    // The old CA is rotated out of the bundle; the file watch reloads it.
    std::fs::write(&bundle, read(&kept)).unwrap();
    closed_by_daemon(from_old).await;
    let line = closed_line(&daemon, &old.id("/legacy"));
    assert_eq!(line["reason"], "untrusted_while_open", "{line}");
    assert_eq!(
        echo_round_trip(&mut from_kept, b"fine").await.unwrap(),
        b"fine"
    );
    assert_eq!(closed_metric(&daemon, "untrusted_while_open"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_only_logs_what_it_would_close() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let head = identity_toml(&pki, &pki.issue(&pki.id("/web")))
        + ADMIN
        + "[recheck]\nmode = \"dry_run\"\n";
    let daemon = Daemon::start(&(head.clone() + &pki.inbound("web", upstream.addr, "")));
    let mut a = open(&daemon, pki.client("/a")).await;
    let only_b = pki.inbound("web", upstream.addr, "").replace(
        &format!("allow = [\"spiffe://{TD}\"]"),
        &format!("allow = [\"{}\"]", pki.id("/b")),
    );
    std::fs::write(daemon.config_path(), head + &only_b).unwrap();
    daemon.reload(1);
    let would = daemon.wait_for_log("dry run", |l| {
        l["message"] == "dry run: would close an open connection"
    });
    assert_eq!(would["reason"], "deauthorized_while_open");
    assert_eq!(would["peer_id"], pki.id("/a"));
    // Left open, and nothing counted as closed.
    assert_eq!(echo_round_trip(&mut a, b"still").await.unwrap(), b"still");
    assert_eq!(closed_metric(&daemon, "deauthorized_while_open"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_older_than_max_connection_lifetime_is_closed() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + ADMIN
            + &pki.inbound(
                "web",
                upstream.addr,
                "limits = { max_connection_lifetime = \"1s\" }",
            )),
    );
    let tls = open(&daemon, pki.client("/a")).await;
    closed_by_daemon(tls).await;
    let line = closed_line(&daemon, &pki.id("/a"));
    assert_eq!(line["reason"], "max_connection_lifetime", "{line}");
    assert!(line["duration_ms"].as_u64().unwrap() >= 1000, "{line}");
    assert_eq!(closed_metric(&daemon, "max_connection_lifetime"), Some(1.0));
}
