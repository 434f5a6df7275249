//! Our private key, from whichever backend the config names.
//!
//! Software keys are used as they are. A device key (PKCS#11 token, OpenSSL
//! ENGINE or provider) is wrapped so that:
//!
//! - its signatures run off the async event loop, at most `max_in_flight` at
//!   once ([`Offloaded`]), so a slow device never stalls other connections;
//! - a failing device degrades: when the same key also exists in software (a
//!   key file used through an ENGINE), new handshakes sign in software and the
//!   device is retried later; when it exists only in the device, handshakes
//!   fail with the device's error and readiness turns false ([`Fallback`]);
//! - an unhealthy device is probed in the background, so the daemon recovers by
//!   itself even while readiness keeps traffic away ([`DeviceKey::probe`]).

use std::sync::Arc;
use std::time::Duration;

use mtlsd_crypto::offload::{Fallback, FallbackOptions, Health, Limits, Offloaded, Slow, Stats};
use mtlsd_crypto::software::Software;
use mtlsd_crypto::{Backend, KeyRef};
use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use tracing::{debug, info, warn};

use crate::config::{BackendKind, CryptoConfig, PinSource};

/// How often an unhealthy device is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a device signature may wait for a free slot.
const DEVICE_WAIT: Duration = Duration::from_secs(2);

/// The crypto backend a config asks for; device backends open their module or engine here.
pub fn backend_for(config: &CryptoConfig) -> Result<Arc<dyn Backend>, mtlsd_crypto::Error> {
    Ok(match &config.backend {
        BackendKind::Software => Arc::new(Software::new()),
        BackendKind::Pkcs11(p) => {
            use mtlsd_crypto::pkcs11::{Pin, Pkcs11Backend, Pkcs11Config};
            let pin = match &p.pin {
                PinSource::File(path) => Pin::from_file(path)?,
                PinSource::Env(var) => Pin::from_env(var)?,
                PinSource::Credential(name) => Pin::from_credential(name)?,
            };
            let mut c = Pkcs11Config::new(&p.module, pin);
            c.pool_size = p.pool_size;
            Arc::new(Pkcs11Backend::new(c)?)
        }
        #[cfg(feature = "openssl")]
        BackendKind::Openssl(o) => {
            use mtlsd_crypto::openssl::{OpensslBackend, OpensslConfig};
            Arc::new(OpensslBackend::new(OpensslConfig {
                engine: o.engine.clone(),
                engine_ctrl: o.engine_ctrl.clone(),
                provider: o.provider.clone(),
            })?)
        }
    })
}

/// A key held by a device: its counters and health, for metrics, readiness and recovery.
#[derive(Clone)]
pub struct DeviceKey {
    /// The backend's name.
    pub backend: &'static str,
    /// The key reference, without any query part.
    pub key: String,
    /// Operations, errors, fallbacks and latency.
    pub stats: Arc<Stats>,
    /// False while the device is failing.
    pub health: Health,
    /// Whether a software copy takes over while the device fails.
    pub has_fallback: bool,
    signer: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("backend", &self.backend)
            .field("key", &self.key)
            .field("healthy", &self.health.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Loads `key` through `backend`; a device key comes back wrapped, with its [`DeviceKey`].
pub fn load_signing_key(
    crypto: &CryptoConfig,
    backend: &dyn Backend,
    key: &KeyRef,
) -> Result<(Arc<dyn SigningKey>, Option<DeviceKey>), mtlsd_crypto::Error> {
    let mut loaded = backend.load_signing_key(key)?;
    if let Some(delay) = crypto.simulate_latency {
        warn!(
            delay_ms = delay.as_millis() as u64,
            "crypto.simulate_latency is set: every signature is slowed down on purpose"
        );
        loaded = Arc::new(Slow::new(loaded, delay));
    } else if !backend.is_device() {
        return Ok((loaded, None));
    }
    // A key file used through an ENGINE also exists in software: that copy takes over when
    // the device fails. A token key has no such copy.
    let software = match key {
        KeyRef::File(_) => Some(Software::new().load_signing_key(key)?),
        _ => None,
    };
    let has_fallback = software.is_some();
    let stats = Arc::new(Stats::default());
    let fallback = Fallback::new(
        loaded,
        software,
        FallbackOptions::new(key.to_string(), backend.name()),
        stats.clone(),
    )?;
    let health = fallback.health();
    let offloaded: Arc<dyn SigningKey> = Arc::new(Offloaded::with_stats(
        Arc::new(fallback),
        Limits {
            max_in_flight: crypto.max_in_flight,
            wait_timeout: DEVICE_WAIT,
        },
        stats.clone(),
    ));
    info!(backend = backend.name(), key = %key, software_fallback = has_fallback,
          max_in_flight = crypto.max_in_flight, "device key loaded; signatures are offloaded");
    Ok((
        offloaded.clone(),
        Some(DeviceKey {
            backend: backend.name(),
            key: key.to_string(),
            stats,
            health,
            has_fallback,
            signer: offloaded,
        }),
    ))
}

impl DeviceKey {
    /// Signs a probe every few seconds while the device is unhealthy, so it recovers without traffic.
    ///
    /// Runs until the returned task is aborted (a reload replaces the key).
    pub fn probe(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if this.health.is_healthy() {
                    continue;
                }
                let signer = this.signer.clone();
                // The Fallback wrapper turns health back on when a device signature succeeds.
                let ok = tokio::task::spawn_blocking(move || probe_once(signer.as_ref()))
                    .await
                    .unwrap_or(false);
                debug!(backend = this.backend, key = %this.key, ok, "device probe");
            }
        })
    }
}

/// One signature with our own fixed message: a device that signs it is back.
fn probe_once(key: &dyn SigningKey) -> bool {
    const SCHEMES: [SignatureScheme; 6] = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    key.choose_scheme(&SCHEMES)
        .is_some_and(|signer| signer.sign(b"mtlsd device health probe").is_ok())
}
