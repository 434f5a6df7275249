//! The data path: half-close, bulk integrity, outbound→inbound, Unix sockets, PROXY v2, permissive mode.

use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{Context, SHA256};
use mtlsd_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TD: &str = "example.org";

#[tokio::test(flavor = "multi_thread")]
async fn half_close_still_delivers_the_whole_response() {
    // The upstream answers only after it has seen the end of the request.
    let upstream = upstream(|mut s| async move {
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.unwrap();
        s.write_all(format!("got {} bytes", request.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let pki = Pki::new(TD);
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let client = pki.client("/frontend");

    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    tls.write_all(&[7u8; 5000]).await.unwrap();
    tls.shutdown().await.unwrap(); // close_notify + FIN: our write side only
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert_eq!(response, "got 5000 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_transfer_arrives_intact_both_ways() {
    const TOTAL: usize = 128 * 1024 * 1024;
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let client = pki.client("/frontend");
    let tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    let (mut rx, mut tx) = tokio::io::split(tls);

    let writer = tokio::spawn(async move {
        // Deterministic but non-repeating bytes, so a dropped or reordered chunk changes the hash.
        let mut sent = Context::new(&SHA256);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..TOTAL / chunk.len() {
            for b in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            sent.update(&chunk);
            tx.write_all(&chunk).await.unwrap();
        }
        tx.shutdown().await.unwrap();
        sent.finish()
    });
    let mut received = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = rx.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received.update(&buf[..n]);
        total += n;
    }
    let sent = writer.await.unwrap();
    assert_eq!(total, TOTAL);
    assert_eq!(sent.as_ref(), received.finish().as_ref());
    let closed = daemon.wait_for_log("closed", |l| l["message"] == "connection closed");
    assert_eq!(closed["bytes_from_peer"], TOTAL as u64);
    assert_eq!(closed["bytes_to_peer"], TOTAL as u64);
    assert_eq!(closed["reason"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_to_inbound_round_trip_checks_the_server_id() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    // Daemon A serves web; daemon B's outbound listeners dial it.
    let a = pki.start_daemon(&pki.inbound("web", upstream.addr, ""));
    let web = a.addr("web");
    let b = Daemon::start(&format!(
        "{}\n[[outbound]]\nname = \"to-web\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{web}\"\nserver_id = \"spiffe://{TD}/web\"\n\
         \n[[outbound]]\nname = \"to-api\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{web}\"\nserver_id = \"spiffe://{TD}/api\"\n",
        identity_toml(&pki, &pki.issue(&format!("spiffe://{TD}/frontend")))
    ));

    let mut plain = TcpStream::connect(b.addr("to-web")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut plain, b"via two daemons")
            .await
            .unwrap(),
        b"via two daemons"
    );
    drop(plain);
    let closed = a.wait_for_log("inbound close", |l| l["message"] == "connection closed");
    assert_eq!(closed["peer_id"], format!("spiffe://{TD}/frontend"));

    // The server is web, not api: B refuses and the local client sees the connection close.
    let mut wrong = TcpStream::connect(b.addr("to-api")).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        tokio::time::timeout(WAIT, wrong.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );
    let refusal = b.refused("unexpected_server_id");
    assert!(
        refusal["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("spiffe://{TD}/web")),
        "{refusal}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_upstream_gets_a_proxy_v2_header_with_the_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("svc.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let headers: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = headers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = vec![0u8; 16];
            s.read_exact(&mut head).await.unwrap();
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            head.resize(16 + len, 0);
            s.read_exact(&mut head[16..]).await.unwrap();
            seen.lock().unwrap().push(head);
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
        }
    });
    let pki = Pki::new(TD);
    let daemon = pki.start_daemon(&pki.inbound(
        "web",
        format!("unix:{}", socket.display()),
        "proxy_protocol = true",
    ));
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    let src = tls.get_ref().0.local_addr().unwrap();
    // The echo proves the payload follows the header untouched.
    assert_eq!(
        echo_round_trip(&mut tls, b"payload").await.unwrap(),
        b"payload"
    );

    let raw = headers.lock().unwrap()[0].clone();
    let header = ppp::v2::Header::try_from(raw.as_slice()).expect("a valid PROXY v2 header");
    assert_eq!(header.command, ppp::v2::Command::Proxy);
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(
                std::net::SocketAddr::from((a.source_address, a.source_port)),
                src
            );
            assert_eq!(a.destination_port, daemon.addr("web").port());
        }
        other => panic!("expected IPv4 addresses, got {other:?}"),
    }
    let tlvs: Vec<_> = header.tlvs().map(Result::unwrap).collect();
    let spiffe = tlvs.iter().find(|t| t.kind == 0xE0).expect("SPIFFE ID TLV");
    assert_eq!(
        spiffe.value.as_ref(),
        format!("spiffe://{TD}/frontend").as_bytes()
    );
    assert!(tlvs.iter().any(|t| t.kind == 0x20), "PP2_TYPE_SSL TLV");
}

#[tokio::test(flavor = "multi_thread")]
async fn permissive_mode_forwards_plaintext_only_when_policy_admits_unauthenticated() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let fwd = upstream.addr.to_string();
    let daemon = Daemon::start(&format!(
        "{}\n[[inbound]]\nname = \"open\"\nlisten = \"127.0.0.1:0\"\nforward = \"{fwd}\"\nmode = \"permissive\"\nallow = [\"spiffe://{TD}\", \"unauthenticated\"]\n\
         \n[[inbound]]\nname = \"ids-only\"\nlisten = \"127.0.0.1:0\"\nforward = \"{fwd}\"\nmode = \"permissive\"\nallow = [\"spiffe://{TD}\"]\n\
         \n[[inbound]]\nname = \"strict\"\nlisten = \"127.0.0.1:0\"\nforward = \"{fwd}\"\nallow = [\"spiffe://{TD}\"]\n",
        identity_toml(&pki, &pki.issue(&format!("spiffe://{TD}/web")))
    ));

    // Plaintext through a listener that admits unauthenticated peers, marked so in the log.
    let mut plain = TcpStream::connect(daemon.addr("open")).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut plain, b"plain hello").await.unwrap(),
        b"plain hello"
    );
    drop(plain);
    let closed = daemon.wait_for_log("plaintext close", |l| l["message"] == "connection closed");
    assert_eq!(closed["peer_id"], "unauthenticated");
    // mTLS still works on the same permissive port.
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("open"), client).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"tls hello").await.unwrap(),
        b"tls hello"
    );
    assert_eq!(upstream.connections(), 2);

    // Where the policy needs an identity, plaintext is refused before the upstream sees it.
    for (listener, reason) in [("ids-only", "not_allowed"), ("strict", "bad_client_hello")] {
        let mut plain = TcpStream::connect(daemon.addr(listener)).await.unwrap();
        plain.write_all(b"plain hello").await.unwrap();
        // The strict listener may answer with a TLS alert record; it must never echo.
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
            .await
            .expect("connection closed");
        assert!(
            !answer.windows(5).any(|w| w == b"plain"),
            "{listener} forwarded plaintext"
        );
        let refusal = daemon.refused(reason);
        assert_eq!(refusal["listener"], listener);
    }
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_gives_its_copy_buffers_back_and_keeps_working() {
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + "[admin]\nlisten = \"127.0.0.1:0\"\n"
            + &pki.inbound("web", upstream.addr, "")),
    );
    let held = || {
        let (_, text) = admin_request(daemon.admin_addr(), "/metrics", None);
        let series = "mtlsd_copy_buffer_bytes{listener=\"web\",direction=\"inbound\"}";
        metric(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    // 64 MiB sent and nothing read: more than every socket buffer on the way there and back
    // can hold (a few MiB each on loopback), so the daemon ends up holding bytes it cannot
    // deliver, in a buffer, until the client reads.
    const CHUNKS: usize = 1024;
    let chunk = vec![5u8; 64 * 1024];
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        for _ in 0..CHUNKS {
            write.write_all(&chunk).await.unwrap();
        }
        write
    });
    let deadline = std::time::Instant::now() + WAIT;
    while held() <= 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no buffer held while blocked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut back = vec![0u8; 64 * 1024];
    for _ in 0..CHUNKS {
        read.read_exact(&mut back).await.unwrap();
        assert!(back.iter().all(|b| *b == 5));
    }
    tls = read.unsplit(writer.await.unwrap());
    // Idle with the connection open: both directions give their buffers back.
    while held() != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "buffers held while idle: {}",
            held()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        echo_round_trip(&mut tls, b"still here").await.unwrap(),
        b"still here"
    );
}

