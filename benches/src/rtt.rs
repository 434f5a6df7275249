//! Handshake kinds: server CPU and time to first byte for full, resumed and 0-RTT connections,
//! with an ECDSA P-256 and an RSA-2048 server certificate.
//!
//! mtlsd only (the peers have no 0-RTT with client certificates): one listener with
//! `resumption = "cache"` and `early_data` on, an HTTP-ish upstream that answers and closes.
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

use mtlsd_e2e::{CertFiles, Daemon, Pki, http_upstream, identity_toml};
use rustls::client::Resumption;
use serde_json::{Value, json};
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
    // With early data, connect returned before the handshake: this write leaves as 0-RTT, and
    // the flush (which tokio-rustls needs to finish the handshake) waits for the server's flight,
    // which carries the answer too.
    tls.write_all(REQUEST).await?;
    tls.flush().await?;
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
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
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

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections per kind for the CPU figures.
    pub per_kind: u32,
    /// Round-trip time of the relayed link for time to first byte.
    pub rtt: Duration,
    /// Connections per kind through the relay.
    pub samples: u32,
    /// Core to pin the daemon to.
    pub server_cpu: Option<usize>,
}

/// A server certificate: ECDSA P-256 (the CA's default) or RSA-2048.
fn server_svid(pki: &Pki, rsa: bool) -> CertFiles {
    let mut spec = mtlsd::ca::LeafSpec::new(
        pki.id("/web").parse().expect("ID"),
        Duration::from_secs(86_400),
    );
    spec.dns_names.push("localhost".into());
    if !rsa {
        return pki.write("kinds-ecdsa", &pki.ca.issue(&spec).expect("issue"));
    }
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA key");
    let cert = pki
        .ca
        .issue_for_key(&spec, &key)
        .expect("issue for RSA key");
    let files = CertFiles {
        cert: pki.dir.path().join("kinds-rsa.pem"),
        key: pki.dir.path().join("kinds-rsa.key"),
    };
    mtlsd::files::write_atomic(&files.cert, cert.chain_pem.as_bytes(), 0o644).expect("write");
    mtlsd::files::write_atomic(&files.key, key.serialize_pem().as_bytes(), 0o600).expect("write");
    files
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Runs every kind against a fresh daemon per certificate type; returns the JSON section.
pub async fn run(settings: Settings) -> Result<Value, String> {
    let pki = Pki::new("bench.example");
    let client = pki.issue_for(&pki.id("/client"), Duration::from_secs(86_400));
    let base = (*mtlsd_e2e::client_config(&pki.bundle(), Some(&client))).clone();
    let upstream = http_upstream("ok\n").await;
    let mut keys = serde_json::Map::new();
    for (name, rsa) in [("ecdsa_p256", false), ("rsa_2048", true)] {
        let svid = server_svid(&pki, rsa);
        let daemon = Daemon::start(&format!(
            "{}\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\
             allow = [\"spiffe://bench.example\"]\nresumption = \"cache\"\nearly_data = 16384\n",
            identity_toml(&pki, &svid),
            upstream.addr
        ));
        if let Some(cpu) = settings.server_cpu {
            crate::contender::pin(daemon.pid(), cpu);
        }
        let addr = daemon.addr("web");
        let relay = delay_relay(addr, settings.rtt / 2).await;
        let mut kinds = serde_json::Map::new();
        for kind in Kind::ALL {
            let config = kind.client_config(&base);
            // Two warm-up connections leave session tickets in the client's cache.
            for _ in 0..2 {
                one(addr, &config, kind)
                    .await
                    .map_err(|e| format!("{name} {}: {e}", kind.as_str()))?;
            }
            let cpu0 = crate::contender::cpu_seconds(daemon.pid()).unwrap_or(f64::NAN);
            let mut intended = 0u32;
            for _ in 0..settings.per_kind {
                let run = one(addr, &config, kind)
                    .await
                    .map_err(|e| format!("{name} {}: {e}", kind.as_str()))?;
                intended += u32::from(run.as_intended);
            }
            let cpu = crate::contender::cpu_seconds(daemon.pid()).unwrap_or(f64::NAN) - cpu0;
            let mut ttfb = Vec::new();
            for _ in 0..settings.samples {
                let run = one(relay, &config, kind)
                    .await
                    .map_err(|e| format!("{name} {} via relay: {e}", kind.as_str()))?;
                intended += u32::from(run.as_intended);
                ttfb.push(run.ttfb);
            }
            let n = settings.per_kind.max(1);
            kinds.insert(
                kind.as_str().into(),
                json!({
                    "server_cpu_us": cpu * 1e6 / f64::from(n),
                    "as_intended": f64::from(intended) / f64::from(n + settings.samples),
                    "ttfb_ms": median_ms(ttfb),
                }),
            );
        }
        keys.insert(name.into(), Value::Object(kinds));
    }
    Ok(json!({
        "rtt_ms": settings.rtt.as_secs_f64() * 1e3,
        "connections_per_kind": settings.per_kind,
        "ttfb_samples": settings.samples,
        "note": "server CPU includes the upstream connect and one request; TTFB is through a relay adding the RTT to TLS and request round trips (not to the TCP connect)",
        "keys": keys,
    }))
}

/// The Markdown table of a `handshake_kinds` section.
pub fn table(section: &Value) -> String {
    let mut out = format!(
        "\nHandshake kinds (mtlsd; time to first byte over a {} ms RTT link):\n\n\
         | server key | kind | server CPU µs | as intended | TTFB ms |\n|---|---|---:|---:|---:|\n",
        section["rtt_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let empty = serde_json::Map::new();
    for (key, kinds) in section["keys"].as_object().unwrap_or(&empty) {
        for kind in Kind::ALL {
            let k = &kinds[kind.as_str()];
            out += &format!(
                "| {key} | {} | {:.0} | {:.0} % | {:.1} |\n",
                kind.as_str(),
                k["server_cpu_us"].as_f64().unwrap_or(f64::NAN),
                k["as_intended"].as_f64().unwrap_or(f64::NAN) * 100.0,
                k["ttfb_ms"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    out
}
