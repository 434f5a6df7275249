//! What every route keeps besides its config: handshake slots, the per-address
//! count, metrics and the CRLs to check. Inbound and outbound routes own one;
//! the accept loop reads it through the route.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::client_hello::SourceLimit;
use crate::config::Limits;
use crate::identity::Revocations;
use crate::metrics::ListenerMetrics;

/// What every route keeps besides its config: limits in force, metrics and the CRLs to check.
#[derive(Debug)]
pub struct RouteState {
    /// The listener's name, shared by every connection's registry entry.
    pub name: Arc<str>,
    /// Slots for handshakes in progress (`max_handshakes`).
    pub handshakes: Semaphore,
    /// Connections per address not yet through their handshake (`max_handshakes_per_source`).
    pub sources: Arc<SourceLimit>,
    /// This listener's metrics.
    pub metrics: ListenerMetrics,
    /// Revoked certificates no peer chain may contain.
    pub revocations: Arc<Revocations>,
}

impl RouteState {
    /// Fresh slots for `limits` of the listener `name`.
    pub fn new(
        name: &str,
        limits: &Limits,
        metrics: ListenerMetrics,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            name: Arc::from(name),
            handshakes: Semaphore::new(limits.max_handshakes),
            sources: SourceLimit::new(limits.max_handshakes_per_source),
            metrics,
            revocations,
        }
    }

    /// Waits for a handshake slot; slots are never closed.
    pub async fn handshake_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.handshakes
            .acquire()
            .await
            .expect("handshake semaphore is never closed")
    }
}
