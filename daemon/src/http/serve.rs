//! One authorized peer connection served as HTTP: every request is normalized, stripped of
//! identity headers it may not set, authenticated (JWT), authorized (rules), given the
//! verified identity and proxied to the service through the pool; one access line each.
//!
//! request → normalize path → strip spoofable headers → 0-RTT check (425) → JWT (401) →
//! rules (403) → identity headers → upstream (502/504) → response → access line

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::HttpRoute;
use super::body::{Counted, ResponseBody, text};
use super::jwt::{Validated, without_param};
use super::path;
use super::rules::{RequestFacts, evaluate};
use super::upstream::POOL_URI;
use crate::audit::{DecisionRecord, Decisions};
use crate::config::{TokenSource, UpstreamProtocol};
use crate::identity::SpiffeId;
use crate::policy::Peer;
use crate::proxy::ACCESS_LOG;
use crate::proxy::outcome::{CloseReason, Forwarded};

/// The header carrying the peer's verified identity to the service, in Envoy's format.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// RFC 8470's marker on requests that arrived in TLS early data.
pub const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// What the service is told about the connection, fixed at its handshake.
#[derive(Debug)]
pub struct PeerInfo {
    /// The peer's verified SPIFFE ID.
    pub id: SpiffeId,
    /// Where it connected from.
    pub src: SocketAddr,
    /// The `X-Forwarded-Client-Cert` value for its requests.
    pub xfcc: HeaderValue,
}

impl PeerInfo {
    /// The identity of a peer whose leaf certificate is `leaf`, seen by us (`by`).
    pub fn new(id: SpiffeId, src: SocketAddr, leaf: &[u8], by: &SpiffeId) -> Self {
        let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf));
        // Only ASCII from a parsed SPIFFE ID and hex, so the value is always valid.
        let xfcc = HeaderValue::from_str(&format!("By={by};Hash={hash};URI={id}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Self { id, src, xfcc }
    }
}

/// How one connection is served.
pub struct Connection<F> {
    /// The route in force for each new request, so a reload's rules apply at once.
    pub current: F,
    /// The peer.
    pub peer: PeerInfo,
    /// Bytes that arrived as 0-RTT early data, read before anything else.
    pub early: Vec<u8>,
    /// ALPN chose `h2`; otherwise HTTP/1.1 (or HTTP/2 with prior knowledge).
    pub h2: bool,
    /// Close after this long with no request in flight and no bytes moving.
    pub idle_timeout: Duration,
    /// Where each request's decision is recorded.
    pub decisions: Arc<Decisions>,
}

