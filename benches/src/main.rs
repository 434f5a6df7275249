//! `mtlsd-bench`: drives real mTLS load through mtlsd and, side by side, through HAProxy, nginx
//! (stream) and stunnel from Debian, and reports what each costs the server.
//!
//! Every contender gets the same test PKI (ECDSA P-256 leaves with SPIFFE URI SANs issued by an
//! intermediate), requires and verifies the client certificate, speaks TLS 1.3 only and forwards
//! plaintext to the same local upstreams. The server is pinned to one core and this client (and
//! the upstreams) to another. Contenders are interleaved round by round (A B C, A B C, ...), each
//! round with a fresh server process; CPU time (user + system of every process of the contender)
//! and RSS are read from `/proc` around each workload. Medians, spreads and ratios against a
//! baseline contender go to a table or JSON, and the JSON renders to SVG charts.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a report tool: stdout and stderr are its output

mod chart;
mod contender;
mod flood;
mod http;
mod icount;
mod rotation;
mod rtt;
mod slowkey;
mod soak;
// The RS256 half is for the criterion `authz` benchmark.
#[allow(dead_code)]
mod tokens;
mod uring;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use contender::{Running, Setup, Spec};
use mtlsd_e2e::{Pki, echo_upstream, upstream};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    args_override_self = true,
    about = "mTLS load generator: server CPU per handshake and per GiB, latency and memory, \
             for mtlsd and (with --compare) HAProxy, nginx and stunnel"
)]
struct Args {
    /// Contenders, comma-separated, from: mtlsd (client prefers X25519MLKEM768), mtlsd-x25519
    /// (client offers X25519 only, like for like with OpenSSL 3.0), haproxy, nginx, stunnel.
    /// "auto": both mtlsd variants and every peer installed (with CI set: all peers, required).
    #[arg(long, alias = "target", default_value = "mtlsd")]
    compare: String,
    /// Contender the ratios are taken against (default: mtlsd-x25519 if compared, else the first).
    #[arg(long)]
    baseline: Option<String>,
    /// Interleaved rounds; each contender runs once per round in a fresh process.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Full mTLS handshakes per round (after a warm-up of a tenth as many); 0 skips them.
    #[arg(long, default_value_t = 2000)]
    handshakes: u32,
    /// Full handshakes per round in which every client presents a certificate the server has
    /// not seen (mtlsd remembers certificate signatures it verified); 0 skips them.
    #[arg(long, default_value_t = 0)]
    first_contact: u32,
    /// Resumed handshakes per round (the client keeps a session cache); 0 skips them.
    #[arg(long, default_value_t = 0)]
    resumed: u32,
    /// Concurrent clients during handshake storms and while opening idle connections.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Request rates (comma-separated) for the 64-byte echo latency workload; none skips it.
    #[arg(long, value_delimiter = ',')]
    latency_rps: Vec<u32>,
    /// Seconds each latency rate runs.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Idle proxied connections to hold while reading the server's RSS; 0 skips it.
    #[arg(long, default_value_t = 0)]
    idle: u32,
    /// MiB to forward in the bulk phase (one connection); 0 skips it.
    #[arg(long, default_value_t = 1024)]
    bulk_mb: u64,
    /// Connections per handshake kind (full, resumed, 0-RTT; ECDSA and RSA server keys) for
    /// mtlsd's server CPU per kind; 0 skips the handshake-kinds section.
    #[arg(long, default_value_t = 0)]
    kinds: u32,
    /// Round-trip time (ms) of the relayed link the handshake kinds' time to first byte is taken over.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Connections per kind through that link.
    #[arg(long, default_value_t = 20)]
    ttfb_samples: u32,
    /// Where the server and this client run.
    #[command(flatten)]
    pin: crate::contender::Pinning,
    /// Tiny numbers for the test suite: proves the harness runs, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Render SVG charts of the report into this directory.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Do not run anything: read a JSON report written earlier, print its tables (and charts).
    #[arg(long)]
    render: Option<PathBuf>,
    /// A single measurement instead of the comparison.
    #[command(subcommand)]
    soak: Option<Sub>,
}

