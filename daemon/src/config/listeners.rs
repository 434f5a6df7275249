//! The typed settings of inbound and outbound listeners: addresses, upstreams, policy,
//! resumption, early data and resource limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::as_display;
use super::duration::{as_duration, as_optional_duration};
use super::http::{HttpConfig, Protocol};
use crate::identity::SpiffeId;
use crate::policy::Policy;

/// The largest `max_connections` or `max_handshakes`: far beyond any descriptor limit.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// The largest `early_data` a listener may accept (bytes).
///
/// When rustls *rejects* early data (a replayed or unknown session) it keeps the
/// undecryptable records in its receive buffer, which holds one record of about
/// 18 KiB, until the client's next good record. More than 16 KiB of rejected early
/// data cannot fall back to a full handshake, so no listener advertises more.
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

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
    /// Bytes forwarded as they are, or HTTP requests authorized one by one.
    pub protocol: Protocol,
    /// The HTTP settings, present exactly when `protocol` is HTTP.
    pub http: Option<HttpConfig>,
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
    /// A connection open this long is closed, so it re-handshakes under the identity in force.
    #[serde(serialize_with = "as_optional_duration")]
    pub max_connection_lifetime: Option<Duration>,
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
            max_connection_lifetime: None,
        }
    }
}

/// Splits `host:port` (an IPv6 host in brackets, returned without them) without resolving
/// the host; `None` unless the host is non-empty and the port is 1 to 65535.
pub fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(['[', ']', '/'])).then_some((host, port))
}

/// What every listener has, inbound or outbound: a name, an address and limits.
pub trait ListenerCommon {
    /// Unique listener name, used in logs and metrics.
    fn name(&self) -> &str;
    /// The configured listen address (port 0 means "any free port").
    fn listen(&self) -> SocketAddr;
    /// The limits in force for it.
    fn limits(&self) -> &Limits;
}

impl ListenerCommon for InboundConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl ListenerCommon for OutboundConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}
