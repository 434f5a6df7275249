//! Starting the daemon from a config, reloading it in place, and stopping it without cutting connections.
//!
//! A reload builds everything new first (identity, TLS configs, sockets for
//! added listeners) and only then commits. Anything that fails leaves the
//! running configuration untouched. On commit, a listener whose name and
//! address are unchanged keeps its socket and only its route is swapped, so
//! new connections see the new policy while accepted ones finish on the old.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mtlsd_crypto::software::Software;
use mtlsd_crypto::{Backend, KeyRef};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::ca::{Authority, LeafSpec};
use crate::config::{
    Config, CryptoConfig, IdentityConfig, IdentitySource, InboundConfig, OutboundConfig,
    SessionResumption,
};
use crate::identity::{CertInfo, IdentityError, Revocations, SpiffeId, Svid, load_bundle};
use crate::metrics::{CertExpiry, Direction, Metrics};
use crate::proxy::Drain;
use crate::proxy::inbound::Inbound;
use crate::proxy::listener::{Listener, Route};
use crate::proxy::outbound::Outbound;
use crate::signing::{DeviceKey, backend_for, load_signing_key};
use crate::tls::tickets::{KeySource, TicketKeyError, Ticketer};
use crate::tls::{LazySessionCache, ServerResumption, TlsIdentity};

/// An open crypto backend and the `[crypto]` settings it was opened with.
type OpenBackend = (CryptoConfig, Arc<dyn Backend>);

/// How long connections still open after the grace period get to log their close line.
const HARD_STOP_LINGER: Duration = Duration::from_secs(1);

/// Why the daemon could not start, or a reload was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The built-in CA could not issue our SVID.
    #[error("identity.ca_dir: {0}")]
    Ca(#[from] crate::ca::CaError),
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
    /// The crypto backend could not be opened (module, engine, provider or PIN).
    #[error("crypto backend {backend}: {source}")]
    Backend {
        /// The backend named in `[crypto]`.
        backend: &'static str,
        /// What failed.
        #[source]
        source: mtlsd_crypto::Error,
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
    /// The session ticket keys could not be loaded.
    #[error("resumption.ticket_key_file: {0}")]
    TicketKeys(#[source] TicketKeyError),
    /// Loading panicked: a bug in mtlsd, reported instead of ending the process.
    #[error("internal error while loading the configuration: {0}")]
    Panicked(String),
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

/// Loads our SVID (its key through `backend`, or freshly issued by the built-in CA), bundle
/// and CRL, and checks they agree with the trust domain.
pub fn load_identity(
    config: &IdentityConfig,
    crypto: &CryptoConfig,
    backend: &dyn Backend,
) -> Result<TlsIdentity, StartError> {
    let (svid, device, renew_at) = match &config.source {
        IdentitySource::Files { cert, key } => {
            let (signing, device) = load_signing_key(crypto, backend, key)
                .map_err(|e| StartError::Identity(IdentityError::Key(e)))?;
            (Svid::with_key(cert, key, signing)?, device, None)
        }
        IdentitySource::Ca { dir, id, ttl, dns } => {
            let ca = Authority::open(dir)?;
            let mut spec = LeafSpec::new(id.clone(), *ttl);
            spec.dns_names = dns.clone();
            let issued = ca.issue(&spec)?;
            let signing = Software::new()
                .key_from_pem(issued.key_pem.as_bytes())
                .map_err(|e| StartError::Identity(IdentityError::Key(e)))?;
            let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    StartError::Identity(IdentityError::Certs {
                        path: dir.clone(),
                        reason: format!("issued chain: {e}"),
                    })
                })?;
            let origin = dir.join("(issued in memory)");
            let svid = Svid::from_chain(chain, &origin, &KeyRef::File(origin.clone()), signing)?;
            info!(id = %id, serial = %issued.serial, not_after = %issued.not_after, ca = %dir.display(), "SVID issued by the built-in CA");
            (svid, None, Some(renewal_time(*ttl)))
        }
    };
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
        device,
        revocations: Arc::new(Revocations::load(config.crl.as_slice())?),
        renew_at,
    })
}

