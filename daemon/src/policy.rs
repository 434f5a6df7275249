//! Per-listener authorization: default deny, deny rules beat allow rules.
//!
//! A rule names principals the way operators already write them:
//!
//! | rule | matches |
//! |---|---|
//! | `spiffe://example.org/ns/web/sa/api` | exactly that ID |
//! | `spiffe://example.org/ns/web/*` | every ID under `/ns/web/` |
//! | `spiffe://example.org` | every ID in the trust domain |
//! | `unauthenticated` | a plaintext peer on a permissive listener |

use std::fmt;
use std::str::FromStr;

use crate::identity::{SpiffeId, SpiffeIdError, validate_trust_domain};

/// The keyword for peers that did not authenticate (permissive listeners only).
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// One principal pattern from an allow or deny list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Every ID in `trust_domain` whose path starts with `prefix` (which ends in `/`).
    PathPrefix {
        /// The trust domain the IDs must be in.
        trust_domain: String,
        /// Path prefix including the trailing `/`.
        prefix: String,
    },
    /// Every ID in the trust domain.
    TrustDomain(String),
    /// A peer with no verified identity.
    Unauthenticated,
}

/// Why a rule string is not a principal pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The part before `/*` or the whole rule is not a SPIFFE ID.
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
    /// A `*` somewhere other than a whole last path segment.
    #[error("'*' is only allowed as the whole last path segment, as in spiffe://td/ns/*")]
    Wildcard,
}

impl FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == UNAUTHENTICATED {
            return Ok(Self::Unauthenticated);
        }
        if let Some(base) = s.strip_suffix("/*") {
            if base.contains('*') {
                return Err(PrincipalError::Wildcard);
            }
            let base: SpiffeId = base.parse()?;
            return Ok(if base.path().is_empty() {
                Self::TrustDomain(base.trust_domain().to_owned())
            } else {
                Self::PathPrefix {
                    trust_domain: base.trust_domain().to_owned(),
                    prefix: format!("{}/", base.path()),
                }
            });
        }
        if s.contains('*') {
            return Err(PrincipalError::Wildcard);
        }
        let id: SpiffeId = s.parse()?;
        if id.path().is_empty() {
            validate_trust_domain(id.trust_domain())?;
            return Ok(Self::TrustDomain(id.trust_domain().to_owned()));
        }
        Ok(Self::Exact(id))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::PathPrefix {
                trust_domain,
                prefix,
            } => write!(f, "spiffe://{trust_domain}{prefix}*"),
            Self::TrustDomain(td) => write!(f, "spiffe://{td}"),
            Self::Unauthenticated => f.write_str(UNAUTHENTICATED),
        }
    }
}

impl Principal {
    /// Whether `peer` is one of the identities this pattern names.
    pub fn matches(&self, peer: Peer<'_>) -> bool {
        match (self, peer) {
            (Self::Unauthenticated, Peer::Unauthenticated) => true,
            (Self::Exact(want), Peer::Spiffe(id)) => want == id,
            (
                Self::PathPrefix {
                    trust_domain,
                    prefix,
                },
                Peer::Spiffe(id),
            ) => id.trust_domain() == trust_domain && id.path().starts_with(prefix.as_str()),
            (Self::TrustDomain(td), Peer::Spiffe(id)) => id.trust_domain() == td,
            _ => false,
        }
    }
}

/// The party asking to be let through.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// A peer whose certificate was verified.
    Spiffe(&'a SpiffeId),
    /// A plaintext peer on a permissive listener.
    Unauthenticated,
}

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spiffe(id) => write!(f, "{id}"),
            Self::Unauthenticated => f.write_str(UNAUTHENTICATED),
        }
    }
}