/// Per-connection counters shared by the I/O wrapper and the requests.
#[derive(Debug, Default)]
struct ConnStats {
    from_peer: AtomicU64,
    to_peer: AtomicU64,
    /// Whether a byte from after the early data has been read.
    past_early: AtomicBool,
    has_early: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` of the last read or write.
    last_active_ms: AtomicU64,
}

impl ConnStats {
    /// Whether a request dispatched now was read from early data.
    fn in_early_data(&self) -> bool {
        self.has_early.load(Ordering::Relaxed) && !self.past_early.load(Ordering::Relaxed)
    }
}

impl<F> Connection<F>
where
    F: Fn() -> Arc<HttpRoute> + Send + Sync + 'static,
{
    /// Serves requests until the peer leaves, the idle timeout passes, `draining` (GOAWAY,
    /// `Connection: close`, then the requests in flight finish) or `hard_stop`.
    pub async fn serve<IO>(
        self,
        io: IO,
        draining: &CancellationToken,
        hard_stop: &CancellationToken,
    ) -> Forwarded
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let start = Instant::now();
        let stats = Arc::new(ConnStats::default());
        stats
            .has_early
            .store(!self.early.is_empty(), Ordering::Relaxed);
        let io = PeerIo {
            io,
            early: Bytes::from(self.early),
            stats: stats.clone(),
            start,
        };
        let ctx = Arc::new(Ctx {
            current: self.current,
            peer: self.peer,
            stats: stats.clone(),
            decisions: self.decisions,
        });
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(ctx.handle(req).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(Duration::from_secs(30)));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        let builder = if self.h2 {
            builder.http2_only()
        } else {
            builder
        };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = self.idle_timeout;
        let mut draining_sent = false;
        let result = loop {
            let quiet_since =
                start + Duration::from_millis(stats.last_active_ms.load(Ordering::Relaxed));
            tokio::select! {
                r = conn.as_mut() => break r.map(|()| CloseReason::Completed),
                () = draining.cancelled(), if !draining_sent => {
                    draining_sent = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = hard_stop.cancelled() => break Ok(CloseReason::ShutdownGraceElapsed),
                () = tokio::time::sleep_until(quiet_since + idle) => {
                    let still_quiet = stats.last_active_ms.load(Ordering::Relaxed)
                        == quiet_since.duration_since(start).as_millis() as u64;
                    if still_quiet && stats.in_flight.load(Ordering::Relaxed) == 0 {
                        break Ok(CloseReason::IdleTimeout);
                    }
                }
            }
        };
        let (reason, error) = match result {
            Ok(reason) => (reason, None),
            // A client that hangs up between requests (curl after a GOAWAY, a browser
            // dropping a keep-alive connection) ends the connection normally, whether the
            // kernel reports it as EOF without close_notify or as a reset.
            Err(e) if stats.in_flight.load(Ordering::Relaxed) == 0 && peer_hung_up(&*e) => {
                (CloseReason::Completed, None)
            }
            Err(e) => {
                let e = io::Error::other(e.to_string());
                (CloseReason::Error, Some(e))
            }
        };
        Forwarded {
            from_peer: stats.from_peer.load(Ordering::Relaxed),
            to_peer: stats.to_peer.load(Ordering::Relaxed),
            reason,
            error,
        }
    }
}

/// Whether `err` is, at its root, the peer closing the transport (EOF without
/// close_notify, reset, broken pipe) rather than a protocol or TLS failure.
fn peer_hung_up(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) && io
                .get_ref()
                .is_none_or(|inner| !inner.is::<rustls::Error>());
        }
        cause = e.source();
    }
    false
}

struct Ctx<F> {
    current: F,
    peer: PeerInfo,
    stats: Arc<ConnStats>,
    decisions: Arc<Decisions>,
}

/// What one request's access line and metrics say; logged when it is dropped, which is
/// when the response body has been sent (or the request abandoned).
struct Record {
    route: Arc<HttpRoute>,
    stats: Arc<ConnStats>,
    decisions: Arc<Decisions>,
    src: SocketAddr,
    peer: String,
    method: Method,
    authority: String,
    path: String,
    early: bool,
    status: u16,
    decision: &'static str,
    rule: String,
    audit: Option<String>,
    subject: Option<String>,
    issuer: Option<String>,
    reason: Option<String>,
    started: Instant,
    upstream: Option<Duration>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let took = self.started.elapsed();
        self.route
            .metrics
            .request(self.decision, &self.rule, self.status, took);
        info!(
            target: ACCESS_LOG,
            listener = %self.route.listener,
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = self.status,
            peer_id = %self.peer,
            jwt_subject = self.subject.as_deref().unwrap_or(""),
            decision = self.decision,
            rule = %self.rule,
            audit_rule = self.audit.as_deref().unwrap_or(""),
            reason = self.reason.as_deref().unwrap_or(""),
            early_data = self.early,
            upstream_us = self.upstream.map_or(0, |d| d.as_micros() as u64),
            total_us = took.as_micros() as u64,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out.load(Ordering::Relaxed),
            "request"
        );
        let allowed =
            matches!(self.decision, "allow" | "no_rules") || self.decision.starts_with("dry_run");
        self.decisions.record(DecisionRecord {
            src: self.src.to_string(),
            peer_id: Some(self.peer.clone()),
            jwt_iss: self.issuer.take(),
            jwt_sub: self.subject.take(),
            outcome: if allowed { "allow" } else { "deny" },
            decision: self.decision.to_owned(),
            rule: (!self.rule.is_empty()).then(|| std::mem::take(&mut self.rule)),
            reason: self.reason.take(),
            method: Some(self.method.to_string()),
            path: Some(std::mem::take(&mut self.path)),
            status: Some(self.status),
            bytes_in: Some(self.bytes_in.load(Ordering::Relaxed)),
            bytes_out: Some(self.bytes_out.load(Ordering::Relaxed)),
            duration_ms: Some(took.as_millis() as u64),
            ..DecisionRecord::new("request", &self.route.listener, "inbound")
        });
    }
}

impl<F> Ctx<F>
where
    F: Fn() -> Arc<HttpRoute>,
{
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let route = (self.current)();
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let mut record = Record {
            route: route.clone(),
            stats: self.stats.clone(),
            decisions: self.decisions.clone(),
            src: self.peer.src,
            peer: self.peer.id.to_string(),
            method: parts.method.clone(),
            authority,
            path: parts.uri.path().to_owned(),
            early: self.stats.in_early_data(),
            status: 0,
            decision: "allow",
            rule: String::new(),
            audit: None,
            subject: None,
            issuer: None,
            reason: None,
            started: Instant::now(),
            upstream: None,
            bytes_in: Arc::default(),
            bytes_out: Arc::default(),
        };
        let config = &route.config;
        let dry_run = config.dry_run;

        match path::normalize(parts.uri.path()) {
            Ok(p) => record.path = p,
            Err(why) => return refuse(record, StatusCode::BAD_REQUEST, "bad_request", why, None),
        }
        strip_spoofable(&mut parts.headers, config.identity_headers());

        if record.early && !is_safe(&parts.method) && !config.early_data_unsafe_methods {
            return refuse(
                record,
                StatusCode::TOO_EARLY,
                "too_early",
                "a non-idempotent request arrived in 0-RTT early data; retry after the handshake",
                None,
            );
        }

        let validated = match route.authn.authenticate(&parts).await {
            Ok(v) => v,
            Err(why) if dry_run => {
                warn!(target: ACCESS_LOG, listener = %route.listener, reason = %why, "dry run: would refuse the token");
                record.decision = "dry_run_unauthenticated";
                record.reason = Some(why);
                None
            }
            Err(why) => {
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    why.replace(['"', '\\'], "'")
                );
                return refuse(
                    record,
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    &why,
                    Some(challenge),
                );
            }
        };
        let claim = |name: &str| {
            validated
                .as_ref()
                .and_then(|v| v.auth.claims.get(name))
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        };
        record.subject = claim("sub");
        record.issuer = claim("iss");

        let verdict = evaluate(
            &config.rules,
            &RequestFacts {
                peer: Peer::Spiffe(&self.peer.id),
                source_ip: self.peer.src.ip(),
                method: parts.method.as_str(),
                path: &record.path,
                host: &record.authority,
                headers: &parts.headers,
                auth: validated.as_ref().map(|v| &v.auth),
            },
        );
        if let Some(audit) = verdict.audit {
            route.metrics.audit(audit);
            record.audit = Some(audit.to_owned());
        }
        record.rule = verdict.rule.unwrap_or("").to_owned();
        if !verdict.allowed {
            let why = match verdict.rule {
                Some(rule) => format!("denied by rule {rule}"),
                None => "no allow rule matched".to_owned(),
            };
            if dry_run {
                record.decision = if verdict.decision == "deny" {
                    "dry_run_deny"
                } else {
                    "dry_run_no_match"
                };
                record.reason = Some(why);
            } else if validated.is_none() && !route.authn.is_empty() {
                // Without a token the request may well be allowed with one: say so.
                return refuse(
                    record,
                    StatusCode::UNAUTHORIZED,
                    verdict.decision,
                    &format!("{why}; the request carries no token"),
                    Some("Bearer realm=\"mtlsd\"".to_owned()),
                );
            } else {
                return refuse(record, StatusCode::FORBIDDEN, verdict.decision, &why, None);
            }
        } else if record.decision == "allow" {
            record.decision = verdict.decision;
        }

        self.forward(route.clone(), parts, body, validated, record)
            .await
    }

    async fn forward(
        &self,
        route: Arc<HttpRoute>,
        mut parts: hyper::http::request::Parts,
        body: Incoming,
        validated: Option<Validated>,
        mut record: Record,
    ) -> Response<ResponseBody> {
        let config = &route.config;
        strip_hop_by_hop(&mut parts.headers);
        let mut query = parts.uri.query().map(str::to_owned);
        if let Some(v) = &validated {
            let issuer = &route.authn.issuers()[v.issuer].config;
            if !issuer.forward_original_token {
                match &v.found_in {
                    TokenSource::Header { name, .. } => {
                        parts.headers.remove(name);
                    }
                    TokenSource::Param { name } => {
                        query = query.as_deref().and_then(|q| without_param(q, name));
                    }
                }
            }
            let claims = &v.auth.claims;
            let iss = claims.get("iss").and_then(|s| s.as_str()).unwrap_or("");
            let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
            insert_str(&mut parts.headers, &config.issuer_header, iss);
            insert_str(&mut parts.headers, &config.subject_header, sub);
            for ch in &issuer.claim_headers {
                let value = ch
                    .claim
                    .split('.')
                    .try_fold(claims, |c, name| c.get(name))
                    .map(|c| match c {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                if let Some(value) = value {
                    insert_str(&mut parts.headers, &ch.header, &value);
                }
            }
        }
        parts.headers.insert(XFCC, self.peer.xfcc.clone());
        if record.early {
            parts
                .headers
                .insert(EARLY_DATA, HeaderValue::from_static("1"));
        }
        if !record.authority.is_empty()
            && let Ok(host) = HeaderValue::from_str(&record.authority)
        {
            parts.headers.insert(header::HOST, host);
        }
        let target = match &query {
            Some(q) => format!("{POOL_URI}{}?{q}", record.path),
            None => format!("{POOL_URI}{}", record.path),
        };
        parts.uri = match target.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return refuse(
                    record,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request target cannot be forwarded",
                    None,
                );
            }
        };
        parts.version = match config.upstream {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        let req = Request::from_parts(parts, Counted::new(body, record.bytes_in.clone()));
        let asked = Instant::now();
        let sent = tokio::time::timeout(config.request_timeout, route.pool.send(req)).await;
        record.upstream = Some(asked.elapsed());
        let decision = record.decision;
        let response = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let why = format!("the service failed: {}", error_chain(&e));
                return refuse(record, StatusCode::BAD_GATEWAY, decision, &why, None);
            }
            Err(_) => {
                return refuse(
                    record,
                    StatusCode::GATEWAY_TIMEOUT,
                    decision,
                    "the service did not answer within request_timeout",
                    None,
                );
            }
        };
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        record.status = head.status.as_u16();
        let count = record.bytes_out.clone();
        Response::from_parts(head, Counted::new(body.boxed(), count).with_guard(record))
    }
}

/// Answers `status` with `why` as the body and the access line's reason.
fn refuse(
    mut record: Record,
    status: StatusCode,
    decision: &'static str,
    why: &str,
    challenge: Option<String>,
) -> Response<ResponseBody> {
    record.status = status.as_u16();
    record.decision = decision;
    record.reason = Some(why.to_owned());
    let body = format!(
        "{}: {why}\n",
        status.canonical_reason().unwrap_or("refused")
    );
    let count = record.bytes_out.clone();
    let mut response = Response::new(Counted::new(text(body), count).with_guard(record));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::WWW_AUTHENTICATE, c);
    }
    response
}

/// GET, HEAD and OPTIONS: safe to answer from early data (RFC 8470 §3).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Removes every header a client could use to pose as someone else to the service.
fn strip_spoofable<'a>(headers: &mut HeaderMap, identity: impl Iterator<Item = &'a HeaderName>) {
    headers.remove(XFCC);
    for name in identity {
        headers.remove(name);
    }
}

/// Removes connection-specific headers (RFC 9110 §7.6.1), and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

fn insert_str(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The peer's stream: early data first, then the connection, counting bytes and activity.
struct PeerIo<IO> {
    io: IO,
    early: Bytes,
    stats: Arc<ConnStats>,
    start: Instant,
}

impl<IO> PeerIo<IO> {
    fn active(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.stats.last_active_ms.store(ms, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PeerIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            let chunk = self.early.split_to(n);
            buf.put_slice(&chunk);
            self.stats.from_peer.fetch_add(n as u64, Ordering::Relaxed);
            self.active();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.stats.past_early.store(true, Ordering::Relaxed);
            self.stats.from_peer.fetch_add(n as u64, Ordering::Relaxed);
            self.active();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PeerIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.stats.to_peer.fetch_add(*n as u64, Ordering::Relaxed);
            self.active();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.stats.to_peer.fetch_add(*n as u64, Ordering::Relaxed);
            self.active();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps `cause`, as hyper's errors wrap the transport's.
    #[derive(Debug)]
    struct Wrapped(io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_peer_closing_the_transport_is_a_hang_up_and_a_tls_failure_is_not() {
        for kind in [io::ErrorKind::UnexpectedEof, io::ErrorKind::ConnectionReset] {
            assert!(peer_hung_up(&Wrapped(io::Error::from(kind))), "{kind:?}");
        }
        let bad_mac = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!peer_hung_up(&Wrapped(bad_mac)));
        let eof_as_tls = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::TooMuchEarlyDataReceived),
        );
        assert!(!peer_hung_up(&Wrapped(eof_as_tls)));
        assert!(!peer_hung_up(&Wrapped(io::Error::other("parse error"))));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }

    #[test]
    fn only_get_head_and_options_are_safe_in_early_data() {
        assert!(is_safe(&Method::GET) && is_safe(&Method::HEAD) && is_safe(&Method::OPTIONS));
        assert!(!is_safe(&Method::POST) && !is_safe(&Method::PUT) && !is_safe(&Method::DELETE));
    }

    #[test]
    fn xfcc_names_us_the_peer_and_its_certificate_hash() {
        let id: SpiffeId = "spiffe://ex/client".parse().unwrap();
        let by: SpiffeId = "spiffe://ex/server".parse().unwrap();
        let info = PeerInfo::new(id, "127.0.0.1:1".parse().unwrap(), b"der", &by);
        let want = format!(
            "By=spiffe://ex/server;Hash={};URI=spiffe://ex/client",
            hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                b"der"
            ))
        );
        assert_eq!(info.xfcc.to_str().unwrap(), want);
    }
}
