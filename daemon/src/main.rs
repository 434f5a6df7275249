//! The `mtlsd` command: run the daemon, check a config, or operate the built-in CA.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mtlsd::admin::LogControl;
use mtlsd::ca::{Authority, LeafSpec, Revoke};
use mtlsd::config::{Config, parse_duration};
use mtlsd::demo;
use mtlsd::identity::SpiffeId;
use mtlsd::runtime::check_identity;
use mtlsd::supervisor::{ConfigSource, Supervisor};
use mtlsd::tls::tickets;
use tracing::{error, info};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, reload};

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
    /// Manage a session-ticket key file shared by several instances.
    #[command(subcommand)]
    TicketKeys(TicketKeysCommand),
}

#[derive(Subcommand)]
enum TicketKeysCommand {
    /// Put a new encrypting key first and keep the newest `--keep` keys (creates the file if missing).
    Rotate {
        /// The key file (`resumption.ticket_key_file`).
        #[arg(long)]
        file: PathBuf,
        /// Keys kept, the new one included: tickets live until their key is dropped.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        keep: u16,
    },
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
        #[command(flatten)]
        hsm: HsmRoot,
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
        /// Where to write the fresh key (mode 0600).
        #[arg(long, required_unless_present = "csr", conflicts_with = "csr")]
        key: Option<PathBuf>,
        /// Certify the key of this PEM CSR instead (the CSR's subject and SANs are ignored:
        /// the certificate says --id).
        #[arg(long)]
        csr: Option<PathBuf>,
    },
    /// Revoke certificates and republish crl.pem (daemons reload it within seconds).
    Revoke {
        #[command(flatten)]
        dir: CaDir,
        /// The serial number (hex), as `ca list` shows it.
        #[arg(long, required_unless_present = "id", conflicts_with = "id")]
        serial: Option<String>,
        /// Every unexpired certificate issued for this SPIFFE ID.
        #[arg(long)]
        id: Option<String>,
    },
    /// List the certificates this CA issued.
    List {
        #[command(flatten)]
        dir: CaDir,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where the root key lives when it is kept in a PKCS#11 token.
#[derive(Args)]
struct HsmRoot {
    /// The root key in a token, e.g. `pkcs11:token=ca;object=root`; it never leaves the token.
    #[arg(long)]
    root_key: Option<String>,
    /// Generate the root key (EC P-256, unextractable) in the token first, labelled by `object=`.
    #[arg(long, requires = "root_key")]
    create_root_key: bool,
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, requires = "root_key")]
    pkcs11_module: Option<PathBuf>,
    /// Read the token PIN from this file (mode 0600).
    #[arg(long, group = "pin")]
    pin_file: Option<PathBuf>,
    /// Read the token PIN from this environment variable.
    #[arg(long, group = "pin")]
    pin_env: Option<String>,
    /// Read the token PIN from this systemd credential.
    #[arg(long, group = "pin")]
    pin_credential: Option<String>,
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
    let log = match init_logging(cli.log_format, &cli.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("mtlsd: {e:#}");
            return ExitCode::from(2);
        }
    };
    match dispatch(cli.command, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The installed log filter, changeable at runtime through the admin endpoint.
struct LogFilter(reload::Handle<Targets, Registry>);

impl LogControl for LogFilter {
    fn current(&self) -> String {
        self.0.with_current(ToString::to_string).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let targets: Targets = filter
            .parse()
            .map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
        self.0.reload(targets).map_err(|e| e.to_string())
    }
}

fn init_logging(format: LogFormat, filter: &str) -> Result<Arc<LogFilter>> {
    let filter: Targets = filter
        .parse()
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let (filter, handle) = reload::Layer::new(filter);
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
    Ok(Arc::new(LogFilter(handle)))
}

fn dispatch(command: Command, log: Arc<LogFilter>) -> Result<()> {
    match command {
        Command::Run { config, state_dir } => runtime()?.block_on(run(config, state_dir, log)),
        Command::Check { config } => check(&config),
        Command::Ca(ca) => run_ca(ca),
        Command::TicketKeys(TicketKeysCommand::Rotate { file, keep }) => {
            rotate_ticket_keys(&file, keep.into())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    log: Arc<LogFilter>,
) -> Result<()> {
    let source = match (config, state_dir) {
        (Some(path), _) => ConfigSource::File(path),
        (None, dir) => ConfigSource::Demo(dir.unwrap_or_else(demo::default_state_dir)),
    };
    let log: Arc<dyn LogControl> = log;
    Supervisor::start(source, Some(log)).await?.run().await;
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    let identity = check_identity(&config)?;
    if let Some(file) = &config.resumption.ticket_key_file {
        let keys = tickets::load_key_file(file)?;
        info!(file = %file.display(), keys = keys.len(), "session ticket keys are valid");
    }
    info!(
        config = %path.display(),
        identity = %identity,
        inbound = config.inbound.len(),
        outbound = config.outbound.len(),
        "config is valid"
    );
    Ok(())
}

fn rotate_ticket_keys(file: &std::path::Path, keep: usize) -> Result<()> {
    let count = tickets::rotate_key_file(file, keep)?;
    info!(file = %file.display(), keys = count, "ticket keys rotated; instances pick them up within a second");
    Ok(())
}

/// Opens the token and finds (or first creates) the CA root key.
fn hsm_root_key(hsm: &HsmRoot, uri: &str) -> Result<mtlsd_crypto::pkcs11::Pkcs11Key> {
    use mtlsd_crypto::pkcs11::{EcCurve, Pin, Pkcs11Backend, Pkcs11Config, Pkcs11Uri};
    let module = hsm
        .pkcs11_module
        .as_ref()
        .context("--root-key needs --pkcs11-module")?;
    let pin = match (&hsm.pin_file, &hsm.pin_env, &hsm.pin_credential) {
        (Some(f), _, _) => Pin::from_file(f)?,
        (_, Some(v), _) => Pin::from_env(v)?,
        (_, _, Some(c)) => Pin::from_credential(c)?,
        _ => anyhow::bail!("--root-key needs a PIN: --pin-file, --pin-env or --pin-credential"),
    };
    let backend = Pkcs11Backend::new(Pkcs11Config::new(module, pin))
        .with_context(|| format!("opening PKCS#11 module {}", module.display()))?;
    if hsm.create_root_key {
        let parsed = Pkcs11Uri::parse(uri)?;
        let (Some(token), Some(label)) = (&parsed.token, &parsed.object) else {
            anyhow::bail!("--create-root-key needs token= and object= in --root-key");
        };
        let id = parsed
            .id
            .clone()
            .unwrap_or_else(|| label.as_bytes().to_vec());
        backend.generate_ec_key(token, label, &id, EcCurve::P256)?;
        info!(token = %token, object = %label, "root key generated inside the token");
    }
    Ok(backend.load_key(uri)?)
}

fn run_ca(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            root_ttl,
            intermediate_ttl,
            hsm,
        } => {
            let ca = match &hsm.root_key {
                None => Authority::init(&dir.dir, &trust_domain, root_ttl, intermediate_ttl)?,
                Some(uri) => {
                    let key = hsm_root_key(&hsm, uri)?;
                    let shown = mtlsd_crypto::KeyRef::parse(uri).to_string();
                    Authority::init_with_external_root(
                        &dir.dir,
                        &trust_domain,
                        &key,
                        &shown,
                        root_ttl,
                        intermediate_ttl,
                    )?
                }
            };
            info!(dir = %dir.dir.display(), trust_domain = ca.trust_domain(), bundle = %ca.bundle_path().display(), "CA created");
        }
        CaCommand::Issue {
            dir,
            id,
            dns,
            ttl,
            cert,
            key,
            csr,
        } => {
            let ca = Authority::open(&dir.dir)?;
            let id: SpiffeId = id.parse().with_context(|| format!("--id {id:?}"))?;
            let mut spec = LeafSpec::new(id.clone(), ttl);
            spec.dns_names = dns;
            match (key, csr) {
                (Some(key), _) => {
                    let issued = ca.issue(&spec)?;
                    issued.write(&cert, &key)?;
                    info!(id = %id, serial = %issued.serial, not_after = %issued.not_after, cert = %cert.display(), key = %key.display(), "SVID issued");
                }
                (None, Some(csr)) => {
                    let pem = std::fs::read_to_string(&csr)
                        .with_context(|| format!("reading {}", csr.display()))?;
                    // Parsing checks the CSR's self-signature: its sender holds the key.
                    let request = rcgen::CertificateSigningRequestParams::from_pem(&pem)
                        .with_context(|| format!("{} is not a valid PEM CSR", csr.display()))?;
                    let issued = ca.issue_for_key(&spec, &request.public_key)?;
                    mtlsd::files::write_atomic(&cert, issued.chain_pem.as_bytes(), 0o644)
                        .with_context(|| format!("writing {}", cert.display()))?;
                    info!(id = %id, serial = %issued.serial, not_after = %issued.not_after, cert = %cert.display(), csr = %csr.display(), "SVID issued for a CSR");
                }
                (None, None) => unreachable!("clap requires --key or --csr"),
            }
        }
        CaCommand::Revoke { dir, serial, id } => {
            let ca = Authority::open(&dir.dir)?;
            let which = match (serial, id) {
                (Some(serial), _) => Revoke::Serial(serial),
                (None, Some(id)) => Revoke::Id(id.parse().with_context(|| format!("--id {id:?}"))?),
                (None, None) => unreachable!("clap requires --serial or --id"),
            };
            for record in ca.revoke(&which)? {
                info!(serial = %record.serial, id = %record.id, crl = %ca.crl_path().display(), "certificate revoked");
            }
        }
        CaCommand::List { dir, json } => {
            let ca = Authority::open(&dir.dir)?;
            print_issued(&ca.issued()?, json)?;
        }
    }
    Ok(())
}

/// Writes `ca list` output to stdout: a table, or JSON lines.
fn print_issued(records: &[mtlsd::ca::IssuedRecord], json: bool) -> Result<()> {
    use std::io::Write;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<32}  {:<8}  {:<20}  id",
            "serial", "status", "not_after"
        )?;
    }
    for r in records {
        if json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
            continue;
        }
        let status = match (r.revoked_at, r.not_after <= now) {
            (Some(_), _) => "revoked",
            (None, true) => "expired",
            (None, false) => "valid",
        };
        let not_after = time::OffsetDateTime::from_unix_timestamp(r.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<32}  {status:<8}  {not_after:<20}  {}",
            r.serial, r.id
        )?;
    }
    Ok(())
}
