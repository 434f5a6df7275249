//! What every connection checks about its peer's chain once the handshake is done,
//! inbound and outbound alike, full or resumed.
//!
//! A full handshake verified the chain against the bundle; a resumed one did
//! not look at it again. Both directions therefore call [`check_chain`]: the
//! chain must hold no certificate revoked under the CRLs loaded *now*, and a
//! resumed session's certificates must still be within their validity, so a
//! ticket or cached session never outlives the certificate it was made for.

use rustls_pki_types::CertificateDer;

use super::{Refusal, RefuseReason};
use crate::identity::{Revocations, ValidityError, check_validity};

/// Refuses a peer chain that is revoked now, or (when `resumed`) no longer valid.
pub fn check_chain(
    chain: &[CertificateDer<'_>],
    revocations: &Revocations,
    resumed: bool,
) -> Result<(), Refusal> {
    revocations
        .check(chain)
        .map_err(|e| Refusal::new(RefuseReason::Revoked, e.to_string()))?;
    if resumed {
        check_validity(chain).map_err(|e| {
            let reason = match e {
                ValidityError::Expired { .. } => RefuseReason::CertExpired,
                ValidityError::NotYetValid { .. } => RefuseReason::CertNotYetValid,
                ValidityError::Malformed => RefuseReason::BadCertificate,
            };
            Refusal::new(reason, format!("resumed session: {e}"))
        })?;
    }
    Ok(())
}
