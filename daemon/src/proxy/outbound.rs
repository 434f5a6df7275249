//! Outbound: take plaintext from a local client, dial the remote with mTLS, verify its SPIFFE ID, forward.
//!
//! accept (loopback) → connect remote → mTLS handshake (server must prove `server_id`) →
//! splice → "connection closed"

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::forward::{Buffered, FlushOnRead, splice};
use super::listener::ConnContext;
use super::live::PeerFacts;
use super::outcome::HandshakeKind;
use super::peer;
use super::route_state::RouteState;
use super::{Closed, Outcome, Refusal, RefuseReason};
use crate::audit::DecisionRecord;
use crate::config::OutboundConfig;
use crate::metrics::{Direction, ListenerMetrics};
use crate::tls::TlsIdentity;

/// A running outbound listener's shared state.
pub struct Outbound {
    config: OutboundConfig,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    state: RouteState,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Prepares a listener for `config` using our TLS identity.
    pub fn new(
        config: OutboundConfig,
        tls: &TlsIdentity,
        metrics: ListenerMetrics,
    ) -> Result<Self, rustls::Error> {
        // SNI only; the server is identified by its SPIFFE ID, not its name.
        let host =
            crate::config::host_port(&config.connect).map_or(config.connect.as_str(), |(h, _)| h);
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| rustls::Error::General(format!("{}: {e}", config.connect)))?;
        Ok(Self {
            // With early_data, a resumed connect returns at once and the local client's first
            // write leaves as 0-RTT data with the ClientHello.
            connector: TlsConnector::from(tls.client_config(
                &config.server_id,
                config.resumption,
                config.early_data,
            )?)
            .early_data(config.early_data),
            server_name,
            state: RouteState::new(
                &config.name,
                &config.limits,
                metrics,
                tls.revocations.clone(),
            ),
            config,
        })
    }

    /// The listener's configuration.
    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// Limits in force, metrics and CRLs.
    pub fn state(&self) -> &RouteState {
        &self.state
    }

    /// Dials, verifies, forwards and closes one local client's connection.
    pub async fn handle(&self, local: TcpStream, conn: &ConnContext) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.config.limits.handshake_timeout;
        // On the heap only while it runs: see the inbound handshake.
        let (remote, kind, facts) =
            timeout_at(deadline, Box::pin(self.dial()))
                .await
                .map_err(|_| {
                    Refusal::new(
                        RefuseReason::HandshakeTimeout,
                        format!(
                            "{}: no verified server within handshake_timeout",
                            self.config.connect
                        ),
                    )
                })??;
        let peer_serial = facts.leaf_serial();
        let src = local
            .peer_addr()
            .map_or_else(|_| String::new(), |a| a.to_string());
        if let Some(synced) = conn.decisions.record_durably(DecisionRecord {
            src,
            peer_id: Some(self.config.server_id.to_string()),
            peer_serial: peer_serial.clone(),
            outcome: "allow",
            decision: "allow".to_owned(),
            ..DecisionRecord::new("admitted", &self.config.name, Direction::Outbound.as_str())
        }) {
            let _ = synced.await;
        }
        let registration = conn.live.register(
            &self.state.name,
            Direction::Outbound,
            facts,
            self.config.limits.max_connection_lifetime,
            &conn.hard_stop,
        );
        let mut forwarded = splice(
            Buffered::new(local, &self.state.metrics.buffer_bytes),
            FlushOnRead(remote),
            self.config.limits.idle_timeout,
            registration.token(),
            &self.state.metrics,
        )
        .await;
        if let Some(reason) = registration.closed_for() {
            forwarded.reason = reason;
        }
        Ok(Closed {
            peer_id: self.config.server_id.to_string(),
            rule: None,
            peer_serial,
            handshake: Some(kind),
            upstream: self.config.connect.clone(),
            forwarded,
            duration: started.elapsed(),
        })
    }

    /// Connects to the remote and completes an mTLS handshake with the expected server.
    ///
    /// The stream is boxed: it is moved into the copy loop, and each move of its 1 KiB
    /// inline would take another copy's room in the connection's future.
    async fn dial(&self) -> Result<(Box<TlsStream<TcpStream>>, HandshakeKind, PeerFacts), Refusal> {
        let _slot = self.state.handshake_slot().await;
        let unavailable = |detail: String| {
            Refusal::new(
                RefuseReason::UpstreamUnavailable,
                format!("{}: {detail}", self.config.connect),
            )
        };
        let tcp = timeout(
            self.config.limits.connect_timeout,
            TcpStream::connect(self.config.connect.as_str()),
        )
        .await
        .map_err(|_| unavailable("connect timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                Refusal::new(RefuseReason::of_handshake(&e, false), e.to_string())
                    .with_peer(self.config.server_id.as_str())
            })?;
        let conn = tls.get_ref().1;
        let kind = match conn.handshake_kind() {
            // Still handshaking: connect returned early to send 0-RTT data.
            _ if conn.is_handshaking() => HandshakeKind::EarlyData,
            Some(rustls::HandshakeKind::Resumed) => HandshakeKind::Resumed,
            _ => HandshakeKind::Full,
        };
        let chain = conn.peer_certificates().unwrap_or_default();
        // The verifier (or, resumed, the session) established the server's ID.
        let facts = peer::admit_chain(
            chain,
            Some(self.config.server_id.clone()),
            &self.state.revocations,
            kind != HandshakeKind::Full,
        )?;
        self.state.metrics.handshake(kind, started.elapsed());
        Ok((Box::new(tls), kind, facts))
    }
}
