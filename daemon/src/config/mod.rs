//! The daemon's configuration: parsed once from TOML into typed, validated structs.
//!
//! Nothing outside this module sees raw strings from the file. Every problem is
//! reported with the file, line, column and key it comes from, and all problems
//! in a file are reported at once.
//!
//! This file holds the top-level typed config and the entry points; the `[crypto]`
//! and listener types, durations, the raw file shape and its validation have a file each.

mod crypto;
mod duration;
mod error;
mod listeners;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::Locator;
use mtlsd_crypto::KeyRef;
use raw::RawConfig;
use serde::Serialize;

#[cfg(feature = "openssl")]
pub use crypto::OpensslSettings;
pub use crypto::{
    BackendKind, CryptoConfig, MAX_IN_FLIGHT, MAX_POOL_SIZE, PinSource, Pkcs11Settings,
};
use duration::as_duration;
pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use error::{ConfigError, Problem};
pub use listeners::{
    InboundConfig, Limits, ListenerCommon, MAX_CONNECTIONS, MAX_EARLY_DATA, Mode, OutboundConfig,
    SessionResumption, Upstream, host_port,
};

use crate::identity::SpiffeId;

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
    /// PEM CA certificates of the trust domain.
    pub bundle: PathBuf,
    /// A PEM CRL checked on every connection, resumed ones included.
    pub crl: Option<PathBuf>,
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
}

/// Serializes a value through its `Display` form (key references, SPIFFE IDs, upstreams).
fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates config text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let loc = Locator { file, text };
        let syntax = |e: toml::de::Error| {
            ConfigError::Invalid(vec![loc.problem(
                e.span().unwrap_or(0..0),
                "",
                e.message().trim(),
            )])
        };
        // serde_path_to_error names the key a type error is about ("inbound[0].listen"),
        // which toml's own error only locates.
        let de = toml::Deserializer::parse(text).map_err(syntax)?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(e.path());
            let inner = e.into_inner();
            ConfigError::Invalid(vec![loc.problem(
                inner.span().unwrap_or(0..0),
                key,
                inner.message().trim(),
            )])
        })?;
        validate::validate(loc, raw).map_err(ConfigError::Invalid)
    }
}

/// `inbound[0].name` from a deserializer path, without toml's internal span wrappers.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k.starts_with("$__serde_spanned") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

#[cfg(test)]
mod tests;
