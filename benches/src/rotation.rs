//! `mtlsd-bench rotation`: what Workload API updates cost a busy daemon.
//!
//! Starts a real SPIRE server and agent (the binaries `scripts/spire-tools` builds) and
//! registers this process's uid for a client SVID and for two server SVIDs: `/steady`, which
//! lives an hour, and `/rotating`, which lives `--ttl` seconds so the agent renews it every few
//! seconds. Round by round, one phase per server SVID: an mtlsd whose identity comes from the
//! Workload API (pinned to one core) takes `--concurrency` clients doing full mTLS handshakes
//! plus one echoed byte for `--secs`, while one long-lived stream echoes a byte every 20 ms.
//! Per phase: handshakes/s, handshake latency quantiles, server CPU per handshake, the
//! stream's round-trip p99, the updates the daemon applied, the distinct server serials the
//! clients saw, and every failure (there must be none).
//!
//! The agent streams every SVID of the workload in each update, so the `/rotating` entry
//! exists only during rotating phases: the steady phase sees no update at all.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtlsd::identity::{SpiffeId, SpiffeServerVerifier, TrustDomains};
use mtlsd_e2e::spire::{
    ServerOpts, SpireAgent, SpireServer, fetch_x509, spire_bin, svid_files, uid_selector,
    wait_for_svid, write_x509,
};
use mtlsd_e2e::{Daemon, WAIT, echo_upstream};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::contender::pin;
use crate::workload::{emit_phases, median_of, timed_phase};

const TRUST_DOMAIN: &str = "bench.test";

/// Options of `rotation`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each runs a steady phase, then a rotating one.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// X.509-SVID lifetime of the rotating server identity, seconds (SPIRE renews at half).
    #[arg(long, default_value_t = 10)]
    ttl: u32,
    /// Concurrent handshaking clients.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Where the daemon and this client run.
    #[command(flatten)]
    pin: crate::contender::Pinning,
    /// Where to write the JSON report.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// The client side: our `/client` SVID, and the SPIFFE check of the server `expected`.
fn client_config(agent: &SpireAgent, server: &SpireServer, expected: &str) -> Arc<ClientConfig> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_x509(&agent.socket, dir.path());
    let files = svid_files(dir.path(), &server.id("/client"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .expect("the client SVID chain");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("the client SVID key");
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.bundle_pem().as_bytes()) {
        roots
            .add(cert.expect("a bundle certificate"))
            .expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = SpiffeServerVerifier::new(
        TrustDomains::new(TRUST_DOMAIN, Arc::new(roots), []),
        SpiffeId::from_str(expected).expect("a SPIFFE ID"),
        &provider,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .expect("the client SVID");
    // Every handshake is a full one: resumption would skip the server's new certificate.
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// An mtlsd serving `id` from the agent's Workload API, admitting the `/client` SVID.
fn start_daemon(agent: &SpireAgent, server: &SpireServer, id: &str, echo: SocketAddr) -> Daemon {
    Daemon::start(&format!(
        "[identity]\ntrust_domain = \"{TRUST_DOMAIN}\"\nsource = \"workload_api\"\n\
         socket = \"unix:{}\"\nid = \"{id}\"\nstartup_timeout = \"20s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[inbound]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nforward = \"{echo}\"\n\
         allow = [\"{}\"]\n",
        agent.socket.display(),
        server.id("/client"),
    ))
}

/// Runs one phase against a daemon serving `id`.
async fn phase(
    args: &Args,
    spire: (&SpireServer, &SpireAgent),
    id: &str,
    echo: SocketAddr,
    server_cpu: Option<usize>,
) -> Result<Value, String> {
    let (server, agent) = spire;
    let daemon = start_daemon(agent, server, id, echo);
    if let Some(cpu) = server_cpu {
        pin(daemon.pid(), cpu);
    }
    let addr = daemon.addr("echo");
    let config = client_config(agent, server, id);
    let mut figures = timed_phase(addr, config, args.concurrency, args.secs, daemon.pid()).await?;
    let updates = daemon
        .logs_where(|l| l["message"] == "the Workload API sent a new SVID or bundle: applying it")
        .len();
    let closed = daemon
        .logs_where(|l| l["message"] == "closing an open connection")
        .len();
    figures.insert("workload_api_updates_applied".into(), updates.into());
    figures.insert("connections_closed_by_recheck".into(), closed.into());
    Ok(Value::Object(figures))
}

/// Waits (bounded) until the agent no longer hands this process `id`.
fn wait_until_gone(agent: &SpireAgent, id: &str) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let response = fetch_x509(&agent.socket)?;
        let svids = response["svids"].as_array().cloned().unwrap_or_default();
        if !svids.iter().any(|s| s["spiffe_id"] == id) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the agent still serves {id} after {WAIT:?}"))
}

/// Runs the measurement: a table on stderr, the JSON report on stdout.
pub async fn run(args: Args) -> Result<(), String> {
    if spire_bin().is_none() {
        return Err("no SPIRE binaries: run scripts/spire-tools (needs Go) first".into());
    }
    let server_cpu = args.pin.apply();
    let server = SpireServer::start(TRUST_DOMAIN, &ServerOpts::default());
    let host = server.id("/host");
    let agent = SpireAgent::start(&server, &server.join_token(&host));
    let uid = uid_selector();
    for (path, ttl) in [("/client", 3600), ("/steady", 3600)] {
        server.create_entry(&host, &server.id(path), &uid, ttl, &[]);
        wait_for_svid(&agent.socket, &server.id(path));
    }
    let echo = echo_upstream().await;
    let (mut steady, mut rotating) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!(
            "mtlsd-bench rotation: round {round}/{}: steady",
            args.rounds
        );
        steady.push(
            phase(
                &args,
                (&server, &agent),
                &server.id("/steady"),
                echo.addr,
                server_cpu,
            )
            .await?,
        );
        let id = server.id("/rotating");
        let entry = server.create_entry(&host, &id, &uid, args.ttl, &[]);
        wait_for_svid(&agent.socket, &id);
        eprintln!(
            "mtlsd-bench rotation: round {round}/{}: rotating",
            args.rounds
        );
        rotating.push(phase(&args, (&server, &agent), &id, echo.addr, server_cpu).await?);
        server.delete_entry(&entry);
        wait_until_gone(&agent, &id)?;
    }
    let report = json!({
        "secs": args.secs,
        "ttl_secs": args.ttl,
        "concurrency": args.concurrency,
        "steady": steady,
        "rotating": rotating,
    });
    // The table to stderr, the report to stdout: a script reads one JSON object.
    eprintln!(
        "{:<10} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "phase",
        "hs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu µs/hs",
        "stream p99",
        "updates",
        "serials",
        "failures"
    );
    for (name, phases) in [("steady", &steady), ("rotating", &rotating)] {
        eprintln!(
            "{name:<10} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>10.0} {:>10.0} {:>8.0} {:>8.0} {:>8.0}",
            median_of(phases, "handshakes_per_s"),
            median_of(phases, "handshake_p50_ms"),
            median_of(phases, "handshake_p99_ms"),
            median_of(phases, "handshake_max_ms"),
            median_of(phases, "server_cpu_us_per_handshake"),
            median_of(phases, "stream_p99_us"),
            median_of(phases, "workload_api_updates_applied"),
            median_of(phases, "server_serials_seen"),
            phases
                .iter()
                .filter_map(|p| p["failures"].as_f64())
                .sum::<f64>(),
        );
    }
    emit_phases(
        &report,
        args.json_out.as_deref(),
        steady.iter().chain(&rotating),
    )
}
