use super::*;

const CONFIG: &str = r#"
[identity]
trust_domain = "example.org"
cert = "/nonexistent/svid.pem"
key = "/nonexistent/svid.key"
bundle = "/nonexistent/bundle.pem"

[[identity.federated]]
trust_domain = "partner.org"
bundle = "/nonexistent/partner.pem"

[[inbound]]
name = "web"
listen = "127.0.0.1:15443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org/ns/default/sa/frontend", "spiffe://example.org/ns/batch/*", "spiffe://other.org"]
deny = ["spiffe://example.org/ns/batch/sa/untrusted"]

[[inbound]]
name = "api"
listen = "127.0.0.1:8443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org", "spiffe://partner.org"]
protocol = "http"

[[inbound.http.jwt]]
issuer = "https://idp.example.org"
audiences = ["urn:example:api"]
jwks_uri = "https://idp.example.org/jwks.json"

[[inbound.http.rules]]
name = "watch-deletes"
action = "audit"
to = [{ methods = ["DELETE"] }]

[[inbound.http.rules]]
name = "readers"
action = "allow"
to = [{ methods = ["GET", "HEAD"], paths = ["/api/*", "*.json"], not_paths = ["/api/internal/*"] }]

[[inbound.http.rules]]
name = "no-admin-from-batch"
action = "deny"
from = [{ principals = ["spiffe://example.org/ns/batch/*"] }]
to = [{ paths = ["/admin/*"] }]

[[inbound.http.rules]]
name = "admins"
action = "allow"
from = [{ request_principals = ["https://idp.example.org/*"] }]
when = [{ key = "request.auth.claims[groups]", values = ["admins"] }]

[[inbound]]
name = "open"
listen = "127.0.0.1:8444"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org"]
protocol = "http"

[inbound.http]
dry_run = true

[[inbound.http.rules]]
name = "no-admin"
action = "deny"
to = [{ paths = ["/admin/*"] }]

[[outbound]]
name = "to-web"
listen = "127.0.0.1:15001"
connect = "10.0.0.5:15443"
server_id = "spiffe://example.org/ns/default/sa/web"
"#;

fn config() -> Config {
    Config::parse(CONFIG, "test.toml").unwrap()
}

fn ask(listener: &str, peer: &str, f: impl FnOnce(&mut Query)) -> Answer {
    let mut q = Query {
        listener: listener.into(),
        peer: peer.into(),
        ..Query::default()
    };
    f(&mut q);
    decide(&config(), &q).unwrap()
}

fn summary(a: &Answer) -> (bool, &'static str, Stage, Option<&str>) {
    (a.allowed, a.decision, a.stage, a.rule.as_deref())
}

/// Unpadded base64url, for a hand-made token.
fn b64(s: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

const ADMIN_CLAIMS: &str = r#"{"iss": "https://idp.example.org", "sub": "alice", "aud": "urn:example:api", "groups": ["admins"]}"#;

#[test]
fn l4_listeners_decide_by_the_allow_and_deny_lists() {
    let a = ask("web", "spiffe://example.org/ns/batch/sa/job", |_| {});
    assert_eq!(
        summary(&a),
        (
            true,
            "allow",
            Stage::Connection,
            Some("spiffe://example.org/ns/batch/*")
        )
    );
    assert_eq!(a.exit_code(), 0);
    let a = ask("web", "spiffe://example.org/ns/batch/sa/untrusted", |_| {});
    assert_eq!(
        summary(&a),
        (
            false,
            "deny",
            Stage::Connection,
            Some("spiffe://example.org/ns/batch/sa/untrusted")
        )
    );
    assert_eq!(a.exit_code(), 1);
    // Both entries matched; the deny one decided.
    let actions: Vec<_> = a.matched.iter().map(|m| m.action).collect();
    assert_eq!(actions, [Action::Deny, Action::Allow]);
    let a = ask("web", "spiffe://example.org/ns/web/sa/api", |_| {});
    assert_eq!(summary(&a), (false, "no_match", Stage::Connection, None));
    assert!(a.matched.is_empty());
}

#[test]
fn the_handshake_refuses_what_the_config_alone_rules_out() {
    // Allowed by the list, but not a trust domain this daemon has a bundle for.
    let a = ask("web", "spiffe://other.org/x", |_| {});
    assert_eq!(a.decision, "foreign_trust_domain");
    assert!(!a.allowed);
    assert!(a.reason.contains("partner.org"), "{}", a.reason);
    // A federated one is accepted.
    let a = ask("api", "spiffe://partner.org/x", |q| {
        q.path = Some("/api/x".into())
    });
    assert_eq!(
        summary(&a),
        (true, "allow", Stage::Request, Some("readers"))
    );
    // No certificate on a strict listener.
    let a = ask("web", "unauthenticated", |_| {});
    assert_eq!(a.decision, "no_client_cert");
}

#[test]
fn request_options_on_a_tcp_listener_are_said_to_play_no_part() {
    let a = ask("web", "spiffe://example.org/ns/default/sa/frontend", |q| {
        q.path = Some("/admin".into());
    });
    assert!(a.allowed);
    assert!(a.request.is_none());
    assert!(a.notes.iter().any(|n| n.contains("played no part")));
}

#[test]
fn http_rules_decide_in_istio_order_and_list_every_match() {
    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.path = Some("/api/users".into());
    });
    assert_eq!(
        summary(&a),
        (true, "allow", Stage::Request, Some("readers"))
    );
    assert_eq!(a.status, None);

    // A batch job reading /admin/x: the deny rule beats the admins rule that also matched.
    let a = ask("api", "spiffe://example.org/ns/batch/sa/job", |q| {
        q.method = Some("DELETE".into());
        q.path = Some("/admin/x".into());
        q.token = Some(TokenInput::Claims(ADMIN_CLAIMS.into()));
    });
    assert_eq!(
        summary(&a),
        (false, "deny", Stage::Request, Some("no-admin-from-batch"))
    );
    assert_eq!(a.status, Some(403));
    let matched: Vec<_> = a
        .matched
        .iter()
        .map(|m| (m.stage, m.action, m.rule.as_str()))
        .collect();
    assert_eq!(
        matched,
        [
            (Stage::Connection, Action::Allow, "spiffe://example.org"),
            (Stage::Request, Action::Deny, "no-admin-from-batch"),
            (Stage::Request, Action::Allow, "admins"),
            (Stage::Request, Action::Audit, "watch-deletes"),
        ]
    );
    assert_eq!(a.audit_rule.as_deref(), Some("watch-deletes"));
    assert_eq!(
        a.auth.as_ref().unwrap().principal,
        "https://idp.example.org/alice"
    );

    // No allow rule matches, and no token: the daemon answers 401.
    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.method = Some("POST".into());
        q.path = Some("/api/users".into());
    });
    assert_eq!(summary(&a), (false, "no_match", Stage::Request, None));
    assert_eq!(a.status, Some(401));
}

