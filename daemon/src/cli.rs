//! The `mtlsd` command line as clap declares it.
//!
//! It lives in the library rather than in `main.rs` so that the man pages and
//! shell completions (`daemon/examples/gen-docs.rs`) are generated from the very
//! definition the binary parses; `main.rs` keeps the dispatch and the commands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use hyper::header::{HeaderName, HeaderValue};

use crate::config::parse_duration;

/// The heading the logging options appear under in every subcommand's help, apart
/// from the subcommand's own options.
const GLOBAL: &str = "Global options (any subcommand)";

/// `mtlsd [--log …] [--log-format …] <command>`.
#[derive(Debug, Parser)]
#[command(
    name = "mtlsd",
    version,
    about = "Host-level mTLS termination with SPIFFE identities",
    long_about = "Host-level mTLS termination with SPIFFE identities.\n\n\
        mtlsd accepts mTLS on public ports, verifies the peer's X.509-SVID against the \
        trust bundle, authorizes its SPIFFE ID (default deny) and forwards plaintext to \
        a local service; local clients go the other way through loopback ports. \
        `mtlsd run --config /etc/mtlsd/mtlsd.toml` serves a config, `mtlsd check` \
        validates one, `mtlsd policy` asks what its policy decides, `mtlsd ca` runs a \
        small CA for a trust domain."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text,
          env = "MTLSD_LOG_FORMAT", help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,mtlsd=debug`.
    #[arg(long, global = true, default_value = "info", env = "MTLSD_LOG", help_heading = GLOBAL)]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon; without --config, run the self-contained demo.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the demo keeps its CA and SVIDs (default: $STATE_DIRECTORY, else
        /// ~/.local/state/mtlsd); only without --config.
        #[arg(long, conflicts_with = "config")]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and the identity it names, without starting.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a config what its policy decides, offline: for policy authors and CI.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Operate a small certificate authority for a trust domain.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage a session-ticket key file shared by several instances.
    #[command(subcommand)]
    TicketKeys(TicketKeysCommand),
    /// Check the audit trail's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show decisions live, from a running daemon's admin endpoint.
    Watch {
        /// The daemon's admin endpoint.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Only refusals and denied requests.
        #[arg(long)]
        deny_only: bool,
        /// Only this listener.
        #[arg(long)]
        listener: Option<String>,
    },
}

/// `mtlsd audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify audit files as one hash chain, oldest first (audit.jsonl.2 audit.jsonl.1 audit.jsonl); names the first broken record.
    Verify {
        /// The files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `mtlsd policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print what the daemon would decide for one peer (and request); exit 0 allow, 1 deny.
    #[command(
        long_about = "Print what the daemon would decide for one peer (and request): \
        the decision, the rule that decided and every rule that matched.\n\n\
        The listener's allow/deny list decides the connection, as in the daemon; on a \
        protocol = \"http\" listener the request then goes through the same path \
        normalization and rules. Nothing is read but the config: a --jwt token's claims are \
        taken from it unverified, --claims as given, the peer's certificate is assumed valid.\n\n\
        Exit status: 0 allowed, 1 refused (also on a dry_run listener, which would only log \
        the refusal), 2 for a usage or config error. CI checks, one allow and one deny:\n\n    \
        mtlsd policy test -c mtlsd.toml --listener api --peer spiffe://example.org/ns/web \\\n        \
        --path /api/users\n    \
        mtlsd policy test -c mtlsd.toml --listener api --peer spiffe://example.org/ns/batch \\\n        \
        --method POST --path /admin/users; test $? -eq 1"
    )]
    Test(PolicyTest),
    /// List, per listener, who can reach what: allow/deny entries and HTTP rules in evaluation order.
    Explain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this listener (default: every listener).
        #[arg(long)]
        listener: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

/// `mtlsd policy test`'s question.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token").args(["jwt", "claims"])))]
pub struct PolicyTest {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The inbound listener, by name.
    #[arg(long)]
    pub listener: String,
    /// The peer's SPIFFE ID, or `unauthenticated` for a plaintext client (permissive listeners).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub peer: String,
    /// The request method (HTTP listeners) [default: GET].
    #[arg(long)]
    pub method: Option<String>,
    /// The request path as sent, normalized as the daemon does; a query is ignored [default: /].
    #[arg(long)]
    pub path: Option<String>,
    /// The request's authority (Host), with its port if the client sends one [default: none].
    #[arg(long)]
    pub host: Option<String>,
    /// A request header (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The client's IP address [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub source_ip: Option<IpAddr>,
    /// A JWT the request carries; its claims are read WITHOUT verifying the signature.
    #[arg(long, value_name = "TOKEN")]
    pub jwt: Option<String>,
    /// The request's validated token claims as a JSON object (iss, sub, aud, groups, …).
    #[arg(long, value_name = "JSON")]
    pub claims: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// How `mtlsd policy` prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    Text,
    /// One JSON object, for pipelines.
    Json,
}

