//! Inbound: accept TLS, verify the peer's SVID, authorize its SPIFFE ID, forward plaintext.
//!
//! Stages run in order and each can refuse: nothing, not even a TCP connect,
//! reaches the local service before the peer is authorized.
//!
//! accept → per-source count → (permissive: plaintext?) → complete ClientHello →
//! handshake slot → mTLS handshake → authorize → connect upstream → PROXY header →
//! splice → "connection closed"

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::forward::{Buffered, Forwarded, splice};
use super::listener::{ConnContext, Route};
use super::live::{PeerFacts, Registration};
use super::outcome::HandshakeKind;
use super::policy_verifier::{PolicyVerifier, Verified};
use super::route_state::RouteState;
use super::server_tls::ServerTlsStream;
use super::{Closed, Outcome, Refusal, RefuseReason, client_hello, peer, proxy_protocol};
use crate::audit::DecisionRecord;
use crate::config::{InboundConfig, Mode, Upstream};
use crate::http::HttpRoute;
use crate::http::serve::{Connection as HttpConnection, PeerInfo};
use crate::identity::{SpiffeClientVerifier, SpiffeId};
use crate::metrics::{Direction, ListenerMetrics};
use crate::policy::{Decision, Peer, Policy, UNAUTHENTICATED};
use crate::tls::{ServerResumption, TlsIdentity};

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A running inbound listener's shared state.
pub struct Inbound {
    config: InboundConfig,
    /// Our identity, to build each connection's TLS config.
    tls: TlsIdentity,
    resumption: ServerResumption,
    /// Chain and SPIFFE ID checks, built once; each connection adds the policy.
    verifier: Arc<SpiffeClientVerifier>,
    policy: Arc<Policy>,
    state: RouteState,
    /// Per-request handling on a `protocol = "http"` listener.
    http: Option<Arc<HttpRoute>>,
}

/// A peer that passed the handshake and the policy, in the parts the connection's task
/// takes apart by value (a part it borrowed would keep its room in the task while idle).
struct Admitted {
    /// Its SPIFFE ID, or `unauthenticated` for a permissive listener's plaintext peer.
    peer_id: String,
    /// The rule that admitted it.
    rule: String,
    /// How its TLS handshake went; `None` for plaintext.
    handshake: Option<HandshakeKind>,
    /// The connection.
    stream: PeerStream,
    /// Its verified identity (TLS only), for an HTTP listener's requests.
    id: Option<SpiffeId>,
    /// Bytes the peer sent as 0-RTT early data, held until it was authorized.
    early: Vec<u8>,
    /// The PROXY v2 header for the upstream, when the listener sends one.
    proxy_header: Option<Vec<u8>>,
}

/// The peer's side of an admitted connection.
enum PeerStream {
    Tls(PeerTls),
    Plaintext(TcpStream),
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Prepares a listener for `config` using our TLS identity.
    pub fn new(
        config: InboundConfig,
        tls: &TlsIdentity,
        resumption: &ServerResumption,
        metrics: ListenerMetrics,
        http: Option<Arc<HttpRoute>>,
    ) -> Result<Self, rustls::Error> {
        let verifier = tls.client_verifier()?;
        // Fail at (re)load, not on the first connection, if rustls refuses the config.
        tls.server_config_with(resumption, verifier.clone())?;
        Ok(Self {
            tls: tls.clone(),
            resumption: resumption.clone(),
            verifier,
            policy: Arc::new(config.policy.clone()),
            state: RouteState::new(
                &config.name,
                &config.limits,
                metrics,
                tls.revocations.clone(),
            ),
            config,
            http,
        })
    }

