//! A bound socket and the route it serves; a reload swaps the route without closing the socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::inbound::Inbound;
use super::live::LiveConnections;
use super::outbound::Outbound;
use super::outcome::log_outcome;
use super::route_state::RouteState;
use super::{Drain, Outcome, Refusal, RefuseReason};
use crate::accept::AcceptErrors;
use crate::audit::{DecisionRecord, Decisions};
use crate::config::ListenerCommon;
use crate::metrics::{Direction, ListenerMetrics};

/// What a listener does with the connections it accepts.
#[derive(Debug, Clone)]
pub enum Route {
    /// mTLS in, plaintext to a local service.
    Inbound(Arc<Inbound>),
    /// Plaintext in, mTLS to a remote server.
    Outbound(Arc<Outbound>),
}

impl Route {
    /// The listener's configured name.
    pub fn name(&self) -> &str {
        self.common().name()
    }

    /// The configuration both directions share: name, address, limits.
    pub fn common(&self) -> &dyn ListenerCommon {
        match self {
            Self::Inbound(i) => i.config(),
            Self::Outbound(o) => o.config(),
        }
    }

    /// Inbound or outbound.
    pub fn direction(&self) -> Direction {
        match self {
            Self::Inbound(_) => Direction::Inbound,
            Self::Outbound(_) => Direction::Outbound,
        }
    }

    /// The configured listen address (port 0 means "any free port").
    pub fn listen(&self) -> SocketAddr {
        self.common().listen()
    }

    fn state(&self) -> &RouteState {
        match self {
            Self::Inbound(i) => i.state(),
            Self::Outbound(o) => o.state(),
        }
    }

    /// The configured `max_connections`.
    pub fn max_connections(&self) -> usize {
        self.common().limits().max_connections
    }

    fn metrics(&self) -> &ListenerMetrics {
        &self.state().metrics
    }

    /// No coroutine of its own: one more layer would keep another copy of the arguments in
    /// every idle connection's task.
    fn handle(
        &self,
        stream: TcpStream,
        src: SocketAddr,
        conn: ConnContext,
    ) -> impl Future<Output = Outcome> + '_ {
        match self {
            Self::Inbound(i) => Either::Left(i.handle(stream, src, conn)),
            Self::Outbound(o) => Either::Right(async move { o.handle(stream, &conn).await }),
        }
    }
}

/// What a connection needs from its listener beyond the route it was accepted on.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// Cancelled when established connections must close now.
    pub hard_stop: CancellationToken,
    /// Cancelled when the daemon drains: HTTP connections finish their requests and close.
    pub draining: CancellationToken,
    /// The listener, whose route a reload replaces: HTTP requests use the one in force.
    pub listener: Arc<Listener>,
    /// Where an admitted connection registers, so a re-check can close it.
    pub live: Arc<LiveConnections>,
    /// Where decisions are recorded.
    pub decisions: Arc<Decisions>,
}

/// One connection's accounting: the active gauge and the line that ends it, even on a panic.
///
/// A panic in a connection task unwinds through this guard: the gauge is
/// decremented, the connection is counted and logged as `internal_error`, and the
/// task ends alone (tokio catches the panic), so the daemon keeps serving.
pub struct OpenConnection<'a> {
    listener: &'a str,
    metrics: &'a ListenerMetrics,
    // Borrowed: the task holds the address anyway, and this guard lives no longer than it.
    src: &'a SocketAddr,
    closed: bool,
}

impl<'a> OpenConnection<'a> {
    /// Counts a connection from `src` as open on `listener`.
    pub fn new(listener: &'a str, metrics: &'a ListenerMetrics, src: &'a SocketAddr) -> Self {
        metrics.active.inc();
        Self {
            listener,
            metrics,
            src,
            closed: false,
        }
    }

    /// Counts and logs how the connection ended (no longer active by the time the line is out).
    pub fn close(mut self, outcome: &Outcome) {
        self.closed = true;
        let metrics = self.metrics;
        metrics.active.dec();
        match outcome {
            Ok(_) => metrics.forwarded(),
            Err(refusal) => metrics.refused(refusal.reason),
        }
        log_outcome(outcome, self.listener, *self.src);
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let metrics = self.metrics;
        metrics.active.dec();
        // Unwinding: the task panicked. (A task dropped at runtime shutdown is not a
        // panic and gets no line.)
        if std::thread::panicking() {
            let refusal = Refusal::new(
                RefuseReason::Internal,
                "the connection's task panicked; see the panic message above",
            );
            metrics.refused(refusal.reason);
            refusal.log(self.listener, *self.src);
        }
    }
}

/// Connections open on one listening socket, whichever route admitted them.
///
/// The count belongs to the socket, the cap (`max_connections`) to the route in
/// force, so a reload that changes the cap applies it to every connection still
/// open, and one that does not change it keeps counting them.
#[derive(Debug, Default)]
pub struct OpenCount(AtomicUsize);