/// `--header name=value`, checked as the daemon would receive it.
fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write a header as name=value"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{value:?} is not a header value"))?;
    Ok((name, value))
}

/// `mtlsd ticket-keys …`.
#[derive(Debug, Subcommand)]
pub enum TicketKeysCommand {
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

/// `mtlsd ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root and an intermediate CA in a directory.
    Init {
        /// The CA directory.
        #[command(flatten)]
        dir: CaDir,
        /// The trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: String,
        /// Root lifetime.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        root_ttl: Duration,
        /// Intermediate lifetime (at most the root's): every leaf must expire before it.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        intermediate_ttl: Duration,
        /// A root key in a PKCS#11 token instead of a file.
        #[command(flatten)]
        hsm: HsmRoot,
    },
    /// Issue a leaf X.509-SVID with a fresh key (or for a CSR's key).
    #[command(
        long_about = "Issue a leaf X.509-SVID with a fresh key (or for a CSR's key).\n\n\
            The certificate carries the SPIFFE ID as its one URI SAN and as subject CN. \
            mtlsd and other SPIFFE-aware peers check only the SPIFFE ID. Clients that check \
            the host name they connected to (curl, openssl s_client -verify_hostname, \
            browsers, most HTTP libraries) also need it in the certificate: add --dns for \
            every name they use, and --ip when they connect to an address. Without them \
            such clients fail with \"certificate subject name does not match target host \
            name\" or \"IP address mismatch\".\n\n\
            The leaf must expire before the intermediate CA does; a longer --ttl is refused \
            with both dates.",
        group(ArgGroup::new("key_source").required(true).args(["key", "csr"]))
    )]
    Issue {
        /// The CA directory.
        #[command(flatten)]
        dir: CaDir,
        /// The SPIFFE ID, e.g. spiffe://example.org/ns/web/sa/api.
        #[arg(long)]
        id: String,
        /// DNS SAN (repeatable): needed for clients that check host names (curl, s_client, browsers).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// IP address SAN (repeatable): needed for such clients connecting to an address.
        #[arg(long, value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// Subject CN (default: the SPIFFE ID, or no subject when the ID is over 64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime; must end before the intermediate CA expires.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Where to write the chain (leaf, intermediate).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the fresh key (mode 0600); or give --csr.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Certify the key of this PEM CSR instead of making one (the CSR's subject and
        /// SANs are ignored: the certificate says --id, --dns, --ip); or give --key.
        #[arg(long)]
        csr: Option<PathBuf>,
    },
    /// Revoke certificates and republish crl.pem (daemons reload it within seconds).
    #[command(group(ArgGroup::new("which").required(true).args(["serial", "id"])))]
    Revoke {
        /// The CA directory.
        #[command(flatten)]
        dir: CaDir,
        /// The serial number in hex, as `ca list` or openssl shows it (`4a0b…`, `4A:0B:…`); or give --id.
        #[arg(long, value_parser = parse_serial_arg)]
        serial: Option<String>,
        /// Every unexpired certificate issued for this SPIFFE ID; or give --serial.
        #[arg(long)]
        id: Option<String>,
    },
    /// List the certificates this CA issued.
    List {
        /// The CA directory.
        #[command(flatten)]
        dir: CaDir,
        /// One JSON object per line (serial, id, status, not_after, revoked_at) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where the root key lives when it is kept in a PKCS#11 token.
#[derive(Debug, Args)]
pub struct HsmRoot {
    /// The root key in a token, e.g. `pkcs11:token=ca;object=root`; it never leaves the token.
    #[arg(long)]
    pub root_key: Option<String>,
    /// Generate the root key (EC P-256, unextractable) in the token first, labelled by `object=`.
    #[arg(long, requires = "root_key")]
    pub create_root_key: bool,
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so); with --root-key.
    #[arg(long, requires = "root_key")]
    pub pkcs11_module: Option<PathBuf>,
    /// Read the token PIN from this file (mode 0600); with --root-key.
    // A PIN without --root-key used to be ignored and a software root made instead:
    // whoever gives a PIN means the token, so say that it is missing.
    #[arg(long, group = "pin", requires = "root_key")]
    pub pin_file: Option<PathBuf>,
    /// Read the token PIN from this environment variable; with --root-key.
    #[arg(long, group = "pin", requires = "root_key")]
    pub pin_env: Option<String>,
    /// Read the token PIN from this systemd credential; with --root-key.
    #[arg(long, group = "pin", requires = "root_key")]
    pub pin_credential: Option<String>,
}