    /// The connection-level allow and deny lists.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The HTTP side of a `protocol = "http"` listener.
    pub fn http(&self) -> Option<&Arc<HttpRoute>> {
        self.http.as_ref()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &InboundConfig {
        &self.config
    }

    /// Limits in force, metrics and CRLs.
    pub fn state(&self) -> &RouteState {
        &self.state
    }

    /// Admits, forwards and closes one accepted connection.
    ///
    /// Not `async fn`, like `forward` below: the block captures the arguments once.
    pub fn handle(
        &self,
        stream: TcpStream,
        src: SocketAddr,
        conn: ConnContext,
    ) -> impl Future<Output = Outcome> + '_ {
        let started = Instant::now();
        // The handshake's state (ClientHello, rustls' handshake, the policy) lives on the heap
        // and is freed when it ends: inline, it would size this future, which an idle
        // connection holds for its whole life, at several KiB. Made here, so that the block
        // below captures the box, not the stream.
        let admission = Box::pin(self.admit(stream, src));
        async move {
            let hard_stop = &conn.hard_stop;
            let deadline = started + self.config.limits.handshake_timeout;
            let (
                Admitted {
                    peer_id,
                    rule,
                    handshake,
                    stream,
                    id,
                    early,
                    proxy_header,
                },
                facts,
            ) = timeout_at(deadline, admission).await.map_err(|_| {
                Refusal::new(
                    RefuseReason::HandshakeTimeout,
                    "no authorized peer within handshake_timeout",
                )
            })??;
            let peer_serial = facts.as_deref().and_then(PeerFacts::leaf_serial);
            // On the record before the first byte moves (and on disk first, with every_record).
            // In a block of its own, so nothing of it outlives the wait.
            {
                let synced = conn.decisions.record_durably(DecisionRecord {
                    src: src.to_string(),
                    peer_id: Some(peer_id.clone()),
                    peer_serial: peer_serial.clone(),
                    outcome: "allow",
                    decision: "allow".to_owned(),
                    rule: Some(rule.clone()),
                    ..DecisionRecord::new(
                        "admitted",
                        &self.config.name,
                        Direction::Inbound.as_str(),
                    )
                });
                if let Some(synced) = synced {
                    let _ = synced.await;
                }
            }
            // Registered so a policy, CRL or bundle change re-checks it while it is open.
            let registration = facts.map(|facts| {
                conn.live.register(
                    &self.state.name,
                    Direction::Inbound,
                    *facts,
                    self.config.limits.max_connection_lifetime,
                    hard_stop,
                )
            });
            let stop = registration.as_ref().map_or(hard_stop, Registration::token);
            // Every part is moved, never borrowed, from here on, and the forwarding future is
            // made in a block of its own: see `Admitted`.
            let forwarding = match (&self.http, stream, id) {
                (Some(http), PeerStream::Tls(stream), Some(id)) => {
                    drop(proxy_header);
                    // Boxed for the same reason: a plain TCP connection should not carry HTTP's size.
                    Either::Left(Box::pin(self.serve_http(
                        http.clone(),
                        stream,
                        id,
                        early,
                        src,
                        &conn,
                        stop,
                    )))
                }
                (_, stream, _) => {
                    // What goes before the peer's bytes: the PROXY header, then early data.
                    let early_len = early.len() as u64;
                    let mut prelude = proxy_header.unwrap_or_default();
                    prelude.extend_from_slice(&early);
                    drop(early);
                    match self.connect_upstream().await {
                        Ok(UpstreamStream::Tcp(up)) => Either::Right(Either::Left(
                            self.forward(stream, prelude, early_len, up, stop),
                        )),
                        Ok(UpstreamStream::Unix(up)) => Either::Right(Either::Right(
                            self.forward(stream, prelude, early_len, up, stop),
                        )),
                        Err(e) => {
                            return Err(Refusal::new(
                                RefuseReason::UpstreamUnavailable,
                                format!("{}: {e}", self.config.forward),
                            )
                            .with_peer(&peer_id));
                        }
                    }
                }
            };
            let mut forwarded = forwarding.await;
            if let Some(reason) = registration.as_ref().and_then(Registration::closed_for) {
                forwarded.reason = reason;
            }
            Ok(Closed {
                peer_id,
                rule: Some(rule),
                peer_serial,
                handshake,
                upstream: self.config.forward.to_string(),
                forwarded,
                duration: started.elapsed(),
            })
        }
    }

