//! Loading our identity for a (re)load: the crypto backend, our SVID (from files or issued
//! by the built-in CA), the bundle and the CRL, on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use mtlsd_crypto::software::Software;
use mtlsd_crypto::{Backend, KeyRef};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::info;

use super::StartError;
use crate::ca::{Authority, LeafSpec};
use crate::config::{Config, CryptoConfig, IdentityConfig, IdentitySource};
use crate::identity::{IdentityError, Revocations, SpiffeId, Svid, load_bundle, rfc3339};
use crate::signing::{backend_for, load_signing_key};
use crate::tls::TlsIdentity;

/// An open crypto backend and the `[crypto]` settings it was opened with.
pub(super) type OpenBackend = (CryptoConfig, Arc<dyn Backend>);

/// Loads our SVID (its key through `backend`, or freshly issued by the built-in CA), bundle
/// and CRL, and checks they agree with the trust domain.
pub fn load_identity(
    config: &IdentityConfig,
    crypto: &CryptoConfig,
    backend: &dyn Backend,
) -> Result<TlsIdentity, StartError> {
    let (svid, device, renew_at) = match &config.source {
        IdentitySource::Files { cert, key } => {
            let (signing, device) = load_signing_key(crypto, backend, key)
                .map_err(|e| StartError::Identity(IdentityError::Key(e)))?;
            (Svid::with_key(cert, key, signing)?, device, None)
        }
        IdentitySource::Ca { dir, id, ttl, dns } => {
            let ca = Authority::open(dir)?;
            let mut spec = LeafSpec::new(id.clone(), *ttl);
            spec.dns_names = dns.clone();
            let issued = ca.issue(&spec)?;
            let signing = Software::new()
                .key_from_pem(issued.key_pem.as_bytes())
                .map_err(|e| StartError::Identity(IdentityError::Key(e)))?;
            let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    StartError::Identity(IdentityError::Certs {
                        path: dir.clone(),
                        reason: format!("issued chain: {e}"),
                    })
                })?;
            let origin = dir.join("(issued in memory)");
            let svid = Svid::from_chain(chain, &origin, &KeyRef::File(origin.clone()), signing)?;
            let not_after = rfc3339(issued.not_after.unix_timestamp());
            info!(id = %id, serial = %issued.serial, not_after = %not_after, ca = %dir.display(), "SVID issued by the built-in CA");
            (svid, None, Some(renewal_time(*ttl)))
        }
    };
    if svid.id.trust_domain() != config.trust_domain {
        return Err(StartError::TrustDomainMismatch {
            id: svid.id.to_string(),
            trust_domain: config.trust_domain.clone(),
        });
    }
    Ok(TlsIdentity {
        svid,
        bundle: load_bundle(&config.bundle)?,
        trust_domain: config.trust_domain.clone(),
        provider: backend.provider().clone(),
        device,
        revocations: Arc::new(Revocations::load(config.crl.as_slice())?),
        renew_at,
    })
}

/// Checks that `config`'s identity loads, without serving and without side effects: files
/// and keys are loaded; a CA directory is opened and checked to serve our trust domain, but
/// issues nothing (that would fill its ledger). Returns the SPIFFE ID we would serve as.
pub fn check_identity(config: &Config) -> Result<SpiffeId, StartError> {
    let identity = &config.identity;
    match &identity.source {
        IdentitySource::Ca { dir, id, ttl, .. } => {
            let ca = Authority::open(dir)?;
            // The SVID the daemon would issue at start must fit in the intermediate's
            // validity, or the start fails; say so now, with both dates.
            ca.check_ttl(*ttl)?;
            if ca.trust_domain() != identity.trust_domain
                || id.trust_domain() != identity.trust_domain
            {
                return Err(StartError::CaTrustDomain {
                    dir: dir.clone(),
                    ca: ca.trust_domain().to_owned(),
                    id: id.to_string(),
                    trust_domain: identity.trust_domain.clone(),
                });
            }
            load_bundle(&identity.bundle)?;
            Revocations::load(identity.crl.as_slice())?;
            Ok(id.clone())
        }
        IdentitySource::Files { .. } => {
            let (_, tls) = load_blocking(None, config)?;
            Ok(tls.svid.id)
        }
    }
}

/// When to renew an SVID that lives `ttl`: at half its life, ± a tenth, so a fleet started
/// together does not renew together.
fn renewal_time(ttl: Duration) -> std::time::Instant {
    use aws_lc_rs::rand::SecureRandom;
    let mut byte = [0u8; 2];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut byte);
    let unit = f64::from(u16::from_be_bytes(byte)) / f64::from(u16::MAX); // 0..=1
    let jitter = ttl.mul_f64(0.2 * unit); // 0 .. ttl/5
    std::time::Instant::now() + ttl / 2 - ttl / 10 + jitter
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Opens the backend `config` names (reusing `current` when `[crypto]` is unchanged) and loads the identity.
///
/// This reads files, may wait for the CA directory's lock and may open a PKCS#11 module, so it
/// runs on the blocking pool, never on an event-loop thread.
pub(super) async fn load(
    current: Option<&OpenBackend>,
    config: &Config,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let (current, config) = (current.cloned(), config.clone());
    tokio::task::spawn_blocking(move || load_blocking(current.as_ref(), &config))
        .await
        .unwrap_or_else(|e| {
            // A bug while loading must reject this (re)load, not take the serving daemon down.
            Err(StartError::Panicked(panic_message(e)))
        })
}

fn load_blocking(
    current: Option<&OpenBackend>,
    config: &Config,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let backend = match current {
        Some((c, b)) if *c == config.crypto => b.clone(),
        _ => backend_for(&config.crypto).map_err(|source| StartError::Backend {
            backend: config.crypto.backend.name(),
            cause: source,
        })?,
    };
    let tls = load_identity(&config.identity, &config.crypto, backend.as_ref())?;
    Ok(((config.crypto.clone(), backend), tls))
}
