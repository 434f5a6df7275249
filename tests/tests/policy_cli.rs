//! `mtlsd policy test` and `mtlsd policy explain` as a policy author and a CI pipeline run
//! them: the real binary on a config file, its exit status (0 allow, 1 deny, 2 error) and
//! its text and JSON output, and agreement with the daemon on every case of the
//! authorization table of `tests/tests/http.rs`.

use std::process::{Command, Output};

use mtlsd_e2e::http::{authz_cases, authz_rules};
use mtlsd_e2e::{mtlsd_bin, run_ok, write_config};
use serde_json::{Value, json};

/// The README's example policy: an L4 listener `web`, an HTTP listener `api` with a JWT
/// issuer and rules in config order audit, allow, deny, allow (explained deny first).
const CONFIG: &str = r#"
[identity]
trust_domain = "example.org"
cert   = "/nonexistent/svid.pem"
key    = "/nonexistent/svid.key"
bundle = "/nonexistent/bundle.pem"

[[inbound]]
name    = "web"
listen  = "127.0.0.1:15443"
forward = "127.0.0.1:8080"
allow   = ["spiffe://example.org/ns/default/sa/frontend", "spiffe://example.org/ns/batch/*"]
deny    = ["spiffe://example.org/ns/batch/sa/untrusted"]

[[inbound]]
name     = "api"
listen   = "127.0.0.1:8443"
forward  = "127.0.0.1:8081"
allow    = ["spiffe://example.org"]
protocol = "http"

[[inbound.http.jwt]]
issuer    = "https://idp.example.org"
audiences = ["urn:example:api"]
jwks_uri  = "https://idp.example.org/.well-known/jwks.json"

[[inbound.http.rules]]
name   = "watch-deletes"
action = "audit"
to     = [{ methods = ["DELETE"] }]

[[inbound.http.rules]]
name   = "readers"
action = "allow"
to     = [{ methods = ["GET", "HEAD"], paths = ["/api/*", "*.json"], not_paths = ["/api/internal/*"] }]

[[inbound.http.rules]]
name   = "no-admin-from-batch"
action = "deny"
from   = [{ principals = ["spiffe://example.org/ns/batch/*"] }]
to     = [{ paths = ["/admin/*"] }]

[[inbound.http.rules]]
name   = "admins"
action = "allow"
from   = [{ request_principals = ["https://idp.example.org/*"] }]
when   = [{ key = "request.auth.claims[groups]", values = ["admins"] }]
"#;

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const BATCH: &str = "spiffe://example.org/ns/batch/sa/job";

/// Runs `mtlsd policy <args>` on `config`.
fn policy(config: &tempfile::NamedTempFile, args: &[&str]) -> Output {
    Command::new(mtlsd_bin())
        .arg("policy")
        .arg(args[0])
        .arg("--config")
        .arg(config.path())
        .args(&args[1..])
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `policy test` with `args`: (exit status, text output).
fn test_text(config: &tempfile::NamedTempFile, args: &[&str]) -> (i32, String) {
    let mut all = vec!["test"];
    all.extend(args);
    let out = policy(config, &all);
    let text = stdout(&out);
    (out.status.code().unwrap(), text)
}

/// `policy test --output json` with `args`: (exit status, the answer).
fn test_json(config: &tempfile::NamedTempFile, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["test", "--output", "json"];
    all.extend(args);
    let out = policy(config, &all);
    let code = out.status.code().unwrap();
    let text = stdout(&out);
    let answer = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{all:?}: not one JSON object ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, answer)
}

/// The text after `label` on its line of the human output.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
        .trim()
}

/// Unpadded base64url (RFC 4648 §5), to make tokens by hand.
fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A compact JWT carrying `claims` whose signature is garbage: the what-if must not verify it.
fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"RS256","typ":"JWT","kid":"rs-1"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(b"this is not a signature")
    )
}

