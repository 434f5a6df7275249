//! `mtlsd-bench slowkey`: what a slow key device does to handshakes and to everyone else.
//!
//! Round by round, one phase with the software key as it is and one with every signature
//! delayed by `--latency-ms` (`[crypto] simulate_latency`, the same wrapper a device key goes
//! through, `max_in_flight` as given): `--concurrency` clients do full mTLS handshakes plus
//! one echoed byte for `--secs`, while one stream opened before them echoes a byte every 20 ms.
//! Reports handshakes/s against both ceilings (the device's, `max_in_flight / latency`, and
//! the CPU's, the handshakes/s of the phase without latency), handshake latency, server CPU per
//! handshake and the stream's round-trip quantiles.

use std::time::Duration;

use mtlsd_e2e::{Pki, echo_upstream};
use serde_json::{Value, json};

use crate::contender::pin;
use crate::workload::{emit_phases, median_of, timed_phase};

/// Options of `slowkey`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each runs a phase without and one with the latency.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// Latency added to every signature, in milliseconds.
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
    /// `[crypto] max_in_flight`: signatures the device may work on at once.
    #[arg(long, default_value_t = 64)]
    max_in_flight: u32,
    /// Concurrent handshaking clients (more than `max_in_flight` keeps the device full).
    #[arg(long, default_value_t = 96)]
    concurrency: u32,
    /// Where the daemon and this client run.
    #[command(flatten)]
    pin: crate::contender::Pinning,
    /// Where to write the JSON report.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// One phase against a fresh daemon whose signatures take `latency` longer.
async fn phase(
    args: &Args,
    pki: &Pki,
    latency: Duration,
    server_cpu: Option<usize>,
) -> Result<Value, String> {
    let upstream = echo_upstream().await;
    let crypto = if latency.is_zero() {
        format!("[crypto]\nmax_in_flight = {}\n", args.max_in_flight)
    } else {
        format!(
            "[crypto]\nmax_in_flight = {}\nsimulate_latency = \"{}ms\"\n",
            args.max_in_flight,
            latency.as_millis()
        )
    };
    // One address opens them all: the per-source limit (64 at once) would refuse the rest.
    let limits = "[limits]\nmax_handshakes_per_source = 4096\n";
    let daemon = pki.start_daemon(&(crypto + limits + &pki.inbound("echo", upstream.addr, "")));
    if let Some(cpu) = server_cpu {
        pin(daemon.pid(), cpu);
    }
    let addr = daemon.addr("echo");
    let client = pki.client("/client");
    let mut figures = timed_phase(addr, client, args.concurrency, args.secs, daemon.pid()).await?;
    figures.insert("latency_ms".into(), (latency.as_millis() as u64).into());
    Ok(Value::Object(figures))
}

/// Runs the measurement: a table on stderr, the JSON report on stdout.
pub async fn run(args: Args) -> Result<(), String> {
    let server_cpu = args.pin.apply();
    let pki = Pki::new("bench.example");
    let latency = Duration::from_millis(args.latency_ms);
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!("mtlsd-bench slowkey: round {round}/{}", args.rounds);
        fast.push(phase(&args, &pki, Duration::ZERO, server_cpu).await?);
        slow.push(phase(&args, &pki, latency, server_cpu).await?);
    }
    let device_ceiling = f64::from(args.max_in_flight) / latency.as_secs_f64();
    let cpu_ceiling = median_of(&fast, "handshakes_per_s");
    let slow_rate = median_of(&slow, "handshakes_per_s");
    let report = json!({
        "secs": args.secs,
        "latency_ms": args.latency_ms,
        "max_in_flight": args.max_in_flight,
        "concurrency": args.concurrency,
        "device_ceiling_per_s": device_ceiling,
        "cpu_ceiling_per_s": cpu_ceiling,
        "slow_vs_device_ceiling": slow_rate / device_ceiling,
        "slow_vs_cpu_ceiling": slow_rate / cpu_ceiling,
        "no_latency": fast,
        "with_latency": slow,
    });
    // The table to stderr, the report to stdout: a script reads one JSON object.
    eprintln!(
        "{:<14} {:>9} {:>8} {:>8} {:>10} {:>9} {:>11} {:>11} {:>8}",
        "phase",
        "hs/s",
        "p50 ms",
        "p99 ms",
        "cpu µs/hs",
        "cpu busy",
        "stream p50",
        "stream p99",
        "failures"
    );
    for (name, phases) in [("no latency", &fast), ("with latency", &slow)] {
        eprintln!(
            "{name:<14} {:>9.0} {:>8.2} {:>8.2} {:>10.0} {:>9.2} {:>11.0} {:>11.0} {:>8.0}",
            median_of(phases, "handshakes_per_s"),
            median_of(phases, "handshake_p50_ms"),
            median_of(phases, "handshake_p99_ms"),
            median_of(phases, "server_cpu_us_per_handshake"),
            median_of(phases, "server_cpu_busy"),
            median_of(phases, "stream_p50_us"),
            median_of(phases, "stream_p99_us"),
            phases
                .iter()
                .filter_map(|p| p["failures"].as_f64())
                .sum::<f64>(),
        );
    }
    eprintln!(
        "with {} ms per signature and max_in_flight = {}: {slow_rate:.0} handshakes/s, {:.0} % of \
         the device's ceiling ({device_ceiling:.0}/s) and {:.0} % of the CPU's ({cpu_ceiling:.0}/s)",
        args.latency_ms,
        args.max_in_flight,
        100.0 * slow_rate / device_ceiling,
        100.0 * slow_rate / cpu_ceiling,
    );
    emit_phases(&report, args.json_out.as_deref(), fast.iter().chain(&slow))
}
