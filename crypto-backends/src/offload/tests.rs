//! Ordering and progress tests: gates and counters, no sleeps and no timing thresholds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustls::SignatureScheme;
use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::{Signer, SigningKey};
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::*;

/// Generous bound for "this must happen": only a hang guard.
const HANG: Duration = Duration::from_secs(30);

fn software_key() -> (Arc<dyn SigningKey>, Vec<u8>) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let der = PrivatePkcs8KeyDer::from(pair.serialize_der());
    (
        any_supported_type(&der.into()).unwrap(),
        pair.serialize_der(),
    )
}

fn same_key_again(pkcs8: &[u8]) -> Arc<dyn SigningKey> {
    any_supported_type(&PrivatePkcs8KeyDer::from(pkcs8.to_vec()).into()).unwrap()
}

fn signer(key: &dyn SigningKey) -> Box<dyn Signer> {
    key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap()
}

fn verify(key: &dyn SigningKey, msg: &[u8], sig: &[u8]) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    let spki = key.public_key().unwrap();
    // The last 65 bytes of a P-256 SPKI are the uncompressed point.
    let point = &spki.as_ref()[spki.as_ref().len() - 65..];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .expect("signature verifies");
}

/// A real key whose device calls fail while `fail` is set, counting device calls.
#[derive(Debug)]
struct Switchable {
    inner: Arc<dyn SigningKey>,
    fail: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct SwitchableSigner {
    inner: Box<dyn Signer>,
    fail: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl SigningKey for Switchable {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        Some(Box::new(SwitchableSigner {
            inner: self.inner.choose_scheme(offered)?,
            fail: self.fail.clone(),
            calls: self.calls.clone(),
        }))
    }
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.inner.algorithm()
    }
}

