//! The running process around a [`Daemon`]: signals, file watching, SVID renewal,
//! expiry warnings, the admin endpoint and systemd notifications.
//!
//! [`Supervisor::start`] brings everything up; [`Supervisor::run`] turns what
//! happens (a signal, a changed file, a renewal falling due) into an [`Event`] and
//! handles it, until SIGTERM or SIGINT drains the daemon. Tests drive
//! [`Supervisor::handle`] directly, without signals or the binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{Admin, LogControl};
use crate::ca::CaError;
use crate::config::{AdminConfig, Config, ConfigError};
use crate::demo;
use crate::metrics::Metrics;
use crate::runtime::{Daemon, StartError};
use crate::systemd::{self, ActivationError, Notifier};
use crate::watch::FileWatch;

/// How often certificate, key, bundle and CRL files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often certificate lifetimes are checked for warnings.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a failed SVID renewal is retried.
const RENEWAL_RETRY: Duration = Duration::from_secs(30);

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded demo could not prepare its CA and SVIDs.
    #[error("preparing the demo: {0}")]
    Demo(CaError),
    /// The daemon could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Sockets passed by systemd could not be used.
    #[error("socket activation: {0}")]
    Activation(ActivationError),
    /// Something the supervisor needs from the OS failed (a signal handler, a socket).
    #[error("{what}: {cause}")]
    Io {
        /// What was being set up.
        what: String,
        /// The OS error.
        cause: std::io::Error,
    },
}

// By hand rather than `#[from]`, which would also make the wrapped error the `source()`:
// the message already quotes it (see ARCHITECTURE.md, Errors).
impl From<ActivationError> for SupervisorError {
    fn from(e: ActivationError) -> Self {
        Self::Activation(e)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io {
        what,
        cause: source,
    }
}

/// Where the configuration comes from, at start and again on every SIGHUP.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A config file.
    File(PathBuf),
    /// The embedded demo, with its state in this directory.
    Demo(PathBuf),
}

impl ConfigSource {
    /// The config, and for the demo the files it made; `ports` are the demo's, chosen once.
    fn load(
        &self,
        ports: Option<demo::DemoPorts>,
    ) -> Result<(Config, Option<demo::DemoFiles>), SupervisorError> {
        match (self, ports) {
            (Self::File(path), _) => Ok((Config::load(path)?, None)),
            (Self::Demo(dir), Some(ports)) => {
                let (config, files) = demo::prepare(dir, ports).map_err(SupervisorError::Demo)?;
                Ok((config, Some(files)))
            }
            (Self::Demo(_), None) => unreachable!("the demo's ports are chosen at start"),
        }
    }
}

/// Something the supervisor reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Re-read the config (SIGHUP).
    Reload,
    /// Identity files changed on disk: reload them.
    FilesChanged,
    /// Our CA-issued SVID is due for renewal.
    Renew,
    /// The Workload API sent a new SVID or bundle.
    IdentityUpdated,
    /// Reopen the audit file (SIGUSR1, after an external logrotate).
    ReopenAudit,
    /// Time to check certificate lifetimes for warnings.
    CheckExpiry,
    /// Drain and exit (SIGTERM or SIGINT).
    Stop(&'static str),
}

/// Signal handlers, installed first so a SIGTERM during start-up is not lost.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

/// A started daemon and everything that keeps it running.
pub struct Supervisor {
    source: ConfigSource,
    /// The demo's ports, chosen once so reloads keep them.
    demo_ports: Option<demo::DemoPorts>,
    daemon: Daemon,
    admin_config: Option<AdminConfig>,
    stop_admin: CancellationToken,
    notifier: Option<Arc<Notifier>>,
    signals: Signals,
    watch: FileWatch,
    watch_tick: Interval,
    expiry_tick: Interval,
    renew_at: Option<Instant>,
}

