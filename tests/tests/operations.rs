//! Operating the daemon: metrics and the admin endpoint, reload under load, socket activation.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mtlsd_e2e::*;
use serde_json::Value;

/// An `[[inbound]]` table named `name` that admits exactly `allow`.
fn inbound(name: &str, upstream: SocketAddr, allow: &str) -> String {
    format!(
        "\n[[inbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nforward = \"{upstream}\"\n\
         allow = [\"{allow}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_admin_endpoint_report_a_scripted_mix_of_traffic() {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    let frontend = pki.id("/frontend");
    let daemon = pki.start_daemon(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        inbound("api", upstream.addr, &frontend)
    ));
    let api = daemon.addr("api");

    // 3 forwarded connections, 5 bytes each way.
    for _ in 0..3 {
        let mut tls = tls_connect(api, pki.client("/frontend")).await.unwrap();
        assert_eq!(echo_round_trip(&mut tls, b"hello").await.unwrap(), b"hello");
    }
    // 2 authenticated but not allowed, 1 without a certificate, 1 from a foreign CA.
    for _ in 0..2 {
        let tls = tls_connect(api, pki.client("/intruder")).await.unwrap();
        assert!(refused_on_read(tls).await);
    }
    if let Ok(tls) = tls_connect(api, client_config(&pki.bundle(), None)).await {
        assert!(refused_on_read(tls).await);
    }
    let foreign = Pki::new("other.org");
    let forged = client_config(
        &pki.bundle(),
        Some(&foreign.issue(&foreign.id("/frontend"))),
    );
    if let Ok(tls) = tls_connect(api, forged).await {
        assert!(refused_on_read(tls).await);
    }
    // Metrics are recorded before each connection's log line, so these lines mean they are final.
    daemon.wait_for_logs("3 closed", 3, |l| l["message"] == "connection closed");
    daemon.wait_for_logs("4 refused", 4, |l| l["message"] == "connection refused");

    let admin = daemon.admin_addr();
    let (status, text) = admin_request(admin, "/metrics", None);
    assert_eq!(status, 200);
    let m =
        |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let l = r#"listener="api",direction="inbound""#;
    assert_eq!(
        m(&format!(
            r#"mtlsd_connections_total{{{l},result="forwarded"}}"#
        )),
        3.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_connections_total{{{l},result="refused"}}"#
        )),
        4.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_connections_refused_total{{{l},reason="not_allowed"}}"#
        )),
        2.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_connections_refused_total{{{l},reason="no_client_cert"}}"#
        )),
        1.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_connections_refused_total{{{l},reason="unknown_issuer"}}"#
        )),
        1.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_handshake_failures_total{{{l},reason="unknown_issuer"}}"#
        )),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"mtlsd_handshake_failures_total{{{l},reason="not_allowed"}}"#)
        ),
        None
    );
    assert_eq!(
        m(&format!(r#"mtlsd_handshakes_total{{{l},kind="full"}}"#)),
        5.0
    );
    assert_eq!(
        m(&format!(r#"mtlsd_handshake_duration_seconds_count{{{l}}}"#)),
        5.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_authorization_decisions_total{{listener="api",decision="allow",rule="{frontend}"}}"#
        )),
        3.0
    );
    assert_eq!(
        m(r#"mtlsd_authorization_decisions_total{listener="api",decision="no_match",rule=""}"#),
        2.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_forwarded_bytes_total{{{l},flow="from_peer"}}"#
        )),
        15.0
    );
    assert_eq!(
        m(&format!(
            r#"mtlsd_forwarded_bytes_total{{{l},flow="to_peer"}}"#
        )),
        15.0
    );
    assert_eq!(m(&format!(r#"mtlsd_connections_active{{{l}}}"#)), 0.0);
    assert_eq!(m(r#"mtlsd_config_reloads_total{result="success"}"#), 1.0);

    // The SVID's expiry is exported under its SPIFFE ID and serial, and /certs agrees.
    let (status, certs) = admin_request(admin, "/certs", None);
    assert_eq!(status, 200);
    let certs: Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["identity"], pki.id("/web"));
    let leaf = &certs["chain"][0];
    assert_eq!(leaf["spiffe_id"], pki.id("/web"));
    let serial = leaf["serial"].as_str().unwrap();
    let expiry = m(&format!(
        r#"mtlsd_certificate_expiry_timestamp_seconds{{role="svid",subject="{}",serial="{serial}"}}"#,
        pki.id("/web")
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not in the future");

    assert_eq!(admin_request(admin, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(
        admin_request(admin, "/ready", None),
        (200, "ready\n".into())
    );
    let (status, config) = admin_request(admin, "/config", None);
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["listeners"][0]["name"], "api");
    assert_eq!(config["listeners"][0]["addr"], api.to_string());
    assert_eq!(
        config["config"]["inbound"][0]["policy"]["allow"][0],
        frontend
    );
    assert_eq!(
        config["config"]["inbound"][0]["limits"]["handshake_timeout"],
        "10s"
    );
    assert_eq!(admin_request(admin, "/nope", None).0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_filter_changes_at_runtime_and_bad_filters_are_refused() {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        pki.inbound("api", upstream.addr, "")
    ));
    let admin = daemon.admin_addr();
    assert_eq!(
        admin_request(admin, "/logging", None),
        (200, "info\n".into())
    );

    // Access lines have their own target, so they can be silenced alone.
    let (status, _) = admin_request(admin, "/logging", Some("info,mtlsd::access=off"));
    assert_eq!(status, 200);
    let mut tls = tls_connect(daemon.addr("api"), pki.client("/a"))
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"x").await.unwrap(), b"x");
    drop(tls);
    let (status, body) = admin_request(admin, "/logging", Some("not a=filter=at all"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid log filter"), "{body}");
    // Back on: the next connection's line appears, and it is the only one (the first was silenced).
    admin_request(admin, "/logging", Some("info"));
    let mut tls = tls_connect(daemon.addr("api"), pki.client("/b"))
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"y").await.unwrap(), b"y");
    drop(tls);
    let closed = daemon.wait_for_log("closed", |l| l["message"] == "connection closed");
    assert_eq!(closed["peer_id"], pki.id("/b"));
    assert_eq!(
        daemon
            .logs_where(|l| l["message"] == "connection closed")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_listeners_and_policy_without_dropping_established_connections() {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    // The new policy below no longer admits the held connections' peer. Closing them is the
    // live re-check's job (live_recheck.rs); with it off, the reload keeps them, which is
    // what this test is about: sockets and policy swap for new connections, nothing else moves.
    let identity = identity_toml(&pki, &pki.issue(&pki.id("/web"))) + "[recheck]\nmode = \"off\"\n";
    let (frontend, other) = (pki.id("/frontend"), pki.id("/other"));
    let daemon = Daemon::start(
        &(identity.clone()
            + &inbound("web", upstream.addr, &frontend)
            + &inbound("old", upstream.addr, &frontend)),
    );
    let (web, old) = (daemon.addr("web"), daemon.addr("old"));

    // Connections admitted under the old policy, idle across the reload.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tls = tls_connect(web, pki.client("/frontend")).await.unwrap();
        assert_eq!(
            echo_round_trip(&mut tls, b"before").await.unwrap(),
            b"before"
        );
        held.push(tls);
    }
    // One connection streaming round trips throughout the reload.
    // Progress is published on a watch channel so the test can wait for it without polling.
    let (progress, mut rounds) = tokio::sync::watch::channel(0usize);
    let stop = Arc::new(AtomicBool::new(false));
    let mut streaming = tls_connect(web, pki.client("/frontend")).await.unwrap();
    let streamer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let echoed = echo_round_trip(&mut streaming, b"stream").await?;
                assert_eq!(echoed, b"stream");
                n += 1;
                progress.send_replace(n);
            }
            std::io::Result::Ok(n)
        }
    });
    tokio::time::timeout(WAIT, rounds.wait_for(|n| *n > 0))
        .await
        .expect("streaming started")
        .unwrap();

    // New config: "web" now admits only /other, "old" is gone, "new" appears.
    std::fs::write(
        daemon.config_path(),
        identity.clone()
            + &inbound("web", upstream.addr, &other)
            + &inbound("new", upstream.addr, &frontend),
    )
    .unwrap();
    let reloaded = daemon.reload(1);
    assert_eq!(reloaded["message"], "configuration reloaded", "{reloaded}");
    assert_eq!(reloaded["added"], r#"["new"]"#);
    assert_eq!(reloaded["removed"], r#"["old"]"#);
    assert_eq!(reloaded["updated"], r#"["web"]"#);
    let at_reload = *rounds.borrow();

    // Established connections are untouched, the streaming one included.
    for tls in &mut held {
        assert_eq!(echo_round_trip(tls, b"after").await.unwrap(), b"after");
    }
    tokio::time::timeout(WAIT, rounds.wait_for(|n| *n > at_reload + 10))
        .await
        .expect("the streaming connection kept going after the reload")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let total = streamer
        .await
        .unwrap()
        .expect("the streaming connection survived the reload");
    assert!(total > at_reload + 10);

    // "web" kept its socket; new connections get the new policy.
    assert_eq!(daemon.addr("web"), web);
    let tls = tls_connect(web, pki.client("/frontend")).await.unwrap();
    assert!(refused_on_read(tls).await);
    daemon.refused("not_allowed");
    let mut tls = tls_connect(web, pki.client("/other")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"new policy").await.unwrap(),
        b"new policy"
    );
    // "old" no longer accepts; "new" does.
    let refused = tokio::net::TcpStream::connect(old).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut tls = tls_connect(daemon.addr("new"), pki.client("/frontend"))
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"added").await.unwrap(), b"added");

    // A config that fails validation changes nothing.
    std::fs::write(daemon.config_path(), "[identity]\ntrust_domain = 5\n").unwrap();
    let rejected = daemon.reload(2);
    assert_eq!(
        rejected["message"],
        "reload rejected; the previous configuration keeps serving"
    );
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains(":2:16: identity.trust_domain: expected a string, found the number 5"),
        "{rejected}"
    );
    let mut tls = tls_connect(web, pki.client("/other")).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"still").await.unwrap(), b"still");
    for tls in &mut held {
        assert_eq!(echo_round_trip(tls, b"still").await.unwrap(), b"still");
    }
}

