//! Regressions from the outside test campaign: hostile files, trickled ClientHellos,
//! rejected 0-RTT, KeyUpdate and reloads that must change nothing they should not.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mtlsd_e2e::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const TD: &str = "example.org";

/// 61 hex digits, then a two-byte character, then one more digit: 64 bytes, not a key.
fn straddling_key_line() -> Vec<u8> {
    let mut line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc".to_vec();
    line.extend_from_slice("é".as_bytes());
    line.push(b'd');
    line
}

fn write_secret(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_ticket_key_file_is_refused_at_start_check_and_reload_and_never_crashes() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("ticket.keys");
    run_ok(std::process::Command::new(mtlsd_bin()).args([
        "ticket-keys",
        "rotate",
        "--file",
        keys.to_str().unwrap(),
    ]));
    let config = identity_toml(&pki, &pki.issue(&pki.id("/web")))
        + &format!("[resumption]\nticket_key_file = \"{}\"\n", keys.display())
        + &pki.inbound("web", upstream.addr, "");
    let daemon = Daemon::start(&config);
    let client = pki.client("/frontend");
    let mut established = tls_connect(daemon.addr("web"), client.clone())
        .await
        .unwrap();

    // The watcher sees the hostile file: logged once, old keys kept, nobody panics.
    write_secret(&keys, &straddling_key_line());
    let unusable = daemon.wait_for_log("ticket key file unusable", |l| {
        l["message"] == "session ticket key file unusable; keeping the previous keys"
    });
    assert!(
        unusable["error"]
            .as_str()
            .unwrap()
            .contains("line 1: a ticket key is 64 hex digits"),
        "{unusable}"
    );
    let mut fresh = tls_connect(daemon.addr("web"), client.clone())
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut fresh, b"new").await.unwrap(), b"new");

    // SIGHUP with the same file: the daemon stays up and serves.
    let outcome = daemon.reload(1);
    assert_eq!(outcome["message"], "configuration reloaded", "{outcome}");
    assert_eq!(
        echo_round_trip(&mut established, b"old").await.unwrap(),
        b"old"
    );

    // check and run refuse the file with its line, with an error and not a panic.
    let config_file = write_config(&config);
    for command in ["check", "run"] {
        let out = std::process::Command::new(mtlsd_bin())
            .args([command, "--config", config_file.path().to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: line 1: a ticket key", keys.display())),
            "{command}: {stderr}"
        );
    }
    // And rotation refuses to spread the broken line.
    let out = std::process::Command::new(mtlsd_bin())
        .args(["ticket-keys", "rotate", "--file", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&keys).unwrap(), straddling_key_line());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_an_absurd_cache_size_is_rejected_and_the_daemon_keeps_serving() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, "resumption = \"cache\""));
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("web"), client.clone())
        .await
        .unwrap();
    let text = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(
        daemon.config_path(),
        format!("{text}\n[resumption]\nsession_cache_size = 9223372036854775807\n"),
    )
    .unwrap();
    let outcome = daemon.reload(1);
    assert_eq!(
        outcome["message"],
        "reload rejected; the previous configuration keeps serving"
    );
    assert_eq!(echo_round_trip(&mut tls, b"still").await.unwrap(), b"still");
    let mut again = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut again, b"new").await.unwrap(), b"new");
}

/// Connects from a chosen loopback address.
async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Trickling clients hold no handshake slot: with both slots "taken" by clients that
/// never finish their ClientHello, and timeouts far beyond the test's patience, a
/// good client from another address still completes at once. Clients beyond the
/// per-address limit are closed on arrival.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_trickle_their_client_hello_hold_no_handshake_slot() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound(
        "web",
        upstream.addr,
        r#"limits = { max_handshakes = 2, max_handshakes_per_source = 8, client_hello_timeout = "5m", handshake_timeout = "5m" }"#,
    ));
    let addr = daemon.addr("web");
    // A record header and the first bytes of a ClientHello, then nothing more.
    let mut trickling = Vec::new();
    for _ in 0..8 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        trickling.push(s);
    }
    // The ninth from the same address is refused at once.
    let mut ninth = connect_from("127.0.0.1", addr).await;
    ninth.write_all(&[0x16]).await.unwrap();
    let refused = daemon.refused("too_many_from_source");
    assert_eq!(
        refused["src"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );

    // Another address: a full mTLS handshake and a round trip.
    let tcp = connect_from("127.0.0.2", addr).await;
    let mut tls = tokio_rustls::TlsConnector::from(pki.client("/frontend"))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"in").await.unwrap(), b"in");
    drop(trickling);
}

