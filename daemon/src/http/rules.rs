//! Per-request authorization in the shape of Istio's `AuthorizationPolicy`.
//!
//! A rule has an action (`allow`, `deny`, `audit`) and three optional parts that must
//! all match: `from` (who: SPIFFE principals, JWT request principals, source IP blocks),
//! `to` (what: methods, paths, hosts) and `when` (conditions on JWT claims, headers and
//! the source). Within a part, any one entry of a list matches; within an entry, every
//! field given must match, and each `not_` field must not.
//!
//! Istio's order decides: any matching `deny` refuses; otherwise, when the listener has
//! `allow` rules, one must match; otherwise the request passes. `audit` rules are
//! logged and counted and never change the outcome.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hyper::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use crate::policy::{Peer, Principal};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through (when no `deny` rule matches).
    Allow,
    /// Refuse the request.
    Deny,
    /// Log and count the match; decide nothing.
    Audit,
}

impl Action {
    /// The config and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "audit" => Ok(Self::Audit),
            _ => Err(format!(
                "unknown action {s:?}: expected \"allow\", \"deny\" or \"audit\""
            )),
        }
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (anything present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// Exactly this value.
    Exact(String),
    /// Values starting with this.
    Prefix(String),
    /// Values ending with this.
    Suffix(String),
    /// Any value.
    Any,
}

impl StringMatch {
    /// Parses a pattern; `*` is allowed only as the whole pattern, its first or its last character.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let m = if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_owned())
        } else {
            Self::Exact(s.to_owned())
        };
        match &m {
            Self::Exact(v) | Self::Prefix(v) | Self::Suffix(v) if v.contains('*') => Err(format!(
                "{s:?}: '*' may only be the whole value, its first or its last character"
            )),
            _ => Ok(m),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => value == v,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Any => true,
        }
    }

    /// Case-insensitive [`matches`](Self::matches), for methods and hosts; allocates nothing.
    fn matches_ignore_case(&self, value: &str) -> bool {
        let value = value.as_bytes();
        match self {
            Self::Exact(v) => value.eq_ignore_ascii_case(v.as_bytes()),
            Self::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            Self::Suffix(s) => value
                .len()
                .checked_sub(s.len())
                .is_some_and(|at| value[at..].eq_ignore_ascii_case(s.as_bytes())),
            Self::Any => true,
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => f.write_str(v),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// An address range in CIDR notation (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpBlock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpBlock {
    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let ((want, width), (have, have_width)) = (bits(self.addr), bits(ip));
        if width != have_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        // A /0 block shifts the whole value out.
        want.checked_shr(shift).unwrap_or(0) == have.checked_shr(shift).unwrap_or(0)
    }
}

/// A list of patterns and a list of excluded patterns: matches when the value matches
/// one of `any` (or `any` is empty) and none of `not`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<T> {
    /// The value must match one of these (no constraint when empty).
    pub any: Vec<T>,
    /// The value must match none of these.
    pub not: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            any: Vec::new(),
            not: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    /// Whether neither list constrains anything.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.not.is_empty()
    }

    fn check(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&matches)) && !self.not.iter().any(matches)
    }
}

impl<T: fmt::Display> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let strings = |v: &[T]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut st = s.serialize_struct("Field", 2)?;
        st.serialize_field("any", &strings(&self.any))?;
        st.serialize_field("not", &strings(&self.not))?;
        st.end()
    }
}

/// Who is asking: one entry of a rule's `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Source {
    /// The mTLS peer's SPIFFE ID.
    pub principals: Field<Principal>,
    /// The validated JWT's `iss/sub`.
    pub request_principals: Field<StringMatch>,
    /// The client's IP address.
    pub ip_blocks: Field<IpBlock>,
}

/// What is asked for: one entry of a rule's `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// Request methods (case-insensitive).
    pub methods: Field<StringMatch>,
    /// The normalized path, without the query.
    pub paths: Field<StringMatch>,
    /// The authority, with or without its port (case-insensitive).
    pub hosts: Field<StringMatch>,
}

