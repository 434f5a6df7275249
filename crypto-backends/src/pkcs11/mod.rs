//! Keys inside a PKCS#11 token (HSM, smart card, SoftHSM2), through the `cryptoki` crate.
//!
//! We use [`cryptoki`] (the Parsec project's maintained binding, which dlopens
//! the module at run time) rather than the older `pkcs11` crate: that crate is
//! unmaintained and carries RustSec advisories.
//!
//! * Keys are named by RFC 7512 URIs (`pkcs11:token=mesh;object=svid;type=private`),
//!   see [`Pkcs11Uri`].
//! * The PIN comes from a file, an environment variable or a systemd credential
//!   ([`Pin`]), never the command line.
//! * Sessions are `Send` but not `Sync`, so each token gets a bounded pool of
//!   logged-in sessions ([`Pkcs11Config::pool_size`]); a signature checks one out.
//!   A session the device broke is dropped and reopened on demand; a token that
//!   logged us out is logged in again.
//! * Mechanisms are chosen per key from `C_GetMechanismList`: hashed
//!   mechanisms (`CKM_ECDSA_SHA256`, `CKM_SHA256_RSA_PKCS_PSS`) when the token
//!   has them, otherwise the raw ones (`CKM_ECDSA`, `CKM_RSA_PKCS_PSS`,
//!   `CKM_RSA_PKCS`) over a digest computed on the host. SoftHSM2 is the
//!   second kind for ECDSA.
//! * Signing blocks on the device: the daemon wraps these keys in
//!   [`crate::offload::Offloaded`] so the event loop never waits on a token.
//!
//! The rustls provider stays the software one: only private-key operations
//! happen in the token.

mod key;
mod pin;
mod pool;
mod uri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::Attribute;
use cryptoki::slot::Slot;
use rustls::crypto::CryptoProvider;
use rustls::sign::SigningKey;

pub use key::{EcCurve, Pkcs11Key};
pub use pin::Pin;
use pool::SessionPool;
pub use uri::Pkcs11Uri;

use crate::{Backend, Error, KeyRef};

/// How to reach the tokens: the module, the PIN and how many sessions per token.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 shared library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The user PIN for every token reached through this backend (a URI's `pin-source` overrides it).
    pub pin: Pin,
    /// Sessions per token: the most signatures that run on one token at once.
    pub pool_size: usize,
    /// How long a signature waits for a free session before failing.
    pub checkout_timeout: Duration,
}

impl Pkcs11Config {
    /// A config with 4 sessions per token and a 5 s checkout timeout.
    pub fn new(module: impl Into<PathBuf>, pin: Pin) -> Self {
        Self {
            module: module.into(),
            pin,
            pool_size: 4,
            checkout_timeout: Duration::from_secs(5),
        }
    }
}

/// Initialised modules, one per path for the life of the process.
///
/// `C_Initialize` may run once per process and `C_Finalize` would pull the
/// rug from every other user of the module (including an OpenSSL engine over
/// the same library), so modules are loaded once and never finalised.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> = LazyLock::new(Default::default);

/// Loads and initialises `path`, or returns the context already open for it.
pub(crate) fn module(path: &Path) -> Result<Pkcs11, Error> {
    let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let fail = |cause| Error::Pkcs11Module {
        module: path.to_owned(),
        cause,
    };
    let ctx = Pkcs11::new(path).map_err(fail)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in the process (an OpenSSL engine) initialised it first.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(e)),
    }
    tracing::info!(module = %path.display(), "loaded PKCS#11 module");
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Keys in PKCS#11 tokens, one session pool per token.
#[derive(Debug)]
pub struct Pkcs11Backend {
    config: Pkcs11Config,
    provider: Arc<CryptoProvider>,
    pools: Mutex<HashMap<(PathBuf, u64), Arc<SessionPool>>>,
}

impl Pkcs11Backend {
    /// Loads the configured module now, so a wrong path fails at startup rather than at the first handshake.
    pub fn new(config: Pkcs11Config) -> Result<Self, Error> {
        module(&config.module)?;
        Ok(Self {
            config,
            provider: Arc::new(crate::software::provider()),
            pools: Mutex::default(),
        })
    }

    /// Loads the key a `pkcs11:` URI names, as the concrete type (for rcgen, or to inspect its schemes).
    pub fn load_key(&self, uri: &str) -> Result<Pkcs11Key, Error> {
        let uri = Pkcs11Uri::parse(uri)?;
        let pool = self.pool_for(&uri)?;
        let mechs = self.mechanisms(&pool, &uri)?;
        Pkcs11Key::load(pool, uri, &mechs)
    }

