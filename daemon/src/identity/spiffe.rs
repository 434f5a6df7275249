//! SPIFFE IDs (`spiffe://trust-domain/path`) as the SPIFFE-ID standard defines them.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// `spiffe://td/path`, kept whole so display and comparison cost nothing.
    uri: String,
    /// Byte offset where the path (possibly empty) starts in `uri`.
    path_start: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// It does not start with `spiffe://`.
    #[error("must start with \"spiffe://\"")]
    Scheme,
    /// It is longer than the 2048 bytes the standard allows.
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain holds a character other than `a-z 0-9 . - _`.
    #[error("trust domain has {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    /// A path segment is empty, `.` or `..`, or the path ends with `/`.
    #[error("path segments must be non-empty and not \".\" or \"..\"")]
    BadSegment,
    /// The path holds a character other than `A-Z a-z 0-9 . - _`.
    #[error("path has {0:?}; only letters, digits, '.', '-', '_' and '/' are allowed")]
    PathChar(char),
}

impl SpiffeId {
    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, e.g. `/ns/default/sa/web`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The whole ID as a URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(SpiffeIdError::BadSegment);
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            uri: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }
}

/// Checks a bare trust domain name such as `example.org`.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trust_domain_and_path() {
        let id: SpiffeId = "spiffe://example.org/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/web");
        let td: SpiffeId = "spiffe://example.org".parse().unwrap();
        assert_eq!(td.path(), "");
    }

    #[test]
    fn rejects_what_the_standard_forbids() {
        let cases = [
            ("https://example.org/x", SpiffeIdError::Scheme),
            ("spiffe:///x", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Example.org/x",
                SpiffeIdError::TrustDomainChar('E'),
            ),
            ("spiffe://ex:8080/x", SpiffeIdError::TrustDomainChar(':')),
            ("spiffe://user@ex/x", SpiffeIdError::TrustDomainChar('@')),
            ("spiffe://ex/a//b", SpiffeIdError::BadSegment),
            ("spiffe://ex/a/", SpiffeIdError::BadSegment),
            ("spiffe://ex/a/../b", SpiffeIdError::BadSegment),
            ("spiffe://ex/a?b", SpiffeIdError::PathChar('?')),
            ("spiffe://ex/a#b", SpiffeIdError::PathChar('#')),
            ("spiffe://ex/a%20", SpiffeIdError::PathChar('%')),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<SpiffeId>().unwrap_err(), want, "{input}");
        }
        let long = format!("spiffe://ex/{}", "a".repeat(MAX_LEN));
        assert_eq!(
            long.parse::<SpiffeId>().unwrap_err(),
            SpiffeIdError::TooLong
        );
    }
}
