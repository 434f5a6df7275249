//! `protocol = "http"` listeners end to end: curl (HTTP/1.1 and HTTP/2) and Python's
//! `requests` as clients, tokens from a real OpenID provider (`oidc-provider`), a real
//! HTTP service behind; every refusal checked in the status, the access line, the metric
//! and in what the service did (not) receive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use mtlsd_e2e::http::{Reply, Service, authz_cases, authz_rules, request};
use mtlsd_e2e::idp::{Idp, generate_keys, npm_ready, rotate_keys};
use mtlsd_e2e::{
    CertFiles, Daemon, Pki, WAIT, admin_request, identity_toml, metric, run_ok, s_client,
};
use serde_json::Value;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";
const AUDIENCE: &str = "urn:mtlsd:api";

/// A daemon with one HTTP listener `api` in front of `service`; `http` is the listener's
/// `[inbound.http]` body (rules, jwt tables), `extra` more keys of the `[[inbound]]` table.
fn start(pki: &Pki, service: &Service, extra: &str, http: &str) -> Daemon {
    let config = format!(
        "{}{ADMIN}{}",
        identity_toml(pki, &pki.issue(&pki.id("/web"))),
        http_listener(pki, service.addr, extra, http)
    );
    Daemon::start(&config)
}

fn http_listener(pki: &Pki, service: SocketAddr, extra: &str, http: &str) -> String {
    pki.inbound(
        "api",
        service,
        &format!("protocol = \"http\"\n{extra}\n[inbound.http]\n{http}"),
    )
}

fn jwt_table(idp: &Idp, extra: &str) -> String {
    format!(
        "[[inbound.http.jwt]]\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\"]\njwks_uri = \"{}\"\n{extra}\n",
        idp.issuer, idp.jwks_uri
    )
}

/// The IdP's signing keys (RS256, kid `rs-1`) in `dir`.
fn idp_keys(dir: &Path) -> std::path::PathBuf {
    npm_ready();
    let keys = dir.join("keys.json");
    generate_keys(&keys, &[("RS256", "rs-1")]);
    keys
}

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

/// The access lines of requests so far.
fn requests(daemon: &Daemon) -> Vec<Value> {
    daemon.logs_where(|l| l["message"] == "request")
}

/// The `n`th access line (1-based), waiting for it.
fn nth_request(daemon: &Daemon, n: usize) -> Value {
    daemon
        .wait_for_logs("request", n, |l| l["message"] == "request")
        .swap_remove(n - 1)
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn leaf_der(cert: &Path) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_requests_reach_the_service_with_the_verified_identity_and_never_a_forged_one()
 {
    let pki = Pki::new("http.test");
    let service = Service::start().await;
    let daemon = start(&pki, &service, "", "");
    let addr = daemon.addr("api");
    let client = pki.issue(&pki.id("/frontend"));
    let forged = [
        "-H",
        "x-forwarded-client-cert: By=x;URI=spiffe://http.test/admin",
        "-H",
        "x-jwt-subject: root",
        "-H",
        "x-jwt-issuer: https://evil",
    ];
    for (i, version) in ["--http1.1", "--http2"].into_iter().enumerate() {
        let mut args = vec![version];
        args.extend(forged);
        let reply = request(
            addr,
            &pki.bundle(),
            &client,
            &args,
            &format!("/hello?n={i}"),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, format!("served /hello?n={i}"));
        assert_eq!(reply.version, if i == 0 { "1.1" } else { "2" });
    }
    let want_xfcc = format!(
        "By={};Hash={};URI={}",
        pki.id("/web"),
        sha256_hex(&leaf_der(&client.cert)),
        pki.id("/frontend")
    );
    let seen = service.seen_with("/hello");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        let xfcc: Vec<_> = s
            .headers
            .get_all("x-forwarded-client-cert")
            .iter()
            .collect();
        assert_eq!(xfcc.len(), 1, "{s:?}");
        assert_eq!(xfcc[0].to_str().unwrap(), want_xfcc);
        assert!(!s.headers.contains_key("x-jwt-subject"), "{s:?}");
        assert!(!s.headers.contains_key("x-jwt-issuer"), "{s:?}");
        assert_eq!(s.headers["host"], format!("localhost:{}", addr.port()));
        assert_eq!(s.version, "HTTP/1.1", "upstream = \"http1\" by default");
    }
    // Two peer connections, one pooled upstream connection, kept alive between them.
    assert_eq!(service.connections(), 1);
    let line = nth_request(&daemon, 2);
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["peer_id"], pki.id("/frontend"));
    assert_eq!(line["decision"], "no_rules");
}

