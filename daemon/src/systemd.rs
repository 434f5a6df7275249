//! systemd service notifications: readiness, status, stopping and watchdog pings.
//!
//! The protocol (`sd_notify(3)`) is one datagram of `KEY=VALUE` lines sent to
//! the socket named by `$NOTIFY_SOCKET`: a path, or an abstract socket when it
//! starts with `@`. Outside systemd the variable is unset and every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
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
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}
