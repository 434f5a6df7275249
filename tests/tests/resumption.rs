//! TLS 1.3 session resumption and 0-RTT: openssl s_client and rustls clients against the daemon.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtlsd_e2e::*;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "example.org";
const REQUEST: &[u8] = b"GET /early HTTP/1.0\r\n\r\n";
/// Listener keys that accept 0-RTT.
const EARLY: &str = "resumption = \"cache\"\nearly_data = 4096";
/// The same, with a PROXY v2 header that says how many bytes came early.
const EARLY_PROXIED: &str = "proxy_protocol = true\nresumption = \"cache\"\nearly_data = 4096";

/// A client of `pki` for `path` that sends early data when it holds a ticket that allows it.
fn early_client(pki: &Pki, path: &str) -> Arc<rustls::ClientConfig> {
    let mut config = (*pki.client(path)).clone();
    config.enable_early_data = true;
    Arc::new(config)
}

/// What a recording upstream saw on one connection: the early-data TLV's count and the bytes after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    early: u32,
    bytes: Vec<u8>,
}

/// An HTTP-ish upstream behind `proxy_protocol = true` that records each connection.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let (up, seen, _) = notifying_upstream().await;
    (up, seen)
}

/// Like [`recording_upstream`], with a notification each time a request has been recorded.
async fn notifying_upstream() -> (Upstream, Arc<Mutex<Vec<Seen>>>, Arc<tokio::sync::Notify>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let recorded = Arc::new(tokio::sync::Notify::new());
    let log = seen.clone();
    let notify = recorded.clone();
    let up = upstream(move |mut s| {
        let (log, notify) = (log.clone(), notify.clone());
        async move {
            let mut head = vec![0u8; 16];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            head.resize(16 + len, 0);
            s.read_exact(&mut head[16..]).await.unwrap();
            let header = ppp::v2::Header::try_from(head.as_slice()).unwrap();
            let early = header
                .tlvs()
                .map(Result::unwrap)
                .find(|t| t.kind == 0xE1)
                .map_or(0, |t| {
                    u32::from_be_bytes(t.value.as_ref().try_into().unwrap())
                });
            let mut bytes = Vec::new();
            let mut buf = [0u8; 1024];
            while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
            log.lock().unwrap().push(Seen { early, bytes });
            notify.notify_one();
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok\n").await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    (up, seen, recorded)
}

/// TLS 1.3 `openssl s_client` with a client certificate; returns stdout and stderr together.
fn s_client_tls13(
    addr: SocketAddr,
    pki: &Pki,
    client: &CertFiles,
    args: &[&str],
    stdin: &[u8],
) -> String {
    let args: Vec<&str> = ["-tls1_3"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let out = s_client(addr, &pki.bundle(), client, &args, stdin);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_resumes_with_a_ticket_and_the_access_log_says_so() {
    let pki = Pki::new(TD);
    let upstream = http_upstream("hello\n").await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let addr = daemon.addr("web");
    let client = pki.issue(&pki.id("/frontend"));
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");

    // -ign_eof: read until the server closes, so the ticket that follows the handshake is saved.
    let first = s_client_tls13(
        addr,
        &pki,
        &client,
        &["-ign_eof", "-sess_out", path_str(&session)],
        REQUEST,
    );
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let second = s_client_tls13(
        addr,
        &pki,
        &client,
        &["-ign_eof", "-sess_in", path_str(&session)],
        REQUEST,
    );
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
    assert!(second.contains("hello"), "{second}");

    let closed = daemon.wait_for_logs("two closes", 2, |l| l["message"] == "connection closed");
    assert_eq!(closed[0]["handshake"], "full");
    assert_eq!(closed[1]["handshake"], "resumed");
    // The resumed connection still carries (and was authorized as) the certificate's identity.
    assert_eq!(closed[1]["peer_id"], pki.id("/frontend"));
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_early_data_reaches_the_upstream_once_and_a_replay_is_rejected() {
    let pki = Pki::new(TD);
    let (upstream, seen) = recording_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, EARLY_PROXIED));
    let addr = daemon.addr("web");
    let client = pki.issue(&pki.id("/frontend"));
    let dir = tempfile::tempdir().unwrap();
    let (session, early) = (dir.path().join("session.pem"), dir.path().join("early.txt"));
    std::fs::write(&early, REQUEST).unwrap();

    let first = s_client_tls13(
        addr,
        &pki,
        &client,
        &["-ign_eof", "-sess_out", path_str(&session)],
        REQUEST,
    );
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let args = [
        "-ign_eof",
        "-sess_in",
        path_str(&session),
        "-early_data",
        path_str(&early),
    ];
    let second = s_client_tls13(addr, &pki, &client, &args, b"");
    assert!(second.contains("Early data was accepted"), "{second}");
    assert!(second.contains("ok"), "{second}");
    // The same session again: the server-side session was single-use, so the replayed early data is refused.
    let replay = s_client_tls13(
        addr,
        &pki,
        &client,
        &[
            "-sess_in",
            path_str(&session),
            "-early_data",
            path_str(&early),
        ],
        b"",
    );
    assert!(replay.contains("Early data was rejected"), "{replay}");

    let closed = daemon.wait_for_logs("three closes", 3, |l| l["message"] == "connection closed");
    let kinds: Vec<_> = closed
        .iter()
        .map(|l| l["handshake"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["full", "early_data", "full"]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0],
        Seen {
            early: 0,
            bytes: REQUEST.to_vec()
        }
    );
    // The upstream is told exactly which leading bytes arrived as 0-RTT.
    assert_eq!(
        seen[1],
        Seen {
            early: REQUEST.len() as u32,
            bytes: REQUEST.to_vec()
        }
    );
    // The replay delivered nothing: the request reached the upstream once as early data, never twice.
    assert_eq!(
        seen[2],
        Seen {
            early: 0,
            bytes: Vec::new()
        }
    );
}

/// One connection with `config`: the handshake kind the client saw, and whether it was served.
async fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (HandshakeKind, bool) {
    let mut tls = tls_connect(addr, config.clone()).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    // The echo also reads the tickets the server sends after the handshake.
    let served = matches!(echo_round_trip(&mut tls, b"hi").await, Ok(b) if b == b"hi");
    (kind, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_identity_is_authorized_again_under_the_policy_in_force() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let identity = identity_toml(&pki, &pki.issue(&pki.id("/web")));
    let listener = |allow: &str| {
        format!(
            "\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\nallow = [\"{allow}\"]\n",
            upstream.addr
        )
    };
    let daemon = Daemon::start(&(identity.clone() + &listener(&pki.id("/frontend"))));
    let addr = daemon.addr("web");
    let client = pki.client("/frontend");
    assert_eq!(connect(addr, &client).await, (HandshakeKind::Full, true));
    assert_eq!(connect(addr, &client).await, (HandshakeKind::Resumed, true));

    // De-authorize /frontend: its next resumed connection is refused.
    std::fs::write(
        daemon.config_path(),
        identity + &listener(&pki.id("/someone-else")),
    )
    .unwrap();
    assert_eq!(daemon.reload(1)["message"], "configuration reloaded");
    let (kind, served) = connect(addr, &client).await;
    assert_eq!((kind, served), (HandshakeKind::Resumed, false));
    let refused = daemon.refused("not_allowed");
    assert_eq!(refused["peer_id"], pki.id("/frontend"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_is_refused_once_the_client_certificate_has_expired() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let addr = daemon.addr("web");
    let short = pki.issue_for(&pki.id("/short-lived"), Duration::from_secs(2));
    let client = client_config(&pki.bundle(), Some(&short));
    assert_eq!(connect(addr, &client).await, (HandshakeKind::Full, true));

    // Wait for the certificate itself to expire: that is the condition under test.
    wait_until(std::time::SystemTime::now() + Duration::from_secs(3)).await;
    let (kind, served) = connect(addr, &client).await;
    assert_eq!((kind, served), (HandshakeKind::Resumed, false));
    refused_as_expired_resumption(&daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_sharing_a_key_file_resume_each_others_tickets_until_keys_rotate_out() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("ticket.keys");
    let rotate = || {
        run_ok(
            Command::new(mtlsd_bin())
                .args(["ticket-keys", "rotate", "--file"])
                .arg(&keys),
        );
    };
    rotate();
    let shared = format!("\n[resumption]\nticket_key_file = \"{}\"\n", keys.display());
    let a = pki.start_daemon(&(shared.clone() + &pki.inbound("web", upstream.addr, "")));
    let b = pki.start_daemon(&(shared.clone() + &pki.inbound("web", upstream.addr, "")));

    let client = pki.client("/frontend");
    assert_eq!(
        connect(a.addr("web"), &client).await,
        (HandshakeKind::Full, true)
    );
    // A ticket from instance a resumes at instance b (the client offers it to the same server name).
    assert_eq!(
        connect(b.addr("web"), &client).await,
        (HandshakeKind::Resumed, true)
    );

    // Another trust configuration (one more CA in the bundle) derives other keys: full handshake.
    let other = Pki::new("other.org");
    let bundle = dir.path().join("bigger-bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(pki.bundle()).unwrap()
            + &std::fs::read_to_string(other.bundle()).unwrap(),
    )
    .unwrap();
    let svid = pki.issue(&pki.id("/web"));
    let c = Daemon::start(&format!(
        "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n{shared}{}",
        svid.cert.display(),
        svid.key.display(),
        bundle.display(),
        pki.inbound("web", upstream.addr, "")
    ));
    let fresh = pki.client("/frontend");
    assert_eq!(
        connect(a.addr("web"), &fresh).await,
        (HandshakeKind::Full, true)
    );
    assert_eq!(
        connect(c.addr("web"), &fresh).await,
        (HandshakeKind::Full, true)
    );

    // One rotation: the previous key still decrypts. Two: the ticket's key is gone.
    let rotating = pki.client("/rotating");
    assert_eq!(
        connect(a.addr("web"), &rotating).await,
        (HandshakeKind::Full, true)
    );
    rotate();
    a.reload(1);
    assert_eq!(
        connect(a.addr("web"), &rotating).await.0,
        HandshakeKind::Resumed
    );
    // That resumption handed out tickets under the new key; start over with one under the old key only.
    let old_ticket = pki.client("/old-ticket");
    rotate();
    a.reload(2);
    assert_eq!(
        connect(a.addr("web"), &old_ticket).await,
        (HandshakeKind::Full, true)
    );
    rotate();
    rotate();
    a.reload(3);
    assert_eq!(
        connect(a.addr("web"), &old_ticket).await,
        (HandshakeKind::Full, true)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn early_data_reaches_the_upstream_before_the_client_has_finished_its_handshake() {
    use std::io::{Read, Write};

    let pki = Pki::new(TD);
    let (upstream, seen, recorded) = notifying_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, EARLY_PROXIED));
    let addr = daemon.addr("web");
    let config = early_client(&pki, "/early");
    // A first, full handshake leaves a ticket that allows early data.
    {
        let mut tls = tls_connect(addr, config.clone()).await.unwrap();
        tls.write_all(REQUEST).await.unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert!(answer.ends_with(b"ok\n"));
    }
    recorded.notified().await;

    // Second connection, driven by hand: ClientHello and early data go out, and the client
    // stops there — it reads nothing and so cannot send its Finished.
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        conn.early_data()
            .expect("the ticket allows early data")
            .write_all(REQUEST)
            .unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        sent_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // Now finish the handshake and read the answer.
        let mut answer = Vec::new();
        loop {
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            if conn.read_tls(&mut sock).unwrap() == 0 {
                break;
            }
            conn.process_new_packets().unwrap();
            let _ = conn.reader().read_to_end(&mut answer);
        }
        (conn.is_early_data_accepted(), answer)
    });
    tokio::task::spawn_blocking(move || sent_rx.recv().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, recorded.notified())
        .await
        .expect("the early request reached the upstream while the client had not finished");
    assert_eq!(
        seen.lock().unwrap()[1],
        Seen {
            early: REQUEST.len() as u32,
            bytes: REQUEST.to_vec()
        }
    );
    go_tx.send(()).unwrap();
    let (accepted, answer) = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    assert!(accepted, "the client saw its early data accepted");
    assert!(
        answer.ends_with(b"ok\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let closed = daemon.wait_for_logs("two closes", 2, |l| l["message"] == "connection closed");
    assert_eq!(closed[1]["handshake"], "early_data");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_route_that_opts_in_sends_the_first_bytes_as_early_data() {
    let pki = Pki::new(TD);
    let (upstream, seen, _) = notifying_upstream().await;
    let server = pki.start_daemon(&pki.inbound("web", upstream.addr, EARLY_PROXIED));
    let client_side = pki.start_daemon(&format!(
        "\n[[outbound]]\nname = \"to-web\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{}\"\n\
         server_id = \"{}\"\nearly_data = true\n",
        server.addr("web"),
        pki.id("/web")
    ));
    let local = client_side.addr("to-web");
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        s.write_all(REQUEST).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.ends_with(b"ok\n"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let inbound = server.wait_for_logs("two closes", 2, |l| l["message"] == "connection closed");
    assert_eq!(inbound[0]["handshake"], "full");
    assert_eq!(inbound[1]["handshake"], "early_data");
    assert_eq!(seen.lock().unwrap()[1].early, REQUEST.len() as u32);
    let outbound =
        client_side.wait_for_logs("two closes", 2, |l| l["message"] == "connection closed");
    assert_eq!(outbound[1]["handshake"], "early_data");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_early_request_still_leaves_the_client_a_ticket_for_next_time() {
    use std::io::{Read, Write};

    // The upstream answers and closes at once. The client reads that answer (0.5-RTT data)
    // before it even sends its Finished, so the answer is complete first. The daemon must
    // still finish the handshake and hand out a fresh ticket before closing, or the client's
    // next connection cannot resume.
    let pki = Pki::new(TD);
    let upstream = http_upstream("ok\n").await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, EARLY));
    let addr = daemon.addr("web");
    // One ticket per connection, so every connection depends on the one before it.
    let config = early_client(&pki, "/one-shot");
    let accepted = tokio::task::spawn_blocking(move || {
        let mut accepted = Vec::new();
        for _ in 0..4 {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(WAIT)).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let early = conn
                .early_data()
                .map(|mut e| e.write_all(REQUEST).unwrap())
                .is_some();
            if !early {
                conn.writer().write_all(REQUEST).unwrap();
            }
            // Send only what is queued now: the ClientHello (and early data, if any).
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            // Read until the whole answer is here, without sending anything more.
            let mut answer = Vec::new();
            while !answer.ends_with(b"ok\n") {
                if conn.read_tls(&mut sock).unwrap() == 0 {
                    break;
                }
                conn.process_new_packets().unwrap();
                let _ = conn.reader().read_to_end(&mut answer);
                // A full handshake needs our Finished (and certificate) before it answers.
                if !early {
                    while conn.wants_write() {
                        conn.write_tls(&mut sock).unwrap();
                    }
                }
            }
            // Now our Finished goes out; read to the end, tickets included.
            loop {
                while conn.wants_write() {
                    if conn.write_tls(&mut sock).is_err() {
                        break;
                    }
                }
                match conn.read_tls(&mut sock) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if conn.process_new_packets().is_err() {
                            break;
                        }
                        let _ = conn.reader().read_to_end(&mut answer);
                    }
                }
            }
            accepted.push(early && conn.is_early_data_accepted());
        }
        accepted
    })
    .await
    .unwrap();
    assert_eq!(
        accepted,
        [false, true, true, true],
        "0-RTT on every connection after the first"
    );
}

/// Bytes waiting in the client's socket, without taking them (a real `recv(MSG_PEEK)`).
fn bytes_waiting(tcp: &tokio::net::TcpStream) -> usize {
    use std::os::fd::AsFd;
    let raw = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned().unwrap());
    // Shares tokio's non-blocking socket: an empty queue is WouldBlock, not a wait.
    match raw.peek(&mut [0u8; 4096]) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("peek: {e}"),
    }
}

/// An upstream whose connections the test drives, handed over as they are accepted.
async fn held_upstream() -> (Upstream, tokio::sync::mpsc::Receiver<tokio::net::TcpStream>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let up = upstream(move |s| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(s).await;
        }
    })
    .await;
    (up, rx)
}

/// Sends a fresh connection's first `request` to the held upstream and returns the service's
/// end once it has read it, after checking that nothing (no ticket) reached the client yet.
async fn first_request(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    accepted: &mut tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
    request: &[u8],
) -> tokio::net::TcpStream {
    tls.write_all(request).await.unwrap();
    let mut service = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; request.len()];
    service.read_exact(&mut got).await.unwrap();
    assert_eq!(got, request);
    // The request went through the daemon after the handshake ended, so a ticket written on
    // its own would be in the client's socket by now. Nothing is: it waits for an answer.
    assert_eq!(bytes_waiting(tls.get_ref().0), 0, "sent before any answer");
    service
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_ticket_waits_for_the_first_answer_and_shares_its_write() {
    let pki = Pki::new(TD);
    let (upstream, mut accepted) = held_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let addr = daemon.addr("web");
    let client = pki.client("/frontend");

    let mut tls = tls_connect(addr, client.clone()).await.unwrap();
    let mut service = first_request(&mut tls, &mut accepted, b"ping").await;
    service.write_all(b"pong").await.unwrap();
    let mut answer = [0u8; 4];
    tls.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"pong");
    // The ticket came with the answer: rustls read it on the way, so the next connection resumes.
    drop((tls, service));
    let mut again = tls_connect(addr, client).await.unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_keeps_sending_gets_its_ticket_without_an_answer() {
    let pki = Pki::new(TD);
    let (upstream, mut accepted) = held_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/uploader"))
        .await
        .unwrap();
    let mut service = first_request(&mut tls, &mut accepted, b"part one").await;

    // More from the client before any answer: an upload. Its ticket is not held back for an
    // answer that may never come; it arrives while the service still says nothing.
    tls.write_all(b"part two").await.unwrap();
    let mut got = [0u8; 8];
    service.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"part two");
    let tcp = tls.get_ref().0;
    for _ in 0..100 {
        tokio::time::timeout(WAIT, tcp.readable())
            .await
            .expect("no ticket while the client uploads")
            .unwrap();
        if bytes_waiting(tcp) > 0 {
            return;
        }
        // Readiness left over from the handshake: clear it and wait for the next.
        let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
    panic!("the socket kept waking with nothing to read");
}
