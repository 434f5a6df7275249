//! The daemon's configuration: parsed once from TOML into typed, validated structs.
//!
//! Nothing outside this module sees raw strings from the file. Every problem is
//! reported with the file, line, column and key it comes from, and all problems
//! in a file are reported at once.
//!
//! This file holds the top-level typed config and the entry points; the `[crypto]`
//! and listener types, durations, the raw file shape and its validation have a file each.

mod crypto;
mod de;
mod duration;
mod error;
mod http;
mod listeners;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::Locator;
use mtlsd_crypto::KeyRef;
use serde::Serialize;

#[cfg(feature = "openssl")]
pub use crypto::OpensslSettings;
pub use crypto::{
    BackendKind, CryptoConfig, MAX_IN_FLIGHT, MAX_POOL_SIZE, PinSource, Pkcs11Settings,
};
use duration::as_duration;
pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use error::{ConfigError, Problem};
pub use http::{
    ClaimHeader, HttpConfig, JwksSource, JwtIssuer, Protocol, TokenSource, UpstreamProtocol,
};
pub use listeners::{
    InboundConfig, Limits, ListenerCommon, MAX_CONNECTIONS, MAX_EARLY_DATA, Mode, OutboundConfig,
    SessionResumption, Upstream, host_port,
};

use crate::identity::SpiffeId;
use crate::proxy::live::RecheckMode;

/// The largest `session_cache_size`: a million sessions is hundreds of MiB already.
pub const MAX_SESSION_CACHE: usize = 1_000_000;

/// A complete, validated configuration.
///
/// It serializes to what `/config` shows: every value in effect, defaults
/// included, with key references printed without their query (which may hold a PIN).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Our SVID and the bundle peers must chain to.
    pub identity: IdentityConfig,
    /// Which crypto backend holds the key.
    pub crypto: CryptoConfig,
    /// TLS-terminating listeners in front of local services.
    pub inbound: Vec<InboundConfig>,
    /// Plaintext loopback listeners that dial remote mTLS servers.
    pub outbound: Vec<OutboundConfig>,
    /// How long established connections may drain after SIGTERM.
    #[serde(serialize_with = "as_duration")]
    pub shutdown_grace: Duration,
    /// The loopback admin endpoint, if enabled.
    pub admin: Option<AdminConfig>,
    /// Session-ticket keys and the session cache, shared by inbound listeners.
    pub resumption: ResumptionConfig,
    /// What a change of policy, CRL or bundle does to open connections it would now refuse.
    pub recheck: RecheckMode,
    /// The tamper-evident audit file, if one is kept.
    pub audit: Option<AuditConfig>,
}

/// `[audit]`: where decisions are recorded and what may be lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditConfig {
    /// The JSON-lines file.
    pub file: PathBuf,
    /// What a full queue does to the data path.
    pub on_full: OnFull,
    /// Records queued for the writer at most.
    pub queue: usize,
    /// When records reach the disk.
    pub fsync: FsyncPolicy,
    /// How often, with `fsync = "interval"`.
    #[serde(serialize_with = "as_duration")]
    pub fsync_interval: Duration,
    /// The file is rotated when it reaches this size (0: never).
    pub rotate_bytes: u64,
    /// Rotated files kept (`file.1` … `file.<keep>`).
    pub keep: usize,
    /// Every record also goes to the systemd journal, with its fields as journal fields.
    pub journal: bool,
}

/// What happens when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// The connection or request waits for room: nothing is lost.
    Block,
    /// The record is dropped, counted and logged: the data path never waits.
    Drop,
}

/// When audit records are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every record; an admitted connection waits for its record before its first byte.
    EveryRecord,
    /// Every `fsync_interval`.
    Interval,
    /// When the kernel decides.
    Never,
}

/// How inbound listeners resume TLS sessions; see [`SessionResumption`] for the per-listener choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumptionConfig {
    /// Ticket keys shared with other instances; `None` generates and rotates keys in memory.
    pub ticket_key_file: Option<PathBuf>,
    /// How long a generated ticket key encrypts new tickets (the previous one still decrypts).
    #[serde(serialize_with = "as_duration")]
    pub ticket_rotation: Duration,
    /// Sessions kept per listener with `resumption = "cache"`.
    pub session_cache_size: usize,
}

impl Default for ResumptionConfig {
    fn default() -> Self {
        Self {
            ticket_key_file: None,
            ticket_rotation: Duration::from_secs(3600),
            session_cache_size: 10_000,
        }
    }
}

