//! RFC 7512 `pkcs11:` URIs: the subset that names a private key in a token.

use std::fmt;
use std::path::PathBuf;

use crate::Error;

/// A parsed `pkcs11:` key reference.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `slot-id=`: the slot number, for tokens without a unique label.
    pub slot_id: Option<u64>,
    /// `object=`: the key label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `id=`: the key id (`CKA_ID`), raw bytes after %-decoding.
    pub id: Option<Vec<u8>>,
    /// `?module-path=`: overrides the backend's configured module for this key.
    pub module_path: Option<PathBuf>,
    /// `?pin-source=file:…` or an absolute path: where this token's PIN is read from.
    pub pin_source: Option<PathBuf>,
    /// The URI as written, without its query, for messages.
    display: String,
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI naming a private key; refuses `pin-value` and non-private `type=`.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let display = crate::key_ref::shown(uri).to_owned();
        let fail = |reason: String| Error::InvalidPkcs11Uri {
            uri: display.clone(),
            reason,
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| fail("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = Self {
            token: None,
            slot_id: None,
            object: None,
            id: None,
            module_path: None,
            pin_source: None,
            display: display.clone(),
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| fail(format!("path attribute {attr:?} has no '='")))?;
            let bytes = pct_decode(value).map_err(&fail)?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| fail(format!("{name} is not UTF-8 after %-decoding")))
            };
            match name {
                "token" => out.token = Some(text()?),
                "object" => out.object = Some(text()?),
                "id" => out.id = Some(bytes),
                "slot-id" => {
                    out.slot_id = Some(
                        text()?
                            .parse()
                            .map_err(|_| fail(format!("slot-id {value:?} is not a number")))?,
                    )
                }
                "type" => {
                    let t = text()?;
                    if t != "private" {
                        return Err(fail(format!(
                            "type={t}: mtlsd signs with private keys, use type=private"
                        )));
                    }
                }
                // Attributes that narrow the match but that we do not need to find a key.
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {}
                other => return Err(fail(format!("unknown path attribute {other:?}"))),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
            match name {
                "module-path" => {
                    let bytes = pct_decode(value).map_err(&fail)?;
                    let path = String::from_utf8(bytes)
                        .map_err(|_| fail("module-path is not UTF-8".into()))?;
                    out.module_path = Some(PathBuf::from(path));
                }
                "pin-source" => {
                    let bytes = pct_decode(value).map_err(&fail)?;
                    let src = String::from_utf8(bytes)
                        .map_err(|_| fail("pin-source is not UTF-8".into()))?;
                    let path = src.strip_prefix("file:").unwrap_or(&src);
                    if !path.starts_with('/') {
                        return Err(fail(
                            "pin-source must be file:/absolute/path (commands are not run)".into(),
                        ));
                    }
                    out.pin_source = Some(PathBuf::from(path));
                }
                // A PIN in a URI ends up in config dumps and logs; insist on a file.
                "pin-value" => {
                    return Err(fail(
                        "pin-value is refused: put the PIN in a file (pin-source=file:…) or the \
                         backend's PIN source"
                            .into(),
                    ));
                }
                "module-name" => {}
                other => return Err(fail(format!("unknown query attribute {other:?}"))),
            }
        }
        if out.object.is_none() && out.id.is_none() {
            return Err(fail("names no key: give object= or id=".into()));
        }
        Ok(out)
    }

    /// Builds the URI of a private key from its token, label and id (used after key generation).
    pub fn for_key(token: &str, label: &str, id: &[u8]) -> Self {
        let mut display = format!(
            "pkcs11:token={};object={}",
            pct_encode(token.as_bytes()),
            pct_encode(label.as_bytes())
        );
        if !id.is_empty() {
            display.push_str(";id=");
            for b in id {
                display.push_str(&format!("%{b:02x}"));
            }
        }
        display.push_str(";type=private");
        Self {
            token: Some(token.into()),
            slot_id: None,
            object: Some(label.into()),
            id: (!id.is_empty()).then(|| id.to_vec()),
            module_path: None,
            pin_source: None,
            display,
        }
    }

    /// The token this key lives in, as operators wrote it.
    pub(crate) fn token_name(&self) -> String {
        match (&self.token, self.slot_id) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => format!("slot {s}"),
            (None, None) => "(first token)".into(),
        }
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({})", self.display)
    }
}

/// RFC 3986 percent-decoding.
fn pct_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape at byte {i} of {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encodes everything outside RFC 7512's unreserved path characters.
fn pct_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_object_id_and_query() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=mesh%20ca;object=root;id=%01%a0;type=private;slot-id=3\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("mesh ca"));
        assert_eq!(uri.object.as_deref(), Some("root"));
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xa0][..]));
        assert_eq!(uri.slot_id, Some(3));
        assert_eq!(
            uri.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(uri.pin_source, Some(PathBuf::from("/run/pin")));
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=mesh%20ca;object=root;id=%01%a0;type=private;slot-id=3"
        );
    }

    #[test]
    fn refuses_pin_values_public_keys_bad_escapes_and_keyless_uris() {
        for (uri, needle) in [
            ("pkcs11:object=k?pin-value=1234", "pin-value"),
            ("pkcs11:object=k;type=public", "type=public"),
            ("pkcs11:object=%zz", "%-escape"),
            ("pkcs11:token=t", "object= or id="),
            ("pkcs11:object=k;colour=red", "colour"),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(err.contains(needle), "{uri}: {err}");
            assert!(!err.contains("1234"), "PIN leaked: {err}");
        }
    }

    #[test]
    fn generated_uris_round_trip() {
        let uri = Pkcs11Uri::for_key("my token", "ca root", &[0xca, 0x01]);
        let parsed = Pkcs11Uri::parse(&uri.to_string()).unwrap();
        assert_eq!(parsed, uri);
    }
}