impl Supervisor {
    /// Loads the config, starts the daemon and the admin endpoint, and tells systemd it is ready.
    ///
    /// `log` lets the admin endpoint change the log filter; the demo's upstream and
    /// instructions are started here too when the source is the demo.
    pub async fn start(
        source: ConfigSource,
        log: Option<Arc<dyn LogControl>>,
    ) -> Result<Self, SupervisorError> {
        let signals = Signals {
            term: signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?,
            int: signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?,
            hup: signal(SignalKind::hangup()).map_err(io("installing the SIGHUP handler"))?,
            usr1: signal(SignalKind::user_defined1())
                .map_err(io("installing the SIGUSR1 handler"))?,
        };
        let demo_ports = match &source {
            ConfigSource::File(_) => None,
            ConfigSource::Demo(dir) => {
                info!(state_dir = %dir.display(), "no --config given: starting the embedded demo");
                Some(demo::DemoPorts::choose().map_err(io("choosing the demo's ports"))?)
            }
        };
        let (config, demo_files) = source.load(demo_ports)?;
        if let Some(files) = &demo_files {
            demo::serve_upstream(&files.upstream_socket)
                .await
                .map_err(io(format!(
                    "starting the demo service on {}",
                    files.upstream_socket.display()
                )))?;
        }
        log_descriptor_budget(&config);
        let activated = systemd::take_listen_fds()?;
        let admin_config = config.admin.clone();
        // The admin socket is bound before READY so a scraper never races the start.
        let admin_socket = match &admin_config {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a.listen)
                    .await
                    .map_err(io(format!("admin endpoint: cannot listen on {}", a.listen)))?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let daemon = Daemon::start_with(config, activated, metrics.clone()).await?;
        metrics.reloaded(true);
        let stop_admin = CancellationToken::new();
        if let Some(socket) = admin_socket {
            let admin = Arc::new(Admin {
                status: daemon.status().clone(),
                metrics,
                log,
                decisions: daemon.decisions().clone(),
            });
            tokio::spawn(admin.serve(socket, stop_admin.clone()));
        }
        if let Some(files) = &demo_files {
            demo::log_instructions(files);
        }
        let notifier = Notifier::from_env().map(Arc::new);
        let supervisor = Self {
            source,
            demo_ports,
            watch: FileWatch::new(daemon.watched_files()),
            renew_at: daemon.renew_at(),
            daemon,
            admin_config,
            stop_admin,
            notifier,
            signals,
            watch_tick: tokio::time::interval(WATCH_INTERVAL),
            expiry_tick: tokio::time::interval(EXPIRY_CHECK_INTERVAL),
        };
        if let Some(notifier) = &supervisor.notifier {
            notifier.ready(&supervisor.status_line());
            if let Some(every) = systemd::watchdog_interval() {
                // Pinged from a task on the same runtime: if the event loop wedges, the pings
                // stop and systemd restarts us.
                let notifier = notifier.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        notifier.watchdog();
                    }
                });
            }
        }
        Ok(supervisor)
    }

    /// The daemon being supervised.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Handles events until SIGTERM or SIGINT, then drains the daemon and stops the admin endpoint.
    pub async fn run(mut self) {
        let signal = loop {
            match self.next_event().await {
                Event::Stop(signal) => break signal,
                event => self.handle(event).await,
            }
        };
        self.stop(signal).await;
    }

    /// Waits for the next thing to react to.
    async fn next_event(&mut self) -> Event {
        loop {
            let renewal = async {
                match self.renew_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let workload = self.daemon.workload();
            let identity_update = async {
                match &workload {
                    Some(api) => api.changed().await,
                    None => std::future::pending().await,
                }
            };
            return tokio::select! {
                _ = self.signals.term.recv() => Event::Stop("SIGTERM"),
                _ = self.signals.int.recv() => Event::Stop("SIGINT"),
                _ = self.signals.hup.recv() => Event::Reload,
                _ = self.signals.usr1.recv() => Event::ReopenAudit,
                () = renewal => Event::Renew,
                () = identity_update => Event::IdentityUpdated,
                _ = self.expiry_tick.tick() => Event::CheckExpiry,
                _ = self.watch_tick.tick() => {
                    if !self.watch.poll() {
                        continue;
                    }
                    Event::FilesChanged
                }
            };
        }
    }

    /// Reacts to one event; a failed reload leaves the running configuration serving.
    pub async fn handle(&mut self, event: Event) {
        let outcome = match event {
            Event::Stop(_) => return,
            Event::CheckExpiry => {
                self.daemon.warn_if_expiring();
                return;
            }
            Event::ReopenAudit => {
                match self.daemon.decisions().current_writer() {
                    Some(writer) => writer.reopen(),
                    None => info!("SIGUSR1 received, but no audit file is configured"),
                }
                return;
            }
            Event::Reload => {
                info!("SIGHUP received: reloading configuration");
                if let Some(n) = &self.notifier {
                    n.reloading();
                }
                match self.source.load(self.demo_ports) {
                    Ok((config, _)) => {
                        if config.admin != self.admin_config {
                            warn!(
                                "admin.listen changed; the admin endpoint keeps its address until restart"
                            );
                        }
                        self.daemon
                            .reload(config)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(self.daemon.reload_rejected(&e)),
                }
            }
            Event::FilesChanged => {
                info!(files = ?self.watch.files(), "identity files changed: reloading them");
                self.daemon
                    .refresh()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Event::IdentityUpdated => {
                info!("the Workload API sent a new SVID or bundle: applying it");
                self.daemon
                    .refresh()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Event::Renew => {
                info!("renewing our SVID from the built-in CA");
                let result = self
                    .daemon
                    .refresh()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string());
                if result.is_err() {
                    // The old SVID keeps serving; try again soon rather than in a tight loop.
                    self.renew_at = Some(Instant::now() + RENEWAL_RETRY);
                }
                result
            }
        };
        if outcome.is_ok() {
            self.renew_at = self.daemon.renew_at();
        }
        // Whatever triggered it, the reload read the files as they are now.
        self.watch = FileWatch::new(self.daemon.watched_files());
        if let Some(n) = &self.notifier {
            let status = match outcome {
                Ok(()) => self.status_line(),
                Err(e) => format!("{}; last reload failed: {e}", self.status_line()),
            };
            n.ready(&status);
        }
    }

    async fn stop(self, signal: &'static str) {
        info!(signal, "shutting down");
        if let Some(notifier) = &self.notifier {
            notifier.stopping(&format!("{signal}: draining connections"));
        }
        self.daemon.shutdown().await;
        self.stop_admin.cancel();
    }

    fn status_line(&self) -> String {
        let s = self.daemon.status().snapshot();
        format!("serving {} listeners as {}", s.listeners.len(), s.identity)
    }
}

/// Descriptors kept for listening sockets, the admin endpoint, key and config files.
const DESCRIPTOR_RESERVE: u64 = 64;

/// The soft limit on open descriptors, from `/proc/self/limits` (`None` if unreadable or unlimited).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Logs how many proxied connections the descriptor limit allows (two descriptors each), and
/// warns when the listeners' `max_connections` add up to more: past that, accepts fail with
/// EMFILE instead of being refused with a reason.
fn log_descriptor_budget(config: &Config) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    let connections = limit.saturating_sub(DESCRIPTOR_RESERVE) / 2;
    let configured: u64 = config
        .inbound
        .iter()
        .map(|l| l.limits.max_connections as u64)
        .chain(
            config
                .outbound
                .iter()
                .map(|l| l.limits.max_connections as u64),
        )
        .sum();
    info!(
        open_files_limit = limit,
        connections, "the descriptor limit allows this many proxied connections"
    );
    if configured > connections {
        warn!(
            open_files_limit = limit,
            connections,
            max_connections_total = configured,
            "the listeners' max_connections add up to more than the descriptor limit allows; \
             raise LimitNOFILE (ulimit -n) or lower max_connections"
        );
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("source", &self.source)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_read_from_proc() {
        let limit = open_files_limit().expect("Linux has /proc/self/limits");
        let mut soft = std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn"])
            .output()
            .unwrap()
            .stdout;
        soft.retain(|b| b.is_ascii_digit());
        assert_eq!(limit.to_string().into_bytes(), soft);
    }
}
