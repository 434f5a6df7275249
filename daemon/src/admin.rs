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
//! | `/ui` | GET | a read-only page: listeners, identity and expiry, live decisions, refusals by reason |
//! | `/decisions` | GET | Server-Sent Events: every decision as it happens (`?listener=`, `?peer=` prefix, `?outcome=allow\|deny`) |
//!
//! The endpoint is unauthenticated, which is why the config only lets it listen on loopback.
//! It is also bounded, so that no local process can use it to take descriptors or
//! time from the data path: at most [`MAX_CONNECTIONS`] at once (more are closed
//! on accept), one request per connection, headers within [`HEADER_TIMEOUT`] and
//! the whole exchange within [`CONNECTION_TIMEOUT`] — except a `/decisions` stream, which
//! lasts while its reader keeps up: one that falls [`STREAM_BACKLOG`] events behind is cut off.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::accept::{AcceptErrors, LogLimit};
use crate::audit::{DecisionRecord, Decisions};
use crate::metrics::Metrics;
use crate::runtime::Status;

/// The `/ui` page: one file, no build step, no external assets.
const UI: &str = include_str!("ui.html");

/// Largest request body accepted (a log filter).
const MAX_BODY: usize = 4096;
/// Admin connections served at once; scrapers and operators need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin connection may last, request and response included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Events a `/decisions` reader may have unread before it is disconnected.
pub const STREAM_BACKLOG: usize = 256;
/// A comment line sent this often on a quiet `/decisions` stream, so a dead reader is noticed.
const STREAM_HEARTBEAT: Duration = Duration::from_secs(15);

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
    /// Every decision, for `/decisions`.
    pub decisions: Arc<Decisions>,
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
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let streaming = Arc::new(AtomicBool::new(false));
                let service = service_fn({
                    let streaming = streaming.clone();
                    move |req| {
                        let (admin, streaming, stop) =
                            (admin.clone(), streaming.clone(), stop.clone());
                        async move { Ok::<_, Infallible>(admin.respond(req, &streaming, stop).await) }
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let deadline = tokio::time::sleep(CONNECTION_TIMEOUT);
                tokio::pin!(deadline);
                let mut past_deadline = false;
                loop {
                    tokio::select! {
                        result = &mut conn => {
                            if let Err(e) = result {
                                debug!(src = %src, error = %e, "admin connection failed");
                            }
                            break;
                        }
                        () = &mut deadline, if !past_deadline => {
                            // A live stream may outlast the deadline; anything else may not.
                            if !streaming.load(Ordering::Relaxed) {
                                debug!(src = %src, "admin connection timed out");
                                break;
                            }
                            past_deadline = true;
                        }
                    }
                }
            });
        }
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        streaming: &AtomicBool,
        stop: CancellationToken,
    ) -> Response<AdminBody> {
        if (req.method(), req.uri().path()) == (&Method::GET, "/decisions") {
            streaming.store(true, Ordering::Relaxed);
            let filter = DecisionFilter::from_query(req.uri().query().unwrap_or(""));
            return decision_stream(self.decisions.subscribe(), filter, stop);
        }
        self.respond_once(req).await.map(BodyExt::boxed)
    }

    async fn respond_once(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/ui") => {
                let mut resp = text(StatusCode::OK, UI.into());
                let headers = resp.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // Everything it loads comes from this endpoint; nothing from elsewhere may run.
                headers.insert(
                    hyper::header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                         style-src 'unsafe-inline'",
                    ),
                );
                resp
            }
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
            (
                _,
                "/healthz" | "/ready" | "/certs" | "/config" | "/metrics" | "/logging"
                | "/decisions",
            ) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /ready /certs /config /metrics /logging /decisions /ui\n"
                    .into(),
            ),
        }
    }
}

/// What the admin endpoint answers with: a whole body, or a stream of events.
type AdminBody = BoxBody<Bytes, Infallible>;

/// Which decisions a `/decisions` reader asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DecisionFilter {
    /// Only this listener's.
    pub listener: Option<String>,
    /// Only peers whose SPIFFE ID starts with this.
    pub peer: Option<String>,
    /// Only `allow` or only `deny`.
    pub outcome: Option<String>,
}