/// A TLS 1.3 KeyUpdate asking for an answer gets one while the upstream is silent.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_update_is_answered_without_waiting_for_upstream_traffic() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"before").await.unwrap(),
        b"before"
    );
    tls.get_mut().1.refresh_traffic_keys().unwrap();
    tls.flush().await.unwrap();
    // The echo upstream sends nothing unprompted: any bytes now are the daemon's KeyUpdate.
    let tcp = tls.get_ref().0;
    let mut peek = [0u8; 5];
    let n = tokio::time::timeout(WAIT, tcp.peek(&mut peek))
        .await
        .expect("the daemon answered the KeyUpdate only after upstream traffic")
        .unwrap();
    assert!(
        n > 0 && peek[0] == 0x17,
        "an encrypted record: {:?}",
        &peek[..n]
    );
    // Both directions run on the new keys.
    assert_eq!(echo_round_trip(&mut tls, b"after").await.unwrap(), b"after");
}

/// A streaming client's records are read ahead in large pieces. A record that fails to
/// decrypt ends the connection with the reason logged, but only after every good record
/// before it has reached the upstream; the daemon goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_record_in_a_burst_ends_the_connection_after_the_good_ones_arrive() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new(TD);
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let upstream = upstream(move |mut s| {
        let got_tx = got_tx.clone();
        async move {
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all).await;
            got_tx.send(all).unwrap();
        }
    })
    .await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    // 40 full records (more than one read ahead holds), then one whose tag is broken, sent
    // in one burst.
    let good: Vec<u8> = (0..40 * 16 * 1024).map(|i| (i % 251) as u8).collect();
    let (tcp, conn) = tls.get_mut();
    conn.set_buffer_limit(None);
    std::io::Write::write_all(&mut conn.writer(), &good).unwrap();
    std::io::Write::write_all(&mut conn.writer(), b"this record is corrupted").unwrap();
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    *wire.last_mut().unwrap() ^= 1;
    tcp.write_all(&wire).await.unwrap();

    let got = tokio::time::timeout(WAIT, got_rx.recv())
        .await
        .expect("the upstream connection was not closed")
        .unwrap();
    assert_eq!(got.len(), good.len(), "bytes before the bad record");
    assert!(got == good, "the good records arrived changed");
    let closed = daemon.wait_for_log("closed", |l| l["message"] == "connection closed");
    assert_eq!(closed["reason"], "error");
    assert_eq!(closed["bytes_from_peer"], good.len() as u64);
    assert!(
        closed["error"].as_str().unwrap().contains("cannot decrypt"),
        "{closed}"
    );
    let mut again = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    again.write_all(b"next").await.unwrap();
    again.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"next");
}

