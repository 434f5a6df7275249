//! The typed settings of an HTTP inbound listener: how requests reach the local service,
//! which JWT issuers are trusted and the per-request authorization rules.

use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;
use serde::Serialize;

use super::as_display;
use super::duration::as_duration;
use crate::http::rules::Rule;

/// What an inbound listener speaks to its peers after the mTLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes forwarded as they are (the default).
    Tcp,
    /// HTTP/1.1 and HTTP/2 terminated, each request authorized and proxied.
    Http,
}

/// How the upstream service is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 over cleartext, with prior knowledge.
    H2c,
}

/// Settings of a `protocol = "http"` listener (its `[inbound.http]` table).
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    /// HTTP/1.1 or h2c to the local service.
    pub upstream: UpstreamProtocol,
    /// Evaluate and log every decision, but let every request through.
    pub dry_run: bool,
    /// Forward non-idempotent requests that arrived in 0-RTT early data instead of answering 425.
    pub early_data_unsafe_methods: bool,
    /// Header carrying the validated JWT's `iss` upstream.
    #[serde(serialize_with = "as_display")]
    pub issuer_header: HeaderName,
    /// Header carrying the validated JWT's `sub` upstream.
    #[serde(serialize_with = "as_display")]
    pub subject_header: HeaderName,
    /// Time the upstream has to answer a request with its response headers.
    #[serde(serialize_with = "as_duration")]
    pub request_timeout: Duration,
    /// Trusted token issuers, as in Istio's `RequestAuthentication`.
    pub jwt: Vec<JwtIssuer>,
    /// Authorization rules, as in Istio's `AuthorizationPolicy`.
    pub rules: Vec<Rule>,
}

impl HttpConfig {
    /// Headers a client must never set itself: they are removed from every request.
    pub fn identity_headers(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.issuer_header, &self.subject_header]
            .into_iter()
            .chain(
                self.jwt
                    .iter()
                    .flat_map(|j| j.claim_headers.iter().map(|c| &c.header)),
            )
    }
}

/// One trusted JWT issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    pub audiences: Vec<String>,
    /// Where its public keys come from.
    pub jwks: JwksSource,
    /// How long fetched keys are used before they are fetched again.
    #[serde(serialize_with = "as_duration")]
    pub jwks_cache: Duration,
    /// Time one JWKS fetch may take.
    #[serde(serialize_with = "as_duration")]
    pub jwks_timeout: Duration,
    /// Where the token is read from, in order.
    pub from: Vec<TokenSource>,
    /// Keep the token in the request sent upstream.
    pub forward_original_token: bool,
    /// Claims copied into request headers for the service.
    pub claim_headers: Vec<ClaimHeader>,
    /// Tolerance on `exp`, `nbf` and `iat`.
    #[serde(serialize_with = "as_duration")]
    pub clock_skew: Duration,
}

impl JwtIssuer {
    /// Whether its tokens are JWT-SVIDs of a SPIFFE trust domain (keys from the Workload API).
    pub fn is_jwt_svid(&self) -> bool {
        matches!(self.jwks, JwksSource::WorkloadApi { .. })
    }

    /// Whether a token claiming `iss` (and `sub`) is this issuer's to check: its `iss`, or for
    /// a JWT-SVID issuer a subject in its trust domain (SPIRE sets no `iss` by default).
    pub fn issues(&self, iss: &str, sub: &str) -> bool {
        match &self.jwks {
            JwksSource::WorkloadApi { trust_domain, .. } => {
                iss == self.issuer
                    || sub
                        .strip_prefix("spiffe://")
                        .and_then(|rest| rest.split_once('/'))
                        .is_some_and(|(td, _)| td == trust_domain)
            }
            _ => iss == self.issuer,
        }
    }

    /// The request principal of a token with `claims`: `iss/sub`, or a JWT-SVID's `sub`
    /// (already a full identity, spiffe://td/path).
    pub fn principal(&self, claims: &serde_json::Value) -> String {
        let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
        match claims.get("iss").and_then(|s| s.as_str()) {
            Some(iss) if !self.is_jwt_svid() => format!("{iss}/{sub}"),
            _ => sub.to_owned(),
        }
    }
}

/// Where an issuer's JSON Web Key Set is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum JwksSource {
    /// Fetched over HTTP(S), cached and refreshed.
    Uri {
        /// `http://` or `https://` URL.
        uri: String,
        /// PEM CAs trusted for an `https` URI instead of the system's.
        ca: Option<PathBuf>,
    },
    /// A local file, read at start and reload.
    File {
        /// The JWKS file.
        path: PathBuf,
    },
    /// The JWT bundle of a SPIFFE trust domain, streamed from the Workload API: the issuer
    /// is the trust domain and its tokens are JWT-SVIDs.
    #[serde(rename = "workload_api")]
    WorkloadApi {
        /// The agent's Workload API address.
        socket: String,
        /// The trust domain whose JWT-SVIDs are accepted.
        trust_domain: String,
    },
}

/// One place a token is taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum TokenSource {
    /// A request header, after an optional prefix such as `Bearer `.
    Header {
        /// The header.
        #[serde(serialize_with = "as_display")]
        name: HeaderName,
        /// Stripped from the value (case-insensitively); a value without it is no token.
        prefix: String,
    },
    /// A query parameter.
    Param {
        /// The parameter's name.
        name: String,
    },
}

/// A claim copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimHeader {
    /// The header set for the upstream.
    #[serde(serialize_with = "as_display")]
    pub header: HeaderName,
    /// The claim, `.`-separated for nested claims (`org.team`).
    pub claim: String,
}
