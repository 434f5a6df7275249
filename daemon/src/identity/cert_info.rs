//! A certificate summarised for operators: who, issued by whom, which serial, valid until when.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe_id_of;

/// What `/certs`, the expiry metrics and expiry warnings report about one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// The SPIFFE ID in the URI SAN, when there is exactly one.
    pub spiffe_id: Option<String>,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// End of validity as a time, for arithmetic.
    #[serde(skip)]
    pub expires: SystemTime,
    /// Start of validity as a time.
    #[serde(skip)]
    pub issued: SystemTime,
}

impl CertInfo {
    /// Summarises `cert`; `None` when it does not parse as X.509.
    pub fn of(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, x509) = X509Certificate::from_der(cert).ok()?;
        let validity = x509.validity();
        let not_after = validity.not_after.timestamp();
        Some(Self {
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            spiffe_id: spiffe_id_of(cert).ok().map(|id| id.to_string()),
            serial: hex::encode(x509.tbs_certificate.raw_serial()),
            not_before: rfc3339(validity.not_before.timestamp()),
            not_after: rfc3339(not_after),
            expires: SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
            issued: SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(validity.not_before.timestamp()).unwrap_or(0)),
        })
    }

    /// The SPIFFE ID if there is one, else the subject: how logs and metrics name it.
    pub fn name(&self) -> &str {
        self.spiffe_id.as_deref().unwrap_or(&self.subject)
    }
}

/// Unix seconds as RFC 3339 (`2025-06-01T12:00:00Z`), the way every certificate time is shown.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Why a certificate chain is not valid at this moment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    /// A certificate's notAfter has passed.
    #[error("certificate {subject} expired at {not_after}")]
    Expired {
        /// Its subject.
        subject: String,
        /// When it expired.
        not_after: String,
    },
    /// A certificate's notBefore is still ahead.
    #[error("certificate {subject} is not valid before {not_before}")]
    NotYetValid {
        /// Its subject.
        subject: String,
        /// When it becomes valid.
        not_before: String,
    },
    /// A certificate does not parse.
    #[error("certificate does not parse as X.509")]
    Malformed,
}

/// A peer's chain (leaf first) parsed once, for every check made after the handshake.
pub struct ParsedChain<'a>(Vec<X509Certificate<'a>>);

impl<'a> ParsedChain<'a> {
    /// Parses every certificate of `chain`.
    pub fn parse(chain: &'a [CertificateDer<'_>]) -> Result<Self, ValidityError> {
        chain
            .iter()
            .map(|c| X509Certificate::from_der(c).map(|(_, x509)| x509))
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(|_| ValidityError::Malformed)
    }

    /// The certificates, leaf first.
    pub fn certs(&self) -> &[X509Certificate<'a>] {
        &self.0
    }
}

/// Checks that every certificate of `chain` is within its validity period now.
///
/// A resumed session skips certificate verification, so this is what keeps a
/// ticket from outliving the certificate it was issued for.
pub fn check_validity(chain: &ParsedChain<'_>) -> Result<(), ValidityError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for x509 in chain.certs() {
        let validity = x509.validity();
        if now > validity.not_after.timestamp() {
            return Err(ValidityError::Expired {
                subject: x509.subject().to_string(),
                not_after: rfc3339(validity.not_after.timestamp()),
            });
        }
        if now < validity.not_before.timestamp() {
            return Err(ValidityError::NotYetValid {
                subject: x509.subject().to_string(),
                not_before: rfc3339(validity.not_before.timestamp()),
            });
        }
    }
    Ok(())
}
