//! The per-request authorization step of `protocol = "http"` listeners, without sockets.
//!
//! - `authz_100_rules`: `mtlsd::http::rules::evaluate` on a 100-rule policy parsed from a
//!   config file the way the daemon parses it (10 deny, 10 audit, 80 allow rules keyed on
//!   SPIFFE principals, JWT request principals, paths with prefixes and suffixes, methods,
//!   hosts, IP blocks, a header and a claim condition). Issue #12's target: under 2 µs.
//! - `jwt_validate`: a token in `Authorization: Bearer` checked by the listener's
//!   `Authenticator` (header lookup, issuer, JWKS key by `kid`, signature, `iss`, `aud`,
//!   `exp`, `nbf`, `iat`), RS256 and ES256, and `jsonwebtoken::decode` alone with the same
//!   validation settings (the part of it that is the signature library).
//! - `path_normalize`: `mtlsd::http::path::normalize` on a clean and a crafted path.

#![allow(missing_docs)]

// The PEM public keys are for HAProxy, in `mtlsd-bench http`.
#[allow(dead_code)]
#[path = "../src/tokens.rs"]
mod tokens;

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::HeaderMap;
use hyper::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
use jsonwebtoken::{DecodingKey, Validation};
use mtlsd::config::{Config, HttpConfig};
use mtlsd::http::jwt::Authenticator;
use mtlsd::http::path::normalize;
use mtlsd::http::rules::{RequestAuth, RequestFacts, evaluate};
use mtlsd::identity::SpiffeId;
use mtlsd::policy::Peer;
use serde_json::Value;
use tokens::{SigningKey, claims, jwks_json};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "urn:mtlsd:api";

