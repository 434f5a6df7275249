//! Bad input and dead upstreams: refused cleanly while everyone else keeps being served.

use std::time::Duration;

use mtlsd_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TD: &str = "example.org";

#[tokio::test(flavor = "multi_thread")]
async fn dead_upstream_is_refused_and_other_listeners_keep_serving() {
    let pki = Pki::new(TD);
    let live = echo_upstream().await;
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let daemon =
        pki.start_daemon(&(pki.inbound("dead", dead, "") + &pki.inbound("live", live.addr, "")));
    let client = pki.client("/frontend");

    let stream = tls_connect(daemon.addr("dead"), client.clone())
        .await
        .unwrap();
    assert!(refused_on_read(stream).await);
    let refusal = daemon.refused("upstream_unavailable");
    assert_eq!(refusal["peer_id"], format!("spiffe://{TD}/frontend"));

    let mut tls = tls_connect(daemon.addr("live"), client).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"still here").await.unwrap(),
        b"still here"
    );
}

/// Garbage, truncated and stalled handshakes are refused; an established connection
/// keeps flowing while they occupy every handshake slot, and a good client gets in after.
#[tokio::test(flavor = "multi_thread")]
async fn bad_and_stalled_handshakes_do_not_starve_established_connections() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound(
        "web",
        upstream.addr,
        r#"limits = { handshake_timeout = "2s", max_handshakes = 2 }"#,
    ));
    let addr = daemon.addr("web");
    let client = pki.client("/frontend");
    let mut established = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut established, b"before").await.unwrap(),
        b"before"
    );

    // Garbage: an HTTP request on the TLS port.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    daemon.refused("bad_client_hello");

    // Truncated: a handshake record header promising 512 bytes, 10 bytes of it, then EOF.
    let mut truncated = TcpStream::connect(addr).await.unwrap();
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    daemon.refused("peer_closed");

    // Stalled: five clients that connect and say nothing, more than there are handshake slots.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    // While they hold every slot, the established connection still round-trips.
    for i in 0..20u8 {
        let msg = [b'x', i];
        assert_eq!(echo_round_trip(&mut established, &msg).await.unwrap(), msg);
    }
    // Each stalled client is closed by the handshake timeout.
    daemon.wait_for_logs("handshake timeouts", 5, |l| {
        l["reason"] == "handshake_timeout"
    });
    for mut s in stalled {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed by server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    // And a good client is served afterwards.
    let mut late = tls_connect(addr, client).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut late, b"after").await.unwrap(),
        b"after"
    );
    assert_eq!(
        echo_round_trip(&mut established, b"still").await.unwrap(),
        b"still"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_are_closed_on_accept() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon =
        pki.start_daemon(&pki.inbound("web", upstream.addr, r#"limits = { max_connections = 1 }"#));
    let client = pki.client("/frontend");
    let mut first = tls_connect(daemon.addr("web"), client.clone())
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut first, b"one").await.unwrap(), b"one");

    let second = tls_connect(daemon.addr("web"), client.clone()).await;
    assert!(
        second.is_err(),
        "second connection should be closed before its handshake"
    );
    daemon.refused("too_many_connections");
    assert_eq!(
        echo_round_trip(&mut first, b"one again").await.unwrap(),
        b"one again"
    );

    // Once the first closes, its slot is free again.
    first.shutdown().await.unwrap();
    drop(first);
    daemon.wait_for_log("first closed", |l| l["message"] == "connection closed");
    let mut third = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut third, b"three").await.unwrap(),
        b"three"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon =
        pki.start_daemon(&pki.inbound("web", upstream.addr, r#"limits = { idle_timeout = "1s" }"#));
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"hi").await.unwrap(), b"hi");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("closed by idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
    let closed = daemon.wait_for_log("idle close", |l| l["message"] == "connection closed");
    assert_eq!(closed["reason"], "idle_timeout");
    assert!(closed["duration_ms"].as_u64().unwrap() >= Duration::from_secs(1).as_millis() as u64);
}