impl DecisionFilter {
    /// Reads `listener=`, `peer=` and `outcome=` from a query string.
    pub fn from_query(query: &str) -> Self {
        let param = |name| crate::http::jwt::query_param(query, name).filter(|v| !v.is_empty());
        Self {
            listener: param("listener"),
            peer: param("peer"),
            outcome: param("outcome"),
        }
    }

    /// Whether `d` passes.
    pub fn admits(&self, d: &DecisionRecord) -> bool {
        self.listener.as_ref().is_none_or(|l| *l == d.listener)
            && self.outcome.as_ref().is_none_or(|o| o == d.outcome)
            && self.peer.as_ref().is_none_or(|p| {
                d.peer_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(p.as_str()))
            })
    }
}

/// A Server-Sent Events response carrying every decision `filter` admits until the daemon
/// stops or the reader falls behind.
fn decision_stream(
    rx: broadcast::Receiver<Arc<DecisionRecord>>,
    filter: DecisionFilter,
    stop: CancellationToken,
) -> Response<AdminBody> {
    let body_rx = forward_decisions(rx, filter, stop);
    let mut resp = Response::new(BodyExt::boxed(EventBody(body_rx)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// Turns decisions into SSE events in a task of their own; the returned receiver closes when
/// the daemon stops or the reader falls [`STREAM_BACKLOG`] events behind.
fn forward_decisions(
    mut rx: broadcast::Receiver<Arc<DecisionRecord>>,
    filter: DecisionFilter,
    stop: CancellationToken,
) -> mpsc::Receiver<Bytes> {
    let (tx, body_rx) = mpsc::channel::<Bytes>(STREAM_BACKLOG);
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(STREAM_HEARTBEAT);
        // `: ` lines are SSE comments: this one opens the stream at once.
        if tx
            .try_send(Bytes::from_static(b": mtlsd decisions\n\n"))
            .is_err()
        {
            return;
        }
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
                received = rx.recv() => match received {
                    Ok(d) if filter.admits(&d) => {
                        let json = serde_json::to_string(&*d).unwrap_or_default();
                        Bytes::from(format!("event: decision\ndata: {json}\n\n"))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "a /decisions reader fell behind; disconnected");
                        let _ = tx.try_send(Bytes::from(format!("event: lagged\ndata: {n}\n\n")));
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            // The reader must keep up: a full buffer means it does not, and it is let go.
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        backlog = STREAM_BACKLOG,
                        "a /decisions reader stopped reading; disconnected"
                    );
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    body_rx
}

/// A `/decisions` body: the events the forwarding task sends, until it stops.
struct EventBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(listener: &str) -> Arc<DecisionRecord> {
        Arc::new(DecisionRecord {
            outcome: "deny",
            peer_id: Some("spiffe://ex/batch/1".into()),
            ..DecisionRecord::new("refused", listener, "inbound")
        })
    }

    #[test]
    fn filters_select_by_listener_peer_prefix_and_outcome() {
        let f =
            DecisionFilter::from_query("listener=web&peer=spiffe%3A%2F%2Fex%2Fbatch&outcome=deny");
        assert!(f.admits(&deny("web")));
        assert!(!f.admits(&deny("api")));
        let mut allowed = (*deny("web")).clone();
        allowed.outcome = "allow";
        assert!(!f.admits(&allowed));
        assert!(DecisionFilter::default().admits(&allowed));
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_cut_off_and_the_sender_never_waits() {
        let (tx, rx) = broadcast::channel(STREAM_BACKLOG * 4);
        let mut events = forward_decisions(rx, DecisionFilter::default(), CancellationToken::new());
        // Nobody reads: far more events than the reader's buffer holds. Sending never waits.
        for _ in 0..STREAM_BACKLOG * 3 {
            tx.send(deny("web")).unwrap();
        }
        // The forwarding task gives the reader up once its buffer is full (bounded: it only
        // needs to run, and each yield lets it).
        for _ in 0..10_000 {
            if events.is_closed() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(events.is_closed(), "the stalled reader is still attached");
        let mut decisions = 0;
        while let Ok(event) = events.try_recv() {
            decisions += usize::from(event.starts_with(b"event: decision"));
        }
        assert!(decisions > 0 && decisions < STREAM_BACKLOG, "{decisions}");
    }
}
