//! Reading SPIFFE identities out of X.509 certificates, and loading our own SVID and bundle.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mtlsd_crypto::{Backend, KeyRef};
use rustls::RootCertStore;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{SpiffeId, SpiffeIdError};

/// Why a certificate does not carry a usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The DER does not parse as an X.509 certificate.
    #[error("certificate does not parse as X.509")]
    Malformed,
    /// No URI SAN at all.
    #[error("certificate has no URI SAN, so no SPIFFE ID")]
    NoSpiffeId,
    /// More than one URI SAN; an X.509-SVID has exactly one.
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUris(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    InvalidId {
        /// The URI as found.
        uri: String,
        /// What is wrong with it.
        reason: SpiffeIdError,
    },
    /// The ID belongs to a trust domain this bundle does not vouch for.
    #[error("SPIFFE ID {id} is outside trust domain {expected}")]
    ForeignTrustDomain {
        /// The peer's ID.
        id: SpiffeId,
        /// The trust domain we accept.
        expected: String,
    },
    /// A server presented a different ID than the route expects.
    #[error("server presented {got}, expected {expected}")]
    UnexpectedServerId {
        /// What the route requires.
        expected: SpiffeId,
        /// What the server presented.
        got: SpiffeId,
    },
}

/// Extracts the single SPIFFE ID from a certificate's URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, x509) = X509Certificate::from_der(cert).map_err(|_| SvidError::Malformed)?;
    spiffe_id_in(&x509)
}

/// Extracts the single SPIFFE ID from an already parsed certificate's URI SAN.
pub fn spiffe_id_in(x509: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = x509
        .subject_alternative_name()
        .map_err(|_| SvidError::Malformed)?;
    let mut uris = san
        .iter()
        .flat_map(|ext| &ext.value.general_names)
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.count()) {
        (None, _) => Err(SvidError::NoSpiffeId),
        (Some(uri), 0) => uri.parse().map_err(|reason| SvidError::InvalidId {
            uri: uri.to_owned(),
            reason,
        }),
        (Some(_), more) => Err(SvidError::MultipleUris(more + 1)),
    }
}

/// Why our own identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A certificate or bundle file could not be read or holds no certificate.
    #[error("{path}: {reason}")]
    Certs {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The private key could not be loaded by the backend.
    #[error(transparent)]
    Key(#[from] mtlsd_crypto::Error),
    /// Our own certificate is not a usable SVID.
    #[error("{path}: {cause}")]
    Svid {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        cause: SvidError,
    },
    /// The key does not belong to the certificate.
    #[error("key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key reference.
        key: String,
    },
}

/// Reads every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let err = |reason: String| IdentityError::Certs {
        path: path.to_owned(),
        reason,
    };
    let pem = fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates found".into()));
    }
    Ok(certs)
}

/// A trust bundle: the CA certificates peers must chain to.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The trust anchors, as verifiers use them.
    pub roots: Arc<RootCertStore>,
    /// The certificates as read, for reporting.
    pub certs: Vec<CertificateDer<'static>>,
}

/// Reads a trust bundle from a PEM file.
pub fn load_bundle(path: &Path) -> Result<Bundle, IdentityError> {
    Bundle::from_certs(load_certs(path)?, path)
}

impl Bundle {
    /// A bundle of `certs`; `origin` names where they came from in errors.
    pub fn from_certs(
        certs: Vec<CertificateDer<'static>>,
        origin: &Path,
    ) -> Result<Self, IdentityError> {
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| IdentityError::Certs {
                path: origin.to_owned(),
                reason: format!("unusable CA certificate: {e}"),
            })?;
        }
        if certs.is_empty() {
            return Err(IdentityError::Certs {
                path: origin.to_owned(),
                reason: "no CA certificate".into(),
            });
        }
        Ok(Self {
            roots: Arc::new(roots),
            certs,
        })
    }
}

/// Our SVID: certificate chain, signing key and the SPIFFE ID they prove.
#[derive(Debug, Clone)]
pub struct Svid {
    /// Our SPIFFE ID, read from the leaf certificate.
    pub id: SpiffeId,
    /// Chain and key, as rustls presents them.
    pub certified_key: Arc<CertifiedKey>,
}

impl Svid {
    /// Loads a leaf-first chain and its key through `backend`, checking that they belong together.
    pub fn load(
        cert_path: &Path,
        key: &KeyRef,
        backend: &dyn Backend,
    ) -> Result<Self, IdentityError> {
        Self::with_key(cert_path, key, backend.load_signing_key(key)?)
    }

    /// Loads a leaf-first chain for an already loaded `signing_key` (named `key` in errors).
    pub fn with_key(
        cert_path: &Path,
        key: &KeyRef,
        signing_key: Arc<dyn SigningKey>,
    ) -> Result<Self, IdentityError> {
        Self::from_chain(load_certs(cert_path)?, cert_path, key, signing_key)
    }

    /// An SVID from a leaf-first chain already in memory; `origin` and `key` name them in errors.
    pub fn from_chain(
        chain: Vec<CertificateDer<'static>>,
        origin: &Path,
        key: &KeyRef,
        signing_key: Arc<dyn SigningKey>,
    ) -> Result<Self, IdentityError> {
        let cert_path = origin;
        let Some(leaf) = chain.first() else {
            return Err(IdentityError::Certs {
                path: origin.to_owned(),
                reason: "no certificate".into(),
            });
        };
        let id = spiffe_id_of(leaf).map_err(|cause| IdentityError::Svid {
            path: cert_path.to_owned(),
            cause,
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            // A device key may not reveal its public half; the handshake will tell.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(IdentityError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key.to_string(),
                });
            }
        }
        Ok(Self {
            id,
            certified_key: Arc::new(certified_key),
        })
    }
}