/// When to renew an SVID that lives `ttl`: at half its life, ± a tenth, so a fleet started
/// together does not renew together.
fn renewal_time(ttl: Duration) -> std::time::Instant {
    use aws_lc_rs::rand::SecureRandom;
    let mut byte = [0u8; 2];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut byte);
    let unit = f64::from(u16::from_be_bytes(byte)) / f64::from(u16::MAX); // 0..=1
    let jitter = ttl.mul_f64(0.2 * unit); // 0 .. ttl/5
    std::time::Instant::now() + ttl / 2 - ttl / 10 + jitter
}

/// A listener as it is bound right now, for `/config`-style reporting.
#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    /// Its name.
    pub name: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The address it accepts on.
    pub addr: SocketAddr,
}

/// Everything in effect since the last successful (re)load.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration.
    pub config: Config,
    /// Our SPIFFE ID.
    pub identity: SpiffeId,
    /// The crypto backend's name.
    pub backend: &'static str,
    /// Our chain, leaf first.
    pub chain: Vec<CertInfo>,
    /// The trust bundle's CAs.
    pub bundle: Vec<CertInfo>,
    /// The listeners and their bound addresses.
    pub listeners: Vec<BoundListener>,
    /// When this configuration took effect.
    pub since: SystemTime,
    /// Our key's device, when it lives in one.
    pub device: Option<DeviceKey>,
}

/// The daemon's state as the admin endpoint sees it; shared, and replaced on every reload.
#[derive(Debug)]
pub struct Status {
    current: RwLock<Arc<Snapshot>>,
    draining: AtomicBool,
}

