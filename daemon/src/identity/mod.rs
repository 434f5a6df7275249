//! Who we are and who the peer is: SPIFFE IDs, SVIDs, trust bundles and certificate verifiers.

mod cert_info;
mod revocation;
mod spiffe;
mod svid;
mod verifier;
mod workload;

pub use cert_info::{CertInfo, ParsedChain, ValidityError, check_validity, rfc3339};
pub use revocation::{Revocations, Revoked};
pub use spiffe::{SpiffeId, SpiffeIdError, validate_trust_domain};
pub use svid::{
    Bundle, IdentityError, Svid, SvidError, load_bundle, load_certs, spiffe_id_in, spiffe_id_of,
};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier, TrustDomains};
pub use workload::{WorkloadApi, WorkloadSnapshot, endpoint as workload_endpoint};
