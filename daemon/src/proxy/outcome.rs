//! How a connection ends: forwarded then closed, or refused with a reason.
//!
//! The vocabulary every stage of the data path, the metrics and the access log
//! share. It imports nothing from the rest of the proxy, so metrics and the
//! proxy can both depend on it without depending on each other.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::{CertificateError, Error as TlsError};
use tracing::{info, warn};

use crate::identity::SvidError;

/// The tracing target of the per-connection access log lines, so they can be filtered or routed alone.
pub const ACCESS_LOG: &str = "mtlsd::access";

/// Why a connection was refused; the `as_str` form is the `reason` field of logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The listener is at `max_connections`.
    TooManyConnections,
    /// The handshake (including waiting for a slot) took longer than `handshake_timeout`.
    HandshakeTimeout,
    /// The peer closed the connection before the handshake finished.
    PeerClosed,
    /// The first flight was not a TLS ClientHello, or was malformed.
    BadClientHello,
    /// A malformed or out-of-order handshake message after the ClientHello.
    BadHandshakeMessage,
    /// The peer's address already has `max_handshakes_per_source` connections before or in their handshake.
    TooManyFromSource,
    /// The client sent no certificate.
    NoClientCert,
    /// The peer's chain does not lead to a root of our bundle.
    UnknownIssuer,
    /// The peer's certificate has expired.
    CertExpired,
    /// The peer's certificate is not valid yet.
    CertNotYetValid,
    /// The peer's certificate is unusable for another reason (bad signature, wrong usage, ...).
    BadCertificate,
    /// The certificate has no single valid SPIFFE ID.
    NoSpiffeId,
    /// The SPIFFE ID is in a trust domain we do not accept.
    ForeignTrustDomain,
    /// The server's SPIFFE ID is not the one the route expects.
    UnexpectedServerId,
    /// Any other TLS failure (no common version or cipher, an alert from the peer, ...).
    TlsError,
    /// No allow rule matched the peer (default deny).
    NotAllowed,
    /// A deny rule matched the peer.
    Denied,
    /// The upstream could not be reached.
    UpstreamUnavailable,
    /// A certificate of the peer's chain is on a loaded CRL.
    Revoked,
    /// Our private key could not sign: its device failed and no software copy exists.
    KeyUnavailable,
    /// Our key's device stayed saturated (`max_in_flight`) past the wait.
    DeviceBusy,
    /// A bug in mtlsd: the connection's task panicked. Other connections are unaffected.
    Internal,
}

impl RefuseReason {
    /// Stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooManyConnections => "too_many_connections",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::PeerClosed => "peer_closed",
            Self::BadClientHello => "bad_client_hello",
            Self::BadHandshakeMessage => "bad_handshake_message",
            Self::TooManyFromSource => "too_many_from_source",
            Self::NoClientCert => "no_client_cert",
            Self::UnknownIssuer => "unknown_issuer",
            Self::CertExpired => "cert_expired",
            Self::CertNotYetValid => "cert_not_yet_valid",
            Self::BadCertificate => "bad_certificate",
            Self::NoSpiffeId => "no_spiffe_id",
            Self::ForeignTrustDomain => "foreign_trust_domain",
            Self::UnexpectedServerId => "unexpected_server_id",
            Self::TlsError => "tls_error",
            Self::NotAllowed => "not_allowed",
            Self::Denied => "denied",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Revoked => "revoked",
            Self::KeyUnavailable => "key_unavailable",
            Self::DeviceBusy => "device_busy",
            Self::Internal => "internal_error",
        }
    }

    /// Whether the connection failed in the TLS handshake (as opposed to limits, policy or upstream).
    pub fn is_handshake_failure(self) -> bool {
        !matches!(
            self,
            Self::TooManyConnections
                | Self::TooManyFromSource
                | Self::NotAllowed
                | Self::Denied
                | Self::UpstreamUnavailable
                | Self::Internal
        )
    }

    /// Classifies the error a failed handshake returned; `first_flight` says whether the
    /// ClientHello itself was being processed, which decides what a protocol error is called.
    pub fn of_handshake(err: &io::Error, first_flight: bool) -> Self {
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
            return match err.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe => Self::PeerClosed,
                _ => Self::TlsError,
            };
        };
        match tls {
            TlsError::NoCertificatesPresented => Self::NoClientCert,
            TlsError::InvalidMessage(_)
            | TlsError::InappropriateMessage { .. }
            | TlsError::InappropriateHandshakeMessage { .. }
            | TlsError::PeerMisbehaved(_) => {
                if first_flight {
                    Self::BadClientHello
                } else {
                    Self::BadHandshakeMessage
                }
            }
            TlsError::InvalidCertificate(cert) => match cert {
                // A chain that names one of our CAs as issuer but is not signed by it (a rogue CA
                // with the same name) was not issued by anything we trust.
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    Self::UnknownIssuer
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::CertExpired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::CertNotYetValid
                }
                CertificateError::Other(other) => match other.0.downcast_ref::<SvidError>() {
                    Some(SvidError::ForeignTrustDomain { .. }) => Self::ForeignTrustDomain,
                    Some(SvidError::UnexpectedServerId { .. }) => Self::UnexpectedServerId,
                    Some(_) => Self::NoSpiffeId,
                    None => Self::BadCertificate,
                },
                _ => Self::BadCertificate,
            },
            TlsError::Other(other) => match other.0.downcast_ref::<mtlsd_crypto::Error>() {
                Some(mtlsd_crypto::Error::DeviceUnavailable { .. }) => Self::KeyUnavailable,
                Some(mtlsd_crypto::Error::DeviceBusy { .. }) => Self::DeviceBusy,
                _ => Self::TlsError,
            },
            _ => Self::TlsError,
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused connection: the reason, a human-readable detail and, once known, the peer.
#[derive(Debug)]
pub struct Refusal {
    /// Machine-readable reason.
    pub reason: RefuseReason,
    /// What exactly happened.
    pub detail: String,
    /// The peer's SPIFFE ID when the refusal came after the handshake.
    pub peer: Option<String>,
}

