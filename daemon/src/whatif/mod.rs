//! `mtlsd policy test` and `mtlsd policy explain`: what a config's policy decides, asked
//! offline, with the daemon's own code.
//!
//! [`decide`] runs what an inbound connection meets: the listener's `allow`/`deny` list
//! through [`Policy::authorize`](crate::policy::Policy::authorize), and on a
//! `protocol = "http"` listener the request path through [`path::normalize`], the rules
//! through [`rules::evaluate`] (and [`Rule::matches`] for every rule that matched) on the
//! same [`RequestFacts`] the daemon builds. [`explain`] lists, per listener, who can reach
//! what.
//!
//! Nothing here reads a key, a certificate, a JWKS or the network. What only a running
//! daemon can know is assumed good and said so: the peer's certificate chain and
//! revocation, and a token's signature and times (`--jwt` claims are read **unverified**,
//! `--claims` are taken as given). What the config alone decides is checked as the daemon
//! checks it: strict mode, accepted trust domains, trusted token issuers and audiences.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::config::{
    Config, HttpConfig, IdentitySource, InboundConfig, JwtIssuer, Mode, OutboundConfig, Protocol,
    TokenSource,
};
use crate::http::path;
use crate::http::rules::{self, Action, RequestAuth, RequestFacts, Rule};
use crate::http::serve::XFCC;
use crate::identity::SpiffeId;
use crate::policy::{Decision, Peer, UNAUTHENTICATED};

/// The request method when `--method` is not given.
pub const DEFAULT_METHOD: &str = "GET";
/// The request path when `--path` is not given.
pub const DEFAULT_PATH: &str = "/";
/// The client address when `--source-ip` is not given.
pub const DEFAULT_SOURCE_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What `mtlsd policy test` asks: one peer on one inbound listener and, for an HTTP
/// listener, one request. Unset request fields take the `DEFAULT_*` values.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The inbound listener's name.
    pub listener: String,
    /// The peer's SPIFFE ID, or `unauthenticated` for a plaintext peer.
    pub peer: String,
    /// The request method.
    pub method: Option<String>,
    /// The request path as sent (a query after `?` is ignored, as the rules ignore it).
    pub path: Option<String>,
    /// The request's authority; without it, a `host` header, else none.
    pub host: Option<String>,
    /// Request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The client's address.
    pub source_ip: Option<IpAddr>,
    /// The request's token, if it carries one.
    pub token: Option<TokenInput>,
}

impl Query {
    /// Whether any request field was given (they only mean something on HTTP listeners).
    fn has_request(&self) -> bool {
        self.method.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || !self.headers.is_empty()
            || self.source_ip.is_some()
            || self.token.is_some()
    }
}

/// Where the request's JWT claims come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenInput {
    /// A compact JWT; its payload is decoded without verifying the signature.
    Jwt(String),
    /// The claims as JSON, taken as given.
    Claims(String),
}

/// Why a question cannot be answered: a usage or config mistake, not a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WhatIfError {
    /// No listener of that name.
    #[error("no listener {name:?} in the config; its listeners: {known}")]
    UnknownListener {
        /// The name asked for.
        name: String,
        /// The names the config has, comma-separated.
        known: String,
    },
    /// `policy test` on an outbound listener.
    #[error(
        "{name:?} is an outbound listener: it admits every local client and only checks that \
         the remote is {server_id}; policy test asks inbound listeners"
    )]
    Outbound {
        /// The listener.
        name: String,
        /// The server ID it requires.
        server_id: String,
    },
    /// `--peer` is neither a SPIFFE ID nor `unauthenticated`.
    #[error("--peer {peer:?}: {cause}; give a SPIFFE ID (spiffe://td/path) or \"unauthenticated\"")]
    Peer {
        /// What was given.
        peer: String,
        /// Why it is no SPIFFE ID.
        cause: String,
    },
    /// `--method` is not an HTTP method token.
    #[error("--method {0:?} is not an HTTP method")]
    Method(String),
    /// `--claims` is not a JSON object.
    #[error("--claims: {0}")]
    Claims(String),
    /// `--jwt` has no readable payload.
    #[error("--jwt: {0}")]
    Jwt(String),
}