#[test]
fn the_path_is_normalized_as_the_daemon_does_and_a_bad_one_is_a_400() {
    let a = ask("api", "spiffe://example.org/ns/batch/sa/job", |q| {
        q.path = Some("//api/../admin/./x?q=1".into());
    });
    assert_eq!(a.rule.as_deref(), Some("no-admin-from-batch"));
    let seen = a.request.unwrap();
    assert_eq!(seen.path, "/admin/x");
    assert_eq!(seen.path_as_sent, "//api/../admin/./x?q=1");

    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.path = Some("/api/..%2Fadmin".into());
    });
    assert_eq!(
        (a.allowed, a.decision, a.status),
        (false, "bad_request", Some(400))
    );
}

#[test]
fn tokens_count_only_from_trusted_issuers_and_audiences() {
    let with = |claims: &str| {
        ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
            q.path = Some("/admin".into());
            q.token = Some(TokenInput::Claims(claims.into()));
        })
    };
    assert_eq!(with(ADMIN_CLAIMS).rule.as_deref(), Some("admins"));
    let a = with(r#"{"iss": "https://evil", "sub": "alice", "groups": ["admins"]}"#);
    assert_eq!((a.decision, a.status), ("unauthenticated", Some(401)));
    assert!(a.reason.contains("not trusted"), "{}", a.reason);
    let a = with(
        r#"{"iss": "https://idp.example.org", "sub": "alice", "aud": "other", "groups": ["admins"]}"#,
    );
    assert_eq!(a.decision, "unauthenticated");
    assert!(a.reason.contains("audience"), "{}", a.reason);
    // Not admins: refused with 403, the request carried a token.
    let a = with(r#"{"iss": "https://idp.example.org", "sub": "bob", "groups": ["dev"]}"#);
    assert_eq!((a.decision, a.status), ("no_match", Some(403)));
}

#[test]
fn a_jwt_is_read_without_verifying_its_signature() {
    let token = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k"}"#),
        b64(ADMIN_CLAIMS),
        b64("not a signature")
    );
    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.path = Some("/admin".into());
        q.token = Some(TokenInput::Jwt(token));
    });
    assert_eq!(summary(&a), (true, "allow", Stage::Request, Some("admins")));
    assert_eq!(
        a.auth.as_ref().unwrap().claims_from,
        ClaimsFrom::TokenUnverified
    );
    assert!(a.notes.iter().any(|n| n.contains("unverified")));
    assert!(
        a.to_string()
            .contains("claims taken from the token unverified")
    );

    let q = Query {
        listener: "api".into(),
        peer: "spiffe://example.org/a".into(),
        token: Some(TokenInput::Jwt("not-a-jwt".into())),
        ..Query::default()
    };
    assert!(matches!(decide(&config(), &q), Err(WhatIfError::Jwt(_))));
}