/// One case of the authorization table: who asks for what with which token, and the answer.
struct Case {
    client: &'static str,
    method: &'static str,
    path: &'static str,
    token: Tok,
    status: u16,
    decision: &'static str,
    rule: &'static str,
    audit: &'static str,
}

#[derive(Clone, Copy, PartialEq)]
enum Tok {
    None,
    Dev,
    Admin,
    Tampered,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_rules_decide_every_request_by_principal_method_path_and_claim() {
    let pki = Pki::new("authz.test");
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::start(&idp_keys(dir.path()), 0, 300);
    let service = Service::start().await;
    let id = |p: &str| pki.id(p);
    let rules = authz_rules(id, &idp.issuer);
    let daemon = start(&pki, &service, "", &(jwt_table(&idp, "") + &rules));
    let addr = daemon.addr("api");
    let dev = idp.token("mtlsd-test", "mtlsd-test-secret", AUDIENCE);
    let admin = idp.token("mtlsd-admin", "mtlsd-admin-secret", AUDIENCE);
    let tampered = {
        let mut parts: Vec<String> = admin.split('.').map(str::to_owned).collect();
        // Same header and signature, another payload: the signature no longer verifies.
        parts[1] = dev.split('.').nth(1).unwrap().to_owned();
        parts.join(".")
    };
    let clients: HashMap<&str, CertFiles> = ["/frontend", "/batch", "/admin-tool"]
        .into_iter()
        .map(|p| (p, pki.issue(&id(p))))
        .collect();

    let none = |s: &'static str| if s == "-" { "" } else { s };
    let cases: Vec<Case> = authz_cases()
        .into_iter()
        .map(|f| Case {
            client: f[0],
            method: f[1],
            path: f[2],
            token: match f[3] {
                "-" => Tok::None,
                "dev" => Tok::Dev,
                "admin" => Tok::Admin,
                "tampered" => Tok::Tampered,
                other => panic!("unknown token {other}"),
            },
            status: f[4].parse().unwrap(),
            decision: f[5],
            rule: none(f[6]),
            audit: none(f[7]),
        })
        .collect();
    let mut expected: HashMap<(String, String, u16), f64> = HashMap::new();
    for (n, case) in cases.iter().enumerate() {
        let tag = format!("case={n}");
        let header;
        let mut args = vec!["-X", case.method, "--path-as-is"];
        let token = match case.token {
            Tok::None => None,
            Tok::Dev => Some(&dev),
            Tok::Admin => Some(&admin),
            Tok::Tampered => Some(&tampered),
        };
        if let Some(t) = token {
            header = bearer(t);
            args.extend(["-H", header.as_str()]);
        }
        let target = format!("{}?{tag}", case.path);
        let reply = request(addr, &pki.bundle(), &clients[case.client], &args, &target);
        let what = format!(
            "case {n}: {} {} {} {:?}",
            case.client, case.method, case.path, reply
        );
        assert_eq!(reply.status, case.status, "{what}");
        if case.status == 401 {
            let challenge = if case.token == Tok::Tampered {
                "www-authenticate: bearer error=\"invalid_token\""
            } else {
                "www-authenticate: bearer realm="
            };
            assert!(reply.headers.contains(challenge), "{what}");
        }
        let line = nth_request(&daemon, n + 1);
        assert_eq!(line["status"], case.status, "{what}: {line}");
        assert_eq!(line["decision"], case.decision, "{what}: {line}");
        assert_eq!(line["rule"], case.rule, "{what}: {line}");
        assert_eq!(line["audit_rule"], case.audit, "{what}: {line}");
        assert_eq!(line["peer_id"], id(case.client), "{what}: {line}");
        let reached = service.seen_with(&tag);
        if case.status == 200 {
            assert_eq!(reached.len(), 1, "{what}");
            // The token is stripped before the request goes upstream; its subject is not.
            assert!(!reached[0].headers.contains_key("authorization"), "{what}");
            let sub = token.map(|_| {
                if case.token == Tok::Dev {
                    "mtlsd-test"
                } else {
                    "mtlsd-admin"
                }
            });
            assert_eq!(
                reached[0]
                    .headers
                    .get("x-jwt-subject")
                    .map(|v| v.to_str().unwrap()),
                sub,
                "{what}"
            );
        } else {
            assert!(
                reached.is_empty(),
                "{what}: the service saw a refused request"
            );
        }
        *expected
            .entry((case.decision.to_owned(), case.rule.to_owned(), case.status))
            .or_default() += 1.0;
    }
    let (_, metrics) = admin_request(daemon.admin_addr(), "/metrics", None);
    for ((decision, rule, status), count) in &expected {
        let series = format!(
            "mtlsd_http_requests_total{{listener=\"api\",decision=\"{decision}\",rule=\"{rule}\",status=\"{status}\"}}"
        );
        assert_eq!(
            metric(&metrics, &series),
            Some(*count),
            "{series}\n{metrics}"
        );
    }
    let audits = "mtlsd_http_audit_matches_total{listener=\"api\",rule=\"audit-deletes\"}";
    assert_eq!(metric(&metrics, audits), Some(3.0), "{metrics}");
    drop(idp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_identity_provider_are_validated_and_its_key_rotation_followed() {
    let pki = Pki::new("jwt.test");
    let dir = tempfile::tempdir().unwrap();
    let keys = idp_keys(dir.path());
    let mut idp = Idp::start(&keys, 0, 300);
    let port = idp.port;
    let other_dir = tempfile::tempdir().unwrap();
    let other = Idp::start(&idp_keys(other_dir.path()), 0, 300);
    let service = Service::start().await;
    let need_token = "[[inbound.http.rules]]\nname = \"token-holders\"\naction = \"allow\"\n\
                      from = [{ request_principals = [\"*\"] }]\n";
    let daemon = start(
        &pki,
        &service,
        "",
        &(jwt_table(
            &idp,
            "clock_skew = \"0s\"\n\
             from_headers = [{ name = \"authorization\", prefix = \"Bearer \" }]\n\
             from_params = [\"access_token\"]\n\
             output_claim_to_headers = [{ header = \"x-team\", claim = \"org.team\" }]",
        ) + need_token),
    );
    let addr = daemon.addr("api");
    let client = pki.issue(&pki.id("/frontend"));
    let get = |token: &str, tag: &str| -> Reply {
        request(
            addr,
            &pki.bundle(),
            &client,
            &["-H", &bearer(token)],
            &format!("/r?{tag}"),
        )
    };
    let refused = |token: &str, tag: &str, why: &str| {
        let reply = get(token, tag);
        assert_eq!(reply.status, 401, "{tag}: {reply:?}");
        assert!(
            reply.headers.contains("bearer error=\"invalid_token\""),
            "{tag}: {reply:?}"
        );
        assert!(reply.body.contains(why), "{tag}: {why:?} not in {reply:?}");
        assert!(
            service.seen_with(tag).is_empty(),
            "{tag} reached the service"
        );
    };

    let good = idp.token("mtlsd-test", "mtlsd-test-secret", AUDIENCE);
    let reply = get(&good, "good");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = &service.seen_with("good")[0];
    assert_eq!(seen.headers["x-jwt-issuer"], idp.issuer.as_str());
    assert_eq!(seen.headers["x-jwt-subject"], "mtlsd-test");
    assert_eq!(
        seen.headers["x-team"], "payments",
        "output_claim_to_headers"
    );
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(get("", "no-token").status, 401, "the rule requires a token");
    // The same token as a query parameter, which is removed before the request goes on.
    let reply = request(
        addr,
        &pki.bundle(),
        &client,
        &[],
        &format!("/q?tag=query&access_token={good}&x=1"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(service.seen_with("tag=query")[0].target, "/q?tag=query&x=1");

    let wrong_aud = idp.token("mtlsd-test", "mtlsd-test-secret", "urn:mtlsd:other");
    refused(&wrong_aud, "aud", "another audience");
    let foreign = other.token("mtlsd-test", "mtlsd-test-secret", AUDIENCE);
    refused(&foreign, "iss", "is not trusted here");
    let payload = good.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}, the real payload, no signature.
    refused(
        &format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        "none",
        "malformed token",
    );
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    refused(&String::from_utf8(tampered).unwrap(), "sig", "signature");

    // Expiry: a token that lives one second is accepted, then refused (clock_skew = 0s).
    let short = idp.token("mtlsd-short", "mtlsd-short-secret", AUDIENCE);
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let reply = get(&short, &format!("short{n}"));
        if reply.status == 401 {
            assert!(reply.body.contains("expired"), "{reply:?}");
            break;
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the short token never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Rotation: the IdP restarts on the same port signing with a new key first in its JWKS.
    idp.stop();
    rotate_keys(&keys, "RS256", "rs-2");
    let idp = Idp::start(&keys, port, 300);
    let rotated = idp.token("mtlsd-test", "mtlsd-test-secret", AUDIENCE);
    assert_eq!(mtlsd_e2e::idp::decode_jwt(&rotated).0["kid"], "rs-2");
    // The unknown kid makes mtlsd fetch the JWKS again, at most once per few seconds.
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let reply = get(&rotated, &format!("rotated{n}"));
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 401, "{reply:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never fetched: {reply:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    daemon.wait_for_logs("two JWKS fetches", 2, |l| l["message"] == "JWKS fetched");

    // The IdP goes away: tokens signed by cached keys keep working; a token naming a key
    // nobody has is refused, saying the JWKS could not be fetched.
    drop(idp);
    assert_eq!(get(&rotated, "after-down").status, 200);
    assert_eq!(get(&good, "old-key-after-down").status, 200);
    let (header, rest) = rotated.split_once('.').unwrap();
    let _ = header;
    // {"alg":"RS256","kid":"rs-9"}
    let unknown_kid = format!("eyJhbGciOiJSUzI1NiIsImtpZCI6InJzLTkifQ.{rest}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = get(&unknown_kid, "kid9");
        assert_eq!(reply.status, 401, "{reply:?}");
        if reply.body.contains("could not be fetched") {
            break;
        }
        // Within a few seconds of the last fetch no new one is tried, so the reason is
        // that the key is unknown; once a fetch is allowed again, it fails.
        assert!(reply.body.contains("not found"), "{reply:?}");
        assert!(std::time::Instant::now() < deadline, "{reply:?}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    daemon.wait_for_log("failed fetch", |l| {
        l["message"] == "JWKS fetch failed; cached keys stay in use"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_http2_streams_on_one_connection_are_each_decided() {
    let pki = Pki::new("h2.test");
    let service = Service::start().await;
    let deny = "[[inbound.http.rules]]\nname = \"no-admin\"\naction = \"deny\"\nto = [{ paths = [\"/admin/*\"] }]\n";
    let daemon = start(&pki, &service, "", deny);
    let addr = daemon.addr("api");
    let client = pki.issue(&pki.id("/frontend"));
    let mut cmd = mtlsd_e2e::http::curl(addr, &pki.bundle(), &client);
    cmd.args([
        "--http2",
        "--parallel",
        "--parallel-max",
        "100",
        "-w",
        "\nRESULT %{http_code} %{http_version} %{url_effective}\n",
    ]);
    for i in 0..100 {
        let path = if i % 2 == 0 { "ok" } else { "admin" };
        cmd.arg(format!("https://localhost:{}/{path}/{i}", addr.port()));
    }
    let out = run_ok(&mut cmd);
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .collect();
    assert_eq!(lines.len(), 100, "{out}");
    for line in lines {
        let mut f = line.split(' ');
        let (status, version, url) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        assert_eq!(version, "2", "{line}");
        let want = if url.contains("/admin/") {
            "403"
        } else {
            "200"
        };
        assert_eq!(status, want, "{line}");
    }
    assert_eq!(service.seen_with("/ok/").len(), 50);
    assert!(service.seen_with("/admin/").is_empty());
    let lines = daemon.wait_for_logs("100 requests", 100, |l| l["message"] == "request");
    assert_eq!(lines.iter().filter(|l| l["status"] == 403).count(), 50);

    // nghttp (nghttp2's own client) sends all its URIs as streams of one connection.
    let mut cmd = Command::new("nghttp");
    cmd.args(["-ns", "--cert"])
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key);
    for i in 0..40 {
        let path = if i % 4 == 0 { "admin" } else { "ok" };
        cmd.arg(format!("https://localhost:{}/{path}/n{i}", addr.port()));
    }
    let out = run_ok(&mut cmd);
    // Its statistics table: "id responseEnd requestStart process code size path".
    let rows: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[6].contains("/n")).then(|| (f[4].to_owned(), f[6].to_owned()))
        })
        .collect();
    assert_eq!(rows.len(), 40, "{out}");
    for (code, path) in rows {
        let want = if path.starts_with("/admin/") {
            "403"
        } else {
            "200"
        };
        assert_eq!(code, want, "{path}");
    }
    let closed = daemon.wait_for_logs("two connections", 2, |l| {
        l["message"] == "connection closed"
    });
    assert_eq!(closed.len(), 2, "curl and nghttp each used one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_data_post_is_answered_too_early_and_an_early_get_is_marked() {
    let pki = Pki::new("early.test");
    let service = Service::start().await;
    let daemon = start(
        &pki,
        &service,
        "resumption = \"cache\"\nearly_data = 4096",
        "",
    );
    let addr = daemon.addr("api");
    let client = pki.issue(&pki.id("/frontend"));
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let host = format!("Host: localhost:{}\r\n", addr.port());
    let first = format!("GET /first HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    let post =
        format!("POST /submit HTTP/1.1\r\n{host}Content-Length: 2\r\nConnection: close\r\n\r\nhi");
    let get = format!("GET /read HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    std::fs::write(path("post"), &post).unwrap();
    std::fs::write(path("get"), &get).unwrap();
    let bundle = pki.bundle();

    let run = |args: &[&str], stdin: &[u8]| {
        let out = s_client(addr, &bundle, &client, args, stdin);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A full handshake leaves a session that allows early data.
    let out = run(&["-ign_eof", "-sess_out", &path("s1")], first.as_bytes());
    assert!(out.contains("served /first"), "{out}");
    // Each 0-RTT attempt uses a fresh single-use session from the previous connection.
    let out = run(
        &[
            "-ign_eof",
            "-sess_in",
            &path("s1"),
            "-sess_out",
            &path("s2"),
            "-early_data",
            &path("post"),
        ],
        b"",
    );
    assert!(out.contains("Early data was accepted"), "{out}");
    assert!(out.contains("HTTP/1.1 425"), "{out}");
    assert!(
        service.seen_with("/submit").is_empty(),
        "the early POST reached the service"
    );
    let line = daemon.wait_for_log("425", |l| l["message"] == "request" && l["status"] == 425);
    assert_eq!(line["early_data"], true);
    assert_eq!(line["decision"], "too_early");

    let out = run(
        &[
            "-ign_eof",
            "-sess_in",
            &path("s2"),
            "-early_data",
            &path("get"),
        ],
        b"",
    );
    assert!(out.contains("Early data was accepted"), "{out}");
    assert!(out.contains("served /read"), "{out}");
    let seen = service.seen_with("/read");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["early-data"], "1");
    let kinds: Vec<Value> = daemon
        .wait_for_logs("three connections", 3, |l| {
            l["message"] == "connection closed"
        })
        .iter()
        .map(|l| l["handshake"].clone())
        .collect();
    assert_eq!(kinds, ["full", "early_data", "early_data"]);
    // A request after the handshake on an ordinary connection is not marked.
    assert!(
        !service.seen_with("/first")[0]
            .headers
            .contains_key("early-data")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_logs_what_would_be_refused_and_lets_it_through() {
    let pki = Pki::new("dry.test");
    let service = Service::start().await;
    let deny = "dry_run = true\n[[inbound.http.rules]]\nname = \"no-admin\"\naction = \"deny\"\n\
                to = [{ paths = [\"/admin/*\"] }]\n";
    let daemon = start(&pki, &service, "", deny);
    let client = pki.issue(&pki.id("/frontend"));
    let reply = request(daemon.addr("api"), &pki.bundle(), &client, &[], "/admin/x");
    assert_eq!(reply.status, 200);
    assert_eq!(service.seen_with("/admin/x").len(), 1);
    let line = nth_request(&daemon, 1);
    assert_eq!(line["decision"], "dry_run_deny");
    assert_eq!(line["rule"], "no-admin");
    assert_eq!(line["reason"], "denied by rule no-admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rules_for_the_next_request_on_open_keep_alive_connections() {
    let pki = Pki::new("reload.test");
    let service = Service::start().await;
    let daemon = start(&pki, &service, "", "");
    let addr = daemon.addr("api");
    let client = pki.issue(&pki.id("/frontend"));
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let done = dir.path().join("done");
    // Python's requests keeps one connection alive: before the reload /b is served; once
    // the test has reloaded (it creates `go`), the same connection gets 403 for /b and /a
    // still passes. Every status is printed.
    let script = format!(
        r#"
import os, sys, time, requests
s = requests.Session()
# Only the test's CA: no REQUESTS_CA_BUNDLE or proxy from the environment.
s.trust_env = False
s.verify = {bundle:?}
s.cert = ({cert:?}, {key:?})
base = "https://localhost:{port}"
out = []
for i in range(40):
    out.append("before %d %d" % (s.get(base + "/a").status_code, s.get(base + "/b").status_code))
open({done:?}, "w").close()
deadline = time.time() + 20
while not os.path.exists({go:?}) and time.time() < deadline:
    time.sleep(0.02)
for i in range(40):
    out.append("after %d %d" % (s.get(base + "/a").status_code, s.get(base + "/b").status_code))
print("\n".join(out))
"#,
        bundle = pki.bundle().to_str().unwrap(),
        cert = client.cert.to_str().unwrap(),
        key = client.key.to_str().unwrap(),
        port = addr.port(),
        done = done.to_str().unwrap(),
        go = go.to_str().unwrap(),
    );
    // Debian's python3 with python3-requests, which scripts/test installs.
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !done.exists() {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client never finished its first round"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let config = std::fs::read_to_string(daemon.config_path()).unwrap()
        + "[[inbound.http.rules]]\nname = \"no-b\"\naction = \"deny\"\nto = [{ paths = [\"/b\"] }]\n";
    std::fs::write(daemon.config_path(), config).unwrap();
    daemon.reload(1);
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 80, "{stdout}");
    assert!(
        lines[..40].iter().all(|l| *l == "before 200 200"),
        "{stdout}"
    );
    assert!(
        lines[40..].iter().all(|l| *l == "after 200 403"),
        "{stdout}"
    );
    // All of it on one connection, which the reload did not close: it ended when the client did.
    daemon.wait_for_log("the client's close", |l| {
        l["message"] == "connection closed"
    });
    let closed = daemon.logs_where(|l| l["message"] == "connection closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(requests(&daemon).len(), 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_requests_in_flight_finish_and_closes_their_connections() {
    let pki = Pki::new("drain.test");
    let service = Service::start().await;
    let mut daemon = start(&pki, &service, "", "");
    let addr = daemon.addr("api");
    let bundle = pki.bundle();
    let client = pki.issue(&pki.id("/frontend"));
    let clients: Vec<_> = [("--http1.1", "/hold/h1"), ("--http2", "/hold/h2")]
        .into_iter()
        .map(|(version, path)| {
            let (bundle, client) = (bundle.clone(), client.clone());
            std::thread::spawn(move || request(addr, &bundle, &client, &[version], path))
        })
        .collect();
    // Both requests are at the service, unanswered, when the drain starts.
    let deadline = std::time::Instant::now() + WAIT;
    while service.seen_with("/hold").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    daemon.terminate();
    daemon.wait_for_log("draining", |l| l["message"] == "draining");
    service.release(2);
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // HTTP/1.1 is told the connection ends; HTTP/2 gets a GOAWAY (curl then just closes).
    assert!(
        replies[0].headers.contains("connection: close"),
        "{:?}",
        replies[0]
    );
    assert!(daemon.wait_exit().success());
    let closed = daemon.logs_where(|l| l["message"] == "connection closed");
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        closed.iter().all(|l| l["reason"] == "completed"),
        "{closed:?}"
    );
}