/// More than 8 KiB of rejected early data falls back to a full handshake: a session the
/// listener never issued, and a replay on a 0-RTT listener (openssl s_client).
#[tokio::test(flavor = "multi_thread")]
async fn rejected_early_data_beyond_8_kib_falls_back_to_a_full_handshake() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("ok\n").await;
    let daemon = pki.start_daemon(
        &(pki.inbound(
            "early",
            upstream.addr,
            "resumption = \"cache\"\nearly_data = 16384",
        ) + &pki.inbound("web", upstream.addr, "")),
    );
    let client = pki.issue(&pki.id("/frontend"));
    let dir = tempfile::tempdir().unwrap();
    let (session, early) = (dir.path().join("session.pem"), dir.path().join("early.txt"));
    let mut request = b"GET / HTTP/1.0\r\nX-Pad: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 12 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    std::fs::write(&early, &request).unwrap();
    let s_client = |addr, args: &[&str], stdin: &[u8]| {
        let args: Vec<&str> = ["-tls1_3"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let out = s_client(addr, &pki.bundle(), &client, &args, stdin);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let first = s_client(
        daemon.addr("early"),
        &["-ign_eof", "-sess_out", session.to_str().unwrap()],
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert!(first.contains("New, TLSv1.3"), "{first}");
    // A session the ticket listener never issued: its 12 KiB of early data must be skipped.
    // No -ign_eof: openssl does not resend rejected early data, so no answer comes.
    let rejected = s_client(
        daemon.addr("web"),
        &[
            "-sess_in",
            session.to_str().unwrap(),
            "-early_data",
            early.to_str().unwrap(),
        ],
        b"",
    );
    assert!(rejected.contains("Early data was rejected"), "{rejected}");
    assert!(!rejected.contains("bad record mac"), "{rejected}");
    assert!(rejected.contains("New, TLSv1.3"), "{rejected}");

    // On the 0-RTT listener: the 12 KiB are accepted once...
    let early_args = [
        "-ign_eof",
        "-sess_in",
        session.to_str().unwrap(),
        "-early_data",
        early.to_str().unwrap(),
    ];
    let accepted = s_client(daemon.addr("early"), &early_args, b"");
    assert!(accepted.contains("Early data was accepted"), "{accepted}");
    // ...and a replay of the consumed session falls back to a full handshake, although
    // 12 KiB is more than half the listener's early_data.
    let replay = s_client(daemon.addr("early"), &early_args[1..], b"");
    assert!(replay.contains("Early data was rejected"), "{replay}");
    assert!(!replay.contains("bad record mac"), "{replay}");
    assert!(replay.contains("New, TLSv1.3"), "{replay}");
}

/// `max_connections` changed once, then two more reloads: the cap still counts the
/// connections held since before them.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_keeps_counting_across_reloads_after_it_changed() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon =
        pki.start_daemon(&pki.inbound("web", upstream.addr, "limits = { max_connections = 2 }"));
    let addr = daemon.addr("web");
    let client = pki.client("/frontend");
    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut tls = tls_connect(addr, client.clone()).await.unwrap();
        assert_eq!(echo_round_trip(&mut tls, &[i]).await.unwrap(), [i]);
        held.push(tls);
    }
    let text = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(
        daemon.config_path(),
        text.replace("max_connections = 2", "max_connections = 3"),
    )
    .unwrap();
    for n in 1..=3 {
        let outcome = daemon.reload(n);
        assert_eq!(outcome["message"], "configuration reloaded", "{outcome}");
    }
    // One more fits under the new cap of 3; the one after does not.
    let mut third = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(echo_round_trip(&mut third, b"3").await.unwrap(), b"3");
    let fourth = tls_connect(addr, client).await;
    match fourth {
        Err(_) => {}
        Ok(tls) => assert!(refused_on_read(tls).await, "a fourth connection was served"),
    }
    daemon.refused("too_many_connections");
    drop((held, third));
}

/// An outbound route resuming to a server whose certificate has since expired refuses,
/// as inbound does.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_resumption_to_a_server_whose_certificate_expired_is_refused() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("ok\n").await;
    let short = pki.issue_for(&pki.id("/web"), Duration::from_secs(3));
    let server =
        Daemon::start(&(identity_toml(&pki, &short) + &pki.inbound("web", upstream.addr, "")));
    let client_side = pki.start_daemon(&format!(
        "\n[[outbound]]\nname = \"to-web\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{}\"\n\
         server_id = \"{}\"\n",
        server.addr("web"),
        pki.id("/web")
    ));
    let request = |local| async move {
        let mut s = TcpStream::connect(local).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer).await;
        answer
    };
    let local = client_side.addr("to-web");
    assert!(request(local).await.ends_with(b"ok\n"));
    client_side.wait_for_log("first close", |l| l["message"] == "connection closed");

    // Wait for the server's certificate itself to expire: that is the condition under test.
    wait_until(std::time::SystemTime::now() + Duration::from_secs(4)).await;
    assert!(request(local).await.is_empty());
    refused_as_expired_resumption(&client_side);
}

/// A local process cannot hoard admin connections: past 64 the next is closed at
/// once, an idle one is closed after the header timeout, and mTLS keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoint_bounds_its_connections_and_closes_idle_ones() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        pki.inbound("web", upstream.addr, "")
    ));
    let admin = daemon.admin_addr();
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    // The 65th is accepted and closed without an answer.
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .expect("the 65th admin connection was left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    daemon.wait_for_log("admin busy", |l| {
        l["message"] == "admin endpoint busy; connection closed"
    });
    // The data path is untouched meanwhile.
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"data").await.unwrap(), b"data");
    // Idle connections that never send a request are closed by the header timeout...
    for conn in &mut idle {
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .expect("an idle admin connection was never closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    drop(idle);
    // ...and the endpoint answers again.
    let health = tokio::task::spawn_blocking(move || admin_request(admin, "/healthz", None))
        .await
        .unwrap();
    assert_eq!(health, (200, "ok\n".into()));
}
