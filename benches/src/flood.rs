//! `mtlsd-bench flood`: what clients that trickle their ClientHello do to everyone else.
//!
//! Starts an mtlsd (default limits unless told otherwise), measures the time a
//! good client from 127.0.0.2 takes for a full mTLS handshake and one round trip,
//! then opens N connections from 127.0.0.1 that send a TLS record header and the
//! first bytes of a ClientHello and nothing more, and measures the good client
//! again while they are held. Every loop is bounded by count and by time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtlsd_e2e::{Pki, WAIT, echo_round_trip, echo_upstream};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Options of `flood`.
#[derive(clap::Args)]
pub struct Args {
    /// Trickling connections opened from 127.0.0.1.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Good handshakes measured in each phase, one after another.
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Extra keys for the listener's `limits = { … }` table, e.g. `max_handshakes_per_source = 2000`.
    #[arg(long, default_value = "")]
    limits: String,
    /// Where to write the JSON report.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// Connects from the loopback address `src` (any port).
async fn connect_from(src: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{src}:0").parse().expect("a loopback address"))?;
    socket.connect(addr).await
}

/// Milliseconds each of `n` good clients took: connect, full handshake, one echo round trip.
async fn good_clients(addr: SocketAddr, client: &Arc<ClientConfig>, n: usize) -> Vec<f64> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let attempt = async {
            let tcp = connect_from("127.0.0.2", addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost").expect("a DNS name");
            let mut tls = TlsConnector::from(client.clone())
                .connect(name, tcp)
                .await?;
            echo_round_trip(&mut tls, b"ping").await
        };
        match tokio::time::timeout(WAIT, attempt).await {
            Ok(Ok(_)) => took.push(started.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(e)) => panic!("a good client failed: {e}"),
            Err(_) => panic!("a good client took longer than {WAIT:?}"),
        }
    }
    took
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    json!({ "n": ms.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0) })
}

/// Runs the measurement and prints one JSON report.
pub async fn run(args: Args) -> Result<(), String> {
    let pki = Pki::new("bench.example");
    let upstream = echo_upstream().await;
    let daemon = pki.start_daemon(&pki.inbound(
        "web",
        upstream.addr,
        &format!("limits = {{ {} }}", args.limits),
    ));
    let addr = daemon.addr("web");
    let client = pki.client("/client");

    let quiet = good_clients(addr, &client, args.handshakes).await;

    // Hold the trickling connections: a record header promising 512 bytes, then 1 byte of it.
    let mut held = Vec::with_capacity(args.connections);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..args.connections {
        if Instant::now() > deadline {
            return Err("opening the trickling connections took over 60 s".into());
        }
        let mut s = connect_from("127.0.0.1", addr)
            .await
            .map_err(|e| format!("opening a trickling connection: {e}"))?;
        // A refused one (per-address limit) may already be closed: that is part of the result.
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
        held.push(s);
    }
    let refused = daemon
        .logs_where(|l| l["reason"] == "too_many_from_source")
        .len();
    let flooded = good_clients(addr, &client, args.handshakes).await;
    drop(held);

    let report = json!({
        "trickling_connections": args.connections,
        "refused_too_many_from_source": refused,
        "limits": args.limits,
        "quiet": summary(quiet),
        "during_flood": summary(flooded),
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}
