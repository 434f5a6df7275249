//! Certificate signatures verified once: a peer that reconnects, or any peer under an
//! intermediate already seen, costs one ECDSA verification (its CertificateVerify) per full
//! handshake instead of three.
//!
//! Whether a signature is valid is a pure function of the algorithm, the public key, the
//! signed bytes and the signature, so a positive answer can be remembered under a digest of
//! exactly those. Only successes are remembered, and only for DER-signed data (certificates,
//! CRLs), which recurs; a handshake's CertificateVerify covers a fresh transcript every time
//! and would only push useful entries out. Everything else webpki checks (validity period,
//! name constraints, key usage, path building) still runs on every handshake.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use aws_lc_rs::digest::{Context, SHA256};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    AlgorithmIdentifier, FipsStatus, InvalidSignature, SignatureVerificationAlgorithm,
};

/// How many verified signatures are remembered (32 bytes each, oldest forgotten first).
pub const CAPACITY: usize = 8192;

/// The tag every DER-encoded `TBSCertificate` and `TBSCertList` starts with (SEQUENCE).
const DER_SEQUENCE: u8 = 0x30;

/// Counts of certificate signatures, since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Answered from memory.
    pub remembered: u64,
    /// Verified by computation (successfully or not).
    pub verified: u64,
}

/// The counts so far.
pub fn stats() -> Stats {
    Stats {
        remembered: REMEMBERED.load(Ordering::Relaxed),
        verified: VERIFIED.load(Ordering::Relaxed),
    }
}

/// aws-lc-rs' verification algorithms, each remembering the certificate signatures it
/// verified; the table is built once per process.
pub fn algorithms() -> WebPkiSupportedAlgorithms {
    *ALGORITHMS
}

static REMEMBERED: AtomicU64 = AtomicU64::new(0);
static VERIFIED: AtomicU64 = AtomicU64::new(0);
static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(|| Mutex::new(Seen::default()));

static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    let base = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    // One wrapper per algorithm, shared by `all` and `mapping`, made once: the tables must
    // be `'static`, and leaking them once is what a `static` would hold anyway.
    let wrapped: Vec<(&'static dyn SignatureVerificationAlgorithm, _)> = base
        .all
        .iter()
        .map(|alg| {
            let remembering: &'static dyn SignatureVerificationAlgorithm =
                Box::leak(Box::new(Remembering(*alg)));
            (*alg, remembering)
        })
        .collect();
    let wrap = |alg: &&'static dyn SignatureVerificationAlgorithm| {
        wrapped
            .iter()
            .find(|(inner, _)| std::ptr::addr_eq(*inner, *alg))
            .map_or(*alg, |(_, remembering)| *remembering)
    };
    let all: Vec<_> = base.all.iter().map(wrap).collect();
    let mapping: Vec<_> = base
        .mapping
        .iter()
        .map(|(scheme, algs)| {
            let algs: &'static [_] = Vec::leak(algs.iter().map(wrap).collect());
            (*scheme, algs)
        })
        .collect();
    WebPkiSupportedAlgorithms {
        all: Vec::leak(all),
        mapping: Vec::leak(mapping),
    }
});

/// Digests of verified signatures, and the order they arrived in for eviction.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Seen {
    fn insert(&mut self, key: [u8; 32]) {
        if !self.set.insert(key) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }
}

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    // A panic while holding the lock leaves a consistent set (insertions are atomic enough
    // for a cache: at worst an entry is in `set` and not in `order`, and never evicted).
    SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A verification algorithm that remembers the certificate signatures it verified.
