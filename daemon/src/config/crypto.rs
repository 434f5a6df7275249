//! The typed `[crypto]` settings: which backend holds the private key, and how device
//! operations are bounded.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::duration::as_optional_duration;

/// The largest `crypto.max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// The largest `crypto.pkcs11.pool_size`.
pub const MAX_POOL_SIZE: usize = 1024;

/// `[crypto]`: the backend and how device operations are bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CryptoConfig {
    /// The backend in use.
    #[serde(flatten)]
    pub backend: BackendKind,
    /// Device signatures in flight at once; more wait (bounded) for a slot.
    pub max_in_flight: usize,
    /// Added to every signature, as a slow HSM or a remote signer would: for tests and capacity
    /// planning. The key is then treated as a device key (offloaded).
    #[serde(serialize_with = "as_optional_duration")]
    pub simulate_latency: Option<Duration>,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Software,
            max_in_flight: 64,
            simulate_latency: None,
        }
    }
}

/// The crypto backend that holds private keys, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "backend")]
#[non_exhaustive]
pub enum BackendKind {
    /// rustls on aws-lc-rs, keys in memory.
    Software,
    /// Keys inside a PKCS#11 token (HSM).
    Pkcs11(Pkcs11Settings),
    /// Private-key operations through OpenSSL 3 with an ENGINE or provider.
    // Only in builds with the backend: config validation refuses `backend = "openssl"`
    // otherwise, so no later code needs a "not built in" path.
    #[cfg(feature = "openssl")]
    Openssl(OpensslSettings),
}

impl BackendKind {
    /// The name used in config, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Software => "software",
            Self::Pkcs11(_) => "pkcs11",
            #[cfg(feature = "openssl")]
            Self::Openssl(_) => "openssl",
        }
    }
}

/// `[crypto.pkcs11]`: the module, the PIN and the session pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pkcs11Settings {
    /// The PKCS#11 shared library.
    pub module: PathBuf,
    /// Where the PIN is read from.
    pub pin: PinSource,
    /// Sessions per token: signatures that run on the token at once.
    pub pool_size: usize,
}

/// Where the PKCS#11 user PIN comes from; never the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinSource {
    /// A file readable by the daemon only.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential (`LoadCredential=`), by name.
    Credential(String),
}

/// `[crypto.openssl]`: which ENGINE or provider signs.
#[cfg(feature = "openssl")]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpensslSettings {
    /// ENGINE id, e.g. `qatengine` or `pkcs11`.
    pub engine: Option<String>,
    /// ENGINE control commands sent before init; values are not shown by `/config`.
    #[serde(serialize_with = "ctrl_names")]
    pub engine_ctrl: Vec<(String, String)>,
    /// Provider name, e.g. `qatprovider`.
    pub provider: Option<String>,
}

/// Serializes ENGINE control commands by name only: their values may be secrets.
#[cfg(feature = "openssl")]
fn ctrl_names<S: serde::Serializer>(ctrl: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ctrl.iter().map(|(name, _)| [name.as_str(), "<redacted>"]))
}
