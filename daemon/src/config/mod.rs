//! The daemon's configuration: parsed once from TOML into typed, validated structs.
//!
//! Nothing outside this module sees raw strings from the file. Every problem is
//! reported with the file, line, column and key it comes from, and all problems
//! in a file are reported at once.

mod error;
mod raw;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::Locator;
pub use error::{ConfigError, Problem};
use mtlsd_crypto::KeyRef;
use raw::{RawConfig, RawLimits, S};
use serde::Serialize;

use crate::identity::{SpiffeId, validate_trust_domain};
use crate::policy::{Policy, Principal};

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

/// How one inbound listener lets clients resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionResumption {
    /// Every connection does a full handshake.
    Off,
    /// Stateless tickets under rotating keys (the default).
    Tickets,
    /// Single-use sessions in a bounded server-side cache; required for 0-RTT.
    Cache,
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

/// The crypto backend that holds private keys, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "backend")]
#[non_exhaustive]
pub enum BackendKind {
    /// rustls on aws-lc-rs, keys in memory.
    Software,
    /// Keys inside a PKCS#11 token (HSM).
    Pkcs11(Pkcs11Settings),
    /// Private-key operations through OpenSSL 3 with an ENGINE or provider.
    Openssl(OpensslSettings),
}

impl BackendKind {
    /// The name used in config, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Software => "software",
            Self::Pkcs11(_) => "pkcs11",
            Self::Openssl(_) => "openssl",
        }
    }
}

/// Where the PKCS#11 user PIN comes from; never the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinSource {
    /// A file readable by the daemon only.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential (`LoadCredential=`), by name.
    Credential(String),
}

/// `[crypto.pkcs11]`: the module, the PIN and the session pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pkcs11Settings {
    /// The PKCS#11 shared library.
    pub module: PathBuf,
    /// Where the PIN is read from.
    pub pin: PinSource,
    /// Sessions per token: signatures that run on the token at once.
    pub pool_size: usize,
}

/// `[crypto.openssl]`: which ENGINE or provider signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpensslSettings {
    /// ENGINE id, e.g. `qatengine` or `pkcs11`.
    pub engine: Option<String>,
    /// ENGINE control commands sent before init; values are not shown by `/config`.
    #[serde(serialize_with = "ctrl_names")]
    pub engine_ctrl: Vec<(String, String)>,
    /// Provider name, e.g. `qatprovider`.
    pub provider: Option<String>,
}

fn ctrl_names<S: serde::Serializer>(ctrl: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ctrl.iter().map(|(name, _)| [name.as_str(), "<redacted>"]))
}

/// `[crypto]`: the backend and how device operations are bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CryptoConfig {
    /// The backend in use.
    #[serde(flatten)]
    pub backend: BackendKind,
    /// Device signatures in flight at once; more wait (bounded) for a slot.
    pub max_in_flight: usize,
    /// Added to every signature, as a slow HSM or a remote signer would: for tests and capacity
    /// planning. The key is then treated as a device key (offloaded).
    #[serde(serialize_with = "as_optional_duration")]
    pub simulate_latency: Option<Duration>,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Software,
            max_in_flight: 64,
            simulate_latency: None,
        }
    }
}

fn as_optional_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// Resource limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Connections held at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Handshakes in progress at once; further ones wait within their timeout.
    pub max_handshakes: usize,
    /// Connections from one IP address still before or in their handshake; more are closed on accept.
    pub max_handshakes_per_source: usize,
    /// Time a new connection has to deliver its complete ClientHello (no handshake slot is held meanwhile).
    #[serde(serialize_with = "as_duration")]
    pub client_hello_timeout: Duration,
    /// Time from accept to an authorized peer, waiting included.
    #[serde(serialize_with = "as_duration")]
    pub handshake_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    #[serde(serialize_with = "as_duration")]
    pub idle_timeout: Duration,
    /// Time allowed to connect to the upstream.
    #[serde(serialize_with = "as_duration")]
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_handshakes: 512,
            max_handshakes_per_source: 64,
            client_hello_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Whether an inbound listener also takes plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// mTLS only.
    Strict,
    /// mTLS, or plaintext treated as an unauthenticated peer.
    Permissive,
}

