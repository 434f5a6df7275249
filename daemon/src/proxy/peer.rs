//! What every connection checks about its peer's chain once the handshake is done,
//! inbound and outbound alike, full or resumed.
//!
//! A full handshake verified the chain against the bundle; a resumed one did
//! not look at it again. Both directions therefore call [`admit_chain`]: the
//! chain must hold no certificate revoked under the CRLs loaded *now*, and a
//! resumed session's certificates must still be within their validity, so a
//! ticket or cached session never outlives the certificate it was made for.
//! The chain is parsed once for all of it, and for the facts a re-check keeps.

use rustls_pki_types::CertificateDer;

use super::live::PeerFacts;
use super::{Refusal, RefuseReason};
use crate::identity::{
    ParsedChain, Revocations, SpiffeId, ValidityError, check_validity, spiffe_id_in,
};

/// Refuses a peer chain that is revoked now, or (when `resumed`) no longer valid; returns
/// what a re-check needs. `id` is the SPIFFE ID the handshake established, if it read one
/// (a full handshake's verifier did); otherwise it is read from the leaf.
pub fn admit_chain(
    chain: &[CertificateDer<'_>],
    id: Option<SpiffeId>,
    revocations: &Revocations,
    resumed: bool,
) -> Result<PeerFacts, Refusal> {
    let validity_refusal = |e: ValidityError| {
        let reason = match e {
            ValidityError::Expired { .. } => RefuseReason::CertExpired,
            ValidityError::NotYetValid { .. } => RefuseReason::CertNotYetValid,
            ValidityError::Malformed => RefuseReason::BadCertificate,
        };
        Refusal::new(reason, format!("resumed session: {e}"))
    };
    let parsed = ParsedChain::parse(chain)
        .map_err(|e| Refusal::new(RefuseReason::BadCertificate, e.to_string()))?;
    let id = match id {
        Some(id) => id,
        None => {
            let leaf = parsed.certs().first().ok_or_else(|| {
                Refusal::new(RefuseReason::NoClientCert, "no certificate after handshake")
            })?;
            spiffe_id_in(leaf).map_err(|e| Refusal::new(RefuseReason::NoSpiffeId, e.to_string()))?
        }
    };
    let checks = || {
        revocations
            .check(&parsed)
            .map_err(|e| Refusal::new(RefuseReason::Revoked, e.to_string()))?;
        if resumed {
            check_validity(&parsed).map_err(validity_refusal)?;
        }
        Ok(())
    };
    checks().map_err(|r: Refusal| r.with_peer(id.as_str()))?;
    Ok(PeerFacts::of(id, &parsed))
}