#[test]
fn l4_listeners_answer_allow_deny_and_no_match_with_exit_status_0_and_1() {
    let config = write_config(CONFIG);
    let (code, text) = test_text(&config, &["--listener", "web", "--peer", FRONTEND]);
    assert_eq!(code, 0, "{text}");
    assert!(
        field(&text, "decision").starts_with("allow at the connection stage"),
        "{text}"
    );
    assert_eq!(field(&text, "rule"), FRONTEND);

    let untrusted = "spiffe://example.org/ns/batch/sa/untrusted";
    let (code, text) = test_text(&config, &["--listener", "web", "--peer", untrusted]);
    assert_eq!(code, 1, "{text}");
    assert!(
        field(&text, "decision").starts_with("deny at the connection stage"),
        "{text}"
    );
    assert_eq!(field(&text, "rule"), untrusted);
    // Every entry that matched, the deciding deny entry first and marked.
    assert_eq!(
        field(&text, "matched"),
        format!("connection deny  {untrusted}  (decided)")
    );
    assert!(
        text.contains("connection allow spiffe://example.org/ns/batch/*\n"),
        "{text}"
    );

    let (code, answer) = test_json(
        &config,
        &["--listener", "web", "--peer", "spiffe://example.org/ns/web"],
    );
    assert_eq!(code, 1);
    assert_eq!(answer["decision"], "no_match");
    assert_eq!(answer["stage"], "connection");
    assert_eq!(answer["rule"], Value::Null);
    assert_eq!(answer["matched"], json!([]));
}