/// Where an inbound listener forwards plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `host:port`, resolved at connect time.
    Tcp(String),
    /// A Unix stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An mTLS listener in front of a local service.
#[derive(Debug, Clone, Serialize)]
pub struct InboundConfig {
    /// Unique listener name, used in logs and metrics.
    pub name: String,
    /// Address to accept TLS on.
    pub listen: SocketAddr,
    /// The local service.
    #[serde(serialize_with = "as_display")]
    pub forward: Upstream,
    /// Strict or permissive.
    pub mode: Mode,
    /// Who may connect.
    pub policy: Policy,
    /// Send a PROXY protocol v2 header with the peer's identity to the upstream.
    pub proxy_protocol: bool,
    /// Session resumption for returning clients.
    pub resumption: SessionResumption,
    /// Most 0-RTT bytes accepted from a resuming client; 0 turns early data off.
    pub early_data: u32,
    /// Resource limits.
    pub limits: Limits,
}

/// A plaintext loopback listener that dials an mTLS server.
#[derive(Debug, Clone, Serialize)]
pub struct OutboundConfig {
    /// Unique listener name, used in logs and metrics.
    pub name: String,
    /// Address local clients connect to.
    pub listen: SocketAddr,
    /// Remote `host:port`.
    pub connect: String,
    /// The SPIFFE ID the remote server must present.
    #[serde(serialize_with = "as_display")]
    pub server_id: SpiffeId,
    /// Keep sessions so reconnects to this remote resume.
    pub resumption: bool,
    /// Send the local client's first bytes as 0-RTT early data when resuming.
    pub early_data: bool,
    /// Resource limits.
    pub limits: Limits,
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
        let mut v = Validator {
            loc,
            problems: Vec::new(),
        };
        let config = v.config(raw);
        match config {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(v.problems)),
        }
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

/// The largest `session_cache_size`: a million sessions is hundreds of MiB already.
pub const MAX_SESSION_CACHE: usize = 1_000_000;
/// The largest `max_connections` or `max_handshakes`: far beyond any descriptor limit.
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// The largest `crypto.max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// The largest `crypto.pkcs11.pool_size`.
pub const MAX_POOL_SIZE: usize = 1024;

/// The largest `early_data` a listener may accept (bytes).
///
/// When rustls *rejects* early data (a replayed or unknown session) it keeps the
/// undecryptable records in its receive buffer, which holds one record of about
/// 18 KiB, until the client's next good record. More than 16 KiB of rejected early
/// data cannot fall back to a full handshake, so no listener advertises more.
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

/// Writes a duration the way the config file does (`10s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn as_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Parses `500ms`, `10s`, `5m`, `2h` or `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; write e.g. \"500ms\", \"10s\", \"5m\", \"2h\" or \"1d\"")
    })?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} has unit {unit:?}; use ms, s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| {
            format!(
                "{s:?} is too long; at most {}",
                format_duration(MAX_DURATION)
            )
        })
}

/// The longest duration any setting takes: a century. Longer ones are typos, and would
/// overflow the clock arithmetic of timers and certificate lifetimes.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Checks that a count from the file is between 1 and `max`: every count sizes a table, a
/// semaphore or a pool, so a huge one must be refused here rather than fail to allocate.
fn count_up_to(n: &i64, max: usize) -> Result<usize, String> {
    usize::try_from(*n)
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {max}"))
}

