//! What the admin endpoint reads: the configuration, identity and listeners in effect, and
//! whether the daemon should receive traffic.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::warn;

use crate::config::Config;
use crate::identity::{CertInfo, SpiffeId};
use crate::metrics::CertExpiry;
use crate::signing::DeviceKey;
use crate::tls::TlsIdentity;

/// A listener as it is bound right now, for `/config`-style reporting.
#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    /// Its name.
    pub name: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The address it accepts on.
    pub addr: SocketAddr,
}

/// Everything in effect since the last successful (re)load.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration.
    pub config: Config,
    /// Our SPIFFE ID.
    pub identity: SpiffeId,
    /// The crypto backend's name.
    pub backend: &'static str,
    /// Our chain, leaf first.
    pub chain: Vec<CertInfo>,
    /// The trust bundle's CAs.
    pub bundle: Vec<CertInfo>,
    /// Each federated trust domain's CAs.
    pub federated: std::collections::BTreeMap<String, Vec<CertInfo>>,
    /// The listeners and their bound addresses.
    pub listeners: Vec<BoundListener>,
    /// When this configuration took effect.
    pub since: SystemTime,
    /// Our key's device, when it lives in one.
    pub device: Option<DeviceKey>,
}

/// The daemon's state as the admin endpoint sees it; shared, and replaced on every reload.
#[derive(Debug)]
pub struct Status {
    current: RwLock<Arc<Snapshot>>,
    draining: AtomicBool,
    /// Names of sockets systemd passed that no listener serves.
    unclaimed_sockets: RwLock<Vec<String>>,
}

impl Status {
    /// A status showing `snapshot`, not draining.
    pub(super) fn new(snapshot: Snapshot) -> Self {
        Self {
            current: RwLock::new(Arc::new(snapshot)),
            draining: AtomicBool::new(false),
            unclaimed_sockets: RwLock::default(),
        }
    }

    /// Shows `snapshot` from now on (a reload committed).
    pub(super) fn replace(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Records the passed sockets no listener serves: `/ready` is 503 while there are any,
    /// because their clients queue and are never answered.
    pub(super) fn set_unclaimed_sockets(&self, names: Vec<String>) {
        *self
            .unclaimed_sockets
            .write()
            .unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// Marks the daemon as shutting down: `/ready` turns 503.
    pub(super) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Logs, once per serial in `warned`, that our SVID is past two thirds of its life or a
    /// bundle CA expires within a week.
    pub(super) fn warn_if_expiring(&self, warned: &mut HashSet<String>) {
        let snapshot = self.snapshot();
        let now = SystemTime::now();
        if let Some(leaf) = snapshot.chain.first() {
            let remaining = leaf.expires.duration_since(now).unwrap_or_default();
            let lifetime = leaf.expires.duration_since(leaf.issued).unwrap_or_default();
            if remaining < lifetime / 3 && warned.insert(leaf.serial.clone()) {
                warn!(cert = %leaf.name(), serial = %leaf.serial, not_after = %leaf.not_after,
                      remaining_s = remaining.as_secs(),
                      "our certificate is past two thirds of its lifetime and has not been renewed");
            }
        }
        for ca in &snapshot.bundle {
            let remaining = ca.expires.duration_since(now).unwrap_or_default();
            if remaining < EXPIRY_WARNING && warned.insert(ca.serial.clone()) {
                warn!(cert = %ca.name(), serial = %ca.serial, not_after = %ca.not_after,
                      "a CA certificate of the bundle expires within 7 days");
            }
        }
    }

    /// What is in effect now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Ok` when the daemon should receive traffic, else every reason it should not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            problems.push("shutting down: draining connections".to_owned());
        }
        for name in self
            .unclaimed_sockets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            problems.push(format!(
                "systemd passed a socket named {name:?} that no listener serves: its clients are \
                 never answered; name a listener {name:?} or fix FileDescriptorName="
            ));
        }
        let snapshot = self.snapshot();
        if let Some(leaf) = snapshot.chain.first()
            && leaf.expires <= SystemTime::now()
        {
            problems.push(format!(
                "our certificate {} (serial {}) expired at {}",
                leaf.name(),
                leaf.serial,
                leaf.not_after
            ));
        }
        if let Some(device) = snapshot.device.as_ref().filter(|d| !d.has_fallback)
            && !device.health.is_healthy()
        {
            problems.push(format!(
                "the {} device holding our key {} is failing; handshakes fail until it recovers",
                device.backend, device.key
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

pub(super) fn snapshot(
    config: &Config,
    tls: &TlsIdentity,
    backend: &'static str,
    listeners: Vec<BoundListener>,
) -> Snapshot {
    let (chain, bundle) = tls.certificates();
    Snapshot {
        config: config.clone(),
        identity: tls.svid.id.clone(),
        backend,
        chain,
        bundle,
        federated: tls
            .federated
            .iter()
            .map(|(td, b)| {
                (
                    td.clone(),
                    b.certs.iter().filter_map(CertInfo::of).collect(),
                )
            })
            .collect(),
        listeners,
        since: SystemTime::now(),
        device: tls.device.clone(),
    }
}

pub(super) fn expiries(snapshot: &Snapshot) -> Vec<CertExpiry> {
    let leaf = snapshot.chain.first().map(|c| ("svid", c));
    let cas = snapshot.bundle.iter().map(|c| ("bundle", c));
    leaf.into_iter()
        .chain(cas)
        .map(|(role, c)| CertExpiry {
            role,
            subject: c.name().to_owned(),
            serial: c.serial.clone(),
            not_after: c.expires,
        })
        .collect()
}

/// Below this much remaining validity, loading a certificate logs a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);
