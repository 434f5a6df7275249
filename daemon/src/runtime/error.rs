//! Why the daemon could not start, or a reload was rejected.

use std::net::SocketAddr;

use rustls::Error as TlsError;

use crate::identity::IdentityError;
use crate::tls::tickets::TicketKeyError;

/// Why the daemon could not start, or a reload was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The built-in CA could not issue our SVID.
    #[error("identity.ca_dir: {0}")]
    Ca(crate::ca::CaError),
    /// Our certificate, key or bundle could not be loaded.
    #[error("identity: {0}")]
    Identity(IdentityError),
    /// The certificate names a different trust domain than the config.
    #[error("identity.cert is {id}, outside identity.trust_domain {trust_domain:?}")]
    TrustDomainMismatch {
        /// The SVID's ID.
        id: String,
        /// The configured trust domain.
        trust_domain: String,
    },
    /// The CA directory serves another trust domain than the config's identity.
    #[error(
        "identity.ca_dir {} issues for {ca}, identity.id is {id}, identity.trust_domain is {trust_domain}",
        dir.display()
    )]
    CaTrustDomain {
        /// The CA directory.
        dir: std::path::PathBuf,
        /// The trust domain the CA issues for.
        ca: String,
        /// The configured SPIFFE ID.
        id: String,
        /// The configured trust domain.
        trust_domain: String,
    },
    /// The crypto backend could not be opened (module, engine, provider or PIN).
    #[error("crypto backend {backend}: {cause}")]
    Backend {
        /// The backend named in `[crypto]`.
        backend: &'static str,
        /// What failed.
        cause: mtlsd_crypto::Error,
    },
    /// A listener's TLS configuration was rejected by rustls.
    #[error("listener {listener}: {cause}")]
    Tls {
        /// The listener.
        listener: String,
        /// What rustls said.
        cause: TlsError,
    },
    /// An HTTP listener's JWT keys (a JWKS file, or the CAs of a JWKS URI) could not be loaded.
    #[error("listener {listener}: {cause}")]
    Http {
        /// The listener.
        listener: String,
        /// What failed.
        cause: String,
    },
    /// The audit file could not be opened.
    #[error("{0}")]
    Audit(crate::audit::AuditError),
    /// The SPIFFE Workload API gave no usable identity.
    #[error("{0}")]
    Workload(String),
    /// The session ticket keys could not be loaded.
    #[error("resumption.ticket_key_file: {0}")]
    TicketKeys(TicketKeyError),
    /// Loading panicked: a bug in mtlsd, reported instead of ending the process.
    #[error("internal error while loading the configuration: {0}")]
    Panicked(String),
    /// A listener could not bind its address.
    #[error("listener {listener}: cannot listen on {addr}: {cause}")]
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
}

// By hand rather than `#[from]`, which would also make the wrapped error the `source()`:
// the message already quotes it (see ARCHITECTURE.md, Errors).
impl From<crate::ca::CaError> for StartError {
    fn from(e: crate::ca::CaError) -> Self {
        Self::Ca(e)
    }
}

impl From<IdentityError> for StartError {
    fn from(e: IdentityError) -> Self {
        Self::Identity(e)
    }
}