/// The outcome of evaluating a policy, naming the rule that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    /// An allow rule matched and no deny rule did.
    Allow(&'p Principal),
    /// A deny rule matched.
    Deny(&'p Principal),
    /// No rule matched: default deny.
    NoMatch,
}

/// A listener's allow and deny lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Principals let through unless denied.
    pub allow: Vec<Principal>,
    /// Principals refused even if allowed.
    pub deny: Vec<Principal>,
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rules = |list: &[Principal]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut st = s.serialize_struct("Policy", 2)?;
        st.serialize_field("allow", &rules(&self.allow))?;
        st.serialize_field("deny", &rules(&self.deny))?;
        st.end()
    }
}

impl Policy {
    /// Decides whether `peer` may pass.
    pub fn authorize(&self, peer: Peer<'_>) -> Decision<'_> {
        if let Some(rule) = self.deny.iter().find(|p| p.matches(peer)) {
            return Decision::Deny(rule);
        }
        match self.allow.iter().find(|p| p.matches(peer)) {
            Some(rule) => Decision::Allow(rule),
            None => Decision::NoMatch,
        }
    }

    /// Whether any rule mentions unauthenticated peers.
    pub fn mentions_unauthenticated(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|p| *p == Principal::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let parse = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
        Policy {
            allow: parse(allow),
            deny: parse(deny),
        }
    }

    fn decide(p: &Policy, id: &str) -> String {
        let id: SpiffeId = id.parse().unwrap();
        match p.authorize(Peer::Spiffe(&id)) {
            Decision::Allow(r) => format!("allow {r}"),
            Decision::Deny(r) => format!("deny {r}"),
            Decision::NoMatch => "no match".into(),
        }
    }

    #[test]
    fn empty_policy_denies_everyone() {
        let p = Policy::default();
        assert_eq!(decide(&p, "spiffe://ex/a"), "no match");
        assert_eq!(p.authorize(Peer::Unauthenticated), Decision::NoMatch);
    }

    #[test]
    fn exact_prefix_and_trust_domain_rules() {
        let p = policy(
            &[
                "spiffe://ex/ns/web/sa/api",
                "spiffe://ex/batch/*",
                "spiffe://other",
            ],
            &[],
        );
        assert_eq!(
            decide(&p, "spiffe://ex/ns/web/sa/api"),
            "allow spiffe://ex/ns/web/sa/api"
        );
        assert_eq!(decide(&p, "spiffe://ex/ns/web/sa/api2"), "no match");
        assert_eq!(
            decide(&p, "spiffe://ex/batch/job/1"),
            "allow spiffe://ex/batch/*"
        );
        // A prefix rule matches whole segments only.
        assert_eq!(decide(&p, "spiffe://ex/batchx/job"), "no match");
        assert_eq!(decide(&p, "spiffe://ex/batch"), "no match");
        assert_eq!(
            decide(&p, "spiffe://other/anything"),
            "allow spiffe://other"
        );
        assert_eq!(decide(&p, "spiffe://ex2/batch/job"), "no match");
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(&["spiffe://ex"], &["spiffe://ex/ns/bad/*"]);
        assert_eq!(decide(&p, "spiffe://ex/ns/good/x"), "allow spiffe://ex");
        assert_eq!(
            decide(&p, "spiffe://ex/ns/bad/x"),
            "deny spiffe://ex/ns/bad/*"
        );
    }

    #[test]
    fn unauthenticated_only_matches_plaintext_peers() {
        let p = policy(&["unauthenticated"], &[]);
        assert_eq!(decide(&p, "spiffe://ex/a"), "no match");
        assert!(matches!(
            p.authorize(Peer::Unauthenticated),
            Decision::Allow(_)
        ));
        assert!(p.mentions_unauthenticated());
    }

    #[test]
    fn wildcards_only_as_a_whole_last_segment() {
        for bad in ["spiffe://ex/a*", "spiffe://ex/*/b", "spiffe://*.ex/a", "*"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad}");
        }
        assert_eq!(
            "spiffe://ex/*".parse::<Principal>().unwrap(),
            Principal::TrustDomain("ex".into())
        );
    }
}