/// Measurements other than the peer comparison.
#[derive(clap::Subcommand)]
enum Sub {
    /// The halves of scripts/soak (against an mtlsd started elsewhere).
    #[command(flatten)]
    Soak(soak::Command),
    /// Good handshakes while clients trickle their ClientHello (starts its own mtlsd).
    Flood(flood::Args),
    /// Server CPU and latency per HTTP request: mtlsd's protocol = "http" listeners against
    /// HAProxy mode http, HTTP/1.1 and h2, with and without a JWT (starts both).
    Http(http::Args),
    /// Handshake latency, throughput and server CPU while SPIRE rotates the daemon's SVID every
    /// few seconds, against the same load with no rotation (starts SPIRE and mtlsd).
    Rotation(rotation::Args),
    /// Handshakes and an established stream while every signature takes 5 ms longer
    /// (`simulate_latency`), against the same load without it (starts its own mtlsd).
    Slowkey(slowkey::Args),
    /// Instruction counts (callgrind) of one full handshake, one resumed handshake and 64 MiB
    /// through the copy loop, in memory with mtlsd's own code: numbers the machine's load
    /// does not move.
    Icount(icount::Args),
    /// mtlsd's copy loop (epoll) against an io_uring copy loop on loopback sockets: CPU per
    /// GiB of the copying thread, alternated round by round.
    Uring(uring::Args),
}

impl Args {
    fn apply_smoke(&mut self) {
        self.rounds = 1;
        self.handshakes = 20;
        self.first_contact = 20;
        self.resumed = 20;
        self.concurrency = 2;
        self.latency_rps = vec![200];
        self.latency_secs = 0.5;
        self.idle = 20;
        self.bulk_mb = 2;
        self.kinds = 4;
        self.rtt_ms = 10;
        self.ttfb_samples = 2;
        self.pin.no_pin = true;
    }
}

type Metrics = BTreeMap<String, f64>;

/// What one contender reported over all rounds.
struct Outcome {
    spec: Spec,
    software: String,
    group: String,
    suite: String,
    rounds: Vec<Metrics>,
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let lscpu = command_line("lscpu", &[]);
    let cpu = lscpu
        .lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        // Not available_parallelism: this process is pinned to one core by now.
        "cores": command_line("nproc", &["--all"]).parse::<u64>().unwrap_or(0),
        "kernel": command_line("uname", &["-r"]),
        "openssl": command_line("openssl", &["version"]),
    })
}

