//! The `mtlsd` command: run the daemon, check a config, or operate the built-in CA.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mtlsd::ca::{Authority, LeafSpec};
use mtlsd::config::{Config, parse_duration};
use mtlsd::identity::SpiffeId;
use mtlsd::runtime::{Daemon, backend_for, load_identity};
use mtlsd::{demo, systemd};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "mtlsd",
    version,
    about = "Host-level mTLS termination with SPIFFE identities"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MTLSD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,mtlsd=debug`.
    #[arg(long, global = true, default_value = "info", env = "MTLSD_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon; without --config, run the self-contained demo.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the demo keeps its CA and SVIDs (default: $STATE_DIRECTORY, else ~/.local/state/mtlsd).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and the identity it names, without starting.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Operate a small certificate authority for a trust domain.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root and an intermediate CA in a directory.
    Init {
        #[command(flatten)]
        dir: CaDir,
        /// The trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: String,
        /// Root lifetime.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        root_ttl: Duration,
        /// Intermediate lifetime.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        intermediate_ttl: Duration,
    },
    /// Issue a leaf X.509-SVID with a fresh key.
    Issue {
        #[command(flatten)]
        dir: CaDir,
        /// The SPIFFE ID, e.g. spiffe://example.org/ns/web/sa/api.
        #[arg(long)]
        id: String,
        /// Extra DNS SAN (repeatable), for clients that check host names.
        #[arg(long)]
        dns: Vec<String>,
        /// Lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Where to write the chain (leaf, intermediate).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the key (mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Args)]
struct CaDir {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
}

// Logging may fail to start; that one message goes to stderr directly.
#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, &cli.log) {
        eprintln!("mtlsd: {e:#}");
        return ExitCode::from(2);
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    let filter: Targets = filter
        .parse()
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .init(),
    }
    Ok(())
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config, state_dir } => runtime()?.block_on(run(config, state_dir)),
        Command::Check { config } => check(&config),
        Command::Ca(ca) => run_ca(ca),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> Result<()> {
    // Signal handlers first, so a SIGTERM during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // SIGHUP's default action kills the process; until reload exists it must not.
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let (config, demo_files) = match config {
        Some(path) => (Config::load(&path)?, None),
        None => {
            let dir = state_dir.unwrap_or_else(demo::default_state_dir);
            info!(state_dir = %dir.display(), "no --config given: starting the embedded demo");
            let (config, files) = demo::prepare(&dir).context("preparing the demo")?;
            demo::serve_upstream(&files.upstream_socket)
                .await
                .with_context(|| {
                    format!(
                        "starting the demo service on {}",
                        files.upstream_socket.display()
                    )
                })?;
            (config, Some(files))
        }
    };
    let listeners = config.inbound.len() + config.outbound.len();
    let daemon = Daemon::start(config).await?;
    if let Some(files) = &demo_files {
        demo::log_instructions(files);
    }
    let notifier = systemd::Notifier::from_env().map(Arc::new);
    if let Some(notifier) = &notifier {
        notifier.ready(&format!("serving {listeners} listeners"));
        if let Some(every) = systemd::watchdog_interval() {
            // Pinged from a task on the same runtime: if the event loop wedges, the pings stop
            // and systemd restarts us.
            let notifier = notifier.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    notifier.watchdog();
                }
            });
        }
    }

    let signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => warn!("SIGHUP received: reload is not implemented yet; restart to apply changes"),
        }
    };
    info!(signal, "shutting down");
    if let Some(notifier) = &notifier {
        notifier.stopping(&format!("{signal}: draining connections"));
    }
    daemon.shutdown().await;
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    let backend = backend_for(config.crypto.backend);
    let identity = load_identity(&config.identity, backend.as_ref())?;
    info!(
        config = %path.display(),
        identity = %identity.svid.id,
        inbound = config.inbound.len(),
        outbound = config.outbound.len(),
        "config is valid"
    );
    Ok(())
}

fn run_ca(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            root_ttl,
            intermediate_ttl,
        } => {
            let ca = Authority::init(&dir.dir, &trust_domain, root_ttl, intermediate_ttl)?;
            info!(dir = %dir.dir.display(), trust_domain = ca.trust_domain(), bundle = %ca.bundle_path().display(), "CA created");
        }
        CaCommand::Issue {
            dir,
            id,
            dns,
            ttl,
            cert,
            key,
        } => {
            let ca = Authority::open(&dir.dir)?;
            let id: SpiffeId = id.parse().with_context(|| format!("--id {id:?}"))?;
            let mut spec = LeafSpec::new(id.clone(), ttl);
            spec.dns_names = dns;
            let issued = ca.issue(&spec)?;
            issued.write(&cert, &key)?;
            info!(id = %id, serial = %issued.serial, not_after = %issued.not_after, cert = %cert.display(), key = %key.display(), "SVID issued");
        }
    }
    Ok(())
}
