//! Request authentication in the shape of Istio's `RequestAuthentication`: find the
//! request's JWT, check its signature against the issuer's JWKS and its `iss`, `aud`,
//! `exp`, `nbf` and `iat`.
//!
//! A request without a token passes (the rules decide whether one is required); a request
//! with a token that fails any check is refused, whatever the rules say.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::HeaderMap;
use hyper::http::request::Parts;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::jwks::Jwks;
use super::rules::RequestAuth;
use crate::config::{JwksSource, JwtIssuer, TokenSource};

/// Signature algorithms accepted: asymmetric only, so a public key can never be used as
/// an HMAC secret, and `none` cannot even be parsed.
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A trusted issuer and its keys.
#[derive(Debug)]
pub struct Issuer {
    /// Its settings.
    pub config: JwtIssuer,
    keys: Arc<Jwks>,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Validated {
    /// What the rules see: `iss/sub` and every claim.
    pub auth: RequestAuth,
    /// Which issuer of the listener accepted it.
    pub issuer: usize,
    /// Where it was found, so it can be removed before the request goes upstream.
    pub found_in: TokenSource,
}

/// The issuers of one listener.
#[derive(Debug, Default)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
}

impl Authenticator {
    /// Loads (or reuses) the keys of every issuer; a URI's first fetch starts in the background.
    pub fn new(configs: &[JwtIssuer]) -> Result<Self, String> {
        let issuers = configs
            .iter()
            .map(|c| {
                let keys = Jwks::shared(&c.jwks, &c.issuer, c.jwks_timeout, c.jwks_cache)
                    .map_err(|e| format!("issuer {}: {e}", c.issuer))?;
                keys.prefetch();
                Ok(Issuer {
                    config: c.clone(),
                    keys,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { issuers })
    }

    /// The configured issuers.
    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The request's token, validated: `Ok(None)` when it carries none; `Err` with the
    /// reason when it carries one that fails.
    pub async fn authenticate(&self, req: &Parts) -> Result<Option<Validated>, String> {
        let Some((token, found_in)) = self.find_token(req)? else {
            return Ok(None);
        };
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token)
            .map_err(|e| format!("malformed token: {e}"))?;
        let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
        let sub = unverified.get("sub").and_then(Value::as_str).unwrap_or("");
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issues(iss, sub) && i.config.from.contains(&found_in))
            .ok_or_else(|| match iss {
                "" => format!("the token names no issuer, and {sub:?} is no JWT-SVID trusted here"),
                _ => format!("issuer {iss:?} is not trusted here"),
            })?;
        let claims = issuer.validate(&token).await?;
        let principal = issuer.config.principal(&claims);
        Ok(Some(Validated {
            auth: RequestAuth { principal, claims },
            issuer: index,
            found_in,
        }))
    }

    /// The first token found in any issuer's places; two different tokens are refused,
    /// since which one the service would read is anyone's guess.
    fn find_token(&self, req: &Parts) -> Result<Option<(String, TokenSource)>, String> {
        let mut found: Option<(String, TokenSource)> = None;
        for source in self.issuers.iter().flat_map(|i| &i.config.from) {
            let Some(token) = token_in(source, req)? else {
                continue;
            };
            match &found {
                Some((first, _)) if *first != token => {
                    return Err("the request carries more than one token".into());
                }
                Some(_) => {}
                None => found = Some((token, source.clone())),
            }
        }
        Ok(found)
    }
}

impl Issuer {
    /// Checks the signature and claims of `token`, returning its claims.
    async fn validate(&self, token: &str) -> Result<Value, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let keys = self
            .keys
            .keys_for(header.kid.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.clock_skew.as_secs();
        validation.validate_nbf = true;
        if self.config.is_jwt_svid() {
            // JWT-SVIDs carry their identity in `sub`; `iss` is optional (checked by `issues`).
            validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        } else {
            validation.set_issuer(&[&self.config.issuer]);
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
        }
        let mut last = String::from("no key verifies it");
        for key in keys {
            if key.alg.is_some_and(|a| a != header.alg) {
                last = format!(
                    "the key is for {:?}, the token says {:?}",
                    key.alg, header.alg
                );
                continue;
            }
            match jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
                Ok(data) => {
                    check_iat(&data.claims, self.config.clock_skew)?;
                    if let JwksSource::WorkloadApi { trust_domain, .. } = &self.config.jwks {
                        check_svid_subject(&data.claims, trust_domain)?;
                    }
                    return Ok(data.claims);
                }
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }
}

/// `iat` in the future beyond the skew means a wrong clock or a forged token.
fn check_iat(claims: &Value, skew: Duration) -> Result<(), String> {
    let Some(iat) = claims.get("iat") else {
        return Ok(());
    };
    let iat = iat.as_u64().ok_or("iat is not a number")?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if iat > now + skew.as_secs() {
        return Err("the token was issued in the future (iat)".into());
    }
    Ok(())
}

/// A JWT-SVID's `sub` must be a SPIFFE ID of its trust domain.
fn check_svid_subject(claims: &Value, trust_domain: &str) -> Result<(), String> {
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    match sub.parse::<crate::identity::SpiffeId>() {
        Ok(id) if id.trust_domain() == trust_domain && !id.path().is_empty() => Ok(()),
        _ => Err(format!(
            "the JWT-SVID's subject {sub:?} is not a SPIFFE ID of {trust_domain}"
        )),
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidAudience => "the token is for another audience".into(),
        K::InvalidIssuer => "the token is from another issuer".into(),
        K::InvalidSignature => "the signature does not verify".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        other => format!("invalid token: {other:?}"),
    }
}

/// The token at `source`, if the request has one there.
fn token_in(source: &TokenSource, req: &Parts) -> Result<Option<String>, String> {
    match source {
        TokenSource::Header { name, prefix } => header_token(&req.headers, name, prefix),
        TokenSource::Param { name } => Ok(req
            .uri
            .query()
            .and_then(|q| query_param(q, name))
            .filter(|t| !t.is_empty())),
    }
}

fn header_token(
    headers: &HeaderMap,
    name: &hyper::header::HeaderName,
    prefix: &str,
) -> Result<Option<String>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{name} appears more than once"));
    }
    let value = value
        .to_str()
        .map_err(|_| format!("{name} is not visible ASCII"))?;
    let Some(head) = value.get(..prefix.len()) else {
        return Ok(None);
    };
    if !head.eq_ignore_ascii_case(prefix) {
        // Another scheme (Basic, …) is not a token for us.
        return Ok(None);
    }
    let token = value[prefix.len()..].trim();
    Ok((!token.is_empty()).then(|| token.to_owned()))
}

/// The value of `name` in a query string, percent-decoding `%XX` and `+`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match hex::decode(&bytes[i + 1..i + 3]) {
                Ok(b) => {
                    out.extend(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the parameter `name` from a query string; `None` when nothing is left.
pub fn without_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_need_their_prefix_and_must_be_unique() {
        let mut h = HeaderMap::new();
        let auth = hyper::header::AUTHORIZATION;
        h.insert(&auth, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(header_token(&h, &auth, "Bearer "), Ok(None));
        h.insert(&auth, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(
            header_token(&h, &auth, "Bearer "),
            Ok(Some("abc.def.ghi".into()))
        );
        h.append(&auth, "Bearer x.y.z".parse().unwrap());
        assert!(header_token(&h, &auth, "Bearer ").is_err());
    }

    #[test]
    fn query_tokens_are_found_decoded_and_removed() {
        assert_eq!(
            query_param("a=1&access_token=x%2Ey&b", "access_token"),
            Some("x.y".into())
        );
        assert_eq!(query_param("a=1", "access_token"), None);
        assert_eq!(
            without_param("a=1&access_token=t&b=2", "access_token"),
            Some("a=1&b=2".into())
        );
        assert_eq!(without_param("access_token=t", "access_token"), None);
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }
}