/// mtlsd under systemd's own `systemd-socket-activate`, which passes a loopback socket named
/// `fd_name` and starts mtlsd on the first connection; returns the socket's address.
fn socket_activated(fd_name: &str, config: tempfile::NamedTempFile) -> (Daemon, SocketAddr) {
    // systemd-socket-activate refuses port 0: borrow a free port from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut launcher = Command::new("systemd-socket-activate");
    launcher
        .args(["-l", &addr.to_string(), &format!("--fdname={fd_name}")])
        .arg(mtlsd_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config.path());
    let daemon = Daemon::spawn_command(launcher, config);
    daemon.wait_for_log("launcher listening", |l| {
        l["raw"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("Listening on {addr}")))
    });
    (daemon, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_takes_its_socket_from_systemd_socket_activate_by_name() {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    let config = write_config(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &pki.inbound("web", upstream.addr, "")
            + &pki.inbound("plain", upstream.addr, "")),
    );
    let (daemon, addr) = socket_activated("web", config);

    // The first connection makes the launcher start mtlsd with the socket as fd 3.
    let mut tls = tls_connect(addr, pki.client("/frontend")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"activated").await.unwrap(),
        b"activated"
    );
    daemon.wait_for_log("ready", |l| l["message"] == "ready");
    let web = daemon.wait_for_log("web listening", |l| {
        l["message"] == "listening" && l["listener"] == "web"
    });
    assert_eq!(web["activated"], true);
    assert_eq!(web["addr"], addr.to_string());
    // A listener with no passed socket binds its own address.
    let plain = daemon.wait_for_log("plain listening", |l| {
        l["message"] == "listening" && l["listener"] == "plain"
    });
    assert_eq!(plain["activated"], false);
    let mut tls = tls_connect(daemon.addr("plain"), pki.client("/frontend"))
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"bound").await.unwrap(), b"bound");
}

/// A socket systemd passes under a name no listener has is a configuration mistake whose
/// clients would hang: it is logged as an error and keeps /ready at 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_passed_socket_that_no_listener_serves_is_an_error_and_not_ready() {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    let config = write_config(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            + &pki.inbound("web", upstream.addr, "")),
    );
    let (daemon, addr) = socket_activated("public", config);
    // The first connection starts mtlsd; nobody will ever answer it.
    let _waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    let unclaimed = daemon.wait_for_log("unclaimed socket", |l| {
        l["level"] == "ERROR" && l["fd_name"] == "public"
    });
    assert_eq!(unclaimed["listeners"], "[\"web\"]", "{unclaimed}");
    daemon.wait_for_log("ready", |l| l["message"] == "ready");
    let admin = daemon.admin_addr();
    let (status, body) = tokio::task::spawn_blocking(move || admin_request(admin, "/ready", None))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains("\"public\" that no listener serves"),
        "{body}"
    );
}
