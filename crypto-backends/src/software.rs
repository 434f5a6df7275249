//! The default backend: rustls on aws-lc-rs, keys in process memory.
//!
//! Key exchange prefers the X25519MLKEM768 post-quantum hybrid and falls back
//! to X25519, P-256 and P-384; TLS 1.2 suites are the aws-lc-rs set, which is
//! ECDHE with AEAD only.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::sign::SigningKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{PemObject, SectionKind};
use zeroize::Zeroizing;

use crate::{Backend, Error, KeyRef, read_secret_file};

/// Keys held in memory, used through aws-lc-rs.
#[derive(Debug)]
pub struct Software {
    provider: Arc<CryptoProvider>,
}

impl Software {
    /// Creates the backend with mtlsd's provider (see [`provider`]).
    pub fn new() -> Self {
        Self {
            provider: Arc::new(provider()),
        }
    }
}

impl Default for Software {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Software {
    fn name(&self) -> &'static str {
        "software"
    }

    fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn load_signing_key(&self, key: &KeyRef) -> Result<Arc<dyn SigningKey>, Error> {
        let KeyRef::File(path) = key else {
            return Err(Error::UnsupportedKeyRef {
                backend: self.name(),
                key: key.to_string(),
            });
        };
        let der = read_private_key_file(path)?;
        aws_lc_rs::sign::any_supported_type(&der.as_key()).map_err(|e| Error::UnsupportedKey {
            path: path.clone(),
            reason: e.to_string(),
        })
    }
}

impl Software {
    /// Wraps a PEM private key held in memory (a key just issued, never written to disk).
    pub fn key_from_pem(&self, pem: &[u8]) -> Result<Arc<dyn SigningKey>, Error> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| Error::NoPrivateKey {
            path: "(in memory)".into(),
        })?;
        aws_lc_rs::sign::any_supported_type(&der).map_err(|e| Error::UnsupportedKey {
            path: "(in memory)".into(),
            reason: e.to_string(),
        })
    }
}

impl Software {
    /// Wraps a PKCS#8 DER private key held in memory (one streamed from the Workload API).
    pub fn key_from_pkcs8_der(&self, der: &[u8]) -> Result<Arc<dyn SigningKey>, Error> {
        // The copy rustls-pki-types makes is wiped when it drops.
        let der = Zeroizing::new(der.to_vec());
        let key = PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice()));
        aws_lc_rs::sign::any_supported_type(&key).map_err(|e| Error::UnsupportedKey {
            path: "(Workload API)".into(),
            reason: e.to_string(),
        })
    }
}

/// The rustls provider mtlsd uses: aws-lc-rs with post-quantum hybrid key exchange first,
/// TLS 1.3's AES-128-GCM-SHA256 first among the cipher suites, its key schedule on HMAC keys
/// prepared once (`hkdf.rs`), and certificate signatures verified once
/// ([`crate::verify_cache`]).
///
/// Why AES-128 first: the handshake's transcript hash and HKDF run on the suite's hash, and
/// SHA-256 has CPU instructions (SHA-NI) where SHA-384 has none: in the daemon's profile,
/// SHA-384 was 8.5 % of a full mTLS handshake. AES-128 matches the 128-bit strength of the
/// X25519 and P-256 keys that protect the session anyway. The other suites stay on offer.
pub fn provider() -> CryptoProvider {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let defaults = aws_lc_rs::default_provider();
    let mut cipher_suites: Vec<_> = defaults
        .cipher_suites
        .iter()
        .map(|s| crate::hkdf::prepared(*s))
        .collect();
    // Stable: everything else keeps aws-lc-rs' order.
    cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    CryptoProvider {
        kx_groups: vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1],
        cipher_suites,
        signature_verification_algorithms: crate::verify_cache::algorithms(),
        ..defaults
    }
}

/// A private key's DER bytes, wiped from memory when dropped.
struct SecretDer {
    kind: SectionKind,
    der: Zeroizing<Vec<u8>>,
}

impl SecretDer {
    /// Borrows the bytes as a rustls key without copying them out of the zeroizing buffer.
    fn as_key(&self) -> PrivateKeyDer<'_> {
        let der = self.der.as_slice();
        match self.kind {
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            _ => PrivateKeyDer::Pkcs8(der.into()),
        }
    }
}

/// Reads the first private key from a PEM file, refusing files other users can reach.
fn read_private_key_file(path: &Path) -> Result<SecretDer, Error> {
    let pem = read_secret_file(path)?;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
        let Ok((kind, der)) = section else { break };
        let der = Zeroizing::new(der);
        if matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        ) {
            return Ok(SecretDer { kind, der });
        }
    }
    Err(Error::NoPrivateKey {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, name: &str, mode: u32, contents: &str) -> KeyRef {
        KeyRef::File(crate::secret_file::write_with_mode(
            dir, name, mode, contents,
        ))
    }

    #[test]
    fn loads_a_p256_key_and_signs_with_ecdsa() {
        let dir = tempfile::tempdir().unwrap();
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let key = Software::new()
            .load_signing_key(&write_key(dir.path(), "k.pem", 0o600, &pem))
            .unwrap();
        assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
    }

    #[test]
    fn refuses_world_readable_and_group_writable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        for (name, mode) in [("world", 0o604), ("groupw", 0o620)] {
            let err = Software::new()
                .load_signing_key(&write_key(dir.path(), name, mode, &pem))
                .unwrap_err();
            assert!(
                matches!(err, Error::LoosePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
        }
        // Group read is the ssl-cert convention and stays allowed.
        Software::new()
            .load_signing_key(&write_key(dir.path(), "groupr", 0o640, &pem))
            .unwrap();
    }

    #[test]
    fn a_certificate_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let err = Software::new()
            .load_signing_key(&write_key(dir.path(), "c.pem", 0o600, &cert.cert.pem()))
            .unwrap_err();
        assert!(matches!(err, Error::NoPrivateKey { .. }), "{err}");
    }

    #[test]
    fn pkcs11_references_are_not_for_the_software_backend() {
        let err = Software::new()
            .load_signing_key(&KeyRef::parse("pkcs11:object=x"))
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedKeyRef { .. }), "{err}");
    }

    #[test]
    fn aes_128_gcm_sha256_comes_first_and_every_default_suite_stays() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut defaults: Vec<_> = aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
    }

    #[test]
    fn post_quantum_hybrid_is_preferred() {
        assert_eq!(
            provider().kx_groups[0].name(),
            rustls::NamedGroup::X25519MLKEM768
        );
    }
}