/// Which check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The connection: handshake and the listener's `allow`/`deny` list.
    Connection,
    /// The request: path, token and the listener's HTTP rules.
    Request,
}

impl Stage {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Request => "request",
        }
    }
}

/// One rule that matched the question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matched {
    /// Whether it is an `allow`/`deny` entry or an HTTP rule.
    pub stage: Stage,
    /// What it does.
    pub action: Action,
    /// The `allow`/`deny` entry as written, or the HTTP rule's name.
    pub rule: String,
}

/// The request as the rules saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestSeen {
    /// The method.
    pub method: String,
    /// The normalized path (the path as sent when it cannot be normalized).
    pub path: String,
    /// The path as given, query included.
    pub path_as_sent: String,
    /// The authority (empty: none).
    pub host: String,
    /// The client's address.
    pub source_ip: IpAddr,
}

/// Where the claims the rules saw came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimsFrom {
    /// `--claims`, as given.
    Given,
    /// `--jwt`, decoded without verifying the signature.
    TokenUnverified,
}

/// The token as the rules saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthSeen {
    /// `request.auth.principal`: `iss/sub`, or a JWT-SVID's `sub`.
    pub principal: String,
    /// The trusted issuer (`[[inbound.http.jwt]] issuer`) that would check the token.
    pub issuer: String,
    /// Where its claims came from.
    pub claims_from: ClaimsFrom,
    /// The claims.
    pub claims: Value,
}

/// What the daemon would decide, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The listener.
    pub listener: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The peer asked about.
    pub peer: String,
    /// Whether the peer (and request) gets through, before any dry run.
    pub allowed: bool,
    /// The daemon's word for it, as in its logs and metrics: `allow`, `deny`, `no_match`,
    /// `no_rules`, `unauthenticated`, `bad_request`, `no_client_cert`, `foreign_trust_domain`.
    pub decision: &'static str,
    /// The check that decided.
    pub stage: Stage,
    /// The rule that decided, if one did.
    pub rule: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
    /// Every rule that matched, connection first, then HTTP rules in evaluation order.
    pub matched: Vec<Matched>,
    /// The first matching audit rule (logged and counted, deciding nothing).
    pub audit_rule: Option<String>,
    /// The HTTP status of a refused request (403, 401 or 400); none for a refused connection.
    pub status: Option<u16>,
    /// The request, on an HTTP listener that admitted the peer.
    pub request: Option<RequestSeen>,
    /// The token, when the rules saw one.
    pub auth: Option<AuthSeen>,
    /// The listener's `dry_run`: request decisions are only logged.
    pub dry_run: bool,
    /// What else the author should know (assumptions, ignored inputs, dry run).
    pub notes: Vec<String>,
}

impl Answer {
    /// The process exit status for this answer: 0 allowed, 1 refused.
    pub fn exit_code(&self) -> u8 {
        if self.allowed { 0 } else { 1 }
    }
}

/// The listener `name` and what kind it is.
enum Listener<'c> {
    Inbound(&'c InboundConfig),
    Outbound(&'c OutboundConfig),
}

fn find_listener<'c>(config: &'c Config, name: &str) -> Result<Listener<'c>, WhatIfError> {
    if let Some(l) = config.inbound.iter().find(|l| l.name == name) {
        return Ok(Listener::Inbound(l));
    }
    if let Some(l) = config.outbound.iter().find(|l| l.name == name) {
        return Ok(Listener::Outbound(l));
    }
    let known: Vec<&str> = config
        .inbound
        .iter()
        .map(|l| l.name.as_str())
        .chain(config.outbound.iter().map(|l| l.name.as_str()))
        .collect();
    Err(WhatIfError::UnknownListener {
        name: name.to_owned(),
        known: if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        },
    })
}

/// The peer as given: a SPIFFE ID, or none.
enum PeerArg {
    Spiffe(SpiffeId),
    Unauthenticated,
}

impl PeerArg {
    fn as_peer(&self) -> Peer<'_> {
        match self {
            Self::Spiffe(id) => Peer::Spiffe(id),
            Self::Unauthenticated => Peer::Unauthenticated,
        }
    }
}