impl Status {
    /// What is in effect now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Ok` when the daemon should receive traffic, else every reason it should not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            problems.push("shutting down: draining connections".to_owned());
        }
        let snapshot = self.snapshot();
        if let Some(leaf) = snapshot.chain.first()
            && leaf.expires <= SystemTime::now()
        {
            problems.push(format!(
                "our certificate {} (serial {}) expired at {}",
                leaf.name(),
                leaf.serial,
                leaf.not_after
            ));
        }
        if let Some(device) = snapshot.device.as_ref().filter(|d| !d.has_fallback)
            && !device.health.is_healthy()
        {
            problems.push(format!(
                "the {} device holding our key {} is failing; handshakes fail until it recovers",
                device.backend, device.key
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// One configured listener, before it has a route.
enum ListenerConfig {
    Inbound(InboundConfig),
    Outbound(OutboundConfig),
}

impl ListenerConfig {
    fn all(config: &Config) -> Vec<Self> {
        let inbound = config.inbound.iter().cloned().map(Self::Inbound);
        let outbound = config.outbound.iter().cloned().map(Self::Outbound);
        inbound.chain(outbound).collect()
    }

    fn name(&self) -> &str {
        match self {
            Self::Inbound(c) => &c.name,
            Self::Outbound(c) => &c.name,
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Self::Inbound(_) => Direction::Inbound,
            Self::Outbound(_) => Direction::Outbound,
        }
    }

    fn listen(&self) -> SocketAddr {
        match self {
            Self::Inbound(c) => c.listen,
            Self::Outbound(c) => c.listen,
        }
    }

    /// Builds the route.
    fn route(
        self,
        tls: &TlsIdentity,
        resumption: &ServerResumption,
        metrics: &Metrics,
    ) -> Result<Route, StartError> {
        let name = self.name().to_owned();
        let listener_metrics = metrics.listener(&name, self.direction());
        let tls_err = |source| StartError::Tls {
            listener: name.clone(),
            source,
        };
        Ok(match self {
            Self::Inbound(c) => {
                let route = Inbound::new(c, tls, resumption, listener_metrics).map_err(tls_err)?;
                Route::Inbound(Arc::new(route))
            }
            Self::Outbound(c) => {
                let route = Outbound::new(c, tls, listener_metrics).map_err(tls_err)?;
                Route::Outbound(Arc::new(route))
            }
        })
    }
}

/// A bound listener and its accept loop.
#[derive(Debug)]
struct Running {
    name: String,
    direction: Direction,
    /// The address as configured (may have port 0).
    configured: SocketAddr,
    /// The address actually bound.
    addr: SocketAddr,
    listener: Arc<Listener>,
    /// Returns the socket when the loop stops, so a reload can hand it to a successor.
    accept_loop: JoinHandle<TcpListener>,
}

/// Where a listener's socket comes from on (re)load.
enum SocketPlan {
    /// Same name, direction and address: keep running listener `i`, swap its route.
    Keep(usize),
    /// Running listener `i` (going away) is bound to the same fixed address: take its socket.
    Handover(usize),
    /// A socket passed by systemd under this listener's name.
    Activated,
    /// Freshly bound.
    Fresh(TcpListener),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Listeners that did not exist before.
    pub added: Vec<String>,
    /// Listeners that no longer exist.
    pub removed: Vec<String>,
    /// Listeners kept, with a new route.
    pub updated: Vec<String>,
}

/// A running daemon: its listeners and the means to reload and drain them.
#[derive(Debug)]
pub struct Daemon {
    drain: Drain,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    running: Vec<Running>,
    /// Sockets systemd passed, by name, not yet claimed by a listener.
    activated: HashMap<String, TcpListener>,
    /// Ticket keys and session caches, kept across reloads while the trust configuration holds.
    resumption: ResumptionState,
    /// The open backend and the settings it was opened with: a reload with the same
    /// `[crypto]` keeps it (and its device sessions).
    backend: Option<OpenBackend>,
    /// Probes our device key back to health; replaced with the key.
    device_probe: Option<tokio::task::AbortHandle>,
    /// When the SVID issued by the built-in CA is due for renewal.
    renew_at: Option<std::time::Instant>,
    /// Serials already warned about as expiring, so each warning is logged once.
    expiry_warned: std::collections::HashSet<String>,
    grace: Duration,
}

/// Resumption state that must outlive a reload, or every returning client would do a full handshake.
#[derive(Debug, Default)]
struct ResumptionState {
    /// The ticketer in use, with the source and trust context it was made for.
    ticketer: Option<(KeySource, [u8; 32], Arc<Ticketer>)>,
    /// Per listener: its session cache and the trust context and size it was made for.
    caches: HashMap<String, ([u8; 32], Arc<LazySessionCache>)>,
}

/// What a reload plans for resumption: per listener, and the state to keep if it commits.
struct PlannedResumption {
    servers: HashMap<String, ServerResumption>,
    state: ResumptionState,
}

impl PlannedResumption {
    fn get(&self, listener: &str) -> Option<&ServerResumption> {
        self.servers.get(listener)
    }
}

impl ResumptionState {
    /// Reuses what still fits the new trust configuration; makes the rest. Changes nothing yet.
    fn prepare(
        &self,
        config: &Config,
        tls: &TlsIdentity,
        wanted: &[ListenerConfig],
    ) -> Result<PlannedResumption, StartError> {
        let context = tls.trust_context();
        let r = &config.resumption;
        let source = match &r.ticket_key_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Generated {
                rotation: r.ticket_rotation,
            },
        };
        let mut state = ResumptionState::default();
        let mut servers = HashMap::new();
        for w in wanted {
            let ListenerConfig::Inbound(c) = w else {
                continue;
            };
            let server = match c.resumption {
                SessionResumption::Off => ServerResumption::Off,
                SessionResumption::Tickets => {
                    if state.ticketer.is_none() {
                        let reused = self
                            .ticketer
                            .as_ref()
                            .filter(|(s, ctx, _)| *s == source && *ctx == context)
                            .map(|(_, _, t)| t.clone());
                        let ticketer = match reused {
                            Some(t) => {
                                t.reload();
                                t
                            }
                            None => {
                                let t = Arc::new(
                                    Ticketer::new(source.clone(), context, r.ticket_rotation)
                                        .map_err(StartError::TicketKeys)?,
                                );
                                t.watch();
                                t
                            }
                        };
                        state.ticketer = Some((source.clone(), context, ticketer));
                    }
                    let (_, _, t) = state.ticketer.as_ref().expect("set above");
                    ServerResumption::Tickets(t.clone())
                }
                SessionResumption::Cache => {
                    let cache = self
                        .caches
                        .get(&c.name)
                        .filter(|(ctx, cache)| {
                            *ctx == context && cache.size() == r.session_cache_size
                        })
                        .map(|(_, cache)| cache.clone())
                        .unwrap_or_else(|| LazySessionCache::new(r.session_cache_size));
                    state
                        .caches
                        .insert(c.name.clone(), (context, cache.clone()));
                    ServerResumption::Cache {
                        cache,
                        early_data: c.early_data,
                    }
                }
            };
            servers.insert(c.name.clone(), server);
        }
        Ok(PlannedResumption { servers, state })
    }

    fn commit(&mut self, planned: PlannedResumption) {
        *self = planned.state;
    }
}

impl Daemon {
    /// Loads the identity, binds every listener and starts serving.
    ///
    /// Binding happens before anything is served, so a port conflict fails the
    /// start instead of leaving a half-running daemon.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, Vec::new(), Arc::new(Metrics::new())).await
    }

    /// Like [`Daemon::start`], with sockets from systemd (matched to listeners by name) and shared metrics.
    pub async fn start_with(
        config: Config,
        activated: Vec<(String, std::net::TcpListener)>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let mut sockets = HashMap::new();
        for (name, socket) in activated {
            match TcpListener::from_std(socket) {
                Ok(s) => {
                    sockets.insert(name, s);
                }
                Err(e) => error!(fd_name = %name, error = %e, "cannot use socket-activated fd"),
            }
        }
        let (backend, tls) = load(None, &config).await?;
        let backend_name = backend.1.name();
        let mut daemon = Self {
            drain: Drain::new(),
            status: Arc::new(Status {
                current: RwLock::new(Arc::new(snapshot(&config, &tls, backend_name, Vec::new()))),
                draining: AtomicBool::new(false),
            }),
            metrics,
            running: Vec::new(),
            activated: sockets,
            resumption: ResumptionState::default(),
            backend: None,
            device_probe: None,
            renew_at: None,
            expiry_warned: Default::default(),
            grace: config.shutdown_grace,
        };
        daemon.apply(config, tls, backend).await?;
        let backend = backend_name;
        for name in daemon.activated.keys() {
            warn!(fd_name = %name, "socket-activated fd matches no listener name; it stays unused");
        }
        info!(identity = %daemon.status.snapshot().identity, backend, "ready");
        Ok(daemon)
    }

    /// Replaces the running configuration with `config`, or changes nothing and says why.
    pub async fn reload(&mut self, config: Config) -> Result<ReloadSummary, StartError> {
        let result = match load(self.backend.as_ref(), &config).await {
            Ok((backend, tls)) => self.apply(config, tls, backend).await,
            Err(e) => Err(e),
        };
        self.metrics.reloaded(result.is_ok());
        match &result {
            Ok(summary) => info!(
                identity = %self.status.snapshot().identity,
                added = ?summary.added,
                removed = ?summary.removed,
                updated = ?summary.updated,
                "configuration reloaded"
            ),
            Err(e) => {
                error!(error = %e, "reload rejected; the previous configuration keeps serving")
            }
        }
        result
    }

    async fn apply(
        &mut self,
        config: Config,
        tls: TlsIdentity,
        backend: OpenBackend,
    ) -> Result<ReloadSummary, StartError> {
        let wanted = ListenerConfig::all(&config);

        // Plan every socket before touching anything that runs.
        let mut claimed = vec![false; self.running.len()];
        let mut plan: Vec<Option<SocketPlan>> = wanted
            .iter()
            .map(|w| {
                let i = self.running.iter().enumerate().position(|(i, r)| {
                    !claimed[i]
                        && r.name == w.name()
                        && r.direction == w.direction()
                        && r.configured == w.listen()
                })?;
                claimed[i] = true;
                Some(SocketPlan::Keep(i))
            })
            .collect();
        for (w, p) in wanted.iter().zip(plan.iter_mut()) {
            if p.is_some() {
                continue;
            }
            let handover = (w.listen().port() != 0)
                .then(|| {
                    self.running
                        .iter()
                        .enumerate()
                        .position(|(i, r)| !claimed[i] && r.configured == w.listen())
                })
                .flatten();
            *p = Some(if let Some(i) = handover {
                claimed[i] = true;
                SocketPlan::Handover(i)
            } else if self.activated.contains_key(w.name()) {
                SocketPlan::Activated
            } else {
                SocketPlan::Fresh(bind(w.name(), w.listen()).await?)
            });
        }
        let plan: Vec<SocketPlan> = plan.into_iter().flatten().collect();

        let resumption = self.resumption.prepare(&config, &tls, &wanted)?;
        let mut routes = Vec::with_capacity(wanted.len());
        for w in wanted {
            let server = resumption
                .get(w.name())
                .cloned()
                .unwrap_or(ServerResumption::Off);
            routes.push(w.route(&tls, &server, &self.metrics)?);
        }

        // Commit: nothing below can fail the reload.
        self.resumption.commit(resumption);
        let backend_name = backend.1.name();
        self.backend = Some(backend);
        if let Some(probe) = self.device_probe.take() {
            probe.abort();
        }
        self.device_probe = tls.device.as_ref().map(|d| d.probe().abort_handle());
        self.renew_at = tls.renew_at;
        self.metrics
            .set_device_keys(tls.device.iter().cloned().collect());
        let mut summary = ReloadSummary::default();
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Some)
            .collect();
        let mut handed_over = HashMap::new();
        for (i, slot) in old.iter_mut().enumerate() {
            let kept = plan
                .iter()
                .any(|p| matches!(p, SocketPlan::Keep(k) if *k == i));
            if kept {
                continue;
            }
            let Some(r) = slot.take() else { continue };
            r.listener.stop();
            // The loop returns its socket once it has stopped accepting.
            let socket = r.accept_loop.await;
            let handover = plan
                .iter()
                .any(|p| matches!(p, SocketPlan::Handover(h) if *h == i));
            match socket {
                Ok(socket) if handover => {
                    handed_over.insert(i, socket);
                }
                Ok(_) => {}
                Err(e) => error!(listener = %r.name, error = %e, "accept loop ended abnormally"),
            }
            if !handover {
                info!(listener = %r.name, addr = %r.addr, "listener removed; its open connections continue");
                summary.removed.push(r.name);
            }
        }
        for (route, p) in routes.into_iter().zip(plan) {
            let activated = matches!(p, SocketPlan::Activated);
            let socket = match p {
                SocketPlan::Keep(i) => {
                    let Some(r) = old[i].take() else { continue };
                    r.listener.replace(route);
                    summary.updated.push(r.name.clone());
                    self.running.push(r);
                    continue;
                }
                SocketPlan::Handover(i) => match handed_over.remove(&i) {
                    Some(s) => s,
                    // Only if the old loop panicked: try binding again.
                    None => match bind(route.name(), route.listen()).await {
                        Ok(s) => s,
                        Err(e) => {
                            error!(error = %e, "listener lost in reload");
                            continue;
                        }
                    },
                },
                SocketPlan::Activated => match self.activated.remove(route.name()) {
                    Some(s) => s,
                    None => continue,
                },
                SocketPlan::Fresh(s) => s,
            };
            summary.added.push(route.name().to_owned());
            self.running.push(self.spawn(route, socket, activated));
        }

        let listeners = self
            .running
            .iter()
            .map(|r| BoundListener {
                name: r.name.clone(),
                direction: r.direction.as_str(),
                addr: r.addr,
            })
            .collect();
        let snapshot = snapshot(&config, &tls, backend_name, listeners);
        self.metrics.set_certificates(&expiries(&snapshot));
        *self
            .status
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        self.grace = config.shutdown_grace;
        Ok(summary)
    }

    /// Starts accepting on `socket`; `activated` says it came from systemd.
    fn spawn(&self, route: Route, socket: TcpListener, activated: bool) -> Running {
        let addr = socket.local_addr().unwrap_or(route.listen());
        match &route {
            Route::Inbound(i) => info!(
                listener = %route.name(),
                direction = "inbound",
                addr = %addr,
                forward = %i.config().forward,
                activated,
                "listening"
            ),
            Route::Outbound(o) => info!(
                listener = %route.name(),
                direction = "outbound",
                addr = %addr,
                connect = %o.config().connect,
                server_id = %o.config().server_id,
                activated,
                "listening"
            ),
        }
        let name = route.name().to_owned();
        let direction = route.direction();
        let configured = route.listen();
        let listener = Listener::new(route, &self.drain);
        let accept_loop = tokio::spawn(listener.clone().serve(socket, self.drain.clone()));
        Running {
            name,
            direction,
            configured,
            addr,
            listener,
            accept_loop,
        }
    }

    /// Reloads the configuration in effect: re-reads certificate, key, bundle and CRL files and
    /// (with the built-in CA) issues a fresh SVID. The config file itself is not re-read.
    pub async fn refresh(&mut self) -> Result<ReloadSummary, StartError> {
        let config = self.status.snapshot().config.clone();
        self.reload(config).await
    }

    /// When our CA-issued SVID should be renewed (`None` for file-based identities).
    pub fn renew_at(&self) -> Option<std::time::Instant> {
        self.renew_at
    }

    /// The files whose changes should reload the identity: certificate, key, bundle, CRL.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let snapshot = self.status.snapshot();
        let identity = &snapshot.config.identity;
        let mut files = Vec::new();
        if let IdentitySource::Files { cert, key } = &identity.source {
            files.push(cert.clone());
            if let KeyRef::File(path) = key {
                files.push(path.clone());
            }
        }
        files.push(identity.bundle.clone());
        files.extend(identity.crl.clone());
        files
    }

    /// Logs, once per certificate, that our SVID is past two thirds of its life or a bundle CA
    /// expires within a week; a renewed or rotated certificate starts over.
    pub fn warn_if_expiring(&mut self) {
        let snapshot = self.status.snapshot();
        let now = SystemTime::now();
        if let Some(leaf) = snapshot.chain.first() {
            let remaining = leaf.expires.duration_since(now).unwrap_or_default();
            let lifetime = leaf.expires.duration_since(leaf.issued).unwrap_or_default();
            if remaining < lifetime / 3 && self.expiry_warned.insert(leaf.serial.clone()) {
                warn!(cert = %leaf.name(), serial = %leaf.serial, not_after = %leaf.not_after,
                      remaining_s = remaining.as_secs(),
                      "our certificate is past two thirds of its lifetime and has not been renewed");
            }
        }
        for ca in &snapshot.bundle {
            let remaining = ca.expires.duration_since(now).unwrap_or_default();
            if remaining < EXPIRY_WARNING && self.expiry_warned.insert(ca.serial.clone()) {
                warn!(cert = %ca.name(), serial = %ca.serial, not_after = %ca.not_after,
                      "a CA certificate of the bundle expires within 7 days");
            }
        }
    }

    /// The address each listener is bound to, by listener name.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.running
            .iter()
            .find(|r| r.name == listener)
            .map(|r| r.addr)
    }

    /// The metrics every listener reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the admin endpoint reports.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Stops accepting, waits up to the grace period for connections to finish, then closes the rest.
    pub async fn shutdown(self) {
        self.status.draining.store(true, Ordering::Relaxed);
        self.drain.stop_accepting.cancel();
        // Once the accept loops have returned, the listening sockets are closed and
        // the tracker holds exactly the established connections.
        for r in self.running {
            drop(r.accept_loop.await);
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

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Opens the backend `config` names (reusing `current` when `[crypto]` is unchanged) and loads the identity.
///
/// This reads files, may wait for the CA directory's lock and may open a PKCS#11 module, so it
/// runs on the blocking pool, never on an event-loop thread.
async fn load(
    current: Option<&OpenBackend>,
    config: &Config,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let (current, config) = (current.cloned(), config.clone());
    tokio::task::spawn_blocking(move || load_blocking(current.as_ref(), &config))
        .await
        .unwrap_or_else(|e| {
            // A bug while loading must reject this (re)load, not take the serving daemon down.
            Err(StartError::Panicked(panic_message(e)))
        })
}

fn load_blocking(
    current: Option<&OpenBackend>,
    config: &Config,
) -> Result<(OpenBackend, TlsIdentity), StartError> {
    let backend = match current {
        Some((c, b)) if *c == config.crypto => b.clone(),
        _ => backend_for(&config.crypto).map_err(|source| StartError::Backend {
            backend: config.crypto.backend.name(),
            source,
        })?,
    };
    let tls = load_identity(&config.identity, &config.crypto, backend.as_ref())?;
    Ok(((config.crypto.clone(), backend), tls))
}

fn snapshot(
    config: &Config,
    tls: &TlsIdentity,
    backend: &'static str,
    listeners: Vec<BoundListener>,
) -> Snapshot {
    let (chain, bundle) = tls.certificates();
    Snapshot {
        config: config.clone(),
        identity: tls.svid.id.clone(),
        backend,
        chain,
        bundle,
        listeners,
        since: SystemTime::now(),
        device: tls.device.clone(),
    }
}

fn expiries(snapshot: &Snapshot) -> Vec<CertExpiry> {
    let leaf = snapshot.chain.first().map(|c| ("svid", c));
    let cas = snapshot.bundle.iter().map(|c| ("bundle", c));
    leaf.into_iter()
        .chain(cas)
        .map(|(role, c)| CertExpiry {
            role,
            subject: c.name().to_owned(),
            serial: c.serial.clone(),
            not_after: c.expires,
        })
        .collect()
}

/// Below this much remaining validity, loading a certificate logs a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: listener.to_owned(),
            addr,
            source,
        })
}