impl Signer for SwitchableSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(rustls::Error::General("CKR_DEVICE_ERROR (test)".into()));
        }
        self.inner.sign(message)
    }
    fn scheme(&self) -> SignatureScheme {
        self.inner.scheme()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_loop_keeps_running_while_signatures_are_held_on_the_device() {
    let (key, _) = software_key();
    let (slow, hold) = Slow::held(key);
    let offloaded = Offloaded::new(Arc::new(slow), Limits::default());
    // More held signatures than workers: inline blocking would freeze the runtime.
    const HELD: usize = 4;
    let mut signing = Vec::new();
    for _ in 0..HELD {
        let s = signer(&offloaded);
        signing.push(tokio::spawn(async move { s.sign(b"handshake transcript") }));
    }
    let waiter = hold.clone();
    let all_held = tokio::task::spawn_blocking(move || waiter.wait_for_waiting(HELD, HANG))
        .await
        .unwrap();
    assert!(all_held, "signatures never reached the device");
    assert_eq!(offloaded.stats().in_flight(), HELD as u64);

    // Other tasks make progress meanwhile: a 100-round ping-pong between two tasks.
    let (to_b, mut b_rx) = tokio::sync::mpsc::channel::<u32>(1);
    let (to_a, mut a_rx) = tokio::sync::mpsc::channel::<u32>(1);
    let echo = tokio::spawn(async move {
        while let Some(n) = b_rx.recv().await {
            to_a.send(n + 1).await.unwrap();
        }
    });
    let rounds = tokio::time::timeout(HANG, async {
        let mut n = 0;
        for _ in 0..100 {
            to_b.send(n).await.unwrap();
            n = a_rx.recv().await.unwrap();
        }
        n
    })
    .await
    .expect("tasks stalled while device signatures were in flight");
    assert_eq!(rounds, 100);
    assert_eq!(hold.waiting(), HELD, "signatures finished before release");
    drop(to_b);
    echo.await.unwrap();

    hold.release();
    for s in signing {
        s.await.unwrap().unwrap();
    }
    let stats = offloaded.stats();
    assert_eq!(
        (stats.ops(), stats.in_flight(), stats.errors()),
        (HELD as u64, 0, 0)
    );
}

#[test]
fn in_flight_signatures_are_bounded_and_the_excess_fails_clearly() {
    let (key, _) = software_key();
    let (slow, hold) = Slow::held(key);
    let limits = Limits {
        max_in_flight: 2,
        wait_timeout: Duration::from_millis(20),
    };
    let offloaded = Offloaded::new(Arc::new(slow), limits);
    std::thread::scope(|s| {
        let running: Vec<_> = (0..2)
            .map(|_| {
                let sig = signer(&offloaded);
                s.spawn(move || sig.sign(b"m"))
            })
            .collect();
        assert!(hold.wait_for_waiting(2, HANG));
        // Both slots are provably taken: the third must be refused, not queued forever.
        let err = signer(&offloaded).sign(b"m").unwrap_err().to_string();
        assert!(err.contains("2 signatures already in flight"), "{err}");
        assert_eq!(
            hold.waiting(),
            2,
            "the refused signature reached the device"
        );
        assert_eq!(offloaded.stats().rejected(), 1);
        hold.release();
        for r in running {
            r.join().unwrap().unwrap();
        }
    });
    // Slots came back: a new signature goes through.
    signer(&offloaded).sign(b"m").unwrap();
    let stats = offloaded.stats();
    assert_eq!((stats.ops(), stats.errors(), stats.in_flight()), (3, 1, 0));
}

#[test]
fn without_a_runtime_or_on_a_current_thread_runtime_the_call_is_direct() {
    let (key, _) = software_key();
    let offloaded = Offloaded::new(key.clone(), Limits::default());
    let sig = signer(&offloaded).sign(b"direct").unwrap();
    verify(&*key, b"direct", &sig);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sig = rt.block_on(async { signer(&offloaded).sign(b"current").unwrap() });
    verify(&*key, b"current", &sig);
}

fn switchable(pkcs8: &[u8]) -> (Switchable, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let fail = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    (
        Switchable {
            inner: same_key_again(pkcs8),
            fail: fail.clone(),
            calls: calls.clone(),
        },
        fail,
        calls,
    )
}

#[test]
fn a_failing_device_falls_back_to_software_backs_off_then_recovers() {
    let (software, pkcs8) = software_key();
    let (device, fail, calls) = switchable(&pkcs8);
    let mut options = FallbackOptions::new("/etc/mtlsd/leaf.key", "openssl");
    options.retry_after = Duration::from_secs(3600);
    let stats = Arc::new(Stats::default());
    let fb = Fallback::new(
        Arc::new(device),
        Some(software.clone()),
        options,
        stats.clone(),
    )
    .unwrap();
    let health = fb.health();
    let key = Offloaded::with_stats(Arc::new(fb.clone()), Limits::default(), stats.clone());

    fail.store(true, Ordering::SeqCst);
    let sig = signer(&key).sign(b"one").unwrap();
    verify(&*software, b"one", &sig);
    assert!(!health.is_healthy());
    assert_eq!((stats.fallbacks(), stats.errors()), (1, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Within the backoff the device is left alone even though it works again.
    fail.store(false, Ordering::SeqCst);
    signer(&key).sign(b"two").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.fallbacks(), 2);
    assert!(!health.is_healthy());

    // Once the backoff has passed (zero here) the next signature retries the device, which recovers.
    let (device, fail, calls) = switchable(&pkcs8);
    let mut options = FallbackOptions::new("k", "openssl");
    options.retry_after = Duration::ZERO;
    let fb = Fallback::new(Arc::new(device), Some(software), options, Arc::default()).unwrap();
    let health = fb.health();
    fail.store(true, Ordering::SeqCst);
    signer(&fb).sign(b"three").unwrap();
    assert!(!health.is_healthy());
    fail.store(false, Ordering::SeqCst);
    signer(&fb).sign(b"four").unwrap();
    assert!(health.is_healthy());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(fb.stats().fallbacks(), 1);
}

#[test]
fn device_only_keys_fail_with_the_reason_and_recover_when_the_device_returns() {
    let (_, pkcs8) = software_key();
    let (device, fail, calls) = switchable(&pkcs8);
    let stats = Arc::new(Stats::default());
    let fb = Fallback::new(
        Arc::new(device),
        None,
        FallbackOptions::new("pkcs11:token=mesh;object=leaf", "pkcs11"),
        stats.clone(),
    )
    .unwrap();
    let health = fb.health();
    let key = Offloaded::with_stats(Arc::new(fb), Limits::default(), stats.clone());

    fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let err = signer(&key).sign(b"m").unwrap_err().to_string();
        assert!(
            err.contains("pkcs11 key pkcs11:token=mesh;object=leaf unavailable")
                && err.contains("CKR_DEVICE_ERROR"),
            "{err}"
        );
    }
    assert!(!health.is_healthy());
    assert_eq!((stats.errors(), stats.fallbacks()), (3, 0));

    // No backoff without a software copy: the very next call tries the device.
    fail.store(false, Ordering::SeqCst);
    signer(&key).sign(b"m").unwrap();
    assert!(health.is_healthy());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn a_software_copy_of_a_different_key_is_refused() {
    let (device, _) = software_key();
    let (other, _) = software_key();
    let err = Fallback::new(
        device,
        Some(other),
        FallbackOptions::new("pkcs11:object=leaf", "pkcs11"),
        Arc::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pkcs11:object=leaf") && err.contains("not the same key"),
        "{err}"
    );
}
