//! HTTP on both sides of an HTTP listener: a real local service that records every request
//! it receives, and curl as the mTLS client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::CertFiles;

/// One request as the service received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// HTTP version, as `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A local HTTP/1.1 and h2c service answering `200 <target>` and recording each request;
/// a request whose path starts with `/hold` is recorded, then answered only once the test
/// calls [`Service::release`].
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    held: Arc<tokio::sync::Semaphore>,
}

impl Service {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(tokio::sync::Semaphore::new(0));
        let (log, count, gate) = (seen.clone(), connections.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (log, gate) = (log.clone(), gate.clone());
                let service =
                    hyper::service::service_fn(move |req| answer(req, log.clone(), gate.clone()));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            connections,
            held,
        }
    }

    /// Lets `n` held `/hold` requests be answered.
    pub fn release(&self, n: usize) {
        self.held.add_permits(n);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests received so far whose target contains `part`.
    pub fn seen_with(&self, part: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.contains(part))
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Records `req`, holds it if its path starts with `/hold`, and answers `served <target>`.
async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let hold = req.uri().path().starts_with("/hold");
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        version: format!("{:?}", parts.version),
        headers: parts.headers,
        body,
    });
    if hold {
        gate.acquire()
            .await
            .expect("the gate is never closed")
            .forget();
    }
    Ok(hyper::Response::new(Full::new(Bytes::from(format!(
        "served {target}"
    )))))
}

/// What curl got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    /// The body.
    pub body: String,
    /// The response headers, lower-cased names, as `name: value` lines.
    pub headers: String,
}

/// A curl invocation against an HTTP listener on `addr`, with `client`'s certificate.
pub fn curl(addr: SocketAddr, bundle: &Path, client: &CertFiles) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(bundle)
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .arg("--resolve")
        .arg(format!("localhost:{}:{}", addr.port(), addr.ip()));
    c
}

/// Sends one request with curl and returns the reply; `extra` adds curl arguments
/// (`--http2`, `-H`, `-X`, ...), `path` includes any query.
pub fn request(
    addr: SocketAddr,
    bundle: &Path,
    client: &CertFiles,
    extra: &[&str],
    path: &str,
) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = super::run_ok(
        curl(addr, bundle, client)
            .args(extra)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{}{path}", addr.port())),
    );
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", &out));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    Reply {
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        body: body.to_owned(),
        headers: std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
    }
}

/// The rules of the authorization table that both the daemon (`http.rs`) and `mtlsd policy
/// test` (`policy_cli.rs`) are held to; `id` makes a SPIFFE ID of a path, `issuer` is the
/// trusted token issuer.
pub fn authz_rules(id: impl Fn(&str) -> String, issuer: &str) -> String {
    format!(
        r#"
[[inbound.http.rules]]
name = "no-batch-writes"
action = "deny"
from = [{{ principals = ["{batch}"] }}]
to = [{{ methods = ["POST", "PUT", "DELETE"] }}]

[[inbound.http.rules]]
name = "internal"
action = "deny"
from = [{{ not_principals = ["{tool}"] }}]
to = [{{ paths = ["/internal/*"] }}]

[[inbound.http.rules]]
name = "public-reads"
action = "allow"
to = [{{ methods = ["GET"], paths = ["/public/*", "*.json"] }}]

[[inbound.http.rules]]
name = "admins"
action = "allow"
when = [{{ key = "request.auth.claims[groups]", values = ["admins"] }}]

[[inbound.http.rules]]
name = "payments-team"
action = "allow"
to = [{{ paths = ["/payments/*"] }}]
when = [{{ key = "request.auth.claims[org][team]", values = ["payments"] }}]

[[inbound.http.rules]]
name = "frontend-api"
action = "allow"
from = [{{ principals = ["{frontend}"], request_principals = ["{iss}/*"] }}]
to = [{{ paths = ["/api/*"] }}]

[[inbound.http.rules]]
name = "audit-deletes"
action = "audit"
to = [{{ methods = ["DELETE"] }}]
"#,
        batch = id("/batch"),
        tool = id("/admin-tool"),
        frontend = id("/frontend"),
        iss = issuer,
    )
}

/// The authorization table's cases: client, method, path, token (`-`, `dev`, `admin`,
/// `tampered`), status, decision, deciding rule, audit rule (`-`: none).
pub fn authz_cases() -> Vec<[&'static str; 8]> {
    const TABLE: &str = "
        /frontend   GET    /public/x              -        200 allow           public-reads    -
        /frontend   GET    /data/report.json      -        200 allow           public-reads    -
        /frontend   POST   /public/x              -        401 no_match        -               -
        /frontend   POST   /public/x              dev      403 no_match        -               -
        /batch      POST   /public/x              admin    403 deny            no-batch-writes -
        /batch      GET    /public/x              -        200 allow           public-reads    -
        /frontend   GET    /internal/keys         admin    403 deny            internal        -
        /admin-tool GET    /internal/keys         admin    200 allow           admins          -
        /admin-tool GET    /internal/keys         -        401 no_match        -               -
        /frontend   DELETE /api/x                 admin    200 allow           admins          audit-deletes
        /frontend   DELETE /api/y                 dev      200 allow           frontend-api    audit-deletes
        /batch      DELETE /api/x                 admin    403 deny            no-batch-writes audit-deletes
        /frontend   GET    /payments/1            dev      200 allow           payments-team   -
        /frontend   GET    /payments/2            admin    200 allow           admins          -
        /batch      GET    /payments/3            dev      200 allow           payments-team   -
        /batch      GET    /payments/4            -        401 no_match        -               -
        /frontend   GET    /api/z                 -        401 no_match        -               -
        /batch      GET    /api/z                 dev      403 no_match        -               -
        /frontend   GET    /api/z                 tampered 401 unauthenticated -               -
        /frontend   GET    //public/../internal/x admin    403 deny            internal        -
        /frontend   GET    /public/y              tampered 401 unauthenticated -               -
        /admin-tool PUT    /anything              admin    200 allow           admins          -
        /frontend   GET    /%70ublic/z            -        200 allow           public-reads    -
    ";
    TABLE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&'static str> = l.split_whitespace().collect();
            f.try_into().expect("eight columns")
        })
        .collect()
}