/// The claims of the query's token, checked for shape only.
fn read_claims(token: &TokenInput) -> Result<(Value, ClaimsFrom), WhatIfError> {
    let (claims, from) = match token {
        TokenInput::Claims(json) => (
            serde_json::from_str::<Value>(json)
                .map_err(|e| WhatIfError::Claims(format!("not JSON: {e}")))?,
            ClaimsFrom::Given,
        ),
        // The daemon's first step too, before it picks the issuer whose keys must verify it.
        TokenInput::Jwt(token) => (
            jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token.trim())
                .map_err(|e| WhatIfError::Jwt(format!("no readable payload: {e}")))?,
            ClaimsFrom::TokenUnverified,
        ),
    };
    if !claims.is_object() {
        let e =
            "the claims must be a JSON object, e.g. {\"iss\": \"https://idp\", \"sub\": \"alice\"}";
        return Err(match from {
            ClaimsFrom::Given => WhatIfError::Claims(e.to_owned()),
            ClaimsFrom::TokenUnverified => WhatIfError::Jwt(e.to_owned()),
        });
    }
    Ok((claims, from))
}

/// Decides `query` against `config` as the daemon would; `Err` only for a question that
/// cannot be asked (unknown listener, malformed peer, method, claims or token).
pub fn decide(config: &Config, query: &Query) -> Result<Answer, WhatIfError> {
    let listener = match find_listener(config, &query.listener)? {
        Listener::Inbound(l) => l,
        Listener::Outbound(l) => {
            return Err(WhatIfError::Outbound {
                name: l.name.clone(),
                server_id: l.server_id.to_string(),
            });
        }
    };
    let peer = if query.peer == UNAUTHENTICATED {
        PeerArg::Unauthenticated
    } else {
        PeerArg::Spiffe(
            query
                .peer
                .parse()
                .map_err(|e: crate::identity::SpiffeIdError| WhatIfError::Peer {
                    peer: query.peer.clone(),
                    cause: e.to_string(),
                })?,
        )
    };
    let method = query.method.as_deref().unwrap_or(DEFAULT_METHOD);
    if hyper::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(WhatIfError::Method(method.to_owned()));
    }
    let token = query.token.as_ref().map(read_claims).transpose()?;

    let http = listener.http.as_ref();
    let mut answer = Answer {
        listener: listener.name.clone(),
        protocol: listener.protocol,
        peer: peer.as_peer().to_string(),
        allowed: false,
        decision: "no_match",
        stage: Stage::Connection,
        rule: None,
        reason: String::new(),
        matched: Vec::new(),
        audit_rule: None,
        status: None,
        request: None,
        auth: None,
        dry_run: http.is_some_and(|h| h.dry_run),
        notes: Vec::new(),
    };
    if !connection(config, listener, &peer, &mut answer) {
        if answer.dry_run {
            answer.notes.push(
                "dry_run applies to requests only: the listener's allow/deny list is enforced"
                    .to_owned(),
            );
        }
        return Ok(answer);
    }
    let Some(http) = http else {
        if query.has_request() {
            answer.notes.push(
                "protocol = \"tcp\": the peer's bytes are forwarded as they are, so the request \
                 options played no part"
                    .to_owned(),
            );
        }
        return Ok(answer);
    };
    request(http, &peer, method, query, token, &mut answer);
    Ok(answer)
}

