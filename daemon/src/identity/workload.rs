//! Our identity from the SPIFFE Workload API (a SPIRE agent on this host): the X.509-SVID,
//! its key (in memory only) and the trust bundles, our own and federated ones, as they
//! stream in.
//!
//! The `spiffe` crate's `X509Source` keeps the stream open, reconnects with back-off
//! when the agent goes away and keeps the last good material meanwhile; each update it
//! receives is applied by the runtime like a rotation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::spiffe::x509_source::X509SourceUpdates;
use ::spiffe::{X509Source, X509Svid};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::SpiffeId;

/// The material of one Workload API update, as the TLS side takes it.
pub struct WorkloadSnapshot {
    /// Our SVID chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its PKCS#8 private key, wiped when dropped.
    pub key: Zeroizing<Vec<u8>>,
    /// CA certificates by trust domain: ours and every federated one.
    pub bundles: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for WorkloadSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSnapshot")
            .field("chain", &self.chain.len())
            .field("bundles", &self.bundles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Picks the SVID whose SPIFFE ID is the configured one.
struct ById(String);

impl ::spiffe::x509_source::SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids
            .iter()
            .position(|s| s.spiffe_id().to_string() == self.0)
    }
}

/// Follows the stream's state as the source reports it: up after each update, down after a
/// stream error until the next one; logs each change once.
#[derive(Debug)]
struct StreamHealth {
    socket: String,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

impl ::spiffe::x509_source::MetricsRecorder for StreamHealth {
    fn record_update(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(socket = %self.socket, "Workload API stream is back");
        }
    }

    fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn record_error(&self, kind: ::spiffe::x509_source::MetricsErrorKind) {
        use ::spiffe::x509_source::MetricsErrorKind as K;
        if matches!(kind, K::StreamConnect | K::StreamError | K::StreamEnded)
            && self.connected.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                socket = %self.socket,
                error = kind.as_str(),
                "Workload API stream lost; the last SVID keeps serving while it reconnects"
            );
        }
    }
}

/// A live connection to the Workload API.
pub struct WorkloadApi {
    source: X509Source,
    health: Arc<StreamHealth>,
    /// One receiver for the connection's life, so an update that lands while the daemon is
    /// busy is still seen at its next wait.
    updates: tokio::sync::Mutex<X509SourceUpdates>,
    socket: String,
    id: Option<SpiffeId>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi")
            .field("socket", &self.socket)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The endpoint as the `spiffe` crate takes it: `unix:/path` or `tcp://ip:port`; a bare
/// absolute path is a Unix socket.
pub fn endpoint(socket: &str) -> String {
    if socket.starts_with('/') {
        format!("unix:{socket}")
    } else {
        socket.to_owned()
    }
}

impl WorkloadApi {
    /// Connects to the agent at `socket` and waits up to `startup_timeout` for our first
    /// SVID (the one named `id`, or the agent's default).
    pub async fn connect(
        socket: &str,
        id: Option<&SpiffeId>,
        startup_timeout: Duration,
    ) -> Result<Self, String> {
        let health = Arc::new(StreamHealth {
            socket: socket.to_owned(),
            connected: AtomicBool::new(true),
            reconnects: AtomicU64::new(0),
        });
        let mut builder = X509Source::builder()
            .endpoint(endpoint(socket))
            .metrics(health.clone())
            .initial_sync_timeout(startup_timeout)
            .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(30));
        if let Some(id) = id {
            builder = builder.picker(ById(id.to_string()));
        }
        let source = tokio::time::timeout(
            startup_timeout + Duration::from_secs(1),
            builder.build(),
        )
        .await
        .map_err(|_| {
            format!(
                "the Workload API at {socket} gave no SVID within {startup_timeout:?}: is the \
                     SPIRE agent running, and is this workload registered?"
            )
        })?
        .map_err(|e| describe(socket, &e))?;
        Ok(Self {
            updates: tokio::sync::Mutex::new(source.updated()),
            health,
            source,
            socket: socket.to_owned(),
            id: id.cloned(),
        })
    }

    /// Whether this connection was made for `socket` and `id`.
    pub fn serves(&self, socket: &str, id: Option<&SpiffeId>) -> bool {
        self.socket == socket && self.id.as_ref() == id
    }

    /// Resolves at the next update of the SVID or bundles (never, once the source is closed).
    pub async fn changed(&self) {
        let mut updates = self.updates.lock().await;
        if updates.changed().await.is_err() {
            drop(updates);
            std::future::pending::<()>().await;
        }
    }

    /// Whether the stream from the agent is up (false from a stream error to the next update).
    pub fn is_connected(&self) -> bool {
        self.health.connected.load(Ordering::Relaxed)
    }

    /// Reconnection attempts since it connected.
    pub fn reconnects(&self) -> u64 {
        self.health.reconnects.load(Ordering::Relaxed)
    }

    /// The material in force: the last good SVID and bundles, even while the agent is away.
    pub fn snapshot(&self) -> Result<WorkloadSnapshot, String> {
        let svid = self.source.svid().map_err(|e| describe(&self.socket, &e))?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = Zeroizing::new(svid.private_key().as_bytes().to_vec());
        let bundles = self
            .source
            .bundle_set()
            .map_err(|e| describe(&self.socket, &e))?
            .iter()
            .map(|(td, bundle)| {
                let certs = bundle
                    .authorities()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect();
                (td.to_string(), certs)
            })
            .collect();
        Ok(WorkloadSnapshot {
            chain,
            key,
            bundles,
        })
    }

    /// Closes the stream.
    pub async fn close(&self) {
        self.source.shutdown().await;
    }
}

/// An error of the source, naming the socket and, for the usual causes, what to do.
fn describe(socket: &str, e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    let hint = if text.contains("PermissionDenied") || text.contains("no identity issued") {
        " (the agent knows no registration entry for this workload: create one with \
         `spire-server entry create -selector unix:uid:…`)"
    } else if text.contains("No such file") || text.contains("Connection refused") {
        " (no agent listens there: is spire-agent running, and is socket right?)"
    } else {
        ""
    };
    format!("Workload API at {socket}: {text}{hint}")
}
