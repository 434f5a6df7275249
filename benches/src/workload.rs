//! The load the client puts on a contender: handshake storms (full and resumed), a fixed-rate
//! request/response echo, N held idle connections and one bulk transfer. Each workload only
//! drives traffic and checks it; `main` samples the server's CPU and RSS around it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtlsd_e2e::{CertFiles, Pki, WAIT, echo_round_trip, tls_connect};
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS 1.3 rustls client presenting `client`, trusting the PKI's bundle.
///
/// `x25519_only` restricts the key exchange to X25519 (what OpenSSL 3.0 peers do); otherwise
/// the default offer prefers X25519MLKEM768. `resume` keeps a session cache so reconnects resume.
pub fn client_config(
    pki: &Pki,
    client: &CertFiles,
    x25519_only: bool,
    resume: bool,
) -> Arc<ClientConfig> {
    client_config_with_bundle(&pki.bundle(), client, x25519_only, resume)
}

/// [`client_config`] trusting the CA certificates in `bundle` (for a PKI made elsewhere).
pub fn client_config_with_bundle(
    bundle: &Path,
    client: &CertFiles,
    x25519_only: bool,
    resume: bool,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if x25519_only {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&client.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&client.key).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

/// How the load client reaches a contender.
#[derive(Clone)]
pub enum Dial {
    /// TLS 1.3 with our client certificate.
    Tls(Arc<ClientConfig>),
    /// TLS 1.3, each connection with the next of several client certificates.
    TlsEach(Arc<RoundRobin>),
    /// Plain TCP: the baselines without TLS (`mtlsd-plain`, `haproxy-tcp`).
    Plain,
}

/// Client configs handed out in turn, one per connection.
pub struct RoundRobin {
    configs: Vec<Arc<ClientConfig>>,
    next: std::sync::atomic::AtomicUsize,
}

impl RoundRobin {
    /// Hands out `configs` in order, starting again after the last.
    pub fn new(configs: Vec<Arc<ClientConfig>>) -> Self {
        Self {
            configs,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn next(&self) -> Arc<ClientConfig> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.configs[i % self.configs.len()].clone()
    }
}

/// A client connection of either kind.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// An open connection and what its handshake negotiated.
pub struct Connected {
    pub stream: Box<dyn Conn>,
    pub resumed: bool,
    /// Key-exchange group and cipher suite (`plain TCP` without TLS).
    pub group: String,
    pub suite: String,
}

impl Dial {
    /// Connects (and, with TLS, completes the mTLS handshake with `localhost`).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<Connected> {
        let config = match self {
            Self::Tls(config) => config.clone(),
            Self::TlsEach(configs) => configs.next(),
            Self::Plain => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                return Ok(Connected {
                    stream: Box::new(tcp),
                    resumed: false,
                    group: "plain TCP".into(),
                    suite: "plain TCP".into(),
                });
            }
        };
        let tls = tls_connect(addr, config).await?;
        let conn = tls.get_ref().1;
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        let group = conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        Ok(Connected {
            stream: Box::new(tls),
            resumed,
            group,
            suite,
        })
    }
}

/// What a handshake storm did, as the client saw it.
#[derive(Debug, Default, Clone)]
pub struct Storm {
    pub connections: u32,
    pub full: u32,
    pub resumed: u32,
    pub wall: Duration,
    /// The key-exchange group and cipher suite the last connection negotiated.
    pub group: String,
    pub suite: String,
}

/// `n` connections over `concurrency` clients: connect, TLS 1.3 mTLS handshake (none with
/// [`Dial::Plain`]), one byte through the echo upstream and back (which also reads the
/// tickets the server sent), close.
pub async fn storm(
    addr: SocketAddr,
    dial: &Dial,
    n: u32,
    concurrency: u32,
) -> Result<Storm, String> {
    let per_task = n.div_ceil(concurrency.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let dial = dial.clone();
            tokio::spawn(async move {
                let mut out = Storm::default();
                for _ in 0..per_task {
                    let mut c = dial
                        .connect(addr)
                        .await
                        .map_err(|e| format!("handshake with {addr}: {e}"))?;
                    if c.resumed {
                        out.resumed += 1;
                    } else {
                        out.full += 1;
                    }
                    out.group = c.group;
                    out.suite = c.suite;
                    round_trip(&mut c.stream, b"x")
                        .await
                        .map_err(|e| format!("echo through {addr}: {e}"))?;
                    out.connections += 1;
                }
                Ok::<_, String>(out)
            })
        })
        .collect();
    let mut total = Storm::default();
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        total.connections += s.connections;
        total.full += s.full;
        total.resumed += s.resumed;
        total.group = s.group;
        total.suite = s.suite;
    }
    total.wall = start.elapsed();
    Ok(total)
}

/// Writes `msg` and reads exactly as many bytes back (bounded by [`WAIT`]).
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &[u8],
) -> std::io::Result<()> {
    stream.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if back != msg {
        return Err(std::io::Error::other("echo returned other bytes"));
    }
    Ok(())
}