#[test]
fn host_and_source_address_reach_the_rules() {
    let text = CONFIG.replace(
        "name = \"admins\"\naction = \"allow\"",
        "name = \"office\"\naction = \"allow\"\nfrom = [{ ip_blocks = [\"10.0.0.0/8\"] }]\n\
         to = [{ hosts = [\"ops.example\"] }]\n\n[[inbound.http.rules]]\n\
         name = \"admins\"\naction = \"allow\"",
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let ask = |host: Option<&str>, ip: Option<[u8; 4]>| {
        let q = Query {
            listener: "api".into(),
            peer: "spiffe://example.org/a".into(),
            host: host.map(Into::into),
            source_ip: ip.map(IpAddr::from),
            ..Query::default()
        };
        decide(&config, &q).unwrap()
    };
    let a = ask(Some("OPS.example:8443"), Some([10, 1, 2, 3]));
    assert_eq!(a.rule.as_deref(), Some("office"));
    assert_eq!(a.request.unwrap().host, "OPS.example:8443");
    assert_eq!(ask(Some("ops.example"), None).decision, "no_match");
    assert_eq!(ask(None, Some([10, 1, 2, 3])).decision, "no_match");
}

#[test]
fn a_token_header_without_jwt_is_pointed_out_and_a_jwt_reaches_header_conditions() {
    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.path = Some("/admin".into());
        q.headers = vec![(
            hyper::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y.z"),
        )];
    });
    assert_eq!((a.decision, a.status), ("no_match", Some(401)));
    assert!(
        a.notes.iter().any(|n| n.contains("header authorization")),
        "{:?}",
        a.notes
    );
    // A spoofed identity header is removed before the rules, and said so.
    let a = ask("api", "spiffe://example.org/ns/web/sa/a", |q| {
        q.headers = vec![(
            XFCC,
            HeaderValue::from_static("By=x;URI=spiffe://example.org/admin"),
        )];
    });
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("x-forwarded-client-cert"))
    );
}

#[test]
fn dry_run_is_reported() {
    let a = ask("open", "spiffe://example.org/x", |q| {
        q.path = Some("/admin/x".into());
    });
    assert_eq!(
        summary(&a),
        (false, "deny", Stage::Request, Some("no-admin"))
    );
    assert!(a.dry_run);
    assert!(a.notes.iter().any(|n| n.contains("only log")));
}

#[test]
fn questions_that_cannot_be_asked_are_errors() {
    let err = |q: Query| decide(&config(), &q).unwrap_err();
    let base = Query {
        listener: "web".into(),
        peer: "spiffe://example.org/a".into(),
        ..Query::default()
    };
    let e = err(Query {
        listener: "nope".into(),
        ..base.clone()
    });
    assert!(e.to_string().contains("web, api, open, to-web"), "{e}");
    assert!(matches!(
        err(Query {
            listener: "to-web".into(),
            ..base.clone()
        }),
        WhatIfError::Outbound { .. }
    ));
    assert!(matches!(
        err(Query {
            peer: "example.org/a".into(),
            ..base.clone()
        }),
        WhatIfError::Peer { .. }
    ));
    assert!(matches!(
        err(Query {
            method: Some("GE T".into()),
            ..base.clone()
        }),
        WhatIfError::Method(_)
    ));
    assert!(matches!(
        err(Query {
            token: Some(TokenInput::Claims("[1]".into())),
            ..base
        }),
        WhatIfError::Claims(_)
    ));
}

#[test]
fn explain_lists_rules_in_evaluation_order_with_the_default() {
    let e = explain(&config(), Some("api")).unwrap();
    let api = &e.listeners[0];
    let lines: Vec<String> = api.rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "deny  no-admin-from-batch: from principals spiffe://example.org/ns/batch/* to paths /admin/*",
            "allow readers: to methods GET, HEAD and paths /api/*, *.json and not paths /api/internal/*",
            "allow admins: from request principals https://idp.example.org/* when request.auth.claims[groups] is admins",
            "audit watch-deletes: to methods DELETE",
        ]
    );
    assert_eq!(api.default, "requests matching no allow rule are refused");
    let all = explain(&config(), None).unwrap();
    let names: Vec<_> = all.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "api", "open", "to-web"]);
    let open = &all.listeners[2];
    assert_eq!(
        open.default,
        "no allow rules: every admitted peer passes unless a deny rule matches"
    );
    let text = all.to_string();
    assert!(
        text.contains("  peers     deny  spiffe://example.org/ns/batch/sa/untrusted\n"),
        "{text}"
    );
    assert!(text.contains("outbound to-web (127.0.0.1:15001)"), "{text}");
    assert!(explain(&config(), Some("nope")).is_err());
}