impl OpenCount {
    /// Counts one more open connection unless `max` are open already.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenSlot(self.clone()))
    }

    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct OpenSlot(Arc<OpenCount>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A listening socket's accept loop and the route its new connections take.
#[derive(Debug)]
pub struct Listener {
    route: RwLock<Route>,
    stop: CancellationToken,
    open: Arc<OpenCount>,
}

impl Listener {
    /// A listener that stops accepting on its own [`Listener::stop`] or when `drain` stops all.
    pub fn new(route: Route, drain: &Drain) -> Arc<Self> {
        Arc::new(Self {
            route: RwLock::new(route),
            stop: drain.stop_accepting.child_token(),
            open: Arc::default(),
        })
    }

    /// The route new connections take.
    pub fn route(&self) -> Route {
        self.route.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends new connections down `route`; connections already accepted keep theirs.
    pub fn replace(&self, route: Route) {
        *self.route.write().unwrap_or_else(|e| e.into_inner()) = route;
    }

    /// Stops accepting; established connections are untouched.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Accepts until stopped, then hands the socket back so a reload can reuse it.
    ///
    /// Each connection runs in its own task tracked by `drain`. Its connection
    /// slot is released as soon as the handler returns (its sockets are closed
    /// by then), before the closing log line, so a client that reacts to that
    /// line finds the slot free.
    pub async fn serve(self: Arc<Self>, socket: TcpListener, drain: Drain) -> TcpListener {
        // Accepted sockets inherit TCP_NODELAY from the listening one: set once here instead of
        // a setsockopt per connection. Small records (a handshake flight, an answer) must not
        // wait out Nagle and a delayed ACK.
        let nodelay_each = socket2::SockRef::from(&socket)
            .set_tcp_nodelay(true)
            .is_err();
        let mut errors = AcceptErrors::default();
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => break,
                accepted = socket.accept() => accepted,
            };
            let route = self.route();
            let (stream, src) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    errors.failed(route.name(), &e).await;
                    continue;
                }
            };
            if nodelay_each {
                let _ = stream.set_nodelay(true);
            }
            let Some(permit) = self.open.try_open(route.max_connections()) else {
                let refusal = Refusal::new(
                    RefuseReason::TooManyConnections,
                    "listener is at max_connections",
                );
                route.metrics().refused(refusal.reason);
                refusal.log(route.name(), src);
                continue;
            };
            let conn = ConnContext {
                hard_stop: drain.hard_stop.clone(),
                draining: drain.stop_accepting.clone(),
                listener: self.clone(),
                live: drain.live.clone(),
                decisions: drain.decisions.clone(),
            };
            let decisions = drain.decisions.clone();
            drain.tracker.spawn(async move {
                let open = OpenConnection::new(route.name(), route.metrics(), &src);
                let outcome = route.handle(stream, src, conn).await;
                drop(permit);
                open.close(&outcome);
                decisions.record(audit_record(&outcome, route.name(), route.direction(), src));
            });
        }
        socket
    }
}

/// The audit record of a connection's end: refused, or closed after forwarding.
fn audit_record(
    outcome: &Outcome,
    listener: &str,
    direction: Direction,
    src: SocketAddr,
) -> DecisionRecord {
    match outcome {
        Err(refusal) => DecisionRecord {
            src: src.to_string(),
            peer_id: refusal.peer.clone(),
            outcome: "deny",
            decision: refusal.reason.as_str().to_owned(),
            reason: Some(refusal.detail.clone()),
            ..DecisionRecord::new("refused", listener, direction.as_str())
        },
        Ok(closed) => DecisionRecord {
            src: src.to_string(),
            peer_id: Some(closed.peer_id.clone()),
            peer_serial: closed.peer_serial.clone(),
            outcome: "allow",
            decision: "allow".to_owned(),
            rule: closed.rule.clone(),
            reason: Some(closed.forwarded.reason.as_str().to_owned()),
            bytes_in: Some(closed.forwarded.from_peer),
            bytes_out: Some(closed.forwarded.to_peer),
            duration_ms: Some(closed.duration.as_millis() as u64),
            ..DecisionRecord::new("closed", listener, direction.as_str())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_open_count_applies_whatever_cap_is_in_force_to_every_open_connection() {
        let open = Arc::new(OpenCount::default());
        let a = open.try_open(2).unwrap();
        let _b = open.try_open(2).unwrap();
        assert!(open.try_open(2).is_none());
        // A reload raises the cap: the two open connections still count.
        let c = open.try_open(3).unwrap();
        assert!(open.try_open(3).is_none());
        // And lowers it below what is open: nothing new until enough have closed.
        drop(c);
        assert!(open.try_open(1).is_none());
        drop(a);
        assert_eq!(open.get(), 1);
        assert!(open.try_open(1).is_none());
        assert!(open.try_open(2).is_some());
    }

    #[tokio::test]
    async fn a_panicking_connection_task_is_counted_logged_and_leaves_no_active_connection() {
        let registry = Metrics::new();
        let metrics = registry.listener("web", Direction::Inbound);
        let task = tokio::spawn({
            let metrics = metrics.clone();
            async move {
                let src = "127.0.0.1:1".parse().unwrap();
                let _open = OpenConnection::new("web", &metrics, &src);
                assert_eq!(metrics.active.get(), 1);
                panic!("a bug in a connection handler");
            }
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(metrics.active.get(), 0);
        let text = registry.encode();
        assert!(
            text.lines()
                .any(|l| l.contains("reason=\"internal_error\"") && l.ends_with(" 1")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_no_longer_active_and_counted_once() {
        let registry = Metrics::new();
        let metrics = registry.listener("web", Direction::Inbound);
        let src = "127.0.0.1:1".parse().unwrap();
        let open = OpenConnection::new("web", &metrics, &src);
        open.close(&Err(Refusal::new(RefuseReason::Denied, "test")));
        assert_eq!(metrics.active.get(), 0);
        let text = registry.encode();
        assert!(!text.contains("internal_error"), "{text}");
    }
}
