use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a backend could not provide a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {cause}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The OS error (in the message, so not also a `source()`: see ARCHITECTURE.md, Errors).
        cause: io::Error,
    },
    /// The key file is readable or writable by users who must not have it.
    #[error(
        "key file {path} has mode {mode:04o}: refusing a private key that other users can read \
         or the group can write (chmod 600, or 640 for a dedicated group)"
    )]
    LoosePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds no private key in a format we read.
    #[error("no private key found in {path} (expected a PEM PKCS#8, SEC1 or PKCS#1 key)")]
    NoPrivateKey {
        /// The file that was searched.
        path: PathBuf,
    },
    /// The key was found but the backend cannot sign with it.
    #[error("unsupported private key in {path}: {reason}")]
    UnsupportedKey {
        /// Where the key came from.
        path: PathBuf,
        /// What the crypto library said.
        reason: String,
    },
    /// This backend does not handle this kind of key reference.
    #[error("the {backend} backend cannot load {key}")]
    UnsupportedKeyRef {
        /// The backend asked.
        backend: &'static str,
        /// The reference it was given (PIN elided).
        key: String,
    },
    /// A device key (PKCS#11 object, engine or provider key) cannot be used for signing.
    #[error("unsupported device key {key}: {reason}")]
    UnsupportedDeviceKey {
        /// The key reference (PIN elided).
        key: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The PKCS#11 PIN could not be read from its configured source.
    #[error("cannot read the PKCS#11 PIN from {source_name}: {reason}")]
    PinUnavailable {
        /// Where the PIN was to come from (file path, env var or credential name), never the PIN.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A `pkcs11:` URI does not follow RFC 7512 or names something we do not support.
    #[error("invalid PKCS#11 URI {uri}: {reason}")]
    InvalidPkcs11Uri {
        /// The URI without its query (which may hold a PIN).
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PKCS#11 module could not be loaded or initialised.
    #[cfg(feature = "pkcs11")]
    #[error("cannot load PKCS#11 module {module}: {cause}")]
    Pkcs11Module {
        /// The shared library path.
        module: PathBuf,
        /// What cryptoki reported.
        cause: cryptoki::error::Error,
    },
    /// No slot holds a token matching the key reference.
    #[error("no PKCS#11 token {token} in module {module}")]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The token label or slot id that was asked for.
        token: String,
    },
    /// The token holds no private key matching the URI.
    #[error("no private key {key} in PKCS#11 token {token}")]
    Pkcs11KeyNotFound {
        /// The key URI (query elided).
        key: String,
        /// The token searched.
        token: String,
    },
    /// A PKCS#11 call failed.
    #[cfg(feature = "pkcs11")]
    #[error("PKCS#11 {operation} on token {token} failed: {cause}")]
    Pkcs11 {
        /// What we were doing (`"C_Login"`, `"sign with pkcs11:…"`).
        operation: String,
        /// The token concerned.
        token: String,
        /// What cryptoki reported.
        cause: cryptoki::error::Error,
    },
    /// Every pooled session to a token stayed busy for the whole checkout timeout.
    #[error(
        "all {size} PKCS#11 sessions to token {token} stayed busy for {waited:?}; raise pool_size \
         or check the device"
    )]
    Pkcs11PoolTimeout {
        /// The token whose pool was exhausted.
        token: String,
        /// The pool size.
        size: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// An OpenSSL call failed.
    #[cfg(feature = "openssl")]
    #[error("OpenSSL {operation} failed: {cause}")]
    Openssl {
        /// What we were doing, naming the engine, provider or key concerned.
        operation: String,
        /// OpenSSL's error queue.
        cause: openssl::error::ErrorStack,
    },
    /// An OpenSSL ENGINE could not be loaded, configured or initialised.
    #[error("OpenSSL engine {engine}: {reason}")]
    OpensslEngine {
        /// The engine id.
        engine: String,
        /// What failed (the control command name is included, its value is not).
        reason: String,
    },
    /// A device key could not sign (the device failed and no software copy exists).
    #[error("{backend} key {key} unavailable: {reason}")]
    DeviceUnavailable {
        /// The device backend.
        backend: &'static str,
        /// The key reference (PIN elided).
        key: String,
        /// What the device said.
        reason: String,
    },
    /// Every device slot stayed busy past the wait.
    #[error(
        "device busy: {in_flight} signatures already in flight for {key} and none finished within {waited_ms} ms"
    )]
    DeviceBusy {
        /// The key reference.
        key: String,
        /// `max_in_flight`.
        in_flight: usize,
        /// How long the signature waited.
        waited_ms: u64,
    },
}

impl Error {
    /// Wraps this error for rustls, keeping its type so callers can classify failed handshakes.
    pub fn into_tls(self) -> rustls::Error {
        rustls::Error::Other(rustls::OtherError(std::sync::Arc::new(self)))
    }
}
