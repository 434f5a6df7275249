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
    Ca(#[from] crate::ca::CaError),
    /// Our certificate, key or bundle could not be loaded.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
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
    #[error("crypto backend {backend}: {source}")]
    Backend {
        /// The backend named in `[crypto]`.
        backend: &'static str,
        /// What failed.
        #[source]
        source: mtlsd_crypto::Error,
    },
    /// A listener's TLS configuration was rejected by rustls.
    #[error("listener {listener}: {source}")]
    Tls {
        /// The listener.
        listener: String,
        /// What rustls said.
        #[source]
        source: TlsError,
    },
    /// The session ticket keys could not be loaded.
    #[error("resumption.ticket_key_file: {0}")]
    TicketKeys(#[source] TicketKeyError),
    /// Loading panicked: a bug in mtlsd, reported instead of ending the process.
    #[error("internal error while loading the configuration: {0}")]
    Panicked(String),
    /// A listener could not bind its address.
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