fn resolve_contenders(list: &str) -> Result<Vec<Spec>, String> {
    if list == "auto" {
        let required = std::env::var_os("CI").is_some();
        let mut specs = Vec::new();
        for name in contender::ALL {
            let spec = Spec::parse(name)?;
            if spec.available() {
                specs.push(spec);
            } else if required {
                return Err(format!(
                    "CI is set but {name} is not installed (Debian: {})",
                    spec.package()
                ));
            } else {
                eprintln!(
                    "mtlsd-bench: skipping {name}: not installed (Debian: {})",
                    spec.package()
                );
            }
        }
        return Ok(specs);
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let spec = Spec::parse(name)?;
            if !spec.available() {
                return Err(format!(
                    "{name} is not installed (Debian: {})",
                    spec.package()
                ));
            }
            Ok(spec)
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if let Some(command) = args.soak.take() {
        let result = match command {
            Sub::Soak(command) => soak::run(command).await,
            Sub::Flood(args) => flood::run(args).await,
            Sub::Http(args) => http::run(args).await,
            Sub::Rotation(args) => rotation::run(args).await,
            Sub::Slowkey(args) => slowkey::run(args).await,
            Sub::Icount(args) => icount::run(args).await,
            Sub::Uring(args) => uring::run(args).await,
        };
        if let Err(e) = result {
            eprintln!("mtlsd-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(path) = &args.render {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let report: Value = serde_json::from_str(&text).expect("a JSON report from mtlsd-bench");
        output(&args, &report);
        return;
    }
    if args.smoke {
        args.apply_smoke();
    }
    let specs = resolve_contenders(&args.compare).unwrap_or_else(|e| {
        eprintln!("mtlsd-bench: {e}");
        std::process::exit(2)
    });
    let server_cpu = args.pin.apply();
    let mut report = run(&args, &specs, server_cpu).await;
    if args.kinds > 0 {
        let settings = rtt::Settings {
            per_kind: args.kinds,
            rtt: Duration::from_millis(args.rtt_ms),
            samples: args.ttfb_samples,
            server_cpu,
        };
        report["handshake_kinds"] = rtt::run(settings).await.unwrap_or_else(|e| {
            eprintln!("mtlsd-bench: handshake kinds: {e}");
            std::process::exit(1)
        });
    }
    output(&args, &report);
}

fn output(args: &Args, report: &Value) {
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(report).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    if let Some(dir) = &args.chart {
        let written = chart::render_all(report, dir)
            .unwrap_or_else(|e| panic!("charts in {}: {e}", dir.display()));
        for path in written {
            eprintln!("mtlsd-bench: wrote {}", path.display());
        }
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", tables(report));
    }
}

/// The comparison; `server_cpu` is where servers are pinned (none: unpinned).
async fn run(args: &Args, specs: &[Spec], server_cpu: Option<usize>) -> Value {
    let pin = server_cpu.is_some();

    let pki = Pki::new("bench.example");
    let day = Duration::from_secs(86_400);
    let server = pki.issue_for(&pki.id("/web"), day);
    let client = pki.issue_for(&pki.id("/client"), day);
    // Issued once: every contender starts afresh each round, so to each of them these
    // certificates are new.
    let first_contact: Vec<_> = (0..args.first_contact)
        .map(|i| pki.issue_for(&pki.id(&format!("/first-contact/{i}")), day))
        .collect();
    let echo = echo_upstream().await;
    let sink = upstream(workload::sink).await;
    let setup = Setup {
        pki: &pki,
        server: &server,
        echo: echo.addr,
        sink: sink.addr,
        cpu: server_cpu,
        max_connections: args.idle as usize,
    };

    let mut outcomes: Vec<Outcome> = specs
        .iter()
        .map(|spec| Outcome {
            spec: spec.clone(),
            software: spec.software(),
            group: String::new(),
            suite: String::new(),
            rounds: Vec::new(),
        })
        .collect();
    for round in 1..=args.rounds {
        for outcome in &mut outcomes {
            eprintln!(
                "mtlsd-bench: round {round}/{}: {}",
                args.rounds, outcome.spec.name
            );
            let running = Running::start(&outcome.spec, &setup)
                .unwrap_or_else(|e| panic!("starting {}: {e}", outcome.spec.name));
            let clients = Clients {
                steady: &client,
                first_contact: &first_contact,
            };
            let metrics = measure(args, &pki, &clients, &running, outcome, echo.addr)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", outcome.spec.name));
            running.stop();
            outcome.rounds.push(metrics);
        }
    }
    let baseline = args.baseline.clone().unwrap_or_else(|| {
        if specs.iter().any(|s| s.name == "mtlsd-x25519") {
            "mtlsd-x25519".into()
        } else {
            specs.first().map(|s| s.name.clone()).unwrap_or_default()
        }
    });
    report(args, pin, &baseline, &outcomes)
}

const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")];

/// The load client's certificates.
struct Clients<'a> {
    /// The one every workload presents, so reconnects are by the same peer.
    steady: &'a mtlsd_e2e::CertFiles,
    /// One per `--first-contact` handshake.
    first_contact: &'a [mtlsd_e2e::CertFiles],
}

/// Runs every workload once against `running`, sampling its CPU and RSS around each.
async fn measure(
    args: &Args,
    pki: &Pki,
    clients: &Clients<'_>,
    running: &Running,
    outcome: &mut Outcome,
    upstream: SocketAddr,
) -> Result<Metrics, String> {
    let x = outcome.spec.x25519_only;
    let full_config = workload::client_config(pki, clients.steady, x, false);
    let resume_config = workload::client_config(pki, clients.steady, x, true);
    // The plain-TCP baselines: the same connections and bytes without TLS.
    let plain = outcome.spec.plain;
    let full = if plain {
        workload::Dial::Plain
    } else {
        workload::Dial::Tls(full_config.clone())
    };
    let resume = workload::Dial::Tls(resume_config);
    let c = args.concurrency;
    let mut m = Metrics::new();
    let own_cpu = || contender::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);

    // Warm-up: every contender has handshaken before anything is measured.
    let warm = workload::storm(running.echo, &full, (args.handshakes / 10).max(2 * c), c).await?;
    outcome.group = warm.group;
    outcome.suite = warm.suite;

    if args.handshakes > 0 {
        let (server0, client0) = (running.cpu_seconds(), own_cpu());
        let s = workload::storm(running.echo, &full, args.handshakes, c).await?;
        let (server, client) = (running.cpu_seconds() - server0, own_cpu() - client0);
        let n = f64::from(s.connections);
        m.insert("server_cpu_us_per_full_handshake".into(), server * 1e6 / n);
        m.insert("client_cpu_us_per_full_handshake".into(), client * 1e6 / n);
        m.insert("full_handshakes_per_s".into(), n / s.wall.as_secs_f64());
        m.insert("full_fraction".into(), f64::from(s.full) / n);
    }

    if args.first_contact > 0 && !plain {
        // A fresh client certificate (same CA and intermediate) for every connection.
        let configs: Vec<_> = clients
            .first_contact
            .iter()
            .map(|files| workload::client_config(pki, files, x, false))
            .collect();
        let each = workload::Dial::TlsEach(std::sync::Arc::new(workload::RoundRobin::new(configs)));
        let server0 = running.cpu_seconds();
        let s = workload::storm(running.echo, &each, args.first_contact, c).await?;
        let server = running.cpu_seconds() - server0;
        m.insert(
            "server_cpu_us_per_first_contact_handshake".into(),
            server * 1e6 / f64::from(s.connections),
        );
    }

    if args.resumed > 0 && !plain {
        // Fill the session cache, then measure reconnects.
        workload::storm(running.echo, &resume, 4 * c, c).await?;
        let server0 = running.cpu_seconds();
        let s = workload::storm(running.echo, &resume, args.resumed, c).await?;
        let server = running.cpu_seconds() - server0;
        let n = f64::from(s.connections);
        m.insert(
            "server_cpu_us_per_resumed_handshake".into(),
            server * 1e6 / n,
        );
        m.insert("resumed_handshakes_per_s".into(), n / s.wall.as_secs_f64());
        m.insert("resumed_fraction".into(), f64::from(s.resumed) / n);
    }

    // Latency is taken through TLS only: the baselines price connections and bytes.
    for &rps in args.latency_rps.iter().filter(|_| !plain) {
        let l = workload::fixed_rate(
            running.echo,
            full_config.clone(),
            upstream,
            rps,
            args.latency_secs,
        )
        .await?;
        for (q, name) in QUANTILES {
            let (through, floor) = (l.proxied.quantile(q), l.direct.quantile(q));
            m.insert(format!("latency_{rps}_rps_{name}_us"), through);
            m.insert(format!("direct_latency_{rps}_rps_{name}_us"), floor);
            m.insert(
                format!("added_latency_{rps}_rps_{name}_us"),
                through - floor,
            );
        }
        m.insert(format!("latency_{rps}_rps_achieved"), l.achieved_rps);
    }

    if args.idle > 0 {
        let before = running.rss_kib();
        let held = workload::hold_idle(running.echo, &full, args.idle, c).await?;
        let after = running.rss_kib();
        m.insert("idle_rss_before_kib".into(), before as f64);
        m.insert("idle_rss_held_kib".into(), after as f64);
        m.insert(
            "idle_kib_per_connection".into(),
            (after as f64 - before as f64) / held.len() as f64,
        );
        drop(held);
    }

    if args.bulk_mb > 0 {
        let bytes = args.bulk_mb * 1024 * 1024;
        let server0 = running.cpu_seconds();
        let wall = workload::bulk(running.bulk, &full, bytes).await?;
        let server = running.cpu_seconds() - server0;
        let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        m.insert("bulk_mib_per_s".into(), gib * 1024.0 / wall.as_secs_f64());
        m.insert("server_cpu_s_per_gib".into(), server / gib);
    }
    Ok(m)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Median, min and max of every metric over `rounds`.
fn summarize(rounds: &[Metrics]) -> (Metrics, Metrics, Metrics) {
    let (mut med, mut min, mut max) = (Metrics::new(), Metrics::new(), Metrics::new());
    let keys: std::collections::BTreeSet<&String> = rounds.iter().flat_map(|r| r.keys()).collect();
    for key in keys {
        let mut v: Vec<f64> = rounds.iter().filter_map(|r| r.get(key).copied()).collect();
        med.insert(key.clone(), median(&mut v));
        min.insert(key.clone(), v.first().copied().unwrap_or(f64::NAN));
        max.insert(key.clone(), v.last().copied().unwrap_or(f64::NAN));
    }
    (med, min, max)
}

/// JSON numbers cannot be NaN or infinite: those become null.
fn finite(m: &Metrics) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| {
                let v = if v.is_finite() { json!(v) } else { Value::Null };
                (k.clone(), v)
            })
            .collect(),
    )
}