/// The connection stage; true when the peer is admitted (the answer then says allow).
fn connection(
    config: &Config,
    listener: &InboundConfig,
    peer: &PeerArg,
    answer: &mut Answer,
) -> bool {
    answer.stage = Stage::Connection;
    match peer {
        PeerArg::Unauthenticated if listener.mode == Mode::Strict => {
            answer.decision = "no_client_cert";
            answer.reason =
                "a strict listener requires a client certificate; the handshake fails".to_owned();
            return false;
        }
        PeerArg::Spiffe(id) => {
            if let Some(reason) = foreign_trust_domain(config, id) {
                answer.decision = "foreign_trust_domain";
                answer.reason = reason;
                return false;
            }
            if matches!(config.identity.source, IdentitySource::WorkloadApi { .. }) {
                answer.notes.push(format!(
                    "the trust domains accepted come from the Workload API: assumed that {} \
                     is one",
                    id.trust_domain()
                ));
            }
        }
        PeerArg::Unauthenticated => {}
    }
    let policy = &listener.policy;
    let p = peer.as_peer();
    for (action, list) in [(Action::Deny, &policy.deny), (Action::Allow, &policy.allow)] {
        answer
            .matched
            .extend(list.iter().filter(|r| r.matches(p)).map(|r| Matched {
                stage: Stage::Connection,
                action,
                rule: r.to_string(),
            }));
    }
    match policy.authorize(p) {
        Decision::Deny(rule) => {
            answer.decision = "deny";
            answer.rule = Some(rule.to_string());
            answer.reason = format!("deny entry {rule} names this peer; the handshake is refused");
            false
        }
        Decision::NoMatch => {
            answer.decision = "no_match";
            answer.reason =
                "no allow entry names this peer (default deny); the handshake is refused"
                    .to_owned();
            false
        }
        Decision::Allow(rule) => {
            answer.allowed = true;
            answer.decision = "allow";
            answer.rule = Some(rule.to_string());
            answer.reason = format!("allow entry {rule} admits this peer");
            true
        }
    }
}

/// Why the handshake would refuse `id` for its trust domain, if it would; unknown (none)
/// when the trust domains come from the Workload API.
fn foreign_trust_domain(config: &Config, id: &SpiffeId) -> Option<String> {
    if matches!(config.identity.source, IdentitySource::WorkloadApi { .. }) {
        return None;
    }
    let td = id.trust_domain();
    let ours = &config.identity.trust_domain;
    if td == ours
        || config
            .identity
            .federated
            .iter()
            .any(|f| f.trust_domain == td)
    {
        return None;
    }
    let mut accepted = vec![ours.as_str()];
    accepted.extend(
        config
            .identity
            .federated
            .iter()
            .map(|f| f.trust_domain.as_str()),
    );
    Some(format!(
        "trust domain {td} is not accepted here (only {}); the handshake refuses the certificate",
        accepted.join(", ")
    ))
}

