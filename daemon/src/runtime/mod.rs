//! Starting the daemon from a config, reloading it in place, and stopping it without cutting connections.
//!
//! A reload builds everything new first (identity, TLS configs, sockets for
//! added listeners) and only then commits. Anything that fails leaves the
//! running configuration untouched. On commit, a listener whose name and
//! address are unchanged keeps its socket and only its route is swapped, so
//! new connections see the new policy while accepted ones finish on the old.

mod error;
mod identity;
mod plan;
mod recheck;
mod resumption;
mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mtlsd_crypto::KeyRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use self::error::StartError;
use self::identity::{OpenBackend, load};
pub use self::identity::{check_identity, load_identity};
use self::plan::{ListenerConfig, SocketKey, SocketSource, plan_sockets};
use self::resumption::ResumptionState;
pub use self::status::{BoundListener, Snapshot, Status};
use self::status::{expiries, snapshot};
use crate::config::{Config, IdentitySource};
use crate::identity::{WorkloadApi, WorkloadSnapshot};
use crate::metrics::Metrics;
use crate::proxy::Drain;
use crate::proxy::listener::{Listener, Route};
use crate::proxy::live::RecheckMode;
use crate::tls::{ServerResumption, TlsIdentity};

/// How long connections still open after the grace period get to log their close line.
const HARD_STOP_LINGER: Duration = Duration::from_secs(1);

/// A bound listener and its accept loop.
#[derive(Debug)]
///
/// Its name, direction and configured address are its route's: they live once, there.
struct Running {
    /// The address actually bound.
    addr: SocketAddr,
    listener: Arc<Listener>,
    /// Returns the socket when the loop stops, so a reload can hand it to a successor.
    accept_loop: JoinHandle<TcpListener>,
}

impl Running {
    fn name(&self) -> String {
        self.listener.route().name().to_owned()
    }

    fn key(&self) -> SocketKey {
        let route = self.listener.route();
        SocketKey {
            name: route.name().to_owned(),
            direction: route.direction(),
            listen: route.listen(),
        }
    }
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
    /// What a change does to open connections that would no longer be admitted.
    recheck: RecheckMode,
    /// Closes connections past their `max_connection_lifetime`.
    lifetime_sweep: tokio::task::JoinHandle<()>,
    /// The SPIRE agent's stream, with `source = "workload_api"`.
    workload: Option<Arc<WorkloadApi>>,
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
        let workload = connect_workload(None, &config).await?;
        let material = snapshot_of(workload.as_deref())?;
        let (backend, tls) = load(None, &config, material).await?;
        let backend_name = backend.1.name();
        let drain = Drain::new();
        let lifetime_sweep = recheck::spawn_lifetime_sweep(drain.live.clone(), metrics.clone());
        let mut daemon = Self {
            drain,
            recheck: config.recheck,
            lifetime_sweep,
            workload,
            status: Arc::new(Status::new(snapshot(
                &config,
                &tls,
                backend_name,
                Vec::new(),
            ))),
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
        daemon.metrics.set_workload(daemon.workload.as_ref());
        daemon.metrics.set_decisions(&daemon.drain.decisions);
        let backend = backend_name;
        for name in daemon.activated.keys() {
            let listeners: Vec<_> = daemon.running.iter().map(Running::name).collect();
            error!(fd_name = %name, ?listeners,
                "systemd passed a socket that no listener serves: its clients will never be \
                 answered; name a listener after FileDescriptorName= (/ready reports 503 until then)");
        }
        info!(identity = %daemon.status.snapshot().identity, backend, "ready");
        Ok(daemon)
    }

