//! A real key made slow or held on demand, for tests and benchmarks only.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;

/// Test and benchmark wrapper: a real key whose signatures take `delay` longer,
/// or wait for a [`Hold`] to release them. Not for production configs.
#[derive(Clone)]
pub struct Slow {
    inner: Arc<dyn SigningKey>,
    delay: Duration,
    hold: Option<Hold>,
}

impl Slow {
    /// Adds `delay` to every signature (simulates a device's service time).
    pub fn new(inner: Arc<dyn SigningKey>, delay: Duration) -> Self {
        Self {
            inner,
            delay,
            hold: None,
        }
    }

    /// Makes every signature wait until the returned [`Hold`] is released.
    pub fn held(inner: Arc<dyn SigningKey>) -> (Self, Hold) {
        let hold = Hold::default();
        (
            Self {
                inner,
                delay: Duration::ZERO,
                hold: Some(hold.clone()),
            },
            hold,
        )
    }
}

impl fmt::Debug for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slow")
            .field("inner", &self.inner)
            .field("delay", &self.delay)
            .field("held", &self.hold.is_some())
            .finish()
    }
}

/// Holds signatures of a [`Slow::held`] key until released; lets a test see how many wait.
#[derive(Clone, Debug, Default)]
pub struct Hold {
    state: Arc<(Mutex<HoldState>, Condvar)>,
}

#[derive(Debug, Default)]
struct HoldState {
    released: bool,
    waiting: usize,
}

impl Hold {
    /// Lets every waiting and future signature through.
    pub fn release(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).released = true;
        cv.notify_all();
    }

    /// Signatures currently held.
    pub fn waiting(&self) -> usize {
        self.state
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
    }

    /// Blocks until `n` signatures are held, or `timeout` passes (a hang guard, not a measurement).
    pub fn wait_for_waiting(&self, n: usize, timeout: Duration) -> bool {
        let (lock, cv) = &*self.state;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |s| s.waiting < n)
            .unwrap_or_else(|p| p.into_inner());
        guard.waiting >= n
    }

    fn pass(&self) {
        let (lock, cv) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting += 1;
        cv.notify_all();
        while !state.released {
            state = cv.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting -= 1;
    }
}

impl SigningKey for Slow {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        Some(Box::new(SlowSigner {
            inner: self.inner.choose_scheme(offered)?,
            delay: self.delay,
            hold: self.hold.clone(),
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm()
    }
}

#[derive(Debug)]
struct SlowSigner {
    inner: Box<dyn Signer>,
    delay: Duration,
    hold: Option<Hold>,
}

impl Signer for SlowSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        if let Some(hold) = &self.hold {
            hold.pass();
        }
        // The calling thread plays the device: it is busy for the service time.
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.inner.sign(message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.inner.scheme()
    }
}
