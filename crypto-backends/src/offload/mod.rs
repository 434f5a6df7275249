//! Device keys that never stall the async event loop.
//!
//! rustls calls [`Signer::sign`] synchronously in the middle of a handshake, on
//! whichever tokio worker polls that connection. A device signature (HSM, QAT)
//! takes milliseconds and may hang; done inline it would freeze every other
//! connection on that worker. [`Offloaded`] runs the device call under
//! [`tokio::task::block_in_place`]: the worker hands its run queue and the
//! I/O driver to a fresh worker before blocking, so established streams keep
//! flowing and other handshakes keep starting while many signatures are in
//! flight. Without a multi-thread runtime (tests, the `ca` CLI) the call is
//! made directly.
//!
//! The number of device operations in flight is bounded ([`Limits`]); a caller
//! that cannot get a slot within the wait timeout fails its handshake with a
//! clear error instead of queueing without bound. Every wrapper keeps
//! [`Stats`] the daemon exports as metrics.
//!
//! [`Fallback`] adds degradation: a device key with an optional software copy.
//! [`Slow`] is a test and benchmark wrapper that makes a real key slow.

mod fallback;
mod slow;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use fallback::{Fallback, FallbackOptions, Health};
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;
pub use slow::{Hold, Slow};

/// Bounds on device operations for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most signatures in flight on the device at once (at least 1).
    pub max_in_flight: usize,
    /// How long a signature waits for a free slot before its handshake fails.
    pub wait_timeout: Duration,
}

impl Default for Limits {
    /// 64 operations in flight, 2 s wait: deep enough for a QAT card, short enough to shed load.
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            wait_timeout: Duration::from_secs(2),
        }
    }
}

/// Per-key counters, shared with the metrics exporter.
#[derive(Debug, Default)]
pub struct Stats {
    ops: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicU64,
    latency_us: AtomicU64,
}

impl Stats {
    /// Signatures attempted on the device or its fallback (successful or not).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
    /// Signatures that failed (device errors without fallback, or no free slot).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Signatures made with the software copy because the device failed or is backing off.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
    /// Signatures refused because `max_in_flight` stayed reached for the whole wait timeout.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Signatures running right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Total time spent in signatures, in microseconds (divide by [`ops`](Self::ops) for the mean).
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    pub(crate) fn add_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A counting semaphore for blocking threads; tokio's is async and we are inside a sync call.
#[derive(Debug)]
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Takes a slot, waiting up to `timeout`; `None` if none came free.
    fn acquire(&self, timeout: Duration) -> Option<SlotGuard<'_>> {
        let deadline = Instant::now() + timeout;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            free = self
                .freed
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *free -= 1;
        Some(SlotGuard(self))
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// Runs a blocking device call without stalling the tokio worker it is called on.
pub(crate) fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        // block_in_place moves this worker's queued tasks and the I/O driver to
        // another thread first; it panics on a current-thread runtime.
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A device key whose signatures run off the event loop, bounded and counted.
#[derive(Clone)]
pub struct Offloaded {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn SigningKey>,
    name: String,
    limits: Limits,
    slots: Slots,
    stats: Arc<Stats>,
}

impl Offloaded {
    /// Wraps `inner` with fresh [`Stats`].
    pub fn new(inner: Arc<dyn SigningKey>, limits: Limits) -> Self {
        Self::with_stats(inner, limits, Arc::default())
    }

    /// Wraps `inner`, counting into `stats` (share them with a [`Fallback`] to get one set per key).
    pub fn with_stats(inner: Arc<dyn SigningKey>, limits: Limits, stats: Arc<Stats>) -> Self {
        let name = format!("{inner:?}");
        Self {
            shared: Arc::new(Shared {
                inner,
                name,
                limits,
                slots: Slots::new(limits.max_in_flight),
                stats,
            }),
        }
    }

    /// This key's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }
}

impl fmt::Debug for Offloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offloaded")
            .field("inner", &self.shared.name)
            .field("limits", &self.shared.limits)
            .finish()
    }
}

impl SigningKey for Offloaded {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let signer = self.shared.inner.choose_scheme(offered)?;
        Some(Box::new(OffloadedSigner {
            shared: self.shared.clone(),
            signer,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.shared.inner.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.shared.inner.algorithm()
    }
}

struct OffloadedSigner {
    shared: Arc<Shared>,
    signer: Box<dyn Signer>,
}

impl fmt::Debug for OffloadedSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadedSigner")
            .field("key", &self.shared.name)
            .field("scheme", &self.signer.scheme())
            .finish()
    }
}

impl Signer for OffloadedSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let shared = &*self.shared;
        let stats = &*shared.stats;
        run_blocking(|| {
            // Waiting for a slot blocks too, so it happens off the event loop as well.
            let Some(_slot) = shared.slots.acquire(shared.limits.wait_timeout) else {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                stats.add_error();
                tracing::warn!(
                    key = %shared.name,
                    max_in_flight = shared.limits.max_in_flight,
                    waited_ms = shared.limits.wait_timeout.as_millis() as u64,
                    "device busy: signature refused"
                );
                return Err(crate::Error::DeviceBusy {
                    key: shared.name.clone(),
                    in_flight: shared.limits.max_in_flight,
                    waited_ms: shared.limits.wait_timeout.as_millis() as u64,
                }
                .into_tls());
            };
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            let result = self.signer.sign(message);
            let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.latency_us.fetch_add(micros, Ordering::Relaxed);
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            stats.ops.fetch_add(1, Ordering::Relaxed);
            if result.is_err() {
                stats.add_error();
            }
            result
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.signer.scheme()
    }
}
