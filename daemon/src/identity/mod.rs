//! Who we are and who the peer is: SPIFFE IDs, SVIDs, trust bundles and certificate verifiers.

mod spiffe;
mod svid;
mod verifier;

pub use spiffe::{SpiffeId, SpiffeIdError, validate_trust_domain};
pub use svid::{IdentityError, Svid, SvidError, load_bundle, load_certs, spiffe_id_of};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};
