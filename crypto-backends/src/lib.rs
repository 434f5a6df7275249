//! Crypto backends for mtlsd.
//!
//! The daemon talks to exactly one seam, [`Backend`]: it asks a backend for the
//! rustls [`CryptoProvider`] (key exchange, ciphers, signature verification) and
//! for the signing key behind a [`KeyRef`]. It never learns whether the key
//! lives in memory, behind an OpenSSL engine or inside an HSM.
//!
//! | backend | key references | status |
//! |---|---|---|
//! | [`software`] | PEM files (PKCS#8, SEC1, PKCS#1) | implemented |
//! | `openssl` | files, `pkcs11:` URIs or engine key ids through an ENGINE or provider | feature `openssl` (off by default: needs libssl-dev) |
//! | [`pkcs11`] | RFC 7512 `pkcs11:` URIs | feature `pkcs11` (default) |
//!
//! Device keys block while the device works; [`offload`] wraps them so the
//! async event loop never waits on a device, bounds the operations in flight,
//! counts them, and falls back to a software copy when the device fails.
//!
//! Unsafe code is denied crate-wide; only the OpenSSL ENGINE bindings opt in, and the
//! test-only SoftHSM2 fixture for one `set_var`.
#![deny(unsafe_code)]

#[cfg(feature = "pkcs11")]
mod der;
mod error;
mod hkdf;
mod key_ref;
pub mod offload;
#[cfg(feature = "openssl")]
pub mod openssl;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
mod secret_file;
pub mod software;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod verify_cache;

use std::fmt;
use std::sync::Arc;

pub use error::Error;
pub use key_ref::KeyRef;
use rustls::crypto::CryptoProvider;
use rustls::sign::SigningKey;
pub use secret_file::read_secret_file;

/// A source of TLS primitives and private-key operations.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short stable name used in config, logs and metrics (`"software"`).
    fn name(&self) -> &'static str;

    /// The rustls provider that handshakes made with this backend's keys use.
    fn provider(&self) -> &Arc<CryptoProvider>;

    /// Loads the private key `key` refers to, ready to sign handshakes.
    fn load_signing_key(&self, key: &KeyRef) -> Result<Arc<dyn SigningKey>, Error>;

    /// Whether this backend's keys live on a device whose operations block
    /// (HSM, accelerator); the daemon wraps those in [`offload::Offloaded`].
    fn is_device(&self) -> bool {
        false
    }
}
