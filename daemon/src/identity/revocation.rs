//! Revoked certificates, from CRL files, checked on every connection (resumed ones included).
//!
//! A certificate is revoked when a loaded CRL names its issuer and serial. The
//! check runs after every handshake, full or resumed, for every certificate
//! of the peer's chain, so a revocation takes effect on the next connection
//! after the CRL is reloaded, whether or not the peer holds a session ticket.
//! CRL files are local configuration, like the bundle: they are trusted as
//! read, not verified against a signature.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{IdentityError, ParsedChain};

/// The set of revoked (issuer, serial) pairs from every configured CRL.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    files: Vec<PathBuf>,
}

/// A revoked certificate found in a peer's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate {subject} (serial {serial}) is revoked")]
pub struct Revoked {
    /// The certificate's subject.
    pub subject: String,
    /// Its serial number, hex.
    pub serial: String,
}

impl Revocations {
    /// Loads every CRL (PEM, one or more per file) in `files`.
    pub fn load(files: &[PathBuf]) -> Result<Self, IdentityError> {
        let mut revoked = HashSet::new();
        for path in files {
            for crl in read_crls(path)? {
                let (_, parsed) = CertificateRevocationList::from_der(&crl).map_err(|e| {
                    IdentityError::Certs {
                        path: path.clone(),
                        reason: format!("malformed CRL: {e}"),
                    }
                })?;
                let issuer = parsed.issuer().as_raw().to_vec();
                for entry in parsed.iter_revoked_certificates() {
                    revoked.insert((issuer.clone(), entry.raw_serial().to_vec()));
                }
            }
        }
        Ok(Self {
            revoked,
            files: files.to_vec(),
        })
    }

    /// How many certificates are revoked.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether no certificate is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// The CRL files these came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether a CRL revokes the certificate `serial` of `issuer` (a DER name).
    pub fn revokes(&self, issuer: &[u8], serial: &[u8]) -> bool {
        // Borrowed lookups would need a different key type; the set is small and this is
        // only asked for open connections after a change.
        self.revoked.contains(&(issuer.to_vec(), serial.to_vec()))
    }

    /// Fails with the first certificate of `chain` that a CRL revokes.
    pub fn check(&self, chain: &ParsedChain<'_>) -> Result<(), Revoked> {
        if self.revoked.is_empty() {
            return Ok(());
        }
        for x509 in chain.certs() {
            let key = (
                x509.issuer().as_raw().to_vec(),
                x509.tbs_certificate.raw_serial().to_vec(),
            );
            if self.revoked.contains(&key) {
                return Err(Revoked {
                    subject: x509.subject().to_string(),
                    serial: hex::encode(&key.1),
                });
            }
        }
        Ok(())
    }
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, IdentityError> {
    let err = |reason: String| IdentityError::Certs {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("malformed PEM: {e}")))?;
    if crls.is_empty() {
        return Err(err("no PEM X509 CRL found".into()));
    }
    Ok(crls)
}
