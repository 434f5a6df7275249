//! The data path: inbound and outbound listeners, the copy loop and what we tell upstreams.

pub mod client_hello;
pub mod forward;
pub mod inbound;
pub mod listener;
pub mod live;
pub mod outbound;
pub mod outcome;
pub mod peer;
pub mod policy_verifier;
pub mod proxy_protocol;
pub mod route_state;
pub mod server_tls;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::outcome::{ACCESS_LOG, Closed, Outcome, Refusal, RefuseReason};

/// How listeners learn to stop: stop accepting, then (after the grace period) close everything.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when established connections must close now.
    pub hard_stop: CancellationToken,
    /// Tracks every connection task.
    pub tracker: TaskTracker,
    /// Every admitted connection, to re-check or close one alone.
    pub live: Arc<live::LiveConnections>,
    /// Where every decision is recorded (audit file, live view).
    pub decisions: Arc<crate::audit::Decisions>,
}

impl Drain {
    /// A fresh set of tokens and an open tracker.
    pub fn new() -> Self {
        Self {
            stop_accepting: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            live: Arc::default(),
            decisions: Arc::default(),
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}