#[derive(Debug)]
struct Remembering(&'static dyn SignatureVerificationAlgorithm);

impl Remembering {
    /// A digest binding the algorithm and every byte the answer depends on; lengths are
    /// included so that no two different inputs concatenate to the same stream.
    fn key(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut ctx = Context::new(&SHA256);
        for part in [
            self.0.public_key_alg_id().as_ref(),
            self.0.signature_alg_id().as_ref(),
            public_key,
            message,
            signature,
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }
}

impl SignatureVerificationAlgorithm for Remembering {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        if message.first() != Some(&DER_SEQUENCE) {
            return self.0.verify_signature(public_key, message, signature);
        }
        let key = self.key(public_key, message, signature);
        if seen().set.contains(&key) {
            REMEMBERED.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        VERIFIED.fetch_add(1, Ordering::Relaxed);
        self.0.verify_signature(public_key, message, signature)?;
        seen().insert(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.0.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.0.signature_alg_id()
    }

    fn fips_status(&self) -> FipsStatus {
        self.0.fips_status()
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

    /// Signed DER as webpki hands it over for a certificate: the signed bytes (a SEQUENCE,
    /// like a `TBSCertificate`), the signature and the issuer's public key.
    struct Signed {
        tbs: Vec<u8>,
        signature: Vec<u8>,
        issuer_key: Vec<u8>,
    }

    fn signed(name: &str) -> Signed {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut tbs = vec![DER_SEQUENCE, name.len() as u8];
        tbs.extend_from_slice(name.as_bytes());
        let signature = rcgen::SigningKey::sign(&key, &tbs).unwrap();
        Signed {
            tbs,
            signature,
            issuer_key: key.public_key_raw().to_vec(),
        }
    }

    fn p256() -> &'static dyn SignatureVerificationAlgorithm {
        let algs = algorithms();
        *algs
            .all
            .iter()
            .find(|a| {
                a.public_key_alg_id() == rustls::pki_types::alg_id::ECDSA_P256
                    && a.signature_alg_id() == rustls::pki_types::alg_id::ECDSA_SHA256
            })
            .unwrap()
    }

    // The counters are process-wide and tests run in parallel, so each test asserts on
    // its own keys through `seen()` and on counter deltas only where no other test can
    // move them in between (they only ever grow).

    #[test]
    fn a_certificate_signature_is_remembered_after_it_verified() {
        let c = signed("remembered.test");
        let key = Remembering(webpki_p256()).key(&c.issuer_key, &c.tbs, &c.signature);
        assert!(!seen().set.contains(&key));
        p256()
            .verify_signature(&c.issuer_key, &c.tbs, &c.signature)
            .unwrap();
        assert!(seen().set.contains(&key));
        let before = stats().remembered;
        p256()
            .verify_signature(&c.issuer_key, &c.tbs, &c.signature)
            .unwrap();
        assert!(stats().remembered > before);
    }

    #[test]
    fn a_changed_byte_is_verified_again_and_refused() {
        let c = signed("tampered.test");
        p256()
            .verify_signature(&c.issuer_key, &c.tbs, &c.signature)
            .unwrap();
        let mut tbs = c.tbs.clone();
        let last = tbs.len() - 1;
        tbs[last] ^= 1;
        assert!(
            p256()
                .verify_signature(&c.issuer_key, &tbs, &c.signature)
                .is_err()
        );
        let other = signed("other-key.test");
        assert!(
            p256()
                .verify_signature(&other.issuer_key, &c.tbs, &c.signature)
                .is_err()
        );
        // A failure is never remembered: the same bad input fails again.
        assert!(
            p256()
                .verify_signature(&c.issuer_key, &tbs, &c.signature)
                .is_err()
        );
    }

    #[test]
    fn a_handshake_signature_is_not_remembered() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        // What TLS 1.3 signs in CertificateVerify: 64 spaces, a context string, a hash.
        let mut message = vec![0x20; 64];
        message.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
        message.extend_from_slice(&[7; 32]);
        let signature = rcgen::SigningKey::sign(&key, &message).unwrap();
        p256()
            .verify_signature(key.public_key_raw(), &message, &signature)
            .unwrap();
        let remembered = Remembering(webpki_p256()).key(key.public_key_raw(), &message, &signature);
        assert!(!seen().set.contains(&remembered));
    }

    #[test]
    fn the_oldest_entries_are_forgotten_beyond_capacity() {
        let mut seen = Seen::default();
        for i in 0..CAPACITY as u32 + 10 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            seen.insert(key);
        }
        assert_eq!(seen.set.len(), CAPACITY);
        assert_eq!(seen.order.len(), CAPACITY);
        assert!(!seen.set.contains(&[0; 32]));
        let mut newest = [0; 32];
        newest[..4].copy_from_slice(&(CAPACITY as u32 + 9).to_be_bytes());
        assert!(seen.set.contains(&newest));
    }

    #[test]
    fn every_algorithm_of_the_provider_is_wrapped_and_mapped() {
        let base = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let algs = algorithms();
        assert_eq!(algs.all.len(), base.all.len());
        assert_eq!(algs.mapping.len(), base.mapping.len());
        for ((scheme, wrapped), (base_scheme, base_algs)) in algs.mapping.iter().zip(base.mapping) {
            assert_eq!(scheme, base_scheme);
            assert_eq!(wrapped.len(), base_algs.len());
            for alg in *wrapped {
                assert!(algs.all.iter().any(|a| std::ptr::addr_eq(*a, *alg)));
            }
        }
    }

    fn webpki_p256() -> &'static dyn SignatureVerificationAlgorithm {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
            .iter()
            .copied()
            .find(|a| {
                a.public_key_alg_id() == rustls::pki_types::alg_id::ECDSA_P256
                    && a.signature_alg_id() == rustls::pki_types::alg_id::ECDSA_SHA256
            })
            .unwrap()
    }
}