/// The `--dir` every `ca` subcommand takes.
#[derive(Debug, Args)]
pub struct CaDir {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// `--serial` as clap sees it: normalised by [`crate::ca::parse_serial`].
fn parse_serial_arg(text: &str) -> Result<String, String> {
    crate::ca::parse_serial(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mtlsd").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn revoke_and_issue_name_both_alternatives_when_neither_is_given() {
        let err = parse(&["ca", "revoke", "--dir", "d"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let text = err.to_string();
        assert!(text.contains("--serial") && text.contains("--id"), "{text}");

        let err = parse(&[
            "ca",
            "issue",
            "--dir",
            "d",
            "--id",
            "spiffe://x/y",
            "--cert",
            "c",
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--key") && text.contains("--csr"), "{text}");
        // And not both.
        let err = parse(&[
            "ca",
            "issue",
            "--dir",
            "d",
            "--id",
            "spiffe://x/y",
            "--cert",
            "c",
            "--key",
            "k",
            "--csr",
            "r",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_pin_without_a_root_key_is_an_error_not_a_software_ca() {
        for pin in [
            ["--pin-file", "p"],
            ["--pin-env", "P"],
            ["--pin-credential", "p"],
        ] {
            let mut args = vec!["ca", "init", "--dir", "d", "--trust-domain", "example.org"];
            args.extend(pin);
            let err = parse(&args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{pin:?}");
            assert!(err.to_string().contains("--root-key"), "{err}");
        }
    }

    #[test]
    fn the_demo_state_dir_conflicts_with_a_config() {
        let err = parse(&["run", "--config", "c.toml", "--state-dir", "s"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(parse(&["run", "--state-dir", "s"]).is_ok());
    }

    #[test]
    fn revoke_takes_the_serial_as_openssl_prints_it() {
        let Command::Ca(CaCommand::Revoke { serial, .. }) =
            parse(&["ca", "revoke", "--dir", "d", "--serial", "4A:0B:FF"])
                .unwrap()
                .command
        else {
            panic!("not ca revoke");
        };
        assert_eq!(serial.as_deref(), Some("4a0bff"));
        let err = parse(&["ca", "revoke", "--dir", "d", "--serial", "4A:0G"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn policy_test_takes_repeated_headers_and_one_kind_of_token() {
        let Command::Policy(PolicyCommand::Test(test)) = parse(&[
            "policy",
            "test",
            "-c",
            "c.toml",
            "--listener",
            "api",
            "--peer",
            "spiffe://ex/a",
            "--header",
            "X-Env=prod",
            "--header",
            "accept=a=b",
        ])
        .unwrap()
        .command
        else {
            panic!("not policy test");
        };
        let headers: Vec<_> = test
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(headers, [("x-env", "prod"), ("accept", "a=b")]);
        assert_eq!((test.method, test.output), (None, OutputFormat::Text));

        let base = [
            "policy",
            "test",
            "-c",
            "c",
            "--listener",
            "l",
            "--peer",
            "p",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let err = with(&["--header", "x-env"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("name=value"), "{err}");
        let err = with(&["--jwt", "t", "--claims", "{}"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(with(&["--output", "json", "--source-ip", "10.0.0.1"]).is_ok());
    }

    #[test]
    fn logging_options_stay_global_under_their_own_heading() {
        let cli = parse(&["ca", "list", "--dir", "d", "--log", "debug"]).unwrap();
        assert_eq!(cli.log, "debug");
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("check")
            .unwrap()
            .render_help()
            .to_string();
        let (own, global) = help.split_once(GLOBAL).expect("a global-options heading");
        assert!(own.contains("--config") && !own.contains("--log"), "{help}");
        assert!(global.contains("--log-format"), "{help}");
    }
}
