//! The two halves of `scripts/soak` that need Rust: `soak-upstream`, the local services behind a
//! running mtlsd (a separate process, so the script can kill and restart it), and `soak-load`,
//! mixed load against that mtlsd for a fixed time: full handshakes, resumed handshakes,
//! connections through an outbound listener, and bulk transfers.
//!
//! Errors are classified as the load runs: one that happens while the script's "upstream down"
//! flag file exists, or within [`DOWN_GRACE`] after it was last seen, is expected (the script is
//! killing the upstream) and counted apart from the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtlsd_e2e::{CertFiles, tls_connect};
use rustls::{ClientConfig, HandshakeKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::workload;

/// An error this soon after the down flag was last seen still counts as expected: connections
/// the upstream's death cut, and retries that raced its restart.
pub const DOWN_GRACE: Duration = Duration::from_secs(2);
/// Any one connection of the small kinds (handshake, a few bytes, close) must finish within this.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// A bulk connection must finish within this.
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// After an error a worker waits this long before its next connection.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Error messages kept in the report, per kind.
const KEPT_ERRORS: usize = 5;

/// `mtlsd-bench` subcommands for `scripts/soak`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Serve an echo and a counting-sink upstream on loopback until killed or --secs pass;
    /// prints "echo=ADDR sink=ADDR" once both listen.
    SoakUpstream(UpstreamArgs),
    /// Mixed load against a running mtlsd for --secs; prints "key value" totals and writes a JSON report.
    SoakLoad(LoadArgs),
}

/// Options of `soak-upstream`.
#[derive(clap::Args)]
pub struct UpstreamArgs {
    /// Echo service address (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    echo: SocketAddr,
    /// Counting-sink service address (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    sink: SocketAddr,
    /// Exit after this many seconds at the latest.
    #[arg(long, default_value_t = 3600)]
    secs: u64,
}

/// Options of `soak-load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// mTLS listener forwarding to the echo upstream.
    #[arg(long)]
    inbound: SocketAddr,
    /// mTLS listener forwarding to the counting sink.
    #[arg(long)]
    bulk: SocketAddr,
    /// Plaintext outbound listener whose route reaches the echo upstream over mTLS.
    #[arg(long)]
    outbound: SocketAddr,
    /// CA bundle the server's certificate chains to.
    #[arg(long)]
    bundle: PathBuf,
    /// Client certificate chain (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Client key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// How long to run.
    #[arg(long)]
    secs: u64,
    /// Concurrent clients for each of full, resumed and outbound (bulk always has one).
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// MiB per bulk connection.
    #[arg(long, default_value_t = 16)]
    bulk_mib: u64,
    /// While this file exists (and for 2 s after) the upstream is known to be down.
    #[arg(long)]
    down_flag: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::SoakUpstream(args) => serve_upstream(args).await,
        Command::SoakLoad(args) => load(args).await,
    }
}

async fn bind_loopback(addr: SocketAddr) -> Result<TcpListener, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("{addr}: soak upstreams listen on loopback only"));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))
}

async fn serve_upstream(args: UpstreamArgs) -> Result<(), String> {
    let echo = bind_loopback(args.echo).await?;
    let sink = bind_loopback(args.sink).await?;
    let echo_addr = echo.local_addr().map_err(|e| e.to_string())?;
    let sink_addr = sink.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = sink.accept().await {
            tokio::spawn(workload::sink(s));
        }
    });
    // The script reads the addresses from this line.
    println!("echo={echo_addr} sink={sink_addr}");
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    Ok(())
}

/// The four kinds of load.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Full,
    Resumed,
    Outbound,
    Bulk,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Full, Kind::Resumed, Kind::Outbound, Kind::Bulk];

    fn name(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Resumed => "resumed",
            Kind::Outbound => "outbound",
            Kind::Bulk => "bulk",
        }
    }
}

/// What the workers of one kind did.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    expected_errors: u64,
    /// Handshakes the client saw as full / resumed (mTLS kinds only).
    full_handshakes: u64,
    resumed_handshakes: u64,
    bytes: u64,
    /// The first few messages of each class.
    first_errors: Vec<String>,
    first_expected: Vec<String>,
}

/// Watches the script's "upstream down" flag file.
struct DownWatch {
    flag: Option<PathBuf>,
    start: Instant,
    /// Milliseconds since `start` when the flag was last seen; `u64::MAX`: never.
    last_seen_ms: AtomicU64,
}

