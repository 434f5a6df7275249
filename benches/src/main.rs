//! `mtlsd-bench`: drives real mTLS load through a real `mtlsd` process and reports its CPU cost.
//!
//! The daemon is started from the binary next to this one, pinned to core 0
//! (run this tool under `taskset -c 1`), with a fresh test PKI (ECDSA P-256,
//! SPIFFE URI SANs). Server CPU time is read from `/proc/<pid>/stat` before
//! and after each phase, so numbers are CPU per operation, not wall time.

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use mtlsd_e2e::{Pki, tls_connect, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "mTLS load generator for mtlsd: CPU per handshake and per GB")]
struct Args {
    /// Full mTLS handshakes to measure (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 2000)]
    handshakes: u32,
    /// Concurrent clients during the handshake phase.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Megabytes to forward in the bulk phase.
    #[arg(long, default_value_t = 1024)]
    bulk_mb: u64,
    /// Core to pin the daemon to (none: leave it unpinned).
    #[arg(long, default_value = "0")]
    daemon_cpu: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / ticks_per_second
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[allow(clippy::print_stdout)] // a report tool: stdout is its output
#[tokio::main]
async fn main() {
    let args = Args::parse();
    let ticks = clock_ticks();
    let pki = Pki::new("bench.example");
    // One-byte echo for handshakes, a discarding sink for bulk: the upstream's own work stays small.
    let echo = upstream(|mut s| async move {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() {
            let _ = s.write_all(&b).await;
        }
    })
    .await;
    let sink = upstream(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            total += n as u64;
        }
        let _ = s.write_all(&total.to_be_bytes()).await;
    })
    .await;
    let daemon =
        pki.start_daemon(&(pki.inbound("hs", echo.addr, "") + &pki.inbound("bulk", sink.addr, "")));
    if let Some(cpu) = &args.daemon_cpu {
        let pinned = Command::new("taskset")
            .args(["-a", "-pc", cpu, &daemon.pid().to_string()])
            .output();
        assert!(
            pinned.is_ok_and(|o| o.status.success()),
            "taskset failed: run without --daemon-cpu or install util-linux"
        );
    }
    let client = pki.client("/client");

    // Handshakes: connect, full mTLS handshake, one byte through the upstream and back.
    let hs_addr = daemon.addr("hs");
    let run = |n: u32| {
        let client = client.clone();
        async move {
            let per_task = n.div_ceil(args.concurrency);
            let tasks: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let mut tls = tls_connect(hs_addr, client.clone())
                                .await
                                .expect("handshake");
                            tls.write_all(b"x").await.unwrap();
                            let mut b = [0u8; 1];
                            tls.read_exact(&mut b).await.expect("echo");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            per_task * args.concurrency
        }
    };
    run(args.handshakes / 10 + 1).await;
    let (cpu0, t0) = (cpu_seconds(daemon.pid(), ticks), Instant::now());
    let done = run(args.handshakes).await;
    let (hs_cpu, hs_wall) = (cpu_seconds(daemon.pid(), ticks) - cpu0, t0.elapsed());

    // Bulk: one connection, `bulk_mb` towards the upstream, which reports what it received.
    let bytes = args.bulk_mb * 1024 * 1024;
    let mut tls = tls_connect(daemon.addr("bulk"), client)
        .await
        .expect("bulk handshake");
    let chunk = vec![0x5au8; 64 * 1024];
    let (cpu0, t0) = (cpu_seconds(daemon.pid(), ticks), Instant::now());
    let mut sent = 0;
    while sent < bytes {
        tls.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    tls.shutdown().await.unwrap();
    let mut total = [0u8; 8];
    tls.read_exact(&mut total).await.unwrap();
    let (bulk_cpu, bulk_wall) = (cpu_seconds(daemon.pid(), ticks) - cpu0, t0.elapsed());
    assert_eq!(
        u64::from_be_bytes(total),
        sent,
        "the upstream received every byte"
    );

    let report = Report::new(
        done,
        hs_cpu,
        hs_wall,
        sent,
        bulk_cpu,
        bulk_wall,
        args.daemon_cpu.is_some(),
    );
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.table());
    }
}

struct Report {
    handshakes: u32,
    cpu_us_per_handshake: f64,
    handshakes_per_s: f64,
    bulk_bytes: u64,
    bulk_mb_per_s: f64,
    cpu_s_per_gb: f64,
    pinned: bool,
}

impl Report {
    fn new(
        handshakes: u32,
        hs_cpu: f64,
        hs_wall: Duration,
        bytes: u64,
        bulk_cpu: f64,
        bulk_wall: Duration,
        pinned: bool,
    ) -> Self {
        let mb = bytes as f64 / (1024.0 * 1024.0);
        Self {
            handshakes,
            cpu_us_per_handshake: hs_cpu * 1e6 / f64::from(handshakes),
            handshakes_per_s: f64::from(handshakes) / hs_wall.as_secs_f64(),
            bulk_bytes: bytes,
            bulk_mb_per_s: mb / bulk_wall.as_secs_f64(),
            cpu_s_per_gb: bulk_cpu / (mb / 1024.0),
            pinned,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "handshakes": self.handshakes,
            "server_cpu_us_per_full_handshake": self.cpu_us_per_handshake,
            "handshakes_per_s": self.handshakes_per_s,
            "bulk_bytes": self.bulk_bytes,
            "bulk_mb_per_s": self.bulk_mb_per_s,
            "server_cpu_s_per_gb": self.cpu_s_per_gb,
            "daemon_pinned": self.pinned,
        })
    }

    fn table(&self) -> String {
        format!(
            "| figure | value |\n|---|---|\n\
             | server CPU per full mTLS handshake (TLS 1.3, P-256, client cert verified) | {:.0} µs |\n\
             | handshake rate ({} handshakes, wall clock) | {:.0} /s |\n\
             | bulk forwarding ({} MiB, one connection) | {:.0} MiB/s |\n\
             | server CPU per GiB forwarded | {:.2} s |",
            self.cpu_us_per_handshake,
            self.handshakes,
            self.handshakes_per_s,
            self.bulk_bytes / (1024 * 1024),
            self.bulk_mb_per_s,
            self.cpu_s_per_gb
        )
    }
}