fn report(args: &Args, pin: bool, baseline: &str, outcomes: &[Outcome]) -> Value {
    let base = outcomes
        .iter()
        .find(|o| o.spec.name == baseline)
        .map(|o| summarize(&o.rounds).0)
        .unwrap_or_default();
    let contenders: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let (med, min, max) = summarize(&o.rounds);
            let ratio: Metrics = med
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v / base.get(k).filter(|b| **b != 0.0)?)))
                .collect();
            json!({
                "name": o.spec.name,
                "software": o.software,
                "client_key_exchange": if o.spec.x25519_only { "X25519 only" } else { "rustls default (X25519MLKEM768 first)" },
                "negotiated_group": o.group,
                "cipher_suite": o.suite,
                "median": finite(&med),
                "min": finite(&min),
                "max": finite(&max),
                "ratio_vs_baseline": finite(&ratio),
                "rounds": o.rounds.iter().map(finite).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "tool": "mtlsd-bench",
        "format": 1,
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "settings": {
            "rounds": args.rounds,
            "handshakes": args.handshakes,
            "resumed": args.resumed,
            "concurrency": args.concurrency,
            "latency_rps": args.latency_rps,
            "latency_secs": args.latency_secs,
            "idle": args.idle,
            "bulk_mib": args.bulk_mb,
            "pinned": pin,
            "server_cpu": pin.then_some(args.pin.server_cpu),
            "client_cpu": pin.then_some(args.pin.client_cpu),
            "smoke": args.smoke,
        },
        "baseline": baseline,
        "contenders": contenders,
    })
}