/// What a `when` condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.auth.claims[a][b]…`: a claim of the validated JWT, nested by name.
    Claim(Vec<String>),
    /// `request.headers[name]`.
    Header(hyper::header::HeaderName),
    /// `request.auth.principal`: the JWT's `iss/sub`.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT's `aud`.
    Audiences,
    /// `source.ip`.
    SourceIp,
    /// `source.principal`: the peer's SPIFFE ID.
    SourcePrincipal,
}

impl FromStr for ConditionKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bracketed = |rest: &str| -> Option<Vec<String>> {
            let mut names = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let inner = rest.strip_prefix('[')?;
                let (name, after) = inner.split_once(']')?;
                if name.is_empty() {
                    return None;
                }
                names.push(name.to_owned());
                rest = after;
            }
            (!names.is_empty()).then_some(names)
        };
        match s {
            "request.auth.principal" => return Ok(Self::RequestPrincipal),
            "request.auth.audiences" => return Ok(Self::Audiences),
            "source.ip" => return Ok(Self::SourceIp),
            "source.principal" => return Ok(Self::SourcePrincipal),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("request.auth.claims") {
            return bracketed(rest).map(Self::Claim).ok_or_else(|| {
                format!("{s:?}: write claims as request.auth.claims[name] or [outer][inner]")
            });
        }
        if let Some(rest) = s.strip_prefix("request.headers") {
            let names = bracketed(rest).filter(|n| n.len() == 1);
            let name = names
                .and_then(|n| hyper::header::HeaderName::from_bytes(n[0].as_bytes()).ok())
                .ok_or_else(|| {
                    format!(
                        "{s:?}: write headers as request.headers[name] with a valid header name"
                    )
                })?;
            return Ok(Self::Header(name));
        }
        Err(format!(
            "unknown condition key {s:?}: expected request.auth.claims[…], request.headers[…], \
             request.auth.principal, request.auth.audiences, source.ip or source.principal"
        ))
    }
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Claim(path) => {
                f.write_str("request.auth.claims")?;
                path.iter().try_for_each(|p| write!(f, "[{p}]"))
            }
            Self::Header(name) => write!(f, "request.headers[{name}]"),
            Self::RequestPrincipal => f.write_str("request.auth.principal"),
            Self::Audiences => f.write_str("request.auth.audiences"),
            Self::SourceIp => f.write_str("source.ip"),
            Self::SourcePrincipal => f.write_str("source.principal"),
        }
    }
}

/// One `when` condition: the key's value must match one of `values` and none of `not_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What is looked at.
    pub key: ConditionKey,
    /// Patterns as written (CIDR blocks for `source.ip`, SPIFFE patterns for `source.principal`).
    pub values: Field<String>,
    /// The same patterns, parsed once for the key's kind.
    patterns: Patterns,
}

/// A condition's patterns, parsed when the config is loaded rather than per request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Patterns {
    Strings(Field<StringMatch>),
    Ips(Field<IpBlock>),
    Principals(Field<Principal>),
}

impl Condition {
    /// A condition on `key`; fails on the first pattern that is not valid for that key.
    pub fn new(key: ConditionKey, values: Field<String>) -> Result<Self, String> {
        fn parse<T>(
            values: &Field<String>,
            f: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Field<T>, String> {
            let list = |v: &[String]| v.iter().map(|s| f(s)).collect::<Result<Vec<_>, _>>();
            Ok(Field {
                any: list(&values.any)?,
                not: list(&values.not)?,
            })
        }
        let patterns = match key {
            ConditionKey::SourceIp => Patterns::Ips(parse(&values, |s| s.parse())?),
            ConditionKey::SourcePrincipal => Patterns::Principals(parse(&values, |s| {
                s.parse::<Principal>().map_err(|e| e.to_string())
            })?),
            _ => Patterns::Strings(parse(&values, StringMatch::parse)?),
        };
        Ok(Self {
            key,
            values,
            patterns,
        })
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Condition", 3)?;
        st.serialize_field("key", &self.key.to_string())?;
        st.serialize_field("values", &self.values.any)?;
        st.serialize_field("not_values", &self.values.not)?;
        st.end()
    }
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Names the rule in logs, metrics and the 403 reason.
    pub name: String,
    /// What a match does.
    pub action: Action,
    /// Any one source must match (no constraint when empty).
    pub from: Vec<Source>,
    /// Any one operation must match (no constraint when empty).
    pub to: Vec<Operation>,
    /// Every condition must hold.
    pub when: Vec<Condition>,
}

/// The validated JWT, as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    /// Every claim of the token.
    pub claims: Value,
}

