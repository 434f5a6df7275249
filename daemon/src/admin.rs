//! The loopback admin endpoint: health, readiness, certificates, config, metrics and log level.
//!
//! | path | method | answers |
//! |---|---|---|
//! | `/healthz` | GET | `200 ok` while the process serves HTTP at all |
//! | `/ready` | GET | `200 ready`, or `503` with one reason per line |
//! | `/certs` | GET | JSON: our chain and the trust bundle (SPIFFE ID, serial, validity) |
//! | `/config` | GET | JSON: the configuration in effect, defaults filled in, secrets elided |
//! | `/metrics` | GET | Prometheus / OpenMetrics text |
//! | `/logging` | GET, PUT | the log filter in effect; PUT a new one (e.g. `info,mtlsd=debug`) |
//!
//! The endpoint is unauthenticated, which is why the config only lets it listen on loopback.
//! It is also bounded, so that no local process can use it to take descriptors or
//! time from the data path: at most [`MAX_CONNECTIONS`] at once (more are closed
//! on accept), one request per connection, headers within [`HEADER_TIMEOUT`] and
//! the whole exchange within [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::accept::{AcceptErrors, LogLimit};
use crate::metrics::Metrics;
use crate::runtime::Status;

/// Largest request body accepted (a log filter).
const MAX_BODY: usize = 4096;
/// Admin connections served at once; scrapers and operators need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin connection may last, request and response included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and changes the log filter at runtime.
pub trait LogControl: Send + Sync {
    /// The filter in effect.
    fn current(&self) -> String;
    /// Replaces the filter; the error says why `filter` was not accepted.
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// What the admin endpoint reads from.
pub struct Admin {
    /// Configuration, identity and readiness.
    pub status: Arc<Status>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// The log filter, when the binary installed a reloadable one.
    pub log: Option<Arc<dyn LogControl>>,
}

impl Admin {
    /// Serves HTTP/1.1 on `listener` until `stop` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            info!(addr = %addr, "admin endpoint listening");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut errors = AcceptErrors::default();
        let mut busy = LogLimit::default();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, src) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    errors.failed("admin", &e).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closing at once gives the descriptor back: the data path needs it more.
                if let Some(suppressed) = busy.due() {
                    warn!(src = %src, limit = MAX_CONNECTIONS, suppressed, "admin endpoint busy; connection closed");
                }
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(src = %src, error = %e, "admin connection failed"),
                    Err(_) => debug!(src = %src, "admin connection timed out"),
                }
            });
        }
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/ready") => match self.status.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(problems) => text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n"),
            },
            (&Method::GET, "/certs") => {
                let s = self.status.snapshot();
                json_response(&json!({
                    "identity": s.identity.as_str(),
                    "backend": s.backend,
                    "chain": s.chain,
                    "bundle": s.bundle,
                    "federated": s.federated,
                }))
            }
            (&Method::GET, "/config") => {
                let s = self.status.snapshot();
                json_response(&json!({
                    "config": s.config,
                    "listeners": s.listeners,
                    "since_unix": s.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                }))
            }
            (&Method::GET, "/metrics") => {
                let mut resp = text(StatusCode::OK, self.metrics.encode());
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            (&Method::GET, "/logging") => match &self.log {
                Some(log) => text(StatusCode::OK, log.current() + "\n"),
                None => not_available(),
            },
            (&Method::PUT | &Method::POST, "/logging") => {
                let Some(log) = &self.log else {
                    return not_available();
                };
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
                let filter = String::from_utf8_lossy(&body).trim().to_owned();
                match log.set(&filter) {
                    Ok(()) => {
                        info!(filter = %filter, "log filter changed through the admin endpoint");
                        text(StatusCode::OK, log.current() + "\n")
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            (_, "/healthz" | "/ready" | "/certs" | "/config" | "/metrics" | "/logging") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /ready /certs /config /metrics /logging\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn not_available() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "the log filter cannot be changed in this process\n".into(),
    )
}
