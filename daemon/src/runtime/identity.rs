//! Loading our identity for a (re)load: the crypto backend, our SVID (from files or issued
//! by the built-in CA), the bundle and the CRL, on the blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
use crate::identity::{
    Bundle, IdentityError, Revocations, SpiffeId, Svid, WorkloadApi, WorkloadSnapshot, load_bundle,
    rfc3339,
};
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
    workload: Option<&WorkloadSnapshot>,
) -> Result<TlsIdentity, StartError> {
    let (svid, device, renew_at) = match &config.source {
        IdentitySource::WorkloadApi { socket, .. } => {
            let snapshot = workload.ok_or_else(|| no_snapshot(socket))?;
            // The key arrives in memory and stays there, whatever [crypto] says.
            let signing = Software::new()
                .key_from_pkcs8_der(&snapshot.key)
                .map_err(|e| StartError::Identity(IdentityError::Key(e)))?;
            let origin = PathBuf::from(format!("(Workload API {socket})"));
            let key = KeyRef::File(origin.clone());
            let svid = Svid::from_chain(snapshot.chain.clone(), &origin, &key, signing)?;
            (svid, None, None)
        }
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
    let (bundle, federated) = bundles(config, workload)?;
    Ok(TlsIdentity {
        svid,
        bundle,
        federated,
        trust_domain: config.trust_domain.clone(),
        provider: backend.provider().clone(),
        device,
        revocations: Arc::new(Revocations::load(config.crl.as_slice())?),
        renew_at,
    })
}

fn no_snapshot(socket: &str) -> StartError {
    StartError::Workload(format!("no SVID from the Workload API at {socket} yet"))
}

/// Our trust domain's bundle and the federated ones: from files, from the Workload API, or
/// both (a federated file adds to what the agent streams).
fn bundles(
    config: &IdentityConfig,
    workload: Option<&WorkloadSnapshot>,
) -> Result<(Bundle, BTreeMap<String, Bundle>), StartError> {
    let streamed = |td: &str| {
        let snapshot = workload?;
        let certs = snapshot.bundles.get(td)?.clone();
        Some(certs)
    };
    let own = match (&config.bundle, &config.source) {
        (Some(path), _) => load_bundle(path)?,
        (None, IdentitySource::WorkloadApi { socket, .. }) => {
            let certs = streamed(&config.trust_domain).ok_or_else(|| {
                StartError::Workload(format!(
                    "the Workload API at {socket} sent no bundle for our trust domain {}",
                    config.trust_domain
                ))
            })?;
            Bundle::from_certs(certs, Path::new(socket))?
        }
        // The validator gives files and the built-in CA a bundle path; say so if it did not.
        (None, _) => {
            return Err(StartError::Identity(IdentityError::Certs {
                path: PathBuf::from("identity.bundle"),
                reason: "no bundle configured".into(),
            }));
        }
    };
    let mut federated = BTreeMap::new();
    if let (Some(snapshot), IdentitySource::WorkloadApi { socket, .. }) = (workload, &config.source)
    {
        for (td, certs) in &snapshot.bundles {
            if *td != config.trust_domain {
                federated.insert(
                    td.clone(),
                    Bundle::from_certs(certs.clone(), Path::new(socket))?,
                );
            }
        }
    }
    for f in &config.federated {
        federated.insert(f.trust_domain.clone(), load_bundle(&f.bundle)?);
    }
    Ok((own, federated))
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
            if let Some(bundle) = &identity.bundle {
                load_bundle(bundle)?;
            }
            Revocations::load(identity.crl.as_slice())?;
            Ok(id.clone())
        }
        IdentitySource::Files { .. } => {
            let (_, tls) = load_blocking(None, config, None)?;
            Ok(tls.svid.id)
        }
        IdentitySource::WorkloadApi {
            socket,
            id,
            startup_timeout,
        } => {
            // Connects as the daemon would: the agent answers, and knows this workload.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StartError::Workload(e.to_string()))?;
            let snapshot = runtime.block_on(async {
                let api = WorkloadApi::connect(socket, id.as_ref(), *startup_timeout).await?;
                let snapshot = api.snapshot();
                api.close().await;
                snapshot
            });
            let snapshot = snapshot.map_err(StartError::Workload)?;
            let (_, tls) = load_blocking(None, config, Some(snapshot))?;
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
    workload: Option<WorkloadSnapshot>,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let (current, config) = (current.cloned(), config.clone());
    tokio::task::spawn_blocking(move || load_blocking(current.as_ref(), &config, workload))
        .await
        .unwrap_or_else(|e| {
            // A bug while loading must reject this (re)load, not take the serving daemon down.
            Err(StartError::Panicked(panic_message(e)))
        })
}

fn load_blocking(
    current: Option<&OpenBackend>,
    config: &Config,
    workload: Option<WorkloadSnapshot>,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let backend = match current {
        Some((c, b)) if *c == config.crypto => b.clone(),
        _ => backend_for(&config.crypto).map_err(|source| StartError::Backend {
            backend: config.crypto.backend.name(),
            cause: source,
        })?,
    };
    let tls = load_identity(
        &config.identity,
        &config.crypto,
        backend.as_ref(),
        workload.as_ref(),
    )?;
    Ok(((config.crypto.clone(), backend), tls))
}
