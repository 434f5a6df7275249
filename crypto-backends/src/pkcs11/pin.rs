//! The token PIN: read from a file, an environment variable or a systemd credential, never argv.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{Error, read_secret_file};

/// A PKCS#11 user PIN, wiped from memory when dropped; `Debug` never shows it.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Wraps a PIN the caller already holds (tests, or a secret store the daemon reads itself).
    pub fn new(pin: impl Into<String>) -> Self {
        Self(Zeroizing::new(pin.into()))
    }

    /// Reads the PIN from a file (one trailing newline is dropped), refusing files other users can read.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        // Same rule as key files: the PIN unlocks every key in the token.
        let bytes = read_secret_file(path)?;
        let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        let fail = |reason: String| Error::PinUnavailable {
            source_name: format!("file {}", path.display()),
            reason,
        };
        Self::from_text(&text).ok_or_else(|| fail("the file is empty".into()))
    }

    /// Reads the PIN from an environment variable (for containers; a file or credential is safer).
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::PinUnavailable {
            source_name: format!("environment variable {var}"),
            reason: reason.into(),
        };
        let value = Zeroizing::new(std::env::var(var).map_err(|_| fail("not set or not UTF-8"))?);
        Self::from_text(&value).ok_or_else(|| fail("empty"))
    }

    /// Reads the PIN from a systemd credential (`LoadCredential=name:…`, found in `$CREDENTIALS_DIRECTORY`).
    pub fn from_credential(name: &str) -> Result<Self, Error> {
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
            return Err(Error::PinUnavailable {
                source_name: format!("systemd credential {name}"),
                reason: "CREDENTIALS_DIRECTORY is not set (is the unit missing LoadCredential=?)"
                    .into(),
            });
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::PinUnavailable {
                source_name: format!("systemd credential {name:?}"),
                reason: "a credential name is a single path component".into(),
            });
        }
        Self::from_file(&PathBuf::from(dir).join(name))
    }

    /// The PIN text, for the login call only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    fn from_text(text: &str) -> Option<Self> {
        let pin = text.strip_suffix('\n').unwrap_or(text);
        let pin = pin.strip_suffix('\r').unwrap_or(pin);
        (!pin.is_empty()).then(|| Self::new(pin))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, mode: u32, text: &str) -> PathBuf {
        crate::secret_file::write_with_mode(dir, name, mode, text)
    }

    #[test]
    fn file_pin_drops_one_trailing_newline_and_debug_redacts_it() {
        let dir = tempfile::tempdir().unwrap();
        let pin = Pin::from_file(&write(dir.path(), "pin", 0o600, "12 34\n")).unwrap();
        assert_eq!(pin.expose(), "12 34");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn world_readable_or_empty_pin_files_are_refused_without_echoing_content() {
        let dir = tempfile::tempdir().unwrap();
        let err = Pin::from_file(&write(dir.path(), "loose", 0o644, "secret-pin")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("loose") && msg.contains("0644"), "{msg}");
        assert!(!msg.contains("secret-pin"), "{msg}");
        let err = Pin::from_file(&write(dir.path(), "empty", 0o600, "\n")).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn credential_names_cannot_escape_the_credentials_directory() {
        let err = Pin::from_credential("../etc/shadow").unwrap_err();
        assert!(matches!(err, Error::PinUnavailable { .. }), "{err}");
    }
}
