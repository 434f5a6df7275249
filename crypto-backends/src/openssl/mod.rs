//! Private-key operations through the system OpenSSL 3: an ENGINE (QAT, libp11 `pkcs11`) or a provider.
//!
//! Feature `openssl` (off by default: it links the system libcrypto and needs
//! `libssl-dev` and `pkg-config` to build).
//!
//! * **Provider** (first-class: OpenSSL 4 removes ENGINEs): `provider =
//!   "qatprovider"` loads the named provider (the `default` provider stays
//!   available as a fallback, so algorithms it lacks still resolve) and file keys are
//!   decoded and used through whatever the providers offer.
//! * **ENGINE**: `engine = "qatengine"` with `engine_ctrl` commands sent before
//!   `ENGINE_init`. Keys come from `ENGINE_load_private_key` (a `pkcs11:` URI
//!   for the libp11 engine, or an engine-specific id via
//!   [`OpensslBackend::load_engine_key`]) or from a PEM file, in which case the
//!   engine is made the default implementation of its algorithms
//!   (`ENGINE_set_default`), which is how QAT accelerates ordinary keys.
//!
//! Only signing goes through OpenSSL; the handshake's key exchange, ciphers
//! and verification stay on aws-lc-rs ([`crate::software::provider`]). The
//! reason: OpenSSL 3.0 (Debian 12) has no ML-KEM, so X25519MLKEM768, which
//! mtlsd prefers, exists only in aws-lc-rs. The `rustls-openssl` crate (a
//! maintained rustls provider over OpenSSL) builds and handshakes against
//! OpenSSL 3.0 here, but adopting it would give up the post-quantum hybrid and
//! move bulk crypto to a slower path for no gain on the signing side, where
//! accelerators matter; we would reconsider it for a FIPS-validated OpenSSL
//! deployment or once OpenSSL ships ML-KEM (3.5+) in the target distribution.
//!
//! Signing blocks on the engine or device: the daemon wraps these keys in
//! [`crate::offload::Offloaded`].

mod ffi;

use std::fmt;
use std::sync::{Arc, Mutex};

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::provider::Provider;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;
use rustls::crypto::CryptoProvider;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;

use crate::{Backend, Error, KeyRef};

/// Which ENGINE or provider to sign through.
#[derive(Clone, Default)]
pub struct OpensslConfig {
    /// ENGINE id (`"pkcs11"`, `"qatengine"`).
    pub engine: Option<String>,
    /// ENGINE control commands, sent in order before `ENGINE_init` (`[("MODULE_PATH", "…")]`).
    pub engine_ctrl: Vec<(String, String)>,
    /// Provider name (`"qatprovider"`, `"default"`); `default` stays available as a fallback.
    pub provider: Option<String>,
}

impl fmt::Debug for OpensslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Control values may hold a PIN: show the command names only.
        let ctrl: Vec<&str> = self.engine_ctrl.iter().map(|(c, _)| c.as_str()).collect();
        f.debug_struct("OpensslConfig")
            .field("engine", &self.engine)
            .field("engine_ctrl", &ctrl)
            .field("provider", &self.provider)
            .finish()
    }
}

/// Keys used through OpenSSL 3, with an optional ENGINE or provider.
pub struct OpensslBackend {
    config: OpensslConfig,
    engine: Option<Mutex<ffi::Engine>>,
    /// Loaded providers; dropping one unloads it.
    _providers: Vec<Provider>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for OpensslBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpensslBackend {
    /// Loads the provider and/or initialises the engine now, so a bad config fails at startup.
    pub fn new(config: OpensslConfig) -> Result<Self, Error> {
        openssl::init();
        let mut providers = Vec::new();
        if let Some(name) = &config.provider {
            // openssl's Provider::try_load panics on an interior NUL.
            if name.contains('\0') {
                return Err(Error::UnsupportedKeyRef {
                    backend: "openssl",
                    key: format!("provider name {name:?} contains a NUL byte"),
                });
            }
            // retain_fallbacks keeps the implicit `default` provider active, so
            // algorithms the named provider lacks still resolve, and a failed
            // load does not leave the process without any provider.
            let loaded = Provider::try_load(None, name, true).map_err(|cause| Error::Openssl {
                operation: format!("loading provider {name:?}"),
                cause,
            })?;
            providers.push(loaded);
            tracing::info!(provider = %name, "loaded OpenSSL provider");
        }
        let engine = match &config.engine {
            Some(id) => Some(Mutex::new(ffi::Engine::open(id, &config.engine_ctrl)?)),
            None => None,
        };
        Ok(Self {
            config,
            engine,
            _providers: providers,
            provider: Arc::new(crate::software::provider()),
        })
    }

    /// Loads a key: a `pkcs11:` URI through the engine, or a PEM file.
    pub fn load_key(&self, key: &KeyRef) -> Result<OpensslKey, Error> {
        match key {
            KeyRef::Pkcs11(uri) => self.load_engine_key(uri),
            KeyRef::File(path) => {
                let pem = crate::read_secret_file(path)?;
                let pkey = PKey::private_key_from_pem(&pem).map_err(|cause| Error::Openssl {
                    operation: format!("decoding private key {}", path.display()),
                    cause,
                })?;
                if let Some(engine) = &self.engine {
                    engine
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .set_default()?;
                }
                OpensslKey::new(pkey, path.display().to_string())
            }
            #[allow(unreachable_patterns)]
            other => Err(Error::UnsupportedKeyRef {
                backend: "openssl",
                key: other.to_string(),
            }),
        }
    }

    /// Loads a key by an engine-specific id with `ENGINE_load_private_key`.
    pub fn load_engine_key(&self, key_id: &str) -> Result<OpensslKey, Error> {
        let display = crate::key_ref::shown(key_id).to_owned();
        let Some(engine) = &self.engine else {
            return Err(Error::UnsupportedKeyRef {
                backend: "openssl",
                key: format!("{display} (engine keys need engine = \"…\" in the config)"),
            });
        };
        let pkey = engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .load_private_key(key_id)?;
        OpensslKey::new(pkey, display)
    }
}

impl Backend for OpensslBackend {
    fn name(&self) -> &'static str {
        "openssl"
    }

    fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn load_signing_key(&self, key: &KeyRef) -> Result<Arc<dyn SigningKey>, Error> {
        Ok(Arc::new(self.load_key(key)?))
    }

    fn is_device(&self) -> bool {
        self.config.engine.is_some()
            || self
                .config
                .provider
                .as_deref()
                .is_some_and(|p| p != "default")
    }
}

/// A private key held by OpenSSL (in memory, or a handle into an engine's device).
#[derive(Clone)]
pub struct OpensslKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    pkey: PKey<Private>,
    /// Where the key came from (path or URI without query), for messages.
    name: String,
    algorithm: SignatureAlgorithm,
    schemes: Vec<SignatureScheme>,
    spki: Vec<u8>,
}

impl OpensslKey {
    fn new(pkey: PKey<Private>, name: String) -> Result<Self, Error> {
        let unsupported = |reason: String| Error::UnsupportedDeviceKey {
            key: name.clone(),
            reason,
        };
        let (algorithm, schemes) = match pkey.id() {
            // Engine EC keys may not expose their group; the size identifies the curve.
            Id::EC => match pkey.bits() {
                256 => (
                    SignatureAlgorithm::ECDSA,
                    vec![SignatureScheme::ECDSA_NISTP256_SHA256],
                ),
                384 => (
                    SignatureAlgorithm::ECDSA,
                    vec![SignatureScheme::ECDSA_NISTP384_SHA384],
                ),
                bits => {
                    return Err(unsupported(format!(
                        "{bits}-bit EC key: only P-256 and P-384"
                    )));
                }
            },
            Id::RSA => (
                SignatureAlgorithm::RSA,
                vec![
                    SignatureScheme::RSA_PSS_SHA512,
                    SignatureScheme::RSA_PSS_SHA384,
                    SignatureScheme::RSA_PSS_SHA256,
                    SignatureScheme::RSA_PKCS1_SHA512,
                    SignatureScheme::RSA_PKCS1_SHA384,
                    SignatureScheme::RSA_PKCS1_SHA256,
                ],
            ),
            other => return Err(unsupported(format!("key type {other:?} is not EC or RSA"))),
        };
        let spki = pkey.public_key_to_der().map_err(|cause| Error::Openssl {
            operation: format!("encoding the public key of {name}"),
            cause,
        })?;
        Ok(Self {
            inner: Arc::new(KeyInner {
                pkey,
                name,
                algorithm,
                schemes,
                spki,
            }),
        })
    }

    fn sign(
        &self,
        scheme: SignatureScheme,
        msg: &[u8],
    ) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        use SignatureScheme::*;
        let md = match scheme {
            ECDSA_NISTP256_SHA256 | RSA_PSS_SHA256 | RSA_PKCS1_SHA256 => MessageDigest::sha256(),
            ECDSA_NISTP384_SHA384 | RSA_PSS_SHA384 | RSA_PKCS1_SHA384 => MessageDigest::sha384(),
            _ => MessageDigest::sha512(),
        };
        let mut signer = openssl::sign::Signer::new(md, &self.inner.pkey)?;
        if matches!(scheme, RSA_PSS_SHA256 | RSA_PSS_SHA384 | RSA_PSS_SHA512) {
            signer.set_rsa_padding(Padding::PKCS1_PSS)?;
            // RFC 8446 §4.2.3: salt as long as the digest, MGF1 with the same hash.
            signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            signer.set_rsa_mgf1_md(md)?;
        } else if self.inner.algorithm == SignatureAlgorithm::RSA {
            signer.set_rsa_padding(Padding::PKCS1)?;
        }
        // ECDSA comes back DER-encoded, as TLS wants it.
        signer.sign_oneshot_to_vec(msg)
    }
}

impl fmt::Debug for OpensslKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslKey")
            .field("key", &self.inner.name)
            .field("algorithm", &self.inner.algorithm)
            .finish()
    }
}

impl SigningKey for OpensslKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = *self.inner.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(OpensslSigner {
            key: self.clone(),
            scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.inner.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm
    }
}

#[derive(Debug)]
struct OpensslSigner {
    key: OpensslKey,
    scheme: SignatureScheme,
}

impl Signer for OpensslSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key.sign(self.scheme, message).map_err(|e| {
            rustls::Error::General(format!(
                "OpenSSL signing with {} failed: {e}",
                self.key.inner.name
            ))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