    /// Handshake and policy: returns an authorized peer or the reason it was refused.
    ///
    /// A TLS peer comes with the facts its re-checks need, boxed: moved into the registry
    /// before forwarding starts, they would otherwise leave their size in the connection's
    /// task for its whole life.
    async fn admit(
        &self,
        mut stream: TcpStream,
        src: SocketAddr,
    ) -> Result<(Admitted, Option<Box<PeerFacts>>), Refusal> {
        // Counted from accept until the handshake ends, so one address cannot fill the
        // pre-handshake phase with connections that never finish.
        let _source = self.state.sources.enter(src.ip()).ok_or_else(|| {
            Refusal::new(
                RefuseReason::TooManyFromSource,
                format!(
                    "{} already has max_handshakes_per_source connections in their handshake",
                    src.ip()
                ),
            )
        })?;

        // The address the peer dialled, for the PROXY header only (a syscall otherwise spared).
        let local =
            (self.config.proxy_protocol).then(|| stream.local_addr().unwrap_or(self.config.listen));
        if self.config.mode == Mode::Permissive && !starts_with_tls(&stream).await? {
            let rule = self.authorize(Peer::Unauthenticated)?;
            let proxy_header = local.map(|local| proxy_protocol::encode(src, local, None));
            let admitted = Admitted {
                peer_id: UNAUTHENTICATED.to_owned(),
                rule,
                handshake: None,
                stream: PeerStream::Plaintext(stream),
                id: None,
                early: Vec::new(),
                proxy_header,
            };
            return Ok((admitted, None));
        }

        // No handshake slot until the whole ClientHello is here.
        let early_listener = self.config.early_data > 0;
        let hello = timeout(
            self.config.limits.client_hello_timeout,
            client_hello::read(&mut stream, early_listener),
        )
        .await
        .map_err(|_| {
            Refusal::new(
                RefuseReason::HandshakeTimeout,
                "no complete ClientHello within client_hello_timeout",
            )
        })??;
        let _slot = self.state.handshake_slot().await;

        let started = Instant::now();
        let refuse = |e: std::io::Error, past_hello: bool| {
            Refusal::new(RefuseReason::of_handshake(&e, !past_hello), e.to_string())
        };
        let verified = Arc::new(OnceLock::new());
        let config = self
            .connection_config(&hello.raw, verified.clone())
            .map_err(|e| Refusal::new(RefuseReason::TlsError, e.to_string()))?;
        // A refusal by the policy inside the handshake is logged and counted as one after it:
        // the peer's certificate was verified, so its handshake counts as a full one.
        let refuse = |e: std::io::Error, past_hello: bool| {
            let Some(Verified {
                id,
                admitted: false,
            }) = verified.get()
            else {
                return refuse(e, past_hello);
            };
            self.state
                .metrics
                .handshake(HandshakeKind::Full, started.elapsed());
            let refusal = self.authorize(Peer::Spiffe(id)).err().unwrap_or_else(|| {
                Refusal::new(RefuseReason::NotAllowed, "refused during the handshake")
            });
            refusal.with_peer(id.as_str())
        };
        let conn = match hello.accepted.into_connection(config) {
            Ok(conn) => conn,
            Err((e, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                let _ = stream.write_all(&bytes).await;
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                return Err(refuse(e, false));
            }
        };
        // On a 0-RTT listener this returns once early data is here, so it is forwarded
        // without waiting a round trip.
        let mut tls = Box::new(
            ServerTlsStream::accept(stream, conn, self.state.metrics.buffer_bytes.clone())
                .await
                .map_err(|e| refuse(e, true))?,
        );
        let early = tls.take_early_data();
        let resumed = tls.connection().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let kind = match (resumed, early.is_empty()) {
            (false, _) => HandshakeKind::Full,
            (true, true) => HandshakeKind::Resumed,
            (true, false) => HandshakeKind::EarlyData,
        };
        self.state.metrics.handshake(kind, started.elapsed());
        if !early.is_empty() {
            self.state.metrics.early_data(early.len());
        }
        // A full handshake's verifier read the ID (and insisted on exactly one SPIFFE ID in
        // a trust domain we accept); a resumed session's comes from its certificate.
        let known = verified.get().map(|v| v.id.clone());
        let chain = tls.connection().peer_certificates().unwrap_or_default();
        let facts = peer::admit_chain(chain, known, &self.state.revocations, resumed)?;
        let id = facts.id.clone();
        let rule = self
            .authorize(Peer::Spiffe(&id))
            .map_err(|r| r.with_peer(id.as_str()))?;
        let proxy_header = local.map(|local| {
            let version = match tls.connection().protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLSv1.3",
            };
            let info = proxy_protocol::TlsInfo {
                spiffe_id: &id,
                version,
                early_data: u32::try_from(early.len()).unwrap_or(u32::MAX),
            };
            proxy_protocol::encode(src, local, Some(info))
        });
        let admitted = Admitted {
            peer_id: id.as_str().to_owned(),
            rule,
            handshake: Some(kind),
            stream: PeerStream::Tls(tls),
            id: Some(id),
            early,
            proxy_header,
        };
        Ok((admitted, Some(Box::new(facts))))
    }

