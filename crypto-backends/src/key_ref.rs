use std::fmt;
use std::path::PathBuf;

/// Where a private key lives: a file on disk or an object in a PKCS#11 token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRef {
    /// A PEM file on the local filesystem.
    File(PathBuf),
    /// An RFC 7512 `pkcs11:` URI naming a key inside a token.
    Pkcs11(String),
}

impl KeyRef {
    /// Reads a key reference as written in a config file: `pkcs11:…` or a path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("pkcs11:") {
            Self::Pkcs11(s.to_owned())
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// The part of a key reference that is safe to show: a PKCS#11 URI or engine key id
/// without its `?query`, which may carry a `pin-value`.
pub fn shown(key_id: &str) -> &str {
    key_id.split('?').next().unwrap_or(key_id)
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            // A pkcs11 URI may carry `pin-value`; never print past the path part.
            Self::Pkcs11(uri) => f.write_str(shown(uri)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs11_uri_is_recognised_and_its_query_is_not_displayed() {
        let key = KeyRef::parse("pkcs11:token=mesh;object=svid?pin-value=1234");
        assert!(matches!(key, KeyRef::Pkcs11(_)));
        assert_eq!(key.to_string(), "pkcs11:token=mesh;object=svid");
    }

    #[test]
    fn anything_else_is_a_file() {
        assert_eq!(
            KeyRef::parse("/etc/mtlsd/svid.key"),
            KeyRef::File(PathBuf::from("/etc/mtlsd/svid.key"))
        );
    }
}