/// Walks the raw config, collecting every problem instead of stopping at the first.
struct Validator<'a> {
    loc: Locator<'a>,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn report<T>(&mut self, at: &S<T>, key: &str, message: impl Into<String>) {
        let p = self.loc.problem(at.span(), key, message);
        self.problems.push(p);
    }

    /// Runs `parse` on a spanned value, reporting a failure under `key`.
    fn check<T, U, E: ToString>(
        &mut self,
        value: &S<T>,
        key: &str,
        parse: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<U> {
        match parse(value.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.report(value, key, e.to_string());
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let identity = self.identity(&raw.identity);
        let crypto = self.crypto(&raw.crypto);
        let defaults = self.limits(&raw.limits, Limits::default(), "limits");
        let shutdown_grace = match &raw.shutdown.grace {
            Some(g) => self.check(g, "shutdown.grace", |s| parse_duration(s)),
            None => Some(Duration::from_secs(30)),
        };

        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut unique = |v: &mut Self, name: &S<String>, listen: Option<SocketAddr>, key: &str| {
            if !names.insert(name.get_ref().clone()) {
                v.report(
                    name,
                    &format!("{key}.name"),
                    format!("listener name {:?} is used twice", name.get_ref()),
                );
            }
            if let Some(addr) = listen.filter(|a| a.port() != 0 && !addrs.insert(*a)) {
                v.report(
                    name,
                    &format!("{key}.listen"),
                    format!("{addr} is used by two listeners"),
                );
            }
        };

        let mut inbound = Vec::new();
        for (i, raw_in) in raw.inbound.iter().enumerate() {
            let key = format!("inbound[{i}]");
            let item = self.inbound(raw_in.get_ref(), defaults.unwrap_or_default(), &key);
            unique(
                self,
                &raw_in.get_ref().name,
                item.as_ref().map(|c| c.listen),
                &key,
            );
            inbound.extend(item);
        }
        let mut outbound = Vec::new();
        for (i, raw_out) in raw.outbound.iter().enumerate() {
            let key = format!("outbound[{i}]");
            let item = self.outbound(raw_out.get_ref(), defaults.unwrap_or_default(), &key);
            unique(
                self,
                &raw_out.get_ref().name,
                item.as_ref().map(|c| c.listen),
                &key,
            );
            outbound.extend(item);
        }
        if raw.inbound.is_empty() && raw.outbound.is_empty() {
            let p = self.loc.problem(
                0..0,
                "",
                "no listeners: add at least one [[inbound]] or [[outbound]] table",
            );
            self.problems.push(p);
        }

        let admin = match &raw.admin {
            None => Some(None),
            Some(a) => self.admin(a.get_ref()).map(Some),
        };

        let resumption = self.resumption(&raw.resumption);

        Some(Config {
            identity: identity?,
            crypto: crypto?,
            inbound,
            outbound,
            shutdown_grace: shutdown_grace?,
            admin: admin?,
            resumption: resumption?,
        })
    }

    fn resumption(&mut self, raw: &raw::RawResumption) -> Option<ResumptionConfig> {
        let mut out = ResumptionConfig::default();
        let mut ok = true;
        if let Some(f) = &raw.ticket_key_file {
            match self.check(f, "resumption.ticket_key_file", |p| {
                if p.is_empty() {
                    Err("must not be empty")
                } else {
                    Ok(PathBuf::from(p))
                }
            }) {
                Some(p) => out.ticket_key_file = Some(p),
                None => ok = false,
            }
        }
        if let Some(r) = &raw.ticket_rotation {
            match self.check(r, "resumption.ticket_rotation", |s| {
                parse_duration(s).and_then(|d| {
                    if d < Duration::from_secs(1) {
                        Err("must be at least 1s".into())
                    } else {
                        Ok(d)
                    }
                })
            }) {
                Some(d) => out.ticket_rotation = d,
                None => ok = false,
            }
        }
        if let Some(n) = &raw.session_cache_size {
            match self.check(n, "resumption.session_cache_size", |n| {
                count_up_to(n, MAX_SESSION_CACHE)
            }) {
                Some(n) => out.session_cache_size = n,
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn admin(&mut self, raw: &raw::RawAdmin) -> Option<AdminConfig> {
        let listen = self.listen(&raw.listen, "admin")?;
        if !listen.ip().is_loopback() {
            self.report(
                &raw.listen,
                "admin.listen",
                format!(
                    "{listen} is not a loopback address; the admin endpoint is unauthenticated \
                     and only listens on 127.0.0.0/8 or ::1"
                ),
            );
            return None;
        }
        Some(AdminConfig { listen })
    }

    fn identity(&mut self, raw: &S<raw::RawIdentity>) -> Option<IdentityConfig> {
        let raw = raw.get_ref();
        let trust_domain = self.check(&raw.trust_domain, "identity.trust_domain", |td| {
            validate_trust_domain(td).map(|()| td.clone())
        });
        let path = |v: &mut Self, s: &S<String>, key: &str| {
            v.check(s, key, |p| {
                if p.is_empty() {
                    Err("must not be empty")
                } else {
                    Ok(PathBuf::from(p))
                }
            })
        };
        let opt_path = |v: &mut Self, s: &Option<S<String>>, key: &str| match s {
            None => Some(None),
            Some(s) => path(v, s, key).map(Some),
        };
        let cert = opt_path(self, &raw.cert, "identity.cert");
        let bundle = opt_path(self, &raw.bundle, "identity.bundle");
        let crl = opt_path(self, &raw.crl, "identity.crl");
        let ca_dir = opt_path(self, &raw.ca_dir, "identity.ca_dir");
        let key = match &raw.key {
            None => Some(None),
            Some(k) => self
                .check(k, "identity.key", |k| {
                    if k.is_empty() {
                        Err("must not be empty")
                    } else {
                        Ok(KeyRef::parse(k))
                    }
                })
                .map(Some),
        };
        let id = match &raw.id {
            None => Some(None),
            Some(id) => self
                .check(id, "identity.id", |s| s.parse::<SpiffeId>())
                .map(Some),
        };
        let ttl = match &raw.svid_ttl {
            None => Some(Duration::from_secs(24 * 3600)),
            Some(t) => self.check(t, "identity.svid_ttl", |s| {
                parse_duration(s).and_then(|d| {
                    if d < Duration::from_secs(2) {
                        Err("must be at least 2s".into())
                    } else {
                        Ok(d)
                    }
                })
            }),
        };
        let (cert, key, bundle, crl, ca_dir, id, ttl) =
            (cert?, key?, bundle?, crl?, ca_dir?, id?, ttl?);
        let here = |v: &mut Self, msg: &str| {
            let p = v.loc.problem(raw.trust_domain.span(), "identity", msg);
            v.problems.push(p);
        };
        let (source, bundle) = match (cert, key, ca_dir, id) {
            (Some(cert), Some(key), None, None) => {
                let Some(bundle) = bundle else {
                    here(self, "identity.bundle is required with cert and key");
                    return None;
                };
                (IdentitySource::Files { cert, key }, bundle)
            }
            (None, None, Some(dir), Some(id)) => {
                let bundle = bundle.unwrap_or_else(|| dir.join("bundle.pem"));
                let dns = raw.dns.clone();
                (IdentitySource::Ca { dir, id, ttl, dns }, bundle)
            }
            _ => {
                here(
                    self,
                    "set either cert, key and bundle (files from an external PKI) or ca_dir and id \
                     (issued by the built-in CA), not a mix",
                );
                return None;
            }
        };
        let crl = match (&source, crl) {
            (_, Some(crl)) => Some(crl),
            // The built-in CA publishes its revocations next to its bundle.
            (IdentitySource::Ca { dir, .. }, None) => Some(dir.join("crl.pem")),
            (IdentitySource::Files { .. }, None) => None,
        };
        Some(IdentityConfig {
            trust_domain: trust_domain?,
            source,
            bundle,
            crl,
        })
    }

    fn crypto(&mut self, raw: &raw::RawCrypto) -> Option<CryptoConfig> {
        let mut out = CryptoConfig::default();
        if let Some(n) = &raw.max_in_flight {
            out.max_in_flight =
                self.check(n, "crypto.max_in_flight", |n| count_up_to(n, MAX_IN_FLIGHT))?;
        }
        if let Some(d) = &raw.simulate_latency {
            out.simulate_latency =
                Some(self.check(d, "crypto.simulate_latency", |s| parse_duration(s))?);
        }
        let name = match &raw.backend {
            None => "software",
            Some(b) => b.get_ref().as_str(),
        };
        let at = raw.backend.as_ref();
        out.backend = match name {
            "software" => BackendKind::Software,
            "pkcs11" => {
                let Some(p) = &raw.pkcs11 else {
                    let msg = "backend = \"pkcs11\" needs a [crypto.pkcs11] table with module and a PIN source";
                    match at {
                        Some(at) => self.report(at, "crypto.pkcs11", msg),
                        None => self
                            .problems
                            .push(self.loc.problem(0..0, "crypto.pkcs11", msg)),
                    }
                    return None;
                };
                BackendKind::Pkcs11(self.pkcs11(p)?)
            }
            "openssl" if cfg!(feature = "openssl") => {
                let settings = match &raw.openssl {
                    Some(o) => self.openssl(o)?,
                    None => OpensslSettings {
                        engine: None,
                        engine_ctrl: Vec::new(),
                        provider: None,
                    },
                };
                BackendKind::Openssl(settings)
            }
            "openssl" => {
                let at = at?;
                self.report(
                    at,
                    "crypto.backend",
                    "the openssl backend is not built into this binary; rebuild with \
                     `cargo build --release --features openssl` (needs libssl-dev)",
                );
                return None;
            }
            other => {
                let at = at?;
                self.report(
                    at,
                    "crypto.backend",
                    format!("unknown backend {other:?}; expected \"software\", \"pkcs11\" or \"openssl\""),
                );
                return None;
            }
        };
        Some(out)
    }

    fn pkcs11(&mut self, raw: &S<raw::RawPkcs11>) -> Option<Pkcs11Settings> {
        let p = raw.get_ref();
        let module = self.check(&p.module, "crypto.pkcs11.module", |m| {
            if m.is_empty() {
                Err("must not be empty")
            } else {
                Ok(PathBuf::from(m))
            }
        });
        let mut sources = Vec::new();
        if let Some(f) = &p.pin_file {
            sources.push(PinSource::File(PathBuf::from(f.get_ref())));
        }
        if let Some(e) = &p.pin_env {
            sources.push(PinSource::Env(e.get_ref().clone()));
        }
        if let Some(c) = &p.pin_credential {
            sources.push(PinSource::Credential(c.get_ref().clone()));
        }
        if sources.len() != 1 {
            self.report(
                raw,
                "crypto.pkcs11",
                "set exactly one of pin_file, pin_env or pin_credential (a PIN is never read from the command line)",
            );
            return None;
        }
        let pool_size = match &p.pool_size {
            None => Some(4),
            Some(n) => self.check(n, "crypto.pkcs11.pool_size", |n| {
                count_up_to(n, MAX_POOL_SIZE)
            }),
        };
        Some(Pkcs11Settings {
            module: module?,
            pin: sources.pop()?,
            pool_size: pool_size?,
        })
    }

    fn openssl(&mut self, raw: &S<raw::RawOpenssl>) -> Option<OpensslSettings> {
        let o = raw.get_ref();
        if o.engine.is_none() && !o.engine_ctrl.is_empty() {
            self.report(
                raw,
                "crypto.openssl.engine_ctrl",
                "engine_ctrl needs an engine",
            );
            return None;
        }
        if o.engine.is_some() && o.provider.is_some() {
            self.report(
                raw,
                "crypto.openssl",
                "set engine or provider, not both (OpenSSL 3 providers replace engines)",
            );
            return None;
        }
        Some(OpensslSettings {
            engine: o.engine.as_ref().map(|e| e.get_ref().clone()),
            engine_ctrl: o
                .engine_ctrl
                .iter()
                .map(|c| {
                    let [k, v] = c.get_ref().clone();
                    (k, v)
                })
                .collect(),
            provider: o.provider.as_ref().map(|p| p.get_ref().clone()),
        })
    }

    fn limits(&mut self, raw: &RawLimits, base: Limits, key: &str) -> Option<Limits> {
        let mut out = base;
        let mut ok = true;
        let count = |v: &mut Self, field: &Option<S<i64>>, name: &str, dst: &mut usize| {
            if let Some(n) = field {
                match v.check(n, &format!("{key}.{name}"), |n| {
                    count_up_to(n, MAX_CONNECTIONS)
                }) {
                    Some(n) => *dst = n,
                    None => return false,
                }
            }
            true
        };
        ok &= count(
            self,
            &raw.max_connections,
            "max_connections",
            &mut out.max_connections,
        );
        ok &= count(
            self,
            &raw.max_handshakes,
            "max_handshakes",
            &mut out.max_handshakes,
        );
        ok &= count(
            self,
            &raw.max_handshakes_per_source,
            "max_handshakes_per_source",
            &mut out.max_handshakes_per_source,
        );
        let duration = |v: &mut Self, field: &Option<S<String>>, name: &str, dst: &mut Duration| {
            if let Some(d) = field {
                match v.check(d, &format!("{key}.{name}"), |s| {
                    parse_duration(s).and_then(|d| {
                        if d.is_zero() {
                            Err("must be longer than zero".into())
                        } else {
                            Ok(d)
                        }
                    })
                }) {
                    Some(d) => *dst = d,
                    None => return false,
                }
            }
            true
        };
        ok &= duration(
            self,
            &raw.handshake_timeout,
            "handshake_timeout",
            &mut out.handshake_timeout,
        );
        ok &= duration(
            self,
            &raw.client_hello_timeout,
            "client_hello_timeout",
            &mut out.client_hello_timeout,
        );
        ok &= duration(
            self,
            &raw.idle_timeout,
            "idle_timeout",
            &mut out.idle_timeout,
        );
        ok &= duration(
            self,
            &raw.connect_timeout,
            "connect_timeout",
            &mut out.connect_timeout,
        );
        ok.then_some(out)
    }

    fn listen(&mut self, raw: &S<String>, key: &str) -> Option<SocketAddr> {
        self.check(raw, &format!("{key}.listen"), |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "{s:?} is not an IP:port address (e.g. \"0.0.0.0:15443\" or \"[::1]:15001\")"
                )
            })
        })
    }

    fn inbound(
        &mut self,
        raw: &raw::RawInbound,
        defaults: Limits,
        key: &str,
    ) -> Option<InboundConfig> {
        let listen = self.listen(&raw.listen, key);
        let forward = self.check(&raw.forward, &format!("{key}.forward"), |s| {
            parse_upstream(s)
        });
        let mode = match &raw.mode {
            None => Some(Mode::Strict),
            Some(m) => self.check(m, &format!("{key}.mode"), |m| match m.as_str() {
                "strict" => Ok(Mode::Strict),
                "permissive" => Ok(Mode::Permissive),
                other => Err(format!(
                    "unknown mode {other:?}; expected \"strict\" or \"permissive\""
                )),
            }),
        };
        let rules = |v: &mut Self, list: &[S<String>], name: &str| -> Option<Vec<Principal>> {
            let parsed: Vec<_> = list
                .iter()
                .enumerate()
                .map(|(i, r)| v.check(r, &format!("{key}.{name}[{i}]"), |s| s.parse::<Principal>()))
                .collect();
            parsed.into_iter().collect()
        };
        let allow = rules(self, &raw.allow, "allow");
        let deny = rules(self, &raw.deny, "deny");
        if raw.allow.is_empty() {
            self.report(
                &raw.name,
                &format!("{key}.allow"),
                "allow is empty, so this listener would refuse every peer; list the SPIFFE IDs, \
                 spiffe://td/prefix/* patterns or trust domains that may connect",
            );
        }
        let policy = Policy {
            allow: allow?,
            deny: deny?,
        };
        if mode == Some(Mode::Strict) && policy.mentions_unauthenticated() {
            let at = raw
                .allow
                .iter()
                .chain(&raw.deny)
                .find(|r| r.get_ref() == crate::policy::UNAUTHENTICATED)?;
            self.report(
                at,
                &format!("{key}.allow"),
                "\"unauthenticated\" only applies to mode = \"permissive\"",
            );
        }
        let limits = self.limits(&raw.limits, defaults, &format!("{key}.limits"));
        let resumption = match &raw.resumption {
            None => Some(SessionResumption::Tickets),
            Some(r) => self.check(r, &format!("{key}.resumption"), |r| match r.as_str() {
                "off" => Ok(SessionResumption::Off),
                "tickets" => Ok(SessionResumption::Tickets),
                "cache" => Ok(SessionResumption::Cache),
                other => Err(format!(
                    "unknown resumption {other:?}; expected \"tickets\", \"cache\" or \"off\""
                )),
            }),
        };
        let early_data = match &raw.early_data {
            None => Some(0),
            Some(n) => self.check(n, &format!("{key}.early_data"), |n| {
                u32::try_from(*n)
                    .ok()
                    .filter(|n| *n <= MAX_EARLY_DATA)
                    .ok_or(format!(
                        "must be between 0 (off) and {MAX_EARLY_DATA} bytes"
                    ))
            }),
        };
        if let (Some(n), Some(r), Some(at)) = (early_data, resumption, &raw.early_data)
            && n > 0
            && r != SessionResumption::Cache
        {
            self.report(
                at,
                &format!("{key}.early_data"),
                "0-RTT needs resumption = \"cache\": single-use server-side sessions are what \
                     stops a replayed ClientHello from delivering its early data twice",
            );
        }
        Some(InboundConfig {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            forward: forward?,
            mode: mode?,
            policy,
            proxy_protocol: raw.proxy_protocol,
            resumption: resumption?,
            early_data: early_data?,
            limits: limits?,
        })
    }

    fn outbound(
        &mut self,
        raw: &raw::RawOutbound,
        defaults: Limits,
        key: &str,
    ) -> Option<OutboundConfig> {
        let listen = self.listen(&raw.listen, key);
        let connect = self.check(&raw.connect, &format!("{key}.connect"), |s| {
            parse_host_port(s).map(|()| s.clone())
        });
        let server_id = self.check(&raw.server_id, &format!("{key}.server_id"), |s| {
            s.parse::<SpiffeId>()
        });
        let limits = self.limits(&raw.limits, defaults, &format!("{key}.limits"));
        if let Some(e) = &raw.early_data
            && *e.get_ref()
            && raw.resumption == Some(false)
        {
            self.report(
                e,
                &format!("{key}.early_data"),
                "early data is only sent on resumed sessions: it needs resumption = true",
            );
        }
        Some(OutboundConfig {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            connect: connect?,
            server_id: server_id?,
            resumption: raw.resumption.unwrap_or(true),
            early_data: raw.early_data.as_ref().is_some_and(|e| *e.get_ref()),
            limits: limits?,
        })
    }
}

fn parse_host_port(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{s:?} is not host:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\" or \"web.internal:8080\")"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || host.contains(['[', ']', '/'])
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    Ok(())
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    match s.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(Upstream::Unix(PathBuf::from(path))),
        Some(_) => Err(format!(
            "{s:?}: a Unix socket path must be absolute, as in \"unix:/run/web.sock\""
        )),
        None => parse_host_port(s).map(|()| Upstream::Tcp(s.to_owned())),
    }
}

#[cfg(test)]
mod tests;
