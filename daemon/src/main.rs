//! The `mtlsd` command: run the daemon, check a config, ask what its policy decides, or
//! operate the built-in CA.
//!
//! The command line itself is declared in [`mtlsd::cli`]; this file dispatches it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use mtlsd::admin::LogControl;
use mtlsd::ca::{Authority, LeafSpec, Revoke};
use mtlsd::cli::{
    AuditCommand, CaCommand, Cli, Command, HsmRoot, LogFormat, OutputFormat, PolicyCommand,
    PolicyTest, TicketKeysCommand,
};
use mtlsd::config::Config;
use mtlsd::demo;
use mtlsd::identity::{SpiffeId, rfc3339};
use mtlsd::runtime::check_identity;
use mtlsd::supervisor::{ConfigSource, Supervisor};
use mtlsd::tls::tickets;
use mtlsd::whatif;
use tracing::{error, info};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, reload};

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
        Ok(code) => code,
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

fn dispatch(command: Command, log: Arc<LogFilter>) -> Result<ExitCode> {
    match command {
        Command::Run { config, state_dir } => runtime()?.block_on(run(config, state_dir, log))?,
        Command::Check { config } => check(&config)?,
        Command::Ca(ca) => run_ca(ca)?,
        // Its own exit statuses: 0 allow, 1 deny, 2 a question that cannot be answered.
        Command::Policy(policy) => {
            return Ok(match run_policy(policy) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::from(2)
                }
            });
        }
        Command::TicketKeys(TicketKeysCommand::Rotate { file, keep }) => {
            rotate_ticket_keys(&file, keep.into())?;
        }
        Command::Audit(AuditCommand::Verify { files }) => verify_audit(&files)?,
        Command::Watch {
            admin,
            deny_only,
            listener,
        } => {
            let options = mtlsd::audit::watch::WatchOptions {
                deny_only,
                listener,
                colour: std::io::stdout().is_terminal(),
            };
            let mut out = std::io::stdout().lock();
            runtime()?
                .block_on(mtlsd::audit::watch::watch(admin, &options, &mut out))
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mtlsd audit verify`: one line saying what was checked, or the first broken record.
fn verify_audit(files: &[std::path::PathBuf]) -> Result<()> {
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let verified = mtlsd::audit::chain::verify(&paths).context("the audit chain is broken")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok: {} records, seq {} to {}, head {}",
        verified.records, verified.first_seq, verified.head.seq, verified.head.hash
    )?;
    Ok(())
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
    // clap refuses --state-dir with --config, so a given state dir is always used.
    let source = match (config, state_dir) {
        (Some(path), _) => ConfigSource::File(path),
        (None, dir) => ConfigSource::Demo(dir.unwrap_or_else(demo::default_state_dir)),
    };
    let log: Arc<dyn LogControl> = log;
    Supervisor::start(source, Some(log)).await?.run().await;
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    // Every problem of the file and of the files it names, in one run, in file order.
    let config = Config::load_checked(path)?;
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

/// `mtlsd policy test|explain`: the answer on stdout; the exit status for `test` (0 allow, 1 deny).
fn run_policy(command: PolicyCommand) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match command {
        PolicyCommand::Test(test) => {
            let config = Config::load(&test.config)?;
            let output = test.output;
            let answer = whatif::decide(&config, &policy_query(test))?;
            match output {
                OutputFormat::Text => write!(out, "{answer}")?,
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&answer)?)?,
            }
            Ok(answer.exit_code())
        }
        PolicyCommand::Explain {
            config,
            listener,
            output,
        } => {
            let config = Config::load(&config)?;
            let explanation = whatif::explain(&config, listener.as_deref())?;
            match output {
                OutputFormat::Text => write!(out, "{explanation}")?,
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&explanation)?)?,
            }
            Ok(0)
        }
    }
}

fn policy_query(test: PolicyTest) -> whatif::Query {
    whatif::Query {
        listener: test.listener,
        peer: test.peer,
        method: test.method,
        path: test.path,
        host: test.host,
        headers: test.headers,
        source_ip: test.source_ip,
        token: match (test.jwt, test.claims) {
            (Some(jwt), _) => Some(whatif::TokenInput::Jwt(jwt)),
            (None, Some(claims)) => Some(whatif::TokenInput::Claims(claims)),
            (None, None) => None,
        },
    }
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
            ip,
            name,
            ttl,
            cert,
            key,
            csr,
        } => {
            let ca = Authority::open(&dir.dir)?;
            let id: SpiffeId = id.parse().with_context(|| format!("--id {id:?}"))?;
            let mut spec = LeafSpec::new(id.clone(), ttl);
            spec.dns_names = dns;
            spec.ip_addresses = ip;
            spec.common_name = name;
            // The ledger records the leaf only once its files are written (see Authority::issue_to_files).
            match (key, csr) {
                (Some(key), _) => {
                    let issued = ca.issue_to_files(&spec, &cert, &key)?;
                    let not_after = rfc3339(issued.not_after.unix_timestamp());
                    info!(id = %id, serial = %issued.serial, not_after = %not_after, cert = %cert.display(), key = %key.display(), "SVID issued");
                }
                (None, Some(csr)) => {
                    let pem = std::fs::read_to_string(&csr)
                        .with_context(|| format!("reading {}", csr.display()))?;
                    // Parsing checks the CSR's self-signature: its sender holds the key.
                    let request = rcgen::CertificateSigningRequestParams::from_pem(&pem)
                        .with_context(|| format!("{} is not a valid PEM CSR", csr.display()))?;
                    let issued = ca.issue_for_key_to_file(&spec, &request.public_key, &cert)?;
                    let not_after = rfc3339(issued.not_after.unix_timestamp());
                    info!(id = %id, serial = %issued.serial, not_after = %not_after, cert = %cert.display(), csr = %csr.display(), "SVID issued for a CSR");
                }
                (None, None) => unreachable!("clap requires --key or --csr"),
            }
        }
        CaCommand::Revoke { dir, serial, id } => {
            let ca = Authority::open(&dir.dir)?;
            let which = match (serial, id) {
                // Already normalised by clap (colons stripped, lowercase).
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

/// One line of `ca list --json`: the table's columns, times in RFC 3339.
#[derive(serde::Serialize)]
struct ListedLeaf<'a> {
    serial: &'a str,
    id: &'a str,
    status: &'static str,
    not_after: String,
    revoked_at: Option<String>,
}

/// Writes `ca list` output to stdout: a table, or JSON lines.
fn print_issued(records: &[mtlsd::ca::IssuedRecord], json: bool) -> Result<()> {
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
        let status = r.status(now).as_str();
        let not_after = rfc3339(r.not_after);
        if json {
            let line = ListedLeaf {
                serial: &r.serial,
                id: &r.id,
                status,
                not_after,
                revoked_at: r.revoked_at.map(rfc3339),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(
                out,
                "{:<32}  {status:<8}  {not_after:<20}  {}",
                r.serial, r.id
            )?;
        }
    }
    Ok(())
}