    /// Generates an EC key pair inside the token labelled `token`; the private key is sensitive and unextractable.
    pub fn generate_ec_key(
        &self,
        token: &str,
        label: &str,
        id: &[u8],
        curve: EcCurve,
    ) -> Result<KeyRef, Error> {
        let public = vec![Attribute::EcParams(curve.params().to_vec())];
        self.generate(token, label, id, &Mechanism::EccKeyPairGen, public)
    }

    /// Generates an RSA key pair (`bits` long, exponent 65537) inside the token labelled `token`.
    pub fn generate_rsa_key(
        &self,
        token: &str,
        label: &str,
        id: &[u8],
        bits: u64,
    ) -> Result<KeyRef, Error> {
        let public = vec![
            Attribute::ModulusBits(bits.into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        ];
        self.generate(token, label, id, &Mechanism::RsaPkcsKeyPairGen, public)
    }

    fn generate(
        &self,
        token: &str,
        label: &str,
        id: &[u8],
        mechanism: &Mechanism<'_>,
        mut public: Vec<Attribute>,
    ) -> Result<KeyRef, Error> {
        let uri = Pkcs11Uri::for_key(token, label, id);
        let pool = self.pool_for(&uri)?;
        let common = [
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        public.extend(common.iter().cloned());
        public.extend([Attribute::Private(false), Attribute::Verify(true)]);
        let mut private = common.to_vec();
        // The private key must never leave the token, not even wrapped.
        private.extend([
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ]);
        let session = pool.checkout()?;
        session
            .session()
            .generate_key_pair(mechanism, &public, &private)
            .map_err(|e| pool.err(format!("C_GenerateKeyPair for {uri}"), e))?;
        tracing::info!(key = %uri, token, "generated key pair in PKCS#11 token");
        Ok(KeyRef::Pkcs11(uri.to_string()))
    }

    /// The signing mechanisms the key's token lists.
    fn mechanisms(&self, pool: &SessionPool, uri: &Pkcs11Uri) -> Result<Vec<MechanismType>, Error> {
        let (ctx, slot) = self.slot_for(uri)?;
        ctx.get_mechanism_list(slot)
            .map_err(|e| pool.err("C_GetMechanismList", e))
    }

    /// Finds the module and slot a URI points at.
    fn slot_for(&self, uri: &Pkcs11Uri) -> Result<(Pkcs11, Slot), Error> {
        let module_path = uri.module_path.as_deref().unwrap_or(&self.config.module);
        let ctx = module(module_path)?;
        let not_found = || Error::TokenNotFound {
            module: module_path.to_owned(),
            token: uri.token_name(),
        };
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|cause| Error::Pkcs11 {
                operation: "C_GetSlotList".into(),
                token: uri.token_name(),
                cause,
            })?;
        for slot in slots {
            if uri.slot_id.is_some_and(|id| id != slot.id()) {
                continue;
            }
            if let Some(want) = &uri.token {
                let Ok(info) = ctx.get_token_info(slot) else {
                    continue;
                };
                if info.label().trim_end() != want {
                    continue;
                }
            }
            return Ok((ctx, slot));
        }
        Err(not_found())
    }

    /// The session pool for the URI's token, created on first use.
    fn pool_for(&self, uri: &Pkcs11Uri) -> Result<Arc<SessionPool>, Error> {
        let (ctx, slot) = self.slot_for(uri)?;
        let module_path = uri
            .module_path
            .clone()
            .unwrap_or_else(|| self.config.module.clone());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&(module_path.clone(), slot.id())) {
            return Ok(pool.clone());
        }
        let pin = match &uri.pin_source {
            Some(path) => Pin::from_file(path)?,
            None => self.config.pin.clone(),
        };
        let token = ctx
            .get_token_info(slot)
            .map(|i| i.label().trim_end().to_owned())
            .unwrap_or_else(|_| uri.token_name());
        let pool = Arc::new(SessionPool::new(
            ctx,
            slot,
            token,
            pin,
            self.config.pool_size,
            self.config.checkout_timeout,
        ));
        pools.insert((module_path, slot.id()), pool.clone());
        Ok(pool)
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn load_signing_key(&self, key: &KeyRef) -> Result<Arc<dyn SigningKey>, Error> {
        let KeyRef::Pkcs11(uri) = key else {
            return Err(Error::UnsupportedKeyRef {
                backend: self.name(),
                key: key.to_string(),
            });
        };
        Ok(Arc::new(self.load_key(uri)?))
    }

    fn is_device(&self) -> bool {
        true
    }
}
