//! systemd integration: service notifications and socket activation.
//!
//! Notifications (`sd_notify(3)`) are one datagram of `KEY=VALUE` lines sent to
//! the socket named by `$NOTIFY_SOCKET`: a path, or an abstract socket when it
//! starts with `@`. Outside systemd the variable is unset and every call is a no-op.
//!
//! Socket activation (`sd_listen_fds(3)`) passes listening sockets as file
//! descriptors 3, 4, … with `$LISTEN_FDS`, `$LISTEN_PID` and `$LISTEN_FDNAMES`.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET`, or returns `None` when not run by systemd with `Type=notify`.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let connected = addr.and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            // A datagram to a local socket does not wait; never let it block the event loop.
            socket.set_nonblocking(true)?;
            Ok(Self { socket, addr })
        });
        match connected {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                warn!(notify_socket = ?path, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from us");
                None
            }
        }
    }

    /// Sends one notification made of `KEY=VALUE` lines.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            warn!(error = %e, state, "systemd notification failed");
        } else {
            debug!(state, "notified systemd");
        }
    }

    /// Listeners are bound and the identity is loaded.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload has begun; systemd shows the unit as "reloading" until [`Notifier::ready`].
    pub fn reloading(&self) {
        // Type=notify-reload (systemd >= 253) would also want MONOTONIC_USEC; Debian 12 ships
        // systemd 252, where ExecReload= sends SIGHUP and RELOADING=1 alone is understood.
        self.notify("RELOADING=1\nSTATUS=reloading configuration");
    }

    /// Shutdown has begun; `status` says what is being waited for.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Tells the watchdog the event loop is alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if the watchdog is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// The first file descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// Set once the passed descriptors have been claimed, so they are never owned twice.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the sockets systemd passed could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `$LISTEN_FDS` is not a number.
    #[error("LISTEN_FDS={0:?} is not a number")]
    BadCount(String),
    /// A passed descriptor is not a listening TCP socket.
    #[error("socket-activated fd {fd} ({name}) is not a listening TCP socket: {reason}")]
    NotTcpListener {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// What it is instead.
        reason: String,
    },
}

/// Takes the listening sockets systemd passed to this process, with their `FileDescriptorName=`.
///
/// Empty when not socket-activated, when `$LISTEN_PID` names another process,
/// or on any call after the first.
pub fn take_listen_fds() -> Result<Vec<(String, TcpListener)>, ActivationError> {
    if std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        != Some(std::process::id())
    {
        return Ok(Vec::new());
    }
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    let count: RawFd = count
        .parse()
        .map_err(|_| ActivationError::BadCount(count.clone()))?;
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            let name = names
                .next()
                .filter(|n| !n.is_empty())
                .map_or_else(|| format!("fd{fd}"), str::to_owned);
            // SAFETY: systemd passed descriptors LISTEN_FDS_START.. LISTEN_FDS_START+LISTEN_FDS
            // to this very process ($LISTEN_PID matched), nothing else in the daemon opens or
            // closes them, and LISTEN_FDS_TAKEN makes this the only place that ever owns them.
            #[allow(unsafe_code)]
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            listener_from(owned)
                .map(|l| (name.clone(), l))
                .map_err(|reason| ActivationError::NotTcpListener { fd, name, reason })
        })
        .collect()
}

fn listener_from(fd: OwnedFd) -> Result<TcpListener, String> {
    let socket = socket2::Socket::from(fd);
    // Not inherited by anything we might exec.
    socket.set_cloexec(true).map_err(|e| e.to_string())?;
    if socket.r#type().map_err(|e| e.to_string())? != socket2::Type::STREAM
        || !socket.is_listener().map_err(|e| e.to_string())?
    {
        return Err("not a listening stream socket (use ListenStream= in the .socket unit)".into());
    }
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    if addr.as_socket().is_none() {
        return Err("not an IP socket".into());
    }
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(socket.into())
}
