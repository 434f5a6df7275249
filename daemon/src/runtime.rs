//! Starting the daemon from a config and stopping it without cutting connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mtlsd_crypto::Backend;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{BackendKind, Config, IdentityConfig};
use crate::identity::{IdentityError, Svid, load_bundle};
use crate::proxy::Drain;
use crate::proxy::inbound::Inbound;
use crate::proxy::outbound::Outbound;
use crate::tls::TlsIdentity;

/// How long connections still open after the grace period get to log their close line.
const HARD_STOP_LINGER: Duration = Duration::from_secs(1);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Our certificate, key or bundle could not be loaded.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The certificate names a different trust domain than the config.
    #[error("identity.cert is {id}, outside identity.trust_domain {trust_domain:?}")]
    TrustDomainMismatch {
        /// The SVID's ID.
        id: String,
        /// The configured trust domain.
        trust_domain: String,
    },
    /// A listener's TLS configuration was rejected by rustls.
    #[error("listener {listener}: {source}")]
    Tls {
        /// The listener.
        listener: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A listener could not bind its address.
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The crypto backend a config asks for.
pub fn backend_for(kind: BackendKind) -> Arc<dyn Backend> {
    match kind {
        BackendKind::Software => Arc::new(mtlsd_crypto::software::Software::new()),
    }
}

/// Loads our SVID and bundle and checks they agree with the configured trust domain.
pub fn load_identity(
    config: &IdentityConfig,
    backend: &dyn Backend,
) -> Result<TlsIdentity, StartError> {
    let svid = Svid::load(&config.cert, &config.key, backend)?;
    if svid.id.trust_domain() != config.trust_domain {
        return Err(StartError::TrustDomainMismatch {
            id: svid.id.to_string(),
            trust_domain: config.trust_domain.clone(),
        });
    }
    Ok(TlsIdentity {
        svid,
        bundle: load_bundle(&config.bundle)?,
        trust_domain: config.trust_domain.clone(),
        provider: backend.provider().clone(),
    })
}

/// A running daemon: its listeners and the means to drain them.
#[derive(Debug)]
pub struct Daemon {
    drain: Drain,
    bound: Vec<(String, SocketAddr)>,
    /// Accept loops; joined on shutdown so their sockets are closed before draining starts.
    accept_loops: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Daemon {
    /// Loads the identity, binds every listener and starts serving.
    ///
    /// Binding happens before anything is served, so a port conflict fails the
    /// start instead of leaving a half-running daemon.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let backend = backend_for(config.crypto.backend);
        let tls = load_identity(&config.identity, backend.as_ref())?;
        let tls_err = |listener: &str| {
            let listener = listener.to_owned();
            move |source| StartError::Tls { listener, source }
        };

        let mut inbound = Vec::new();
        for c in config.inbound {
            let name = c.name.clone();
            let listener = bind(&name, c.listen).await?;
            inbound.push((
                Arc::new(Inbound::new(c, &tls).map_err(tls_err(&name))?),
                listener,
            ));
        }
        let mut outbound = Vec::new();
        for c in config.outbound {
            let name = c.name.clone();
            let listener = bind(&name, c.listen).await?;
            outbound.push((
                Arc::new(Outbound::new(c, &tls).map_err(tls_err(&name))?),
                listener,
            ));
        }

        let drain = Drain::new();
        let mut bound = Vec::new();
        let mut accept_loops = Vec::new();
        for (l, listener) in inbound {
            let addr = listener.local_addr().unwrap_or(l.config().listen);
            info!(listener = %l.config().name, direction = "inbound", addr = %addr,
                  forward = %l.config().forward, "listening");
            bound.push((l.config().name.clone(), addr));
            accept_loops.push(tokio::spawn(l.serve(listener, drain.clone())));
        }
        for (l, listener) in outbound {
            let addr = listener.local_addr().unwrap_or(l.config().listen);
            info!(listener = %l.config().name, direction = "outbound", addr = %addr,
                  connect = %l.config().connect, server_id = %l.config().server_id, "listening");
            bound.push((l.config().name.clone(), addr));
            accept_loops.push(tokio::spawn(l.serve(listener, drain.clone())));
        }
        info!(identity = %tls.svid.id, backend = backend.name(), "ready");
        Ok(Self {
            drain,
            bound,
            accept_loops,
            grace: config.shutdown_grace,
        })
    }

    /// The address each listener is bound to, by listener name.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, waits up to the grace period for connections to finish, then closes the rest.
    pub async fn shutdown(self) {
        self.drain.stop_accepting.cancel();
        // Once the accept loops have returned, the listening sockets are closed and
        // the tracker holds exactly the established connections.
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        self.drain.tracker.close();
        let open = self.drain.tracker.len();
        info!(
            open_connections = open,
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        if tokio::time::timeout(self.grace, self.drain.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open_connections = self.drain.tracker.len(),
                "shutdown grace elapsed; closing remaining connections"
            );
            self.drain.hard_stop.cancel();
            let _ = tokio::time::timeout(HARD_STOP_LINGER, self.drain.tracker.wait()).await;
        }
        info!("stopped");
    }
}

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: listener.to_owned(),
            addr,
            source,
        })
}