/// The request stage of an HTTP listener, in `http::serve`'s order.
fn request(
    http: &HttpConfig,
    peer: &PeerArg,
    method: &str,
    query: &Query,
    token: Option<(Value, ClaimsFrom)>,
    answer: &mut Answer,
) {
    answer.stage = Stage::Request;
    answer.rule = None;
    let sent = query.path.as_deref().unwrap_or(DEFAULT_PATH);
    let without_query = sent.split_once('?').map_or(sent, |(p, _)| p);
    let mut headers = HeaderMap::new();
    for (name, value) in &query.headers {
        headers.append(name.clone(), value.clone());
    }
    let host = query
        .host
        .clone()
        .or_else(|| {
            headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let source_ip = query.source_ip.unwrap_or(DEFAULT_SOURCE_IP);
    let mut seen = RequestSeen {
        method: method.to_owned(),
        path: without_query.to_owned(),
        path_as_sent: sent.to_owned(),
        host,
        source_ip,
    };
    let refuse = |answer: &mut Answer, decision, status, reason: String| {
        answer.allowed = false;
        answer.decision = decision;
        answer.status = Some(status);
        answer.reason = reason;
        if answer.dry_run {
            answer.notes.push(
                "dry_run: the daemon would only log this decision and let the request through"
                    .to_owned(),
            );
        }
    };

    // 1. The path, normalized once; the rules and the service see the same one.
    match path::normalize(without_query) {
        Ok(p) => seen.path = p,
        Err(why) => {
            answer.request = Some(seen);
            refuse(
                answer,
                "bad_request",
                400,
                format!("{why}; the daemon answers 400"),
            );
            return;
        }
    }
    // 2. Identity headers a client may not set.
    let spoofable: Vec<HeaderName> = std::iter::once(XFCC)
        .chain(http.identity_headers().cloned())
        .collect();
    for name in &spoofable {
        if headers.remove(name).is_some() {
            answer.notes.push(format!(
                "header {name} was removed before the rules ran: a client may not set it"
            ));
        }
    }
    // 3. (0-RTT) is a property of the connection, not of the question.
    // 4. Request authentication: which trusted issuer would check the token.
    let mut auth: Option<(RequestAuth, &JwtIssuer, ClaimsFrom)> = None;
    if token.is_none()
        && let Some(place) = token_place_given(http, &headers, sent)
    {
        answer.notes.push(format!(
            "{place} is where the daemon looks for a token, but only --jwt or --claims give \
             the rules a token here: this request was judged as carrying none"
        ));
    }
    if let Some((claims, from)) = token {
        if http.jwt.is_empty() {
            answer.notes.push(
                "the listener trusts no JWT issuer: the daemon looks for no token, so the \
                 claims played no part"
                    .to_owned(),
            );
        } else {
            // What the daemon does with a token it cannot accept.
            let unauthenticated = |answer: &mut _, why: &str| {
                refuse(
                    answer,
                    "unauthenticated",
                    401,
                    format!("{why}; the daemon answers 401"),
                );
            };
            let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
            let Some(issuer) = http.jwt.iter().find(|i| i.issues(iss, sub)) else {
                answer.request = Some(seen);
                let why = match iss {
                    "" => format!(
                        "the token names no issuer, and {sub:?} is no JWT-SVID trusted here"
                    ),
                    _ => format!("issuer {iss:?} is not trusted here"),
                };
                unauthenticated(answer, &why);
                return;
            };
            if let Some(why) = wrong_audience(issuer, &claims) {
                answer.request = Some(seen);
                unauthenticated(answer, &why);
                return;
            }
            if !issuer.audiences.is_empty() && claims.get("aud").is_none() {
                answer.notes.push(format!(
                    "the claims carry no aud: the daemon refuses (401) a token for none of {}",
                    issuer.audiences.join(", ")
                ));
            }
            answer.notes.push(match from {
                ClaimsFrom::TokenUnverified => "claims taken from the token unverified: the \
                    daemon also checks its signature, exp, nbf and iat, and answers 401 if they fail"
                    .to_owned(),
                ClaimsFrom::Given => "claims taken as given: the daemon takes them only from a \
                    token whose signature, exp, nbf and iat it has checked"
                    .to_owned(),
            });
            if let (Some(TokenInput::Jwt(jwt)), Some(TokenSource::Header { name, prefix })) =
                (&query.token, issuer.from.first())
                && !headers.contains_key(name)
                && let Ok(value) = HeaderValue::from_str(&format!("{prefix}{}", jwt.trim()))
            {
                // The rules see the request as sent, token header included.
                headers.insert(name.clone(), value);
            }
            let principal = issuer.principal(&claims);
            auth = Some((RequestAuth { principal, claims }, issuer, from));
        }
    }
    // 5. Authorization rules.
    let facts = RequestFacts {
        peer: peer.as_peer(),
        source_ip: seen.source_ip,
        method,
        path: &seen.path,
        host: &seen.host,
        headers: &headers,
        auth: auth.as_ref().map(|(a, ..)| a),
    };
    let verdict = rules::evaluate(&http.rules, &facts);
    answer.matched.extend(
        in_evaluation_order(&http.rules)
            .filter(|r| r.matches(&facts))
            .map(|r| Matched {
                stage: Stage::Request,
                action: r.action,
                rule: r.name.clone(),
            }),
    );
    answer.audit_rule = verdict.audit.map(str::to_owned);
    answer.rule = verdict.rule.map(str::to_owned);
    answer.auth = auth.map(|(a, issuer, from)| AuthSeen {
        principal: a.principal,
        issuer: issuer.issuer.clone(),
        claims_from: from,
        claims: a.claims,
    });
    answer.request = Some(seen);
    if verdict.allowed {
        answer.allowed = true;
        answer.decision = verdict.decision;
        answer.reason = match verdict.rule {
            Some(rule) => format!("allow rule {rule} matched and no deny rule did"),
            None => "the listener has no allow rules and no deny rule matched".to_owned(),
        };
        return;
    }
    let why = match verdict.rule {
        Some(rule) => format!("denied by rule {rule}"),
        None => "no allow rule matched".to_owned(),
    };
    // serve.rs: a refused request without a token, where tokens are accepted, is a 401.
    if answer.auth.is_none() && !http.jwt.is_empty() {
        refuse(
            answer,
            verdict.decision,
            401,
            format!("{why} and the request carries no token; the daemon answers 401"),
        );
    } else {
        refuse(
            answer,
            verdict.decision,
            403,
            format!("{why}; the daemon answers 403"),
        );
    }
}

/// The header or query parameter of the request where a trusted issuer takes tokens
/// from, if the question gave one.
fn token_place_given(http: &HttpConfig, headers: &HeaderMap, path: &str) -> Option<String> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    http.jwt
        .iter()
        .flat_map(|i| &i.from)
        .find_map(|source| match source {
            TokenSource::Header { name, .. } if headers.contains_key(name) => {
                Some(format!("header {name}"))
            }
            TokenSource::Param { name }
                if query
                    .split('&')
                    .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name) =>
            {
                Some(format!("query parameter {name}"))
            }
            _ => None,
        })
}