/// Request/response latencies, sorted.
pub struct Latencies {
    pub sorted_us: Vec<f64>,
}

impl Latencies {
    /// Sorts `values`.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self { sorted_us: values }
    }

    /// The `p` quantile (0..1), nearest rank.
    pub fn quantile(&self, p: f64) -> f64 {
        let n = self.sorted_us.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.sorted_us[rank - 1]
    }
}

/// The median of the number `key` over a benchmark's phases (JSON objects), NaN if none.
pub fn median_of(phases: &[serde_json::Value], key: &str) -> f64 {
    let mut v: Vec<f64> = phases.iter().filter_map(|p| p[key].as_f64()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints `report` (and writes it to `json_out`); an error if any of `phases` counted
/// failures.
#[allow(clippy::print_stdout)] // a report tool: stdout is its output
pub fn emit_phases<'a>(
    report: &serde_json::Value,
    json_out: Option<&Path>,
    phases: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    if let Some(path) = json_out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{text}");
    let failed: f64 = phases
        .into_iter()
        .filter_map(|p| p["failures"].as_f64())
        .sum();
    if failed > 0.0 {
        return Err(format!(
            "{failed} handshakes or streams failed: see first_failures"
        ));
    }
    Ok(())
}

/// Request/response latencies through the contender and, in the same time window, straight to
/// the upstream (the floor the added latency is measured against).
pub struct RatePair {
    pub proxied: Latencies,
    pub direct: Latencies,
    /// Requests per second actually sent through the contender: below the target, the client
    /// could not keep up (the timer ticks in milliseconds, so at high rates sends come in bursts).
    pub achieved_rps: f64,
}

/// A 64-byte request echoed back, `rps` times a second for `secs`, on one mTLS connection through
/// the contender; each tick also sends one straight to the upstream over plain TCP (alternating
/// which goes first), so both sets of latencies see the same machine state. After a 100-request
/// warm-up. Each latency runs from the write to the last byte of the response.
pub async fn fixed_rate(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    upstream: SocketAddr,
    rps: u32,
    secs: f64,
) -> Result<RatePair, String> {
    let mut tls = tls_connect(addr, config)
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let mut tcp = TcpStream::connect(upstream)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let msg = [0x42u8; 64];
    for _ in 0..100 {
        round_trip(&mut tls, &msg)
            .await
            .map_err(|e| e.to_string())?;
        round_trip(&mut tcp, &msg)
            .await
            .map_err(|e| e.to_string())?;
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
    let n = (f64::from(rps) * secs).ceil() as u32;
    let (mut proxied, mut direct) = (
        Vec::with_capacity(n as usize),
        Vec::with_capacity(n as usize),
    );
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i).await;
        for through_proxy in [i % 2 == 0, i % 2 == 1] {
            let sent = Instant::now();
            if through_proxy {
                round_trip(&mut tls, &msg)
                    .await
                    .map_err(|e| e.to_string())?;
                proxied.push(sent.elapsed().as_secs_f64() * 1e6);
            } else {
                round_trip(&mut tcp, &msg)
                    .await
                    .map_err(|e| e.to_string())?;
                direct.push(sent.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let achieved_rps = f64::from(n) / start.elapsed().as_secs_f64();
    proxied.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    Ok(RatePair {
        proxied: Latencies { sorted_us: proxied },
        direct: Latencies { sorted_us: direct },
        achieved_rps,
    })
}

/// Opens `n` connections through the contender to the echo upstream (each proven end to end
/// with one echoed byte) and returns them, to be held while the server's RSS is read.
pub async fn hold_idle(
    addr: SocketAddr,
    dial: &Dial,
    n: u32,
    concurrency: u32,
) -> Result<Vec<Box<dyn Conn>>, String> {
    let per_task = n.div_ceil(concurrency.max(1));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            let dial = dial.clone();
            let count = per_task.min(n.saturating_sub(i * per_task));
            tokio::spawn(async move {
                let mut held = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let mut c = dial
                        .connect(addr)
                        .await
                        .map_err(|e| format!("handshake with {addr}: {e}"))?;
                    round_trip(&mut c.stream, b"i")
                        .await
                        .map_err(|e| format!("echo through {addr}: {e}"))?;
                    held.push(c.stream);
                }
                Ok::<_, String>(held)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n as usize);
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// One connection carrying `bytes` to the counting sink (after an 8-byte length), which answers
/// with the count it received. Returns the wall time from the first byte to the answer.
pub async fn bulk(addr: SocketAddr, dial: &Dial, bytes: u64) -> Result<Duration, String> {
    let mut tls = dial
        .connect(addr)
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?
        .stream;
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    tls.write_all(&bytes.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        tls.write_all(&chunk[..n])
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut total = [0u8; 8];
    tokio::time::timeout(WAIT, tls.read_exact(&mut total))
        .await
        .map_err(|_| "no count from the sink".to_owned())?
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if u64::from_be_bytes(total) != bytes {
        return Err(format!(
            "the sink received {} of {bytes} bytes",
            u64::from_be_bytes(total)
        ));
    }
    Ok(elapsed)
}

/// The sink's side of [`bulk`]: reads the length, counts that many bytes, answers the count.
pub async fn sink(mut s: TcpStream) {
    let mut len = [0u8; 8];
    if s.read_exact(&mut len).await.is_err() {
        return;
    }
    let want = u64::from_be_bytes(len);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while total < want {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = s.write_all(&total.to_be_bytes()).await;
    // Wait for the proxy to close, so the count is not cut off by our close.
    let _ = s.read(&mut buf).await;
}

/// What [`timed_storm`]'s clients saw.
#[derive(Default)]
pub struct Load {
    pub handshake_ms: Vec<f64>,
    pub failures: Vec<String>,
    /// The server leaf certificates (DER) they were shown.
    pub serials: BTreeSet<Vec<u8>>,
}

/// `concurrency` clients doing full handshakes (plus one echoed byte) against `addr` until
/// `until`: each handshake's time, every failure, and the server certificates seen.
async fn timed_storm(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    concurrency: u32,
    until: Instant,
) -> Load {
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                // Bounded by time, and by count should the clock misbehave.
                for _ in 0..10_000_000u64 {
                    if Instant::now() >= until {
                        break;
                    }
                    let started = Instant::now();
                    let attempt = async {
                        let mut tls = tls_connect(addr, config.clone()).await?;
                        let serial = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|leaf| leaf.as_ref().to_vec());
                        echo_round_trip(&mut tls, b"x").await?;
                        Ok::<_, std::io::Error>(serial)
                    };
                    match tokio::time::timeout(WAIT, attempt).await {
                        Ok(Ok(leaf)) => {
                            load.handshake_ms
                                .push(started.elapsed().as_secs_f64() * 1000.0);
                            load.serials.extend(leaf);
                        }
                        Ok(Err(e)) => load.failures.push(format!("handshake: {e}")),
                        Err(_) => load.failures.push(format!("handshake over {WAIT:?}")),
                    }
                }
                load
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.expect("a client task");
        total.handshake_ms.extend(load.handshake_ms);
        total.failures.extend(load.failures);
        total.serials.extend(load.serials);
    }
    total
}

/// One stream open until `until`: a byte echoed every 20 ms; each round trip in µs, and why
/// it ended early, if it did.
async fn timed_stream(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    until: Instant,
) -> (Vec<f64>, Vec<String>) {
    let mut tls = match tls_connect(addr, config).await {
        Ok(tls) => tls,
        Err(e) => return (Vec::new(), vec![format!("the stream's handshake: {e}")]),
    };
    let mut rtts = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until && rtts.len() < 1_000_000 {
        tick.tick().await;
        let started = Instant::now();
        match tokio::time::timeout(WAIT, echo_round_trip(&mut tls, b"s")).await {
            Ok(Ok(_)) => rtts.push(started.elapsed().as_secs_f64() * 1e6),
            Ok(Err(e)) => return (rtts, vec![format!("the stream dropped: {e}")]),
            Err(_) => return (rtts, vec![format!("the stream stalled over {WAIT:?}")]),
        }
    }
    (rtts, Vec::new())
}

/// [`timed_storm`] from `concurrency` clients and one [`timed_stream`] against `addr` for
/// `secs`, with the CPU the server (process `pid`) used meanwhile: the figures as a JSON
/// object (handshakes and their rate and quantiles, CPU per handshake, the stream's round
/// trips, the server certificates seen, failures), to which a workload adds its own.
pub async fn timed_phase(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    concurrency: u32,
    secs: u64,
    pid: u32,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let cpu = || crate::contender::cpu_seconds(pid).ok_or("the server's CPU time");
    let until = Instant::now() + Duration::from_secs(secs);
    let cpu0 = cpu()?;
    let (load, (rtts, stream_failures)) = tokio::join!(
        timed_storm(addr, config.clone(), concurrency, until),
        timed_stream(addr, config, until),
    );
    let cpu = cpu()? - cpu0;
    let n = load.handshake_ms.len();
    let hs = Latencies::of(load.handshake_ms);
    let rtt = Latencies::of(rtts);
    let mut failures = load.failures;
    failures.extend(stream_failures);
    let serde_json::Value::Object(figures) = serde_json::json!({
        "handshakes": n,
        "handshakes_per_s": n as f64 / secs as f64,
        "handshake_p50_ms": hs.quantile(0.5),
        "handshake_p99_ms": hs.quantile(0.99),
        "handshake_max_ms": hs.quantile(1.0),
        "server_cpu_us_per_handshake": cpu * 1e6 / n.max(1) as f64,
        "server_cpu_busy": cpu / secs as f64,
        "stream_round_trips": rtt.sorted_us.len(),
        "stream_p50_us": rtt.quantile(0.5),
        "stream_p99_us": rtt.quantile(0.99),
        "stream_max_us": rtt.quantile(1.0),
        "server_serials_seen": load.serials.len(),
        "failures": failures.len(),
        "first_failures": failures.iter().take(5).collect::<Vec<_>>(),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    Ok(figures)
}