    /// The TLS config for one connection: its verifier applies the listener's policy and
    /// notes the verified ID and the policy's answer in `verified`.
    ///
    /// On a 0-RTT listener, a ClientHello that sends early data for a session no longer in
    /// our cache (a replay, or one from before a restart) will have that data rejected by
    /// rustls, so it gets the config without resumption, which can skip all of it and
    /// issues no ticket.
    fn connection_config(
        &self,
        raw: &[u8],
        verified: Arc<OnceLock<Verified>>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let verifier = Arc::new(PolicyVerifier::new(
            self.verifier.clone(),
            self.policy.clone(),
            verified,
        ));
        let resumption = match &self.resumption {
            ServerResumption::Cache { cache, early_data } if *early_data > 0 => {
                match client_hello::offered_early_psks(raw) {
                    Some(ids) if !ids.iter().any(|id| cache.get(id).is_some()) => {
                        &ServerResumption::Off
                    }
                    _ => &self.resumption,
                }
            }
            other => other,
        };
        let mut config = self.tls.server_config_with(resumption, verifier)?;
        if self.http.is_some() {
            // Fresh from the builder, so this does not copy.
            Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Ok(config)
    }

    fn authorize(&self, peer: Peer<'_>) -> Result<String, Refusal> {
        match self.policy.authorize(peer) {
            Decision::Allow(rule) => {
                let rule = rule.to_string();
                self.state.metrics.authorization("allow", &rule);
                Ok(rule)
            }
            Decision::Deny(rule) => {
                let rule = rule.to_string();
                self.state.metrics.authorization("deny", &rule);
                Err(Refusal::new(
                    RefuseReason::Denied,
                    format!("deny rule {rule} matched"),
                ))
            }
            Decision::NoMatch => {
                self.state.metrics.authorization("no_match", "");
                Err(Refusal::new(
                    RefuseReason::NotAllowed,
                    "no allow rule matched",
                ))
            }
        }
    }

    async fn connect_upstream(&self) -> std::io::Result<UpstreamStream> {
        let connect = async {
            match &self.config.forward {
                Upstream::Tcp(addr) => {
                    let s = TcpStream::connect(addr.as_str()).await?;
                    let _ = s.set_nodelay(true);
                    Ok(UpstreamStream::Tcp(s))
                }
                Upstream::Unix(path) => UnixStream::connect(path).await.map(UpstreamStream::Unix),
            }
        };
        timeout(self.config.limits.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Serves an authorized peer as HTTP: each request is authorized and proxied on its own.
    #[expect(
        clippy::too_many_arguments,
        reason = "the admitted peer's parts, moved apart"
    )]
    async fn serve_http(
        &self,
        own: Arc<HttpRoute>,
        stream: PeerTls,
        id: SpiffeId,
        early: Vec<u8>,
        src: SocketAddr,
        conn: &ConnContext,
        stop: &CancellationToken,
    ) -> Forwarded {
        let tls = stream.connection();
        let h2 = tls.alpn_protocol() == Some(b"h2");
        let leaf = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        if !early.is_empty() {
            self.state.metrics.from_peer.inc_by(early.len() as u64);
        }
        let peer = PeerInfo::new(id, src, &leaf, &self.tls.svid.id);
        let listener = conn.listener.clone();
        // A reload that keeps this listener HTTP applies its new rules to the next request.
        let current = move || match listener.route() {
            Route::Inbound(i) => i.http().cloned().unwrap_or_else(|| own.clone()),
            Route::Outbound(_) => own.clone(),
        };
        let connection = HttpConnection {
            current,
            peer,
            early,
            h2,
            idle_timeout: self.config.limits.idle_timeout,
            decisions: conn.decisions.clone(),
        };
        connection.serve(stream, &conn.draining, stop).await
    }

    /// Forwards an admitted peer to the upstream until either side is done: the PROXY header
    /// first, then the early data, then both directions.
    ///
    /// Not `async fn`: an async fn keeps each argument twice for as long as it runs (once as
    /// an argument, once as a local), and an idle connection's task holds this state for its
    /// whole life. The block captures them once.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    fn forward<U>(
        &self,
        mut stream: PeerStream,
        prelude: Vec<u8>,
        early_len: u64,
        mut upstream: U,
        hard_stop: &CancellationToken,
    ) -> impl Future<Output = Forwarded>
    where
        U: AsyncRead + AsyncWrite + Unpin,
    {
        async move {
            let idle = self.config.limits.idle_timeout;
            // Authorized by now: the PROXY header and the early bytes go first, exactly once.
            if !prelude.is_empty() {
                if let Err(e) = upstream.write_all(&prelude).await {
                    return Forwarded::failed(e);
                }
                self.state.metrics.from_peer.inc_by(early_len);
            }
            drop(prelude);
            // The streams stay here and the copy loop borrows them: moved into it, each
            // would leave its room behind in this state too.
            let metrics = &self.state.metrics;
            let mut forwarded = match &mut stream {
                // Our TLS stream sends what it owes the peer before it waits for it, so it
                // needs no FlushOnRead here.
                PeerStream::Tls(tls) => splice(tls, &mut upstream, idle, hard_stop, metrics).await,
                PeerStream::Plaintext(tcp) => {
                    let tcp = Buffered::new(tcp, &metrics.buffer_bytes);
                    splice(tcp, &mut upstream, idle, hard_stop, metrics).await
                }
            };
            forwarded.from_peer += early_len;
            forwarded
        }
    }
}

enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Peeks at the first byte: a TLS handshake record, or plaintext.
async fn starts_with_tls(stream: &TcpStream) -> Result<bool, Refusal> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => Err(Refusal::new(
            RefuseReason::PeerClosed,
            "closed before sending anything",
        )),
        Ok(_) => Ok(first[0] == TLS_HANDSHAKE),
        Err(e) => Err(Refusal::new(RefuseReason::PeerClosed, e.to_string())),
    }
}

/// The peer's TLS stream, boxed: an idle connection's task keeps only a pointer to it.
type PeerTls = Box<ServerTlsStream>;
