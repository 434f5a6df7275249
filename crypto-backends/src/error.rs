use std::io;
use std::path::PathBuf;

/// Why a backend could not provide a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
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
}