#[test]
fn http_listeners_decide_each_request_by_rule_and_normalize_the_path() {
    let config = write_config(CONFIG);
    let api = ["--listener", "api"];
    let ask = |peer: &str, extra: &[&str]| {
        let mut args = api.to_vec();
        args.extend(["--peer", peer]);
        args.extend(extra);
        test_text(&config, &args)
    };

    let (code, text) = ask(FRONTEND, &["--path", "/api/users"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        field(&text, "decision").starts_with("allow at the request stage"),
        "{text}"
    );
    assert_eq!(field(&text, "rule"), "readers");

    let (code, text) = ask(BATCH, &["--path", "/admin/users"]);
    assert_eq!(code, 1, "{text}");
    assert!(field(&text, "decision").starts_with("deny at the request stage"));
    // The listener accepts tokens and the request carries none: 401, as serve.rs answers.
    assert!(
        field(&text, "decision").ends_with("the daemon answers 401"),
        "{text}"
    );
    assert_eq!(field(&text, "rule"), "no-admin-from-batch");

    // No allow rule matches a POST; without a token the daemon says 401.
    let (code, text) = ask(FRONTEND, &["--method", "POST", "--path", "/api/users"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        field(&text, "decision").starts_with("no_match at the request stage"),
        "{text}"
    );
    assert!(field(&text, "decision").ends_with("the daemon answers 401"));
    assert!(!text.contains("\nrule "), "{text}");

    // The daemon's normalization: //public/../admin/x is /admin/x.
    let (code, text) = ask(BATCH, &["--path", "//public/../admin/x"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(field(&text, "rule"), "no-admin-from-batch");
    assert_eq!(
        field(&text, "request"),
        "GET /admin/x from 127.0.0.1 (path sent as //public/../admin/x)"
    );
    // An encoded slash is what the daemon refuses with 400.
    let (code, answer) = test_json(
        &config,
        &[
            "--listener",
            "api",
            "--peer",
            FRONTEND,
            "--path",
            "/api%2F..%2Fadmin",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        (&answer["decision"], &answer["status"]),
        (&json!("bad_request"), &json!(400))
    );
}

#[test]
fn claims_given_or_read_unverified_from_a_token_decide_claim_based_rules() {
    let config = write_config(CONFIG);
    let claims = json!({
        "iss": "https://idp.example.org",
        "sub": "alice",
        "aud": "urn:example:api",
        "groups": ["dev", "admins"],
    });
    let base = [
        "--listener",
        "api",
        "--peer",
        FRONTEND,
        "--method",
        "PUT",
        "--path",
        "/config",
    ];

    let claims_text = claims.to_string();
    let mut args = base.to_vec();
    args.extend(["--claims", &claims_text]);
    let (code, text) = test_text(&config, &args);
    assert_eq!(code, 0, "{text}");
    assert_eq!(field(&text, "rule"), "admins");
    assert_eq!(
        field(&text, "token"),
        "https://idp.example.org/alice (issuer https://idp.example.org; claims as given)"
    );

    let token = unsigned_token(&claims);
    let mut args = base.to_vec();
    args.extend(["--jwt", &token]);
    let (code, text) = test_text(&config, &args);
    assert_eq!(code, 0, "{text}");
    assert_eq!(field(&text, "rule"), "admins");
    assert!(
        text.contains("claims taken from the token unverified"),
        "{text}"
    );

    // Not in the admins group: refused with 403 (the request did carry a token).
    let dev = json!({"iss": "https://idp.example.org", "sub": "bob", "groups": ["dev"]});
    let token = unsigned_token(&dev);
    let mut args = base.to_vec();
    args.extend(["--jwt", &token]);
    let (code, answer) = test_json(&config, &args);
    assert_eq!(code, 1);
    assert_eq!(answer["decision"], "no_match");
    assert_eq!(answer["status"], 403);
    assert_eq!(answer["auth"]["claims_from"], "token_unverified");

    // An issuer the listener does not trust: the daemon refuses the token itself.
    let evil =
        json!({"iss": "https://evil.example", "sub": "alice", "groups": ["admins"]}).to_string();
    let mut args = base.to_vec();
    args.extend(["--claims", &evil]);
    let (code, answer) = test_json(&config, &args);
    assert_eq!(code, 1);
    assert_eq!(
        (&answer["decision"], &answer["status"]),
        (&json!("unauthenticated"), &json!(401))
    );
}

#[test]
fn json_output_carries_decision_stage_rule_matches_and_dry_run() {
    let config = write_config(CONFIG);
    let (code, answer) = test_json(
        &config,
        &[
            "--listener",
            "api",
            "--peer",
            BATCH,
            "--method",
            "DELETE",
            "--path",
            "/admin/x",
            "--claims",
            r#"{"iss": "https://idp.example.org", "sub": "alice", "groups": ["admins"]}"#,
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(answer["allowed"], false);
    assert_eq!(answer["decision"], "deny");
    assert_eq!(answer["stage"], "request");
    assert_eq!(answer["rule"], "no-admin-from-batch");
    assert_eq!(answer["audit_rule"], "watch-deletes");
    assert_eq!(answer["status"], 403);
    assert_eq!(answer["dry_run"], false);
    assert_eq!(answer["request"]["path"], "/admin/x");
    assert_eq!(answer["auth"]["principal"], "https://idp.example.org/alice");
    assert_eq!(
        answer["matched"],
        json!([
            {"stage": "connection", "action": "allow", "rule": "spiffe://example.org"},
            {"stage": "request", "action": "deny", "rule": "no-admin-from-batch"},
            {"stage": "request", "action": "allow", "rule": "admins"},
            {"stage": "request", "action": "audit", "rule": "watch-deletes"},
        ])
    );

    // On a dry-run listener the decision stands (exit 1) and the output says it is only logged.
    let dry = write_config(&CONFIG.replace(
        "protocol = \"http\"\n",
        "protocol = \"http\"\n\n[inbound.http]\ndry_run = true\n",
    ));
    let args = ["--listener", "api", "--peer", BATCH, "--path", "/admin/x"];
    let (code, answer) = test_json(&dry, &args);
    assert_eq!(code, 1);
    assert_eq!(answer["dry_run"], true);
    assert_eq!(answer["decision"], "deny");
    let (_, text) = test_text(&dry, &args);
    assert!(
        text.contains("the daemon would only log this decision"),
        "{text}"
    );
}

#[test]
fn questions_that_cannot_be_answered_exit_2_with_the_reason() {
    let config = write_config(CONFIG);
    for (args, says) in [
        (
            vec!["--listener", "nope", "--peer", FRONTEND],
            "no listener \"nope\" in the config; its listeners: web, api",
        ),
        (
            vec!["--listener", "web", "--peer", "frontend"],
            "--peer \"frontend\"",
        ),
        (
            vec!["--listener", "api", "--peer", FRONTEND, "--claims", "{"],
            "--claims: not JSON",
        ),
        (
            vec![
                "--listener",
                "api",
                "--peer",
                FRONTEND,
                "--jwt",
                "x",
                "--claims",
                "{}",
            ],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["test"];
        all.extend(&args);
        let out = policy(&config, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A config mistake is reported with file:line:column: key, as `mtlsd check` does.
    let bad = write_config(&CONFIG.replace("action = \"deny\"", "action = \"permit\""));
    let out = policy(&bad, &["test", "--listener", "api", "--peer", FRONTEND]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("inbound[1].http.rules[2].action"), "{err}");
    assert!(err.contains(&format!("{}:", bad.path().display())), "{err}");
}

#[test]
fn explain_lists_who_can_reach_what_with_rules_in_evaluation_order() {
    let config = write_config(CONFIG);
    let text = run_ok(
        Command::new(mtlsd_bin())
            .args(["policy", "explain", "--config"])
            .arg(config.path()),
    );
    let expected = "\
inbound web (127.0.0.1:15443, tcp, strict)
  peers     deny  spiffe://example.org/ns/batch/sa/untrusted
            allow spiffe://example.org/ns/default/sa/frontend, spiffe://example.org/ns/batch/*
  default   peers named by no allow entry are refused; deny entries beat allow entries

inbound api (127.0.0.1:8443, http, strict)
  peers     deny  (none)
            allow spiffe://example.org
  tokens    https://idp.example.org (audiences urn:example:api)
  requests  deny  no-admin-from-batch: from principals spiffe://example.org/ns/batch/* to paths /admin/*
            allow readers: to methods GET, HEAD and paths /api/*, *.json and not paths /api/internal/*
            allow admins: from request principals https://idp.example.org/* when request.auth.claims[groups] is admins
            audit watch-deletes: to methods DELETE
  default   requests matching no allow rule are refused
  note      a request with a token that fails validation is refused (401) whatever the rules say
";
    assert_eq!(text, expected);

    // One listener, as JSON; with no allow rules, every admitted peer passes.
    let open = write_config(
        &CONFIG
            .replace(
                "name   = \"readers\"\naction = \"allow\"",
                "name   = \"readers\"\naction = \"audit\"",
            )
            .replace(
                "name   = \"admins\"\naction = \"allow\"",
                "name   = \"admins\"\naction = \"audit\"",
            ),
    );
    let json: Value = serde_json::from_str(&run_ok(
        Command::new(mtlsd_bin())
            .args([
                "policy",
                "explain",
                "--listener",
                "api",
                "--output",
                "json",
                "--config",
            ])
            .arg(open.path()),
    ))
    .unwrap();
    let listeners = json["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(
        listeners[0]["default"],
        "no allow rules: every admitted peer passes unless a deny rule matches"
    );
    let order: Vec<_> = listeners[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["action"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "deny no-admin-from-batch",
            "audit watch-deletes",
            "audit readers",
            "audit admins"
        ]
    );
}

/// The IdP's issuer as written in the table's config; the what-if never contacts it.
const ISSUER: &str = "http://127.0.0.1:9/idp";
const AUDIENCE: &str = "urn:mtlsd:api";

/// The claims the IdP (`tests/idp/idp.mjs`) puts in the tokens of `client`.
fn idp_claims(client: &str) -> Value {
    let (groups, team) = match client {
        "mtlsd-test" => (json!(["dev"]), "payments"),
        "mtlsd-admin" => (json!(["admins", "dev"]), "platform"),
        other => panic!("no client {other}"),
    };
    json!({
        "iss": ISSUER,
        "sub": client,
        "aud": AUDIENCE,
        "client_id": client,
        "exp": 4_102_444_800_u64,
        "iat": 1_700_000_000_u64,
        "groups": groups,
        "org": {"team": team},
    })
}

/// `tests/tests/http.rs`'s `authorization_rules_decide_every_request_by_principal_method_path_and_claim`:
/// the same listener, rules and cases, asked of `policy test` (with `--claims`, then with
/// `--jwt`), which must give the daemon's decision, rule, audit rule and status.
#[test]
fn policy_test_agrees_with_the_daemon_on_every_case_of_the_authorization_table() {
    let td = "authz.test";
    let id = |p: &str| format!("spiffe://{td}{p}");
    let config = write_config(
        &(format!(
            r#"
[identity]
trust_domain = "{td}"
cert = "/nonexistent/web.pem"
key = "/nonexistent/web.key"
bundle = "/nonexistent/bundle.pem"

[[inbound]]
name = "api"
listen = "127.0.0.1:0"
forward = "127.0.0.1:8080"
allow = ["spiffe://{td}"]
protocol = "http"

[inbound.http]
[[inbound.http.jwt]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_uri = "{ISSUER}/jwks"

"#
        ) + &authz_rules(id, ISSUER)),
    );
    let dev = idp_claims("mtlsd-test");
    let admin = idp_claims("mtlsd-admin");

    // The table of http.rs (`mtlsd_e2e::http::authz_cases`). The two `tampered` cases (a valid token's signature over another
    // payload) are refused by the daemon at authentication (401 unauthenticated), which a
    // what-if that does not verify signatures cannot know: they are skipped below. The
    // 401 no_match cases are requests without a token that no allow rule admits.
    let rows = authz_cases();
    assert_eq!(rows.len(), 23, "the table of http.rs");
    let none = |s: &str| if s == "-" { Value::Null } else { json!(s) };
    let mut asked = 0;
    for (n, f) in rows.iter().enumerate() {
        let (client, method, path, token) = (f[0], f[1], f[2], f[3]);
        let (status, decision, rule, audit) = (f[4], f[5], none(f[6]), none(f[7]));
        let claims = match token {
            "-" => None,
            "dev" => Some(&dev),
            "admin" => Some(&admin),
            // Skipped: only signature verification tells a tampered token (see above).
            "tampered" => continue,
            other => panic!("unknown token {other}"),
        };
        let peer = id(client);
        let base = vec![
            "--listener",
            "api",
            "--peer",
            &peer,
            "--method",
            method,
            "--path",
            path,
        ];
        let claims_json = claims.map(ToString::to_string);
        let jwt = claims.map(unsigned_token);
        let mut variants = vec![("no token", base.clone())];
        if let (Some(c), Some(t)) = (&claims_json, &jwt) {
            let mut with_claims = base.clone();
            with_claims.extend(["--claims", c.as_str()]);
            let mut with_jwt = base.clone();
            with_jwt.extend(["--jwt", t.as_str()]);
            variants = vec![("--claims", with_claims), ("--jwt", with_jwt)];
        }
        for (how, args) in variants {
            let (code, answer) = test_json(&config, &args);
            let what = format!("case {n} ({how}): {}\n{answer:#}", f.join(" "));
            let allowed = status == "200";
            assert_eq!(code, if allowed { 0 } else { 1 }, "{what}");
            assert_eq!(answer["allowed"], allowed, "{what}");
            assert_eq!(answer["stage"], "request", "{what}");
            assert_eq!(answer["decision"], decision, "{what}");
            assert_eq!(answer["rule"], rule, "{what}");
            assert_eq!(answer["audit_rule"], audit, "{what}");
            let want_status = if allowed {
                Value::Null
            } else {
                json!(status.parse::<u16>().unwrap())
            };
            assert_eq!(answer["status"], want_status, "{what}");
            asked += 1;
        }
    }
    // 21 cases, 13 of them with a token asked both ways.
    assert_eq!(asked, 21 + 13);
}
