//! Degrade instead of failing: a device key with an optional software copy, and a health flag.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;

use super::Stats;
use crate::Error;

/// Whether a device key's last device call worked; cheap to clone, read by the daemon's readiness.
#[derive(Clone, Debug)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// `true` until a device call fails, and again after the next one succeeds.
    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a [`Fallback`] names itself in logs and how long it leaves a failed device alone.
#[derive(Clone, Debug)]
pub struct FallbackOptions {
    /// The key as the operator wrote it (file path or `pkcs11:` URI without query).
    pub key: String,
    /// The device backend (`"pkcs11"`, `"openssl"`).
    pub backend: &'static str,
    /// With a software copy: how long to sign in software before trying the device again.
    pub retry_after: Duration,
}

impl FallbackOptions {
    /// Options with a 30 s retry backoff.
    pub fn new(key: impl Into<String>, backend: &'static str) -> Self {
        Self {
            key: key.into(),
            backend,
            retry_after: Duration::from_secs(30),
        }
    }
}

/// A device key that degrades: on a device error it signs with its software copy
/// (if it has one) and retries the device after a backoff; without one, the
/// error propagates. Either way [`Health`] reports the device state.
#[derive(Clone)]
pub struct Fallback {
    shared: Arc<Shared>,
}

struct Shared {
    device: Arc<dyn SigningKey>,
    software: Option<Arc<dyn SigningKey>>,
    options: FallbackOptions,
    healthy: Arc<AtomicBool>,
    /// While set and in the future, signatures go straight to software.
    retry_at: Mutex<Option<Instant>>,
    /// Set when the current outage has been logged, so it is logged once.
    warned: AtomicBool,
    stats: Arc<Stats>,
}

impl Fallback {
    /// Pairs `device` with an optional `software` copy of the same key (checked by public key).
    pub fn new(
        device: Arc<dyn SigningKey>,
        software: Option<Arc<dyn SigningKey>>,
        options: FallbackOptions,
        stats: Arc<Stats>,
    ) -> Result<Self, Error> {
        if let Some(sw) = &software {
            let same = match (device.public_key(), sw.public_key()) {
                (Some(d), Some(s)) => d.as_ref() == s.as_ref(),
                _ => false,
            };
            if !same {
                return Err(Error::UnsupportedDeviceKey {
                    key: options.key,
                    reason: format!(
                        "the software fallback key is not the same key as the {} key (public keys differ or are unknown)",
                        options.backend
                    ),
                });
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                device,
                software,
                options,
                healthy: Arc::new(AtomicBool::new(true)),
                retry_at: Mutex::new(None),
                warned: AtomicBool::new(false),
                stats,
            }),
        })
    }

    /// The device's health flag.
    pub fn health(&self) -> Health {
        Health(self.shared.healthy.clone())
    }

    /// The counters this wrapper adds fallbacks to (errors are counted by [`super::Offloaded`]).
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("key", &self.shared.options.key)
            .field("backend", &self.shared.options.backend)
            .field("software_copy", &self.shared.software.is_some())
            .field("healthy", &self.shared.healthy.load(Ordering::Relaxed))
            .finish()
    }
}

impl SigningKey for Fallback {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let device = self.shared.device.choose_scheme(offered)?;
        // The software copy must produce the scheme already promised to the peer.
        let software = self
            .shared
            .software
            .as_ref()
            .and_then(|sw| sw.choose_scheme(&[device.scheme()]));
        Some(Box::new(FallbackSigner {
            shared: self.shared.clone(),
            device,
            software,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.shared.device.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.shared.device.algorithm()
    }
}

struct FallbackSigner {
    shared: Arc<Shared>,
    device: Box<dyn Signer>,
    software: Option<Box<dyn Signer>>,
}

impl fmt::Debug for FallbackSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackSigner")
            .field("key", &self.shared.options.key)
            .field("scheme", &self.device.scheme())
            .finish()
    }
}

impl Signer for FallbackSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let shared = &*self.shared;
        let opts = &shared.options;
        if let Some(software) = &self.software {
            let backing_off = shared
                .retry_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| Instant::now() < at);
            if backing_off {
                shared.stats.add_fallback();
                return software.sign(message);
            }
        }
        match self.device.sign(message) {
            Ok(sig) => {
                *shared.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    shared.warned.store(false, Ordering::Relaxed);
                    tracing::info!(key = %opts.key, backend = opts.backend, "device signing recovered");
                }
                Ok(sig)
            }
            Err(error) => {
                shared.healthy.store(false, Ordering::Relaxed);
                let first = !shared.warned.swap(true, Ordering::Relaxed);
                match &self.software {
                    Some(software) => {
                        *shared.retry_at.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now() + opts.retry_after);
                        if first {
                            tracing::warn!(
                                key = %opts.key,
                                backend = opts.backend,
                                %error,
                                retry_after_s = opts.retry_after.as_secs(),
                                "device signing failed; signing with the software copy until the device answers again"
                            );
                        }
                        shared.stats.add_fallback();
                        software.sign(message)
                    }
                    None => {
                        if first {
                            tracing::warn!(
                                key = %opts.key,
                                backend = opts.backend,
                                %error,
                                "device signing failed and the key has no software copy; handshakes fail until the device answers"
                            );
                        }
                        // The error itself is counted by Offloaded, which sees it returned.
                        Err(Error::DeviceUnavailable {
                            backend: opts.backend,
                            key: opts.key.clone(),
                            reason: error.to_string(),
                        }
                        .into_tls())
                    }
                }
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.device.scheme()
    }
}