/// The admin endpoint: health, readiness, certificates, config, metrics and log level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// A loopback address; the endpoint is unauthenticated, so it never listens elsewhere.
    pub listen: SocketAddr,
}

/// Where our identity, trust bundle and revocation list come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityConfig {
    /// The trust domain we belong to and accept peers from.
    pub trust_domain: String,
    /// Our SVID: files another PKI writes, or issued by the built-in CA.
    pub source: IdentitySource,
    /// PEM CA certificates of the trust domain (`None`: they come from the Workload API).
    pub bundle: Option<PathBuf>,
    /// A PEM CRL checked on every connection, resumed ones included.
    pub crl: Option<PathBuf>,
    /// Other trust domains whose peers we accept, each with its own CA bundle.
    pub federated: Vec<FederatedBundle>,
}

/// A federated trust domain's bundle file: its peers are verified against these CAs only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FederatedBundle {
    /// The federated trust domain.
    pub trust_domain: String,
    /// Its PEM CA certificates.
    pub bundle: PathBuf,
}

/// Where our SVID comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum IdentitySource {
    /// Certificate and key files kept current by an external PKI (Vault, SPIRE, step-ca);
    /// reloaded when they change.
    Files {
        /// PEM chain, leaf first.
        cert: PathBuf,
        /// The leaf's private key.
        #[serde(serialize_with = "as_display")]
        key: KeyRef,
    },
    /// Issued to ourselves by the built-in CA in `dir`, key in memory only, renewed at about
    /// half its lifetime.
    Ca {
        /// The CA directory (`mtlsd ca init`).
        dir: PathBuf,
        /// The SPIFFE ID to issue.
        #[serde(serialize_with = "as_display")]
        id: SpiffeId,
        /// Lifetime of each SVID.
        #[serde(serialize_with = "as_duration")]
        ttl: Duration,
        /// Extra DNS SANs, for clients that check host names.
        dns: Vec<String>,
    },
    /// Streamed from the SPIFFE Workload API (a SPIRE agent): SVID, key (in memory only) and
    /// bundles, federated ones included, applied as they change.
    #[serde(rename = "workload_api")]
    WorkloadApi {
        /// `unix:/path` (or an absolute path) or `tcp://ip:port` of the agent.
        socket: String,
        /// Which SVID, when the agent offers several; the first by default.
        #[serde(serialize_with = "as_optional_display")]
        id: Option<SpiffeId>,
        /// How long start-up waits for the first SVID.
        #[serde(serialize_with = "as_duration")]
        startup_timeout: Duration,
    },
}

/// Serializes an optional value through its `Display` form, or as none.
fn as_optional_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Serializes a value through its `Display` form (key references, SPIFFE IDs, upstreams).
fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates config text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        parse(text, file, false)
    }

    /// [`load`](Self::load), and also checks that every file the config names (certificate,
    /// key, bundle, CRL, CA directory, ticket keys, PKCS#11 module and PIN) can be read the way
    /// the daemon will read it, secrets' permissions included: what `mtlsd check` runs. Each
    /// unreadable file is one more located problem, reported with all the others.
    pub fn load_checked(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse_checked(&text, &path.display().to_string())
    }

    /// [`parse`](Self::parse) with the file checks of [`load_checked`](Self::load_checked).
    pub fn parse_checked(text: &str, file: &str) -> Result<Self, ConfigError> {
        parse(text, file, true)
    }
}

/// Reads a config file's text.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Reads, validates and, with `check_files`, checks the files of a config: every problem
/// found, in file order, or the config.
fn parse(text: &str, file: &str, check_files: bool) -> Result<Config, ConfigError> {
    let loc = Locator { file, text };
    let doc = de::read(&loc);
    let mut problems = doc.problems;
    let mut config = None;
    if let Some(raw) = doc.raw {
        match validate::validate(loc, raw, check_files) {
            Ok(c) => config = Some(c),
            // A key already reported as wrongly typed or missing holds a placeholder; what the
            // validator says about that placeholder would only repeat the problem.
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .filter(|p| !doc.placeholders.iter().any(|key| is_within(&p.key, key))),
            ),
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            // Stable, so problems at one position keep the order they were found in.
            problems.sort_by_key(|p| (p.line, p.column));
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Whether `key` is `outer` or lies inside it (`outer.x`, `outer[1]`).
fn is_within(key: &str, outer: &str) -> bool {
    key.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

#[cfg(test)]
mod tests;