impl Refusal {
    /// A refusal before the peer's identity is known.
    pub fn new(reason: RefuseReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            peer: None,
        }
    }

    /// Records who was refused.
    pub fn with_peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_owned());
        self
    }

    /// Emits the single "connection refused" log line.
    pub fn log(&self, listener: &str, src: SocketAddr) {
        warn!(
            target: ACCESS_LOG,
            listener = %listener,
            src = %src,
            reason = self.reason.as_str(),
            peer_id = self.peer.as_deref(),
            detail = %self.detail,
            "connection refused"
        );
    }
}

/// A connection that was forwarded and has now closed: everything its log line says.
#[derive(Debug)]
pub struct Closed {
    /// The peer's SPIFFE ID (inbound), the server's (outbound) or `unauthenticated`.
    pub peer_id: String,
    /// The allow rule that admitted the peer (inbound only).
    pub rule: Option<String>,
    /// The serial of the peer's leaf certificate, hex (TLS peers).
    pub peer_serial: Option<String>,
    /// `full`, `resumed` or `early_data`; `None` for plaintext peers.
    pub handshake: Option<HandshakeKind>,
    /// Where the bytes went.
    pub upstream: String,
    /// Byte counts and close reason.
    pub forwarded: Forwarded,
    /// Since accept.
    pub duration: Duration,
}

/// How a connection ended: forwarded then closed, or refused.
pub type Outcome = Result<Closed, Refusal>;

/// Emits the single log line that ends every connection.
pub(crate) fn log_outcome(outcome: &Outcome, listener: &str, src: SocketAddr) {
    match outcome {
        Err(refusal) => refusal.log(listener, src),
        Ok(closed) => info!(
            target: ACCESS_LOG,
            listener = %listener,
            src = %src,
            peer_id = %closed.peer_id,
            rule = closed.rule.as_deref(),
            handshake = closed.handshake.map(HandshakeKind::as_str),
            upstream = %closed.upstream,
            bytes_from_peer = closed.forwarded.from_peer,
            bytes_to_peer = closed.forwarded.to_peer,
            duration_ms = closed.duration.as_millis() as u64,
            reason = closed.forwarded.reason.as_str(),
            error = closed.forwarded.error.as_ref().map(tracing::field::display),
            "connection closed"
        ),
    }
}

/// How a TLS session was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// Certificates exchanged and verified.
    Full,
    /// A previous session resumed from a ticket or the session cache.
    Resumed,
    /// Resumed, with early data accepted.
    EarlyData,
}

impl HandshakeKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
            Self::EarlyData => "early_data",
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished sending.
    Completed,
    /// No bytes moved either way for `idle_timeout`.
    IdleTimeout,
    /// The shutdown grace period ran out while the connection was still open.
    ShutdownGraceElapsed,
    /// The TLS peer ended the connection with a fatal alert (outbound: `access_denied` means
    /// the remote's policy refused our identity).
    PeerAlert,
    /// A read or write failed on either side.
    Error,
    /// A CRL loaded while it was open revokes a certificate of the peer's chain.
    RevokedWhileOpen,
    /// The policy in force no longer admits the peer (or, outbound, `server_id` changed).
    DeauthorizedWhileOpen,
    /// The trust bundle in force no longer holds the CA the peer's chain ends at.
    UntrustedWhileOpen,
    /// Open longer than the listener's `max_connection_lifetime`.
    LifetimeExceeded,
}

impl CloseReason {
    /// How a copy loop that failed with `err` ended: a TLS alert from the peer, or an error.
    pub fn of_error(err: &io::Error) -> Self {
        match err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
            Some(TlsError::AlertReceived(_)) => Self::PeerAlert,
            _ => Self::Error,
        }
    }

    /// Stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::IdleTimeout => "idle_timeout",
            Self::ShutdownGraceElapsed => "shutdown_grace_elapsed",
            Self::PeerAlert => "peer_alert",
            Self::Error => "error",
            Self::RevokedWhileOpen => "revoked_while_open",
            Self::DeauthorizedWhileOpen => "deauthorized_while_open",
            Self::UntrustedWhileOpen => "untrusted_while_open",
            Self::LifetimeExceeded => "max_connection_lifetime",
        }
    }
}

/// What a finished forward did.
#[derive(Debug)]
pub struct Forwarded {
    /// Bytes read from the peer and written towards the upstream.
    pub from_peer: u64,
    /// Bytes read from the upstream and written towards the peer.
    pub to_peer: u64,
    /// Why it ended.
    pub reason: CloseReason,
    /// The I/O error, when `reason` is [`CloseReason::Error`].
    pub error: Option<io::Error>,
}

impl Forwarded {
    /// A forward that failed before any byte was copied.
    pub fn failed(error: io::Error) -> Self {
        Self {
            from_peer: 0,
            to_peer: 0,
            reason: CloseReason::Error,
            error: Some(error),
        }
    }
}