impl DownWatch {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn poll(&self) {
        if self.flag.as_ref().is_some_and(|f| f.exists()) {
            self.last_seen_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// Whether an error now is explained by the upstream being (or having just been) down.
    fn expected(&self) -> bool {
        self.poll();
        let last = self.last_seen_ms.load(Ordering::SeqCst);
        last != u64::MAX && self.now_ms().saturating_sub(last) <= DOWN_GRACE.as_millis() as u64
    }
}

struct Ctx {
    args: LoadArgs,
    full: Arc<ClientConfig>,
    resumed: Arc<ClientConfig>,
    deadline: Instant,
    down: DownWatch,
    tallies: Mutex<BTreeMap<Kind, Tally>>,
}

/// One connection of `kind`; returns the handshake the client saw and the bytes it moved.
async fn one(kind: Kind, ctx: &Ctx) -> Result<(Option<HandshakeKind>, u64), String> {
    match kind {
        Kind::Full | Kind::Resumed => {
            let config = if kind == Kind::Full {
                ctx.full.clone()
            } else {
                ctx.resumed.clone()
            };
            let mut tls = tls_connect(ctx.args.inbound, config)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let seen = tls.get_ref().1.handshake_kind();
            workload::round_trip(&mut tls, &[0x42; 64])
                .await
                .map_err(|e| format!("echo: {e}"))?;
            let _ = tls.shutdown().await;
            Ok((seen, 64))
        }
        Kind::Outbound => {
            let mut tcp = TcpStream::connect(ctx.args.outbound)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            workload::round_trip(&mut tcp, &[0x4f; 64])
                .await
                .map_err(|e| format!("echo: {e}"))?;
            // Half-close and read to EOF: the close travels through both daemon legs and back.
            let _ = tcp.shutdown().await;
            let mut rest = [0u8; 64];
            let _ = tcp.read(&mut rest).await;
            Ok((None, 64))
        }
        Kind::Bulk => {
            let bytes = ctx.args.bulk_mib * 1024 * 1024;
            workload::bulk(ctx.args.bulk, &workload::Dial::Tls(ctx.full.clone()), bytes).await?;
            Ok((Some(HandshakeKind::Full), bytes))
        }
    }
}

async fn worker(kind: Kind, ctx: Arc<Ctx>) {
    let limit = if kind == Kind::Bulk {
        BULK_TIMEOUT
    } else {
        OP_TIMEOUT
    };
    while Instant::now() < ctx.deadline {
        let result = tokio::time::timeout(limit, one(kind, &ctx))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
        let failed = result.is_err();
        {
            let mut tallies = ctx.tallies.lock().unwrap();
            let t = tallies.entry(kind).or_default();
            match result {
                Ok((seen, bytes)) => {
                    t.ok += 1;
                    t.bytes += bytes;
                    match seen {
                        Some(HandshakeKind::Resumed) => t.resumed_handshakes += 1,
                        Some(_) => t.full_handshakes += 1,
                        None => {}
                    }
                }
                Err(e) if ctx.down.expected() => {
                    t.expected_errors += 1;
                    if t.first_expected.len() < KEPT_ERRORS {
                        t.first_expected.push(e);
                    }
                }
                Err(e) => {
                    t.errors += 1;
                    if t.first_errors.len() < KEPT_ERRORS {
                        t.first_errors.push(e);
                    }
                }
            }
        }
        if failed {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
}

async fn load(args: LoadArgs) -> Result<(), String> {
    for addr in [args.inbound, args.bulk, args.outbound] {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr}: the soak only loads loopback addresses"));
        }
    }
    let client = CertFiles {
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        full: workload::client_config_with_bundle(&args.bundle, &client, false, false),
        resumed: workload::client_config_with_bundle(&args.bundle, &client, false, true),
        deadline: start + Duration::from_secs(args.secs),
        down: DownWatch {
            flag: args.down_flag.clone(),
            start,
            last_seen_ms: AtomicU64::new(u64::MAX),
        },
        tallies: Mutex::new(Kind::ALL.map(|k| (k, Tally::default())).into()),
        args,
    });
    // Polls the flag so that a short down window is noticed even when no error falls in it.
    let watch = ctx.clone();
    let poller = tokio::spawn(async move {
        while Instant::now() < watch.deadline {
            watch.down.poll();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut workers = Vec::new();
    for kind in Kind::ALL {
        let n = if kind == Kind::Bulk {
            1
        } else {
            ctx.args.concurrency.max(1)
        };
        for _ in 0..n {
            workers.push(tokio::spawn(worker(kind, ctx.clone())));
        }
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    poller.abort();
    let wall = start.elapsed().as_secs_f64();

    let tallies = ctx.tallies.lock().unwrap();
    let sum = |f: fn(&Tally) -> u64| tallies.values().map(f).sum::<u64>();
    let (connections, errors, expected) =
        (sum(|t| t.ok), sum(|t| t.errors), sum(|t| t.expected_errors));
    let kinds: serde_json::Map<String, serde_json::Value> = tallies
        .iter()
        .map(|(k, t)| {
            (
                k.name().to_owned(),
                json!({
                    "connections": t.ok,
                    "errors": t.errors,
                    "expected_errors": t.expected_errors,
                    "full_handshakes": t.full_handshakes,
                    "resumed_handshakes": t.resumed_handshakes,
                    "mib": t.bytes as f64 / 1048576.0,
                    "first_errors": t.first_errors,
                    "first_expected_errors": t.first_expected,
                }),
            )
        })
        .collect();
    let report = json!({
        "secs": wall,
        "connections": connections,
        "connections_per_s": connections as f64 / wall,
        "errors": errors,
        "expected_errors": expected,
        "kinds": kinds,
    });
    if let Some(path) = &ctx.args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // "key value" lines, for the script.
    let mut out = format!(
        "connections {connections}\nerrors {errors}\nexpected_errors {expected}\nsecs {wall:.1}\n"
    );
    for (k, t) in tallies.iter() {
        let name = k.name();
        out += &format!(
            "{name}_connections {}\n{name}_errors {}\n{name}_expected_errors {}\n",
            t.ok, t.errors, t.expected_errors
        );
        if matches!(k, Kind::Full | Kind::Resumed) {
            out += &format!(
                "{name}_full_handshakes {}\n{name}_resumed_handshakes {}\n",
                t.full_handshakes, t.resumed_handshakes
            );
        }
        if *k == Kind::Bulk {
            out += &format!("bulk_mib {}\n", t.bytes / 1048576);
        }
        for e in &t.first_errors {
            out += &format!("{name}_error {}\n", e.replace('\n', " "));
        }
    }
    print!("{out}");
    Ok(())
}