    /// Replaces the running configuration with `config`, or changes nothing and says why.
    pub async fn reload(&mut self, config: Config) -> Result<ReloadSummary, StartError> {
        let result = async {
            let workload = connect_workload(self.workload.as_ref(), &config).await?;
            let material = snapshot_of(workload.as_deref())?;
            let (backend, tls) = load(self.backend.as_ref(), &config, material).await?;
            let summary = self.apply(config, tls, backend).await?;
            if let Some(old) = std::mem::replace(&mut self.workload, workload)
                && !self.workload.as_ref().is_some_and(|w| Arc::ptr_eq(w, &old))
            {
                old.close().await;
            }
            self.metrics.set_workload(self.workload.as_ref());
            Ok(summary)
        }
        .await;
        match &result {
            Ok(summary) => {
                self.metrics.reloaded(true);
                info!(
                    identity = %self.status.snapshot().identity,
                    added = ?summary.added,
                    removed = ?summary.removed,
                    updated = ?summary.updated,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.reload_rejected(e);
            }
        }
        result
    }

    /// Counts and logs a rejected reload, whatever rejected it (the config file or the daemon),
    /// and returns the reason for a status line.
    pub fn reload_rejected(&self, reason: &dyn std::fmt::Display) -> String {
        self.metrics.reloaded(false);
        let reason = reason.to_string();
        error!(error = %reason, "reload rejected; the previous configuration keeps serving");
        reason
    }

    async fn apply(
        &mut self,
        config: Config,
        tls: TlsIdentity,
        backend: OpenBackend,
    ) -> Result<ReloadSummary, StartError> {
        let wanted = ListenerConfig::all(&config);

        // Plan every socket before touching anything that runs.
        let running: Vec<_> = self.running.iter().map(Running::key).collect();
        let keys: Vec<_> = wanted.iter().map(ListenerConfig::key).collect();
        let sources = plan_sockets(&running, &keys, |name| self.activated.contains_key(name));
        let mut plan = Vec::with_capacity(sources.len());
        for (w, source) in wanted.iter().zip(sources) {
            plan.push(match source {
                SocketSource::Keep(i) => SocketPlan::Keep(i),
                SocketSource::Handover(i) => SocketPlan::Handover(i),
                SocketSource::Activated => SocketPlan::Activated,
                SocketSource::Bind => SocketPlan::Fresh(bind(w.name(), w.listen()).await?),
            });
        }

        let resumption = self.resumption.prepare(&config, &tls, &wanted)?;
        // The audit writer is started before anything is committed: a file that cannot be
        // opened rejects the reload like a missing certificate.
        let audit_writer = match &config.audit {
            None => None,
            Some(audit) => match self.drain.decisions.current_writer() {
                Some(w) if w.serves(audit) => Some(w),
                // Resuming the chain reads the whole file: off the event loop.
                _ => {
                    let audit = audit.clone();
                    let started =
                        tokio::task::spawn_blocking(move || crate::audit::Writer::start(&audit))
                            .await
                            .map_err(|e| StartError::Panicked(e.to_string()))?;
                    Some(started.map_err(StartError::Audit)?)
                }
            },
        };
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
        let previous = self.drain.decisions.set_writer(audit_writer.clone());
        if let Some(old) = previous
            && !audit_writer.as_ref().is_some_and(|w| Arc::ptr_eq(w, &old))
        {
            // Off the event loop: closing joins the writer thread, which flushes and syncs.
            tokio::task::spawn_blocking(move || old.close());
        }
        let generation = self.drain.decisions.next_generation();
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
            let (name, addr) = (r.name(), r.addr);
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
                Err(e) => error!(listener = %name, error = %e, "accept loop ended abnormally"),
            }
            if !handover {
                info!(listener = %name, addr = %addr, "listener removed; its open connections continue");
                summary.removed.push(name);
            }
        }
        for (route, p) in routes.into_iter().zip(plan) {
            let activated = matches!(p, SocketPlan::Activated);
            let socket = match p {
                SocketPlan::Keep(i) => {
                    let Some(r) = old[i].take() else { continue };
                    r.listener.replace(route);
                    summary.updated.push(r.name());
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
            .map(|r| {
                let route = r.listener.route();
                BoundListener {
                    name: route.name().to_owned(),
                    direction: route.direction().as_str(),
                    addr: r.addr,
                }
            })
            .collect();
        let snapshot = snapshot(&config, &tls, backend_name, listeners);
        self.metrics.set_certificates(&expiries(&snapshot));
        self.status.replace(snapshot);
        self.status
            .set_unclaimed_sockets(self.activated.keys().cloned().collect());
        self.grace = config.shutdown_grace;
        self.recheck = config.recheck;
        tracing::debug!(generation, "configuration generation in force");
        // Open connections meet the policy, CRLs and bundle now in force.
        let routes = self
            .running
            .iter()
            .map(|r| {
                let route = r.listener.route();
                (route.name().to_owned(), route)
            })
            .collect();
        recheck::recheck(&self.drain.live, self.recheck, &routes, &tls, &self.metrics);
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
        let listener = Listener::new(route, &self.drain);
        let accept_loop = tokio::spawn(listener.clone().serve(socket, self.drain.clone()));
        Running {
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

    /// Where decisions are recorded: the audit file and the live view.
    pub fn decisions(&self) -> &Arc<crate::audit::Decisions> {
        &self.drain.decisions
    }

    /// The Workload API stream our identity comes from, if it does.
    pub fn workload(&self) -> Option<Arc<WorkloadApi>> {
        self.workload.clone()
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
        files.extend(identity.bundle.clone());
        files.extend(identity.crl.clone());
        files.extend(identity.federated.iter().map(|f| f.bundle.clone()));
        files
    }

    /// Logs, once per certificate, that our SVID is past two thirds of its life or a bundle CA
    /// expires within a week; a renewed or rotated certificate starts over.
    pub fn warn_if_expiring(&mut self) {
        self.status.warn_if_expiring(&mut self.expiry_warned);
    }

    /// The address each listener is bound to, by listener name.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.running
            .iter()
            .find(|r| r.listener.route().name() == listener)
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
        self.lifetime_sweep.abort();
        self.status.set_draining();
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
        // Every record of the drained connections is written and synced before we say so.
        if let Some(writer) = self.drain.decisions.set_writer(None) {
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        info!("stopped");
    }
}

/// The Workload API connection `config` asks for: `current` when it serves the same socket
/// and ID, a new one otherwise (waiting for its first SVID), none for other sources.
async fn connect_workload(
    current: Option<&Arc<WorkloadApi>>,
    config: &Config,
) -> Result<Option<Arc<WorkloadApi>>, StartError> {
    let IdentitySource::WorkloadApi {
        socket,
        id,
        startup_timeout,
    } = &config.identity.source
    else {
        return Ok(None);
    };
    if let Some(current) = current.filter(|w| w.serves(socket, id.as_ref())) {
        return Ok(Some(current.clone()));
    }
    info!(socket = %socket, timeout = ?startup_timeout, "waiting for our SVID from the Workload API");
    let api = WorkloadApi::connect(socket, id.as_ref(), *startup_timeout)
        .await
        .map_err(StartError::Workload)?;
    Ok(Some(Arc::new(api)))
}

/// The material the Workload API holds now, if it is our source.
fn snapshot_of(workload: Option<&WorkloadApi>) -> Result<Option<WorkloadSnapshot>, StartError> {
    workload
        .map(WorkloadApi::snapshot)
        .transpose()
        .map_err(StartError::Workload)
}

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: listener.to_owned(),
            addr,
            cause: source,
        })
}