/// Formats a number with thousands separators and `decimals` places.
fn num(v: &Value, decimals: usize) -> String {
    let Some(v) = v.as_f64() else {
        return "–".into();
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |r| format!("{r:.2}×"))
}

/// The headline table (README-ready) and the detail table with spreads, as Markdown.
fn tables(report: &Value) -> String {
    let empty = vec![];
    let cs = report["contenders"].as_array().unwrap_or(&empty);
    let baseline = report["baseline"].as_str().unwrap_or("");
    let rates: Vec<u64> = report["settings"]["latency_rps"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let headline: &[(&str, &str, usize)] = &[
        (
            "server_cpu_us_per_full_handshake",
            "CPU µs / full handshake",
            0,
        ),
        (
            "server_cpu_us_per_resumed_handshake",
            "CPU µs / resumed handshake",
            0,
        ),
        ("server_cpu_s_per_gib", "CPU s / GiB", 2),
        ("idle_kib_per_connection", "KiB / idle connection", 1),
    ];
    line(format!("Ratios are against {baseline} (median / median)."));
    line(String::new());
    let mut head = "| contender |".to_owned();
    let mut rule = "|---|".to_owned();
    for (_, title, _) in headline {
        head += &format!(" {title} | × |");
        rule += "---:|---:|";
    }
    for r in &rates {
        head += &format!(" added p99 @{r}/s µs |");
        rule += "---:|";
    }
    line(head);
    line(rule);
    for c in cs {
        let mut row = format!("| {} |", c["name"].as_str().unwrap_or(""));
        for (metric, _, d) in headline {
            row += &format!(
                " {} | {} |",
                num(&c["median"][metric], *d),
                ratio(&c["ratio_vs_baseline"][metric])
            );
        }
        for r in &rates {
            row += &format!(
                " {} |",
                num(&c["median"][format!("added_latency_{r}_rps_p99_us")], 0)
            );
        }
        line(row);
    }
    line(String::new());
    line("| contender | software | group, suite | metric | median | min | max | × |".into());
    line("|---|---|---|---|---:|---:|---:|---:|".into());
    for c in cs {
        let Some(med) = c["median"].as_object() else {
            continue;
        };
        for (i, (k, v)) in med.iter().enumerate() {
            let (name, sw, tls) = if i == 0 {
                (
                    c["name"].as_str().unwrap_or("").to_owned(),
                    c["software"].as_str().unwrap_or("").to_owned(),
                    format!(
                        "{}, {}",
                        c["negotiated_group"].as_str().unwrap_or(""),
                        c["cipher_suite"].as_str().unwrap_or("")
                    ),
                )
            } else {
                Default::default()
            };
            let d = if k.contains("fraction") || k.contains("per_gib") {
                3
            } else {
                1
            };
            line(format!(
                "| {name} | {sw} | {tls} | {k} | {} | {} | {} | {} |",
                num(v, d),
                num(&c["min"][k], d),
                num(&c["max"][k], d),
                ratio(&c["ratio_vs_baseline"][k])
            ));
        }
    }
    if report["handshake_kinds"].is_object() {
        out += &rtt::table(&report["handshake_kinds"]);
    }
    out
}
