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
//! | `openssl` | files or engine/provider key ids | planned |
//! | `pkcs11` | RFC 7512 `pkcs11:` URIs | planned |
#![forbid(unsafe_code)]

mod error;
mod key_ref;
mod secret_file;
pub mod software;

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
}