/// The `[[inbound]]` listener of a config whose `[inbound.http]` table holds 100 rules, with
/// `jwks` as its issuer's key file.
fn policy_toml(jwks: &std::path::Path) -> String {
    let mut t = String::from(
        "[identity]\ntrust_domain = \"bench.example\"\ncert = \"/nonexistent/svid.pem\"\n\
         key = \"/nonexistent/svid.key\"\nbundle = \"/nonexistent/bundle.pem\"\n\n\
         [[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:18443\"\nforward = \"127.0.0.1:18080\"\n\
         allow = [\"spiffe://bench.example\"]\nprotocol = \"http\"\n",
    );
    let _ = write!(
        t,
        "[[inbound.http.jwt]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks = \"{}\"\n",
        jwks.display()
    );
    let mut rule = |name: &str, action: &str, body: &str| {
        let _ = write!(
            t,
            "\n[[inbound.http.rules]]\nname = \"{name}\"\naction = \"{action}\"\n{body}"
        );
    };
    // 10 deny rules: what a platform team refuses whoever asks.
    rule("no-admin", "deny", "to = [{ paths = [\"/admin/*\"] }]\n");
    rule(
        "no-internal",
        "deny",
        "to = [{ paths = [\"/internal/*\", \"/debug/*\", \"/actuator/*\"] }]\n",
    );
    rule(
        "no-backups",
        "deny",
        "to = [{ paths = [\"*.bak\", \"*.swp\", \"*.old\", \"*~\"] }]\n",
    );
    rule(
        "no-trace",
        "deny",
        "to = [{ methods = [\"TRACE\", \"CONNECT\"] }]\n",
    );
    rule(
        "quarantine",
        "deny",
        "from = [{ principals = [\"spiffe://bench.example/quarantine/*\"] }]\n",
    );
    rule(
        "blocked-nets",
        "deny",
        "from = [{ ip_blocks = [\"192.0.2.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"] }]\n",
    );
    rule(
        "batch-read-only",
        "deny",
        "from = [{ principals = [\"spiffe://bench.example/batch/*\"] }]\n\
         to = [{ methods = [\"POST\", \"PUT\", \"PATCH\", \"DELETE\"] }]\n",
    );
    rule(
        "legacy-hosts",
        "deny",
        "to = [{ hosts = [\"legacy.bench.example\", \"*.old.bench.example\"] }]\n",
    );
    rule(
        "no-debug-header",
        "deny",
        "when = [{ key = \"request.headers[x-debug]\", values = [\"*\"] }]\n",
    );
    rule(
        "foreign-tokens",
        "deny",
        "from = [{ request_principals = [\"*\"], not_request_principals = [\"https://idp.example/*\"] }]\n",
    );
    // 10 audit rules: writes and exports watched per team.
    for i in 0..10 {
        rule(
            &format!("audit-{i}"),
            "audit",
            &format!(
                "from = [{{ principals = [\"spiffe://bench.example/team-{i}/*\"] }}]\n\
                 to = [{{ methods = [\"POST\", \"PUT\", \"DELETE\"] }}, {{ paths = [\"*.csv\", \"/export/{i}/*\"] }}]\n"
            ),
        );
    }
    // 79 allow rules of three shapes, none of which the benchmark's request matches:
    // keyed on the caller (fails at `from`), on the path (fails at `to`) and on a claim
    // (fails at `when`).
    for i in 0..79 {
        let body = match i % 3 {
            0 => format!(
                "from = [{{ principals = [\"spiffe://bench.example/ns-{i}/*\", \"spiffe://bench.example/svc-{i}\"] }}]\n\
                 to = [{{ methods = [\"GET\", \"HEAD\"], paths = [\"/svc-{i}/*\"] }}, {{ methods = [\"POST\"], paths = [\"/svc-{i}/jobs/*\"] }}]\n"
            ),
            1 => format!(
                "from = [{{ principals = [\"spiffe://bench.example/*\"], not_principals = [\"spiffe://bench.example/guest/*\"] }}]\n\
                 to = [{{ methods = [\"GET\"], paths = [\"/pub-{i}/*\", \"*.v{i}.json\"], hosts = [\"svc-{i}.bench.example\"] }}]\n"
            ),
            _ => format!(
                "from = [{{ request_principals = [\"{ISSUER}/*\"] }}]\n\
                 to = [{{ paths = [\"/api/*\"], not_paths = [\"/api/private/*\"] }}]\n\
                 when = [{{ key = \"request.auth.claims[groups]\", values = [\"team-{i}\", \"team-{i}-admins\"] }}]\n"
            ),
        };
        rule(&format!("allow-{i}"), "allow", &body);
    }
    // The last rule: the one the worst-case request is allowed by.
    rule(
        "readers",
        "allow",
        "from = [{ principals = [\"spiffe://bench.example/web\", \"spiffe://bench.example/web-canary\"], \
         request_principals = [\"https://idp.example/*\"], ip_blocks = [\"10.0.0.0/8\", \"127.0.0.0/8\"] }]\n\
         to = [{ methods = [\"GET\", \"HEAD\"], paths = [\"/api/*\", \"*.json\"], hosts = [\"api.bench.example\"] }]\n\
         when = [{ key = \"request.auth.claims[groups]\", values = [\"dev\", \"ops\"] }]\n",
    );
    t
}

fn http_config(toml: &str) -> HttpConfig {
    let config = Config::parse(toml, "authz-bench.toml").unwrap_or_else(|e| panic!("{e}"));
    config.inbound[0].http.clone().expect("an HTTP listener")
}

/// One request as the rules see it.
struct Req {
    peer: SpiffeId,
    ip: IpAddr,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: HeaderMap,
    auth: Option<RequestAuth>,
}

impl Req {
    fn new(peer: &str, method: &'static str, path: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("bench/1.0"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert("x-request-id", HeaderValue::from_static("8d3c5a2e-7d1f"));
        Self {
            peer: peer.parse().unwrap(),
            ip: "10.1.2.3".parse().unwrap(),
            method,
            path,
            host: "api.bench.example:8443",
            headers,
            auth: Some(RequestAuth {
                principal: format!("{ISSUER}/alice"),
                claims: claims(ISSUER, "alice", AUDIENCE, &["staff", "dev"]),
            }),
        }
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            peer: Peer::Spiffe(&self.peer),
            source_ip: self.ip,
            method: self.method,
            path: self.path,
            host: self.host,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        }
    }
}

