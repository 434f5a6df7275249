//! Handshake kinds: server CPU and time to first byte for full, resumed and 0-RTT connections.
//!
//! The time-to-first-byte runs go through [`delay_relay`], a userspace TCP relay
//! that holds every chunk for a fixed one-way delay in each direction, so the
//! client sees a link with a real round-trip time. The relay accepts TCP at
//! once, so the TCP handshake itself is not delayed: the figures count TLS and
//! request round trips only (add one RTT for a real TCP connect).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// The request every run sends; the upstream answers it with a short response.
pub const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// How a connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No session reuse: certificates are exchanged and verified.
    Full,
    /// A session ticket or cached session, request sent after the handshake.
    Resumed,
    /// Resumed, with the request sent as early data.
    EarlyData,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 3] = [Kind::Full, Kind::Resumed, Kind::EarlyData];

    /// The name in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Resumed => "resumed",
            Kind::EarlyData => "early_data",
        }
    }

    /// A client config for this kind, derived from one with our client certificate.
    pub fn client_config(self, base: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
        let mut config = base.clone();
        match self {
            Kind::Full => config.resumption = Resumption::disabled(),
            Kind::Resumed => config.resumption = Resumption::in_memory_sessions(64),
            Kind::EarlyData => {
                config.resumption = Resumption::in_memory_sessions(64);
                config.enable_early_data = true;
            }
        }
        Arc::new(config)
    }
}

/// What one connection did.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// From starting the TCP connect to the first byte of the response.
    pub ttfb: Duration,
    /// Whether the connection was the kind asked for (resumed; early data accepted).
    pub as_intended: bool,
}

/// One connection of `kind`: handshake, request, the whole response.
pub async fn one(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    kind: Kind,
) -> std::io::Result<Run> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = TlsConnector::from(config.clone()).early_data(kind == Kind::EarlyData);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("valid name");
    let mut tls = connector.connect(name, tcp).await?;
    // With early data, connect returned before the handshake: this write leaves as 0-RTT.
    tls.write_all(REQUEST).await?;
    let mut first = [0u8; 1];
    tls.read_exact(&mut first).await?;
    let ttfb = start.elapsed();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await?;
    let conn = tls.get_ref().1;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let as_intended = match kind {
        Kind::Full => !resumed,
        Kind::Resumed => resumed,
        Kind::EarlyData => resumed && conn.is_early_data_accepted(),
    };
    Ok(Run { ttfb, as_intended })
}

/// Starts a relay to `target` that delays every chunk by `one_way` in each direction.
pub async fn delay_relay(target: SocketAddr, one_way: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(delayed(cr, sw, one_way), delayed(sr, cw, one_way));
            });
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping tx ends the writer once the queue drains, which then closes its half.
    };
    let writer = async move {
        let mut pending = VecDeque::new();
        while let Some(item) = rx.recv().await {
            pending.push_back(item);
            while let Some((due, chunk)) = pending.pop_front() {
                tokio::time::sleep_until(due.into()).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
                while let Ok(next) = rx.try_recv() {
                    pending.push_back(next);
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