/// Everything a rule can look at in one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The mTLS peer.
    pub peer: Peer<'a>,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The request method.
    pub method: &'a str,
    /// The normalized path, without the query.
    pub path: &'a str,
    /// The request's authority (`Host`), port included if it was sent.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The validated JWT, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

/// What the rules decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'r> {
    /// Whether the request may pass (before `dry_run`).
    pub allowed: bool,
    /// Why: `allow`, `deny`, `no_match` (allow rules exist, none matched) or `no_rules`.
    pub decision: &'static str,
    /// The rule that decided, if one did.
    pub rule: Option<&'r str>,
    /// The first matching audit rule, if any.
    pub audit: Option<&'r str>,
}

impl Rule {
    /// Whether every part of the rule matches the request.
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }
}

/// Decides one request by Istio's order: deny, then allow, then audit on the side.
pub fn evaluate<'r>(rules: &'r [Rule], req: &RequestFacts<'_>) -> Verdict<'r> {
    let first = |action: Action| {
        rules
            .iter()
            .find(|r| r.action == action && r.matches(req))
            .map(|r| r.name.as_str())
    };
    let audit = if rules.iter().any(|r| r.action == Action::Audit) {
        first(Action::Audit)
    } else {
        None
    };
    if let Some(rule) = first(Action::Deny) {
        return Verdict {
            allowed: false,
            decision: "deny",
            rule: Some(rule),
            audit,
        };
    }
    if !rules.iter().any(|r| r.action == Action::Allow) {
        return Verdict {
            allowed: true,
            decision: "no_rules",
            rule: None,
            audit,
        };
    }
    match first(Action::Allow) {
        Some(rule) => Verdict {
            allowed: true,
            decision: "allow",
            rule: Some(rule),
            audit,
        },
        None => Verdict {
            allowed: false,
            decision: "no_match",
            rule: None,
            audit,
        },
    }
}

impl Source {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.principals.check(|p| p.matches(req.peer))
            && self.request_principals.check(|m| {
                req.auth.is_some_and(|a| m.matches(&a.principal))
            })
            // A `not_request_principals` entry cannot exclude a request without a token:
            // only `request_principals = ["*"]` demands one, as in Istio.
            && self.ip_blocks.check(|b| b.contains(req.source_ip))
    }
}

impl Operation {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        let host_only = strip_port(req.host);
        self.methods.check(|m| m.matches_ignore_case(req.method))
            && self.paths.check(|m| m.matches(req.path))
            && self
                .hosts
                .check(|m| m.matches_ignore_case(req.host) || m.matches_ignore_case(host_only))
    }
}

impl Condition {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        match &self.patterns {
            Patterns::Ips(field) => field.check(|b| b.contains(req.source_ip)),
            Patterns::Principals(field) => field.check(|p| p.matches(req.peer)),
            // A key with no value (no token, no such header) matches nothing, not even `not_values`.
            Patterns::Strings(field) => {
                self.any_value(req, &mut |_| true)
                    && field.check(|m| self.any_value(req, &mut |v| m.matches(v)))
            }
        }
    }

    /// Whether any of the request's values for this key satisfies `f`: a string claim or header
    /// is one value, an array claim one per element; nothing is copied.
    fn any_value(&self, req: &RequestFacts<'_>, f: &mut dyn FnMut(&str) -> bool) -> bool {
        match &self.key {
            ConditionKey::Claim(path) => req
                .auth
                .and_then(|a| path.iter().try_fold(&a.claims, |v, name| v.get(name)))
                .is_some_and(|v| any_claim(v, f)),
            ConditionKey::Header(name) => req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(f),
            ConditionKey::RequestPrincipal => req.auth.is_some_and(|a| f(&a.principal)),
            ConditionKey::Audiences => req
                .auth
                .and_then(|a| a.claims.get("aud"))
                .is_some_and(|v| any_claim(v, f)),
            ConditionKey::SourceIp | ConditionKey::SourcePrincipal => false,
        }
    }
}