fn rules(c: &mut Criterion) {
    let dir = tempfile_dir();
    let key = SigningKey::es256("k1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&key])).unwrap();
    let config = http_config(&policy_toml(&jwks));
    let rules = &config.rules;
    let count = |action: &str| rules.iter().filter(|r| r.action.as_str() == action).count();
    assert_eq!(
        (rules.len(), count("deny"), count("audit"), count("allow")),
        (100, 10, 10, 80)
    );

    let last = Req::new("spiffe://bench.example/web", "GET", "/api/v1/items/42");
    let v = evaluate(rules, &last.facts());
    assert_eq!((v.allowed, v.rule), (true, Some("readers")), "{v:?}");
    let admin = Req::new("spiffe://bench.example/web", "GET", "/admin/users");
    let v = evaluate(rules, &admin.facts());
    assert_eq!((v.allowed, v.rule), (false, Some("no-admin")), "{v:?}");
    let mut stranger = Req::new("spiffe://bench.example/stranger", "GET", "/nothing/here");
    stranger.auth = None;
    let v = evaluate(rules, &stranger.facts());
    assert_eq!((v.allowed, v.decision), (false, "no_match"), "{v:?}");

    let mut group = c.benchmark_group("authz_100_rules");
    group.bench_function("allowed_by_last_rule", |b| {
        b.iter(|| black_box(evaluate(black_box(rules), black_box(&last.facts()))))
    });
    group.bench_function("denied_by_first_rule", |b| {
        b.iter(|| black_box(evaluate(black_box(rules), black_box(&admin.facts()))))
    });
    group.bench_function("no_rule_matches_no_token", |b| {
        b.iter(|| black_box(evaluate(black_box(rules), black_box(&stranger.facts()))))
    });
    group.finish();
}

fn jwt(c: &mut Criterion) {
    let dir = tempfile_dir();
    let rsa = SigningKey::rs256("rsa-1");
    let ec = SigningKey::es256("ec-1");
    let jwks = dir.join("jwks-rs-es.json");
    std::fs::write(&jwks, jwks_json(&[&rsa, &ec])).unwrap();
    let config = http_config(&policy_toml(&jwks));
    let authn = Authenticator::new(&config.jwt).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let claims = claims(ISSUER, "alice", AUDIENCE, &["staff", "dev"]);

    let mut group = c.benchmark_group("jwt_validate");
    for key in [&rsa, &ec] {
        let token = key.token(&claims);
        let parts = hyper::Request::get("/api/v1/items/42")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let validated = rt.block_on(authn.authenticate(&parts)).unwrap().unwrap();
        assert_eq!(validated.auth.principal, format!("{ISSUER}/alice"));
        let alg = format!("{:?}", key.alg);
        group.bench_function(format!("authenticator_{alg}"), |b| {
            b.iter(|| black_box(rt.block_on(authn.authenticate(black_box(&parts)))))
        });

        // The same checks as the listener's issuer, on jsonwebtoken alone.
        let decoding = DecodingKey::from_jwk(&key.jwk).unwrap();
        let mut validation = Validation::new(key.alg);
        validation.leeway = 60;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
        group.bench_function(format!("jsonwebtoken_decode_{alg}"), |b| {
            b.iter(|| {
                black_box(jsonwebtoken::decode::<Value>(
                    black_box(&token),
                    &decoding,
                    &validation,
                ))
            })
        });
    }
    group.finish();
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_normalize");
    for (name, path) in [
        ("clean", "/api/v1/items/42"),
        ("crafted", "//api/./v1/%69tems/../items/%34%32/"),
    ] {
        assert!(normalize(path).is_ok());
        group.bench_function(name, |b| b.iter(|| black_box(normalize(black_box(path)))));
    }
    group.finish();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mtlsd-authz-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

criterion_group! {
    name = authz;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = rules, jwt, paths
}
criterion_main!(authz);