/// Why the daemon would refuse these claims for their audience, if it would: an `aud`
/// given that names none of the issuer's `audiences`. A missing `aud` is left to the daemon.
fn wrong_audience(issuer: &JwtIssuer, claims: &Value) -> Option<String> {
    if issuer.audiences.is_empty() {
        return None;
    }
    let aud: Vec<&str> = match claims.get("aud")? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if aud.iter().any(|a| issuer.audiences.iter().any(|w| w == a)) {
        return None;
    }
    Some(format!(
        "the token is for another audience ({}; the listener accepts {})",
        aud.join(", "),
        issuer.audiences.join(", ")
    ))
}

/// The rules in the order the daemon weighs them: deny, then allow, then audit.
fn in_evaluation_order(rules: &[Rule]) -> impl Iterator<Item = &Rule> {
    [Action::Deny, Action::Allow, Action::Audit]
        .into_iter()
        .flat_map(move |a| rules.iter().filter(move |r| r.action == a))
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        };
        writeln!(f, "listener  {} ({protocol})", self.listener)?;
        writeln!(f, "peer      {}", self.peer)?;
        if let Some(r) = &self.request {
            write!(f, "request   {} {}", r.method, r.path)?;
            if !r.host.is_empty() {
                write!(f, " host {}", r.host)?;
            }
            write!(f, " from {}", r.source_ip)?;
            if r.path_as_sent != r.path {
                write!(f, " (path sent as {})", r.path_as_sent)?;
            }
            writeln!(f)?;
        }
        if let Some(a) = &self.auth {
            let from = match a.claims_from {
                ClaimsFrom::Given => "claims as given",
                ClaimsFrom::TokenUnverified => "claims taken from the token unverified",
            };
            writeln!(f, "token     {} (issuer {}; {from})", a.principal, a.issuer)?;
        }
        writeln!(
            f,
            "decision  {} at the {} stage: {}",
            self.decision,
            self.stage.as_str(),
            self.reason
        )?;
        if let Some(rule) = &self.rule {
            writeln!(f, "rule      {rule}")?;
        }
        let mut label = "matched  ";
        if self.matched.is_empty() {
            writeln!(f, "{label} no rule")?;
        }
        for m in &self.matched {
            let decided = self.rule.as_deref() == Some(m.rule.as_str())
                && (m.stage == self.stage)
                && m.action != Action::Audit;
            writeln!(
                f,
                "{label} {:<10} {:<5} {}{}",
                m.stage.as_str(),
                m.action.as_str(),
                m.rule,
                if decided { "  (decided)" } else { "" }
            )?;
            label = "         ";
        }
        if let Some(audit) = &self.audit_rule {
            writeln!(f, "audit     {audit} (logged and counted)")?;
        }
        if self.dry_run {
            writeln!(f, "dry run   yes: request decisions are only logged")?;
        }
        for note in &self.notes {
            writeln!(f, "note      {note}")?;
        }
        Ok(())
    }
}

mod explain;
#[cfg(test)]
mod tests;

pub use explain::{Explanation, ListenerView, RuleView, explain};
