//! `mtlsd-bench icount`: instruction counts, which do not move with the machine's load.
//!
//! Runs itself under `valgrind --tool=callgrind` once per case and counts only the
//! instructions of that case's `icount_case_*` function (`--toggle-collect`), so setup
//! (the CA, keys, configs, the runtime) is excluded:
//! - `full`: one full mTLS handshake in memory with mtlsd's own TLS configs (X25519, ECDSA
//!   P-256), client and server side both, session tickets included;
//! - `repeat`: a second full handshake of the same client and server, whose certificate
//!   signatures both sides remember from the first (`mtlsd_crypto::verify_cache`);
//! - `resumed`: one resumed handshake (ticket) after a priming one, both sides;
//! - `forward`: 64 MiB through mtlsd's copy loop (`proxy::forward::splice`) between
//!   in-memory pipes;
//! - `tls_forward`: 64 MiB from a rustls client through the inbound side's TLS stream
//!   (`proxy::server_tls`) and the copy loop to a pipe, over a socket pair: the handshake,
//!   the client's encryption and the daemon's decryption included.
//!
//! Valgrind emulates its own CPU (no AVX-512, for one), so aws-lc may take other code paths
//! than on the host: the counts are for comparing commits, not for converting into time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mtlsd::ca::Authority;
use mtlsd::metrics::{Direction, Metrics};
use mtlsd::tls::tickets::{KeySource, Ticketer};
use mtlsd::tls::{ServerResumption, TlsIdentity};
use mtlsd_crypto::software::Software;
use mtlsd_crypto::test_support::handshake_in_memory;
use mtlsd_e2e::in_memory::{forward, forward_tls, tls_identity};
use serde_json::{Value, json};

/// Options of `icount`.
#[derive(clap::Args)]
pub struct Args {
    /// Cases, comma-separated, from full, repeat, resumed, forward, tls_forward.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,repeat,resumed,forward,tls_forward"
    )]
    cases: Vec<String>,
    /// Runs one case once, without valgrind: what each callgrind run executes.
    #[arg(long, hide = true)]
    inner: Option<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

const FORWARD_BYTES: usize = 64 * 1024 * 1024;

#[inline(never)]
fn icount_case_full(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    assert_eq!(
        handshake_in_memory(server, client),
        Some(rustls::HandshakeKind::Full)
    );
}

#[inline(never)]
fn icount_case_repeat(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    assert_eq!(
        handshake_in_memory(server, client),
        Some(rustls::HandshakeKind::Full)
    );
}

#[inline(never)]
fn icount_case_resumed(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    assert_eq!(
        handshake_in_memory(server, client),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[inline(never)]
fn icount_case_forward(rt: &tokio::runtime::Runtime, metrics: &mtlsd::metrics::ListenerMetrics) {
    let forwarded = rt.block_on(forward(FORWARD_BYTES, metrics));
    assert_eq!(forwarded.from_peer, FORWARD_BYTES as u64);
}

#[inline(never)]
fn icount_case_tls_forward(
    rt: &tokio::runtime::Runtime,
    metrics: &mtlsd::metrics::ListenerMetrics,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) {
    let forwarded = rt.block_on(forward_tls(FORWARD_BYTES, metrics, server, client));
    assert_eq!(forwarded.from_peer, FORWARD_BYTES as u64);
}

/// Sets up `case` and runs its measured function once.
fn inner(case: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let year = Duration::from_secs(365 * 86_400);
    let ca = Authority::init(&dir.path().join("ca"), "icount.example", year, year)
        .map_err(|e| e.to_string())?;
    let backend = Software::new();
    let server_id = tls_identity(&ca, dir.path(), "spiffe://icount.example/server", &backend);
    let client_id = tls_identity(&ca, dir.path(), "spiffe://icount.example/client", &backend);
    // X25519 on the client: the key exchange the OpenSSL-based peers negotiate too.
    let mut provider = (*client_id.provider).clone();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let client_id = TlsIdentity {
        provider: Arc::new(provider),
        ..client_id
    };
    // Without resumption: every handshake a full one.
    let full_configs = || {
        let server = server_id
            .server_config(&ServerResumption::Off)
            .map_err(|e| e.to_string())?;
        let client = client_id
            .client_config(&server_id.svid.id, false, false)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((server, client))
    };
    match case {
        "full" | "repeat" => {
            let (server, client) = full_configs()?;
            if case == "full" {
                icount_case_full(&server, &client);
            } else {
                // The first, uncounted: it leaves both chains' signatures remembered.
                handshake_in_memory(&server, &client);
                icount_case_repeat(&server, &client);
            }
        }
        "resumed" => {
            let ticketer = Ticketer::new(
                KeySource::Generated {
                    rotation: Duration::from_secs(3600),
                },
                server_id.trust_context(),
                Duration::from_secs(3600),
            )
            .map_err(|e| e.to_string())?;
            let server = server_id
                .server_config(&ServerResumption::Tickets(Arc::new(ticketer)))
                .map_err(|e| e.to_string())?;
            let client = client_id
                .client_config(&server_id.svid.id, true, false)
                .map_err(|e| e.to_string())?;
            // The ticket to resume with.
            handshake_in_memory(&server, &client);
            icount_case_resumed(&server, &client);
        }
        "forward" | "tls_forward" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let metrics = Metrics::new().listener("icount", Direction::Inbound);
            if case == "forward" {
                icount_case_forward(&rt, &metrics);
            } else {
                let (server, client) = full_configs()?;
                icount_case_tls_forward(&rt, &metrics, server, client);
            }
        }
        other => {
            return Err(format!(
                "unknown case {other:?}; expected full, repeat, resumed, forward or tls_forward"
            ));
        }
    }
    Ok(())
}

/// Instructions callgrind counted inside `case`'s function.
fn count(case: &str) -> Result<u64, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = Command::new("valgrind")
        .args(["--tool=callgrind", "--collect-atstart=no"])
        .arg(format!("--toggle-collect=*icount_case_{case}*"))
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg(&exe)
        .args(["icount", "--inner", case])
        .output()
        .map_err(|e| format!("valgrind (Debian: valgrind): {e}"))?;
    if !run.status.success() {
        return Err(format!(
            "callgrind on {case}: {}",
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let text = std::fs::read_to_string(out.path()).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("callgrind counted nothing inside icount_case_{case}"))
}

/// Runs every case under callgrind: a table on stderr, the JSON report on stdout.
pub async fn run(args: Args) -> Result<(), String> {
    if let Some(case) = args.inner {
        // On a thread of its own: outside this runtime, so `forward` can run its own
        // current-thread runtime, whose tasks then all run inside the counted function.
        return std::thread::spawn(move || inner(&case))
            .join()
            .map_err(|_| "the case panicked".to_owned())?;
    }
    let mut counts = serde_json::Map::new();
    for case in &args.cases {
        let n = count(case)?;
        eprintln!("{case:<11} {n:>15} instructions");
        counts.insert(case.clone(), Value::from(n));
    }
    let report = json!({
        "tool": "valgrind --tool=callgrind (instructions, Ir)",
        "forward_bytes": FORWARD_BYTES,
        "instructions": counts,
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}