/// Whether a claim satisfies `f`: a string as itself, an array element by element, numbers
/// and booleans in their JSON form; objects and null match nothing.
fn any_claim(v: &Value, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().any(|i| any_claim(i, f)),
        Value::Number(n) => f(&n.to_string()),
        Value::Bool(b) => f(if *b { "true" } else { "false" }),
        Value::Null | Value::Object(_) => false,
    }
}

/// `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    fn sm(v: &[&str]) -> Vec<StringMatch> {
        v.iter().map(|s| StringMatch::parse(s).unwrap()).collect()
    }

    fn condition(key: &str, any: &[&str], not: &[&str]) -> Condition {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        let values = Field {
            any: strings(any),
            not: strings(not),
        };
        Condition::new(key.parse().unwrap(), values).unwrap()
    }

    fn rule(name: &str, action: Action) -> Rule {
        Rule {
            name: name.into(),
            action,
            from: Vec::new(),
            to: Vec::new(),
            when: Vec::new(),
        }
    }

    struct Req {
        id: SpiffeId,
        method: &'static str,
        path: &'static str,
        host: &'static str,
        ip: IpAddr,
        headers: HeaderMap,
        auth: Option<RequestAuth>,
    }

    impl Req {
        fn new(id: &str, method: &'static str, path: &'static str) -> Self {
            Self {
                id: id.parse().unwrap(),
                method,
                path,
                host: "api.example:8443",
                ip: "10.1.2.3".parse().unwrap(),
                headers: HeaderMap::new(),
                auth: None,
            }
        }

        fn facts(&self) -> RequestFacts<'_> {
            RequestFacts {
                peer: Peer::Spiffe(&self.id),
                source_ip: self.ip,
                method: self.method,
                path: self.path,
                host: self.host,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }
        }
    }

    #[test]
    fn string_patterns_match_exact_prefix_suffix_and_any() {
        let m = |p: &str, v: &str| StringMatch::parse(p).unwrap().matches(v);
        assert!(m("/api", "/api") && !m("/api", "/api/"));
        assert!(m("/api/*", "/api/x") && !m("/api/*", "/apix"));
        assert!(m("*.json", "/a/b.json") && !m("*.json", "/a/b.jsonx"));
        assert!(m("*", "anything"));
        assert!(StringMatch::parse("/a/*/b").is_err());
        assert!(StringMatch::parse("*a*").is_err());
    }

    #[test]
    fn ip_blocks_contain_what_their_prefix_says() {
        let b: IpBlock = "10.1.0.0/16".parse().unwrap();
        assert!(b.contains("10.1.255.1".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!b.contains("::1".parse().unwrap()));
        let all: IpBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one: IpBlock = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpBlock>().is_err());
        assert!("nope".parse::<IpBlock>().is_err());
    }

    #[test]
    fn deny_beats_allow_and_audit_never_decides() {
        let mut deny = rule("no-admin", Action::Deny);
        deny.to = vec![Operation {
            paths: Field {
                any: sm(&["/admin/*"]),
                not: Vec::new(),
            },
            ..Operation::default()
        }];
        let allow = rule("everyone", Action::Allow);
        let mut audit = rule("watch-posts", Action::Audit);
        audit.to = vec![Operation {
            methods: Field {
                any: sm(&["post"]),
                not: Vec::new(),
            },
            ..Operation::default()
        }];
        let rules = vec![audit, deny, allow];
        let v = evaluate(
            &rules,
            &Req::new("spiffe://ex/a", "POST", "/admin/x").facts(),
        );
        assert_eq!(
            (v.allowed, v.decision, v.rule, v.audit),
            (false, "deny", Some("no-admin"), Some("watch-posts"))
        );
        let v = evaluate(&rules, &Req::new("spiffe://ex/a", "GET", "/data").facts());
        assert_eq!(
            (v.allowed, v.decision, v.rule, v.audit),
            (true, "allow", Some("everyone"), None)
        );
    }

    #[test]
    fn without_allow_rules_everything_not_denied_passes_and_with_them_one_must_match() {
        let only_audit = vec![rule("a", Action::Audit)];
        let v = evaluate(&only_audit, &Req::new("spiffe://ex/a", "GET", "/").facts());
        assert_eq!(
            (v.allowed, v.decision, v.audit),
            (true, "no_rules", Some("a"))
        );
        let mut allow = rule("web", Action::Allow);
        allow.from = vec![Source {
            principals: Field {
                any: vec!["spiffe://ex/web/*".parse().unwrap()],
                not: Vec::new(),
            },
            ..Source::default()
        }];
        let rules = vec![allow];
        assert!(evaluate(&rules, &Req::new("spiffe://ex/web/1", "GET", "/").facts()).allowed);
        let v = evaluate(&rules, &Req::new("spiffe://ex/db/1", "GET", "/").facts());
        assert_eq!((v.allowed, v.decision, v.rule), (false, "no_match", None));
    }

    #[test]
    fn not_fields_exclude_and_every_field_of_an_entry_must_match() {
        let mut r = rule("reads", Action::Allow);
        r.to = vec![Operation {
            methods: Field {
                any: sm(&["GET", "HEAD"]),
                not: Vec::new(),
            },
            paths: Field {
                any: sm(&["/api/*"]),
                not: sm(&["/api/internal/*"]),
            },
            hosts: Field {
                any: sm(&["api.example"]),
                not: Vec::new(),
            },
        }];
        let rules = vec![r];
        let ok = |m, p| evaluate(&rules, &Req::new("spiffe://ex/a", m, p).facts()).allowed;
        assert!(ok("GET", "/api/users"));
        assert!(ok("head", "/api/users"));
        assert!(!ok("POST", "/api/users"));
        assert!(!ok("GET", "/api/internal/keys"));
        assert!(!ok("GET", "/other"));
    }

    #[test]
    fn claims_headers_and_request_principals_are_matched_when_present() {
        let mut r = rule("admins", Action::Allow);
        r.from = vec![Source {
            request_principals: Field {
                any: sm(&["https://idp/*"]),
                not: Vec::new(),
            },
            ..Source::default()
        }];
        r.when = vec![
            condition("request.auth.claims[groups]", &["admins"], &[]),
            condition("request.auth.claims[org][team]", &["pay*"], &[]),
            condition("request.headers[x-env]", &[], &["prod"]),
        ];
        let rules = vec![r];
        let mut req = Req::new("spiffe://ex/a", "GET", "/");
        req.headers.insert("x-env", "dev".parse().unwrap());
        assert!(!evaluate(&rules, &req.facts()).allowed, "no token");
        req.auth = Some(RequestAuth {
            principal: "https://idp/alice".into(),
            claims: serde_json::json!({"groups": ["dev", "admins"], "org": {"team": "payments"}}),
        });
        assert!(evaluate(&rules, &req.facts()).allowed);
        req.headers.insert("x-env", "prod".parse().unwrap());
        assert!(!evaluate(&rules, &req.facts()).allowed, "not_values");
        req.headers.insert("x-env", "dev".parse().unwrap());
        req.auth.as_mut().unwrap().claims =
            serde_json::json!({"groups": "admins", "org": {"team": "ops"}});
        assert!(!evaluate(&rules, &req.facts()).allowed, "nested claim");
    }

    #[test]
    fn condition_keys_parse_and_print_back() {
        for key in [
            "request.auth.claims[groups]",
            "request.auth.claims[org][team]",
            "request.headers[x-tenant]",
            "request.auth.principal",
            "source.ip",
        ] {
            assert_eq!(key.parse::<ConditionKey>().unwrap().to_string(), key);
        }
        for bad in [
            "request.auth.claims",
            "request.auth.claims[]",
            "request.headers[a][b]",
            "x",
        ] {
            assert!(bad.parse::<ConditionKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_match_with_or_without_the_port() {
        assert_eq!(strip_port("api.example:8443"), "api.example");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("api"), "api");
    }
}