/// What [`through_server_tls`] saw.
struct Streamed {
    /// The largest piece the stream handed over at once.
    largest: usize,
    /// Copy-buffer bytes counted when the stream reported its end, before it was dropped.
    held_at_end: i64,
}

/// `total` patterned bytes from a tokio-rustls client through the inbound side's
/// `ServerTlsStream` over a socket pair, read as the copy loop reads (`fill_buf`/`consume`)
/// and checked byte by byte. With `burst`, the client has written everything and its
/// close_notify before the first read.
async fn through_server_tls(total: usize, burst: bool) -> Streamed {
    use mtlsd::metrics::{Direction, Metrics};
    use mtlsd::proxy::server_tls::ServerTlsStream;
    use mtlsd::tls::ServerResumption;
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let year = std::time::Duration::from_secs(365 * 86_400);
    let ca = mtlsd::ca::Authority::init(&dir.path().join("ca"), TD, year, year).unwrap();
    let backend = mtlsd_crypto::software::Software::new();
    let server_id =
        in_memory::tls_identity(&ca, dir.path(), "spiffe://example.org/server", &backend);
    let client_id =
        in_memory::tls_identity(&ca, dir.path(), "spiffe://example.org/client", &backend);
    let server = server_id.server_config(&ServerResumption::Off).unwrap();
    let client = client_id
        .client_config(&server_id.svid.id, false, false)
        .unwrap();
    let pattern = |i: usize| (i % 253) as u8;

    let (client_io, server_io) = in_memory::socket_pair();
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(async move {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .unwrap();
        let _ = connected_tx.send(());
        let data: Vec<u8> = (0..total).map(pattern).collect();
        tls.write_all(&data).await.unwrap();
        tls.shutdown().await.unwrap();
        tls
    });
    let metrics = Metrics::new().listener("web", Direction::Inbound);
    let conn = rustls::ServerConnection::new(server).unwrap();
    let mut tls = ServerTlsStream::accept(server_io, conn, metrics.buffer_bytes.clone())
        .await
        .unwrap();
    let mut writer = Some(writer);
    if burst {
        connected.await.unwrap();
        // Everything, close_notify included, is in the socket before the first read.
        drop(writer.take().unwrap().await.unwrap());
    }
    let (mut got, mut largest) = (0, 0);
    loop {
        let chunk = tls.fill_buf().await.unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(
            chunk
                .iter()
                .enumerate()
                .all(|(k, &b)| b == pattern(got + k)),
            "bytes changed or reordered after {got}"
        );
        let n = chunk.len();
        largest = largest.max(n);
        got += n;
        tls.consume(n);
    }
    let held_at_end = metrics.buffer_bytes.get();
    if let Some(writer) = writer {
        drop(writer.await.unwrap());
    }
    assert_eq!(got, total);
    drop(tls);
    assert_eq!(
        metrics.buffer_bytes.get(),
        0,
        "buffers counted after the drop"
    );
    Streamed {
        largest,
        held_at_end,
    }
}

const RECORD: usize = 16 * 1024;

/// A TLS peer that streams is read ahead, and the records already here reach the copy loop
/// several at a time, intact and in order.
#[tokio::test]
async fn a_streaming_tls_peer_is_handed_over_in_pieces_larger_than_a_record() {
    let seen = through_server_tls(4 * 1024 * 1024, false).await;
    assert!(
        seen.largest > RECORD,
        "no piece larger than one record: {} bytes at most",
        seen.largest
    );
    assert_eq!(
        seen.held_at_end, 0,
        "buffers held after the end of the stream"
    );
}

/// A peer whose last records and close_notify arrive in one read ahead leaves no buffer
/// behind when its stream ends, though the connection (and the other direction) goes on.
#[tokio::test]
async fn a_tls_peer_that_closes_after_a_burst_leaves_no_buffer_behind() {
    // Small enough to sit in the socket pair's buffer whole.
    let seen = through_server_tls(8 * RECORD, true).await;
    assert!(seen.largest > RECORD, "the burst was not read ahead");
    assert_eq!(
        seen.held_at_end, 0,
        "buffers held after the end of the stream"
    );
}
