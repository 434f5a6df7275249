//! Inbound: accept TLS, verify the peer's SVID, authorize its SPIFFE ID, forward plaintext.
//!
//! Stages run in order and each can refuse: nothing, not even a TCP connect,
//! reaches the local service before the peer is authorized.
//!
//! accept → (permissive: plaintext?) → mTLS handshake → authorize → connect upstream →
//! PROXY header → splice → "connection closed"

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::early_tls::EarlyTlsStream;
use tokio_util::sync::CancellationToken;

use super::forward::{Forwarded, splice};
use super::listener::RouteState;
use super::{Closed, Outcome, Refusal, RefuseReason, proxy_protocol};
use crate::config::{InboundConfig, Mode, Upstream};
use crate::identity::{SpiffeId, ValidityError, check_validity, spiffe_id_of};
use crate::metrics::{HandshakeKind, ListenerMetrics};
use crate::policy::{Decision, Peer, UNAUTHENTICATED};
use crate::tls::{ServerResumption, TlsIdentity};

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A running inbound listener's shared state.
pub struct Inbound {
    config: InboundConfig,
    acceptor: TlsAcceptor,
    state: RouteState,
}

/// A peer that passed the handshake and the policy.
enum Admitted {
    Tls {
        stream: PeerTls,
        id: SpiffeId,
        rule: String,
        /// Bytes the peer sent as 0-RTT early data, held until it was authorized.
        early: Vec<u8>,
        kind: HandshakeKind,
    },
    Plaintext {
        stream: TcpStream,
        rule: String,
    },
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
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            acceptor: TlsAcceptor::from(tls.server_config(resumption)?),
            state: RouteState::new(&config.limits, metrics, tls.revocations.clone()),
            config,
        })
    }

    /// The listener's configuration.
    pub fn config(&self) -> &InboundConfig {
        &self.config
    }

    /// Shares `slots` (from the listener this one replaces) instead of fresh ones.
    pub fn with_connection_slots(mut self, slots: Arc<Semaphore>) -> Self {
        self.state.connections = slots;
        self
    }

    /// Limits in force, metrics and CRLs.
    pub fn state(&self) -> &RouteState {
        &self.state
    }

    /// Admits, forwards and closes one accepted connection.
    pub async fn handle(
        &self,
        stream: TcpStream,
        src: SocketAddr,
        hard_stop: &CancellationToken,
    ) -> Outcome {
        let started = Instant::now();
        let local = stream.local_addr().unwrap_or(self.config.listen);
        let _ = stream.set_nodelay(true);
        let deadline = started + self.config.limits.handshake_timeout;
        let admitted = timeout_at(deadline, self.admit(stream))
            .await
            .map_err(|_| {
                Refusal::new(
                    RefuseReason::HandshakeTimeout,
                    "no authorized peer within handshake_timeout",
                )
            })??;
        let (peer_id, rule, handshake) = match &admitted {
            Admitted::Tls { id, rule, kind, .. } => {
                (id.as_str().to_owned(), rule.clone(), Some(*kind))
            }
            Admitted::Plaintext { rule, .. } => (UNAUTHENTICATED.to_owned(), rule.clone(), None),
        };
        let forwarded = match self.connect_upstream().await {
            Ok(UpstreamStream::Tcp(up)) => self.forward(admitted, up, src, local, hard_stop).await,
            Ok(UpstreamStream::Unix(up)) => self.forward(admitted, up, src, local, hard_stop).await,
            Err(e) => {
                return Err(Refusal::new(
                    RefuseReason::UpstreamUnavailable,
                    format!("{}: {e}", self.config.forward),
                )
                .with_peer(&peer_id));
            }
        };
        Ok(Closed {
            peer_id,
            rule: Some(rule),
            handshake,
            upstream: self.config.forward.to_string(),
            forwarded,
            duration: started.elapsed(),
        })
    }

    /// Handshake and policy: returns an authorized peer or the reason it was refused.
    async fn admit(&self, stream: TcpStream) -> Result<Admitted, Refusal> {
        let _slot = self.state.handshake_slot().await;

        if self.config.mode == Mode::Permissive && !starts_with_tls(&stream).await? {
            let rule = self.authorize(Peer::Unauthenticated)?;
            return Ok(Admitted::Plaintext { stream, rule });
        }

        let started = Instant::now();
        let refuse =
            |e: std::io::Error| Refusal::new(RefuseReason::of_handshake(&e), e.to_string());
        let mut tls = if self.config.early_data > 0 {
            // Returns once early data is here, so it is forwarded without waiting a round trip.
            let config = self.acceptor.config().clone();
            PeerTls::Early(Box::new(
                EarlyTlsStream::accept(stream, config)
                    .await
                    .map_err(refuse)?,
            ))
        } else {
            PeerTls::Rustls(Box::new(
                self.acceptor.accept(stream).await.map_err(refuse)?,
            ))
        };
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
        // The verifier already insisted on exactly one SPIFFE ID in our trust domain.
        let chain = tls.connection().peer_certificates().unwrap_or_default();
        let id = chain
            .first()
            .ok_or_else(|| {
                Refusal::new(RefuseReason::NoClientCert, "no certificate after handshake")
            })
            .and_then(|cert| {
                spiffe_id_of(cert)
                    .map_err(|e| Refusal::new(RefuseReason::NoSpiffeId, e.to_string()))
            })?;
        // Full or resumed, the chain must not hold a revoked certificate under the CRLs loaded now.
        self.state.revocations.check(chain).map_err(|e| {
            Refusal::new(RefuseReason::Revoked, e.to_string()).with_peer(id.as_str())
        })?;
        if resumed {
            // A resumed session skipped verification: its certificates must still be valid now.
            check_validity(chain).map_err(|e| {
                let reason = match e {
                    ValidityError::Expired { .. } => RefuseReason::CertExpired,
                    ValidityError::NotYetValid { .. } => RefuseReason::CertNotYetValid,
                    ValidityError::Malformed => RefuseReason::BadCertificate,
                };
                Refusal::new(reason, format!("resumed session: {e}")).with_peer(id.as_str())
            })?;
        }
        let rule = self
            .authorize(Peer::Spiffe(&id))
            .map_err(|r| r.with_peer(id.as_str()))?;
        Ok(Admitted::Tls {
            stream: tls,
            id,
            rule,
            early,
            kind,
        })
    }

    fn authorize(&self, peer: Peer<'_>) -> Result<String, Refusal> {
        match self.config.policy.authorize(peer) {
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

    async fn forward<U>(
        &self,
        admitted: Admitted,
        mut upstream: U,
        src: SocketAddr,
        local: SocketAddr,
        hard_stop: &CancellationToken,
    ) -> Forwarded
    where
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let idle = self.config.limits.idle_timeout;
        match admitted {
            Admitted::Tls {
                stream, id, early, ..
            } => {
                if self.config.proxy_protocol {
                    let version = match stream.connection().protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "TLSv1.3",
                    };
                    let tls = proxy_protocol::TlsInfo {
                        spiffe_id: &id,
                        version,
                        early_data: u32::try_from(early.len()).unwrap_or(u32::MAX),
                    };
                    if let Err(e) = upstream
                        .write_all(&proxy_protocol::encode(src, local, Some(tls)))
                        .await
                    {
                        return Forwarded::failed(e);
                    }
                }
                if !early.is_empty() {
                    // Authorized by now: the early bytes go first, exactly once.
                    if let Err(e) = upstream.write_all(&early).await {
                        return Forwarded::failed(e);
                    }
                    self.state.metrics.from_peer.inc_by(early.len() as u64);
                }
                let mut forwarded =
                    splice(stream, upstream, idle, hard_stop, &self.state.metrics).await;
                forwarded.from_peer += early.len() as u64;
                forwarded
            }
            Admitted::Plaintext { stream, .. } => {
                if self.config.proxy_protocol
                    && let Err(e) = upstream
                        .write_all(&proxy_protocol::encode(src, local, None))
                        .await
                {
                    return Forwarded::failed(e);
                }
                splice(stream, upstream, idle, hard_stop, &self.state.metrics).await
            }
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

/// The peer's TLS stream: tokio-rustls, or the early-data stream on 0-RTT listeners.
enum PeerTls {
    Rustls(Box<TlsStream<TcpStream>>),
    Early(Box<EarlyTlsStream>),
}

impl PeerTls {
    fn connection(&self) -> &rustls::ServerConnection {
        match self {
            Self::Rustls(s) => s.get_ref().1,
            Self::Early(s) => s.connection(),
        }
    }

    /// Early data received so far (none unless this listener accepts 0-RTT).
    fn take_early_data(&mut self) -> Vec<u8> {
        match self {
            Self::Rustls(_) => Vec::new(),
            Self::Early(s) => s.take_early_data(),
        }
    }
}

impl AsyncRead for PeerTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Rustls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Early(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Rustls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Early(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Rustls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Self::Early(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Rustls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Early(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
