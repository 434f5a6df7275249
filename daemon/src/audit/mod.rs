//! Every decision the daemon makes, as a record: written to the tamper-evident audit file
//! ([`writer`], [`chain`]) when `[audit]` asks for one, and streamed to live viewers
//! (`GET /decisions`, `mtlsd watch`) either way.
//!
//! Records leave the data path through a bounded queue to a writer thread; what happens
//! when it is full is the operator's explicit choice (`on_full`), and drops are counted.

pub mod chain;
pub mod journal;
pub mod watch;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::broadcast;

pub use writer::{AuditError, Writer};

/// How many decisions live viewers may fall behind before they are cut off.
const LIVE_BACKLOG: usize = 4096;

/// One decision: an admitted, refused or closed connection, or an HTTP request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecisionRecord {
    /// When, RFC 3339 UTC with microseconds.
    pub time: String,
    /// `admitted`, `refused`, `closed` (a connection) or `request`.
    pub event: &'static str,
    /// The listener.
    pub listener: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The peer's address.
    pub src: String,
    /// The peer's SPIFFE ID, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// The serial of the peer's leaf certificate, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_serial: Option<String>,
    /// The validated JWT's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_iss: Option<String>,
    /// The validated JWT's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_sub: Option<String>,
    /// `allow` or `deny` (what the peer got).
    pub outcome: &'static str,
    /// The decision as the access log names it (`allow`, `deny`, `no_match`, `unauthenticated`, a refusal reason, …).
    pub decision: String,
    /// The rule that decided, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused or closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The normalized request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The response status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes from the peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Bytes to the peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// How long it took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The configuration generation in force (1 at start, +1 per applied reload).
    pub generation: u64,
}

impl DecisionRecord {
    /// A decision of `event` on `listener`, stamped now.
    pub fn new(event: &'static str, listener: &str, direction: &'static str) -> Self {
        Self {
            time: now(),
            event,
            listener: listener.to_owned(),
            direction,
            ..Self::default()
        }
    }
}

fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    // Microseconds: enough to order records, and the width stays fixed.
    now.replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where decisions go: the audit file's writer (if configured) and live viewers.
#[derive(Debug)]
pub struct Decisions {
    writer: RwLock<Option<Arc<Writer>>>,
    live: broadcast::Sender<Arc<DecisionRecord>>,
    generation: AtomicU64,
}

impl Default for Decisions {
    fn default() -> Self {
        Self {
            writer: RwLock::new(None),
            live: broadcast::channel(LIVE_BACKLOG).0,
            generation: AtomicU64::new(0),
        }
    }
}

impl Decisions {
    /// Records `decision` (stamped with the generation in force) for the file and the viewers.
    pub fn record(&self, mut decision: DecisionRecord) {
        decision.generation = self.generation.load(Ordering::Relaxed);
        // Copied only when both a viewer and the file want it.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(decision.clone()));
        }
        if let Some(w) = self.writer() {
            w.submit(decision);
        }
    }

    /// Like [`record`](Self::record); when the file asks for `fsync = "every_record"`, the
    /// receiver completes once the record is on disk: what an admitted connection awaits
    /// before its first byte. Synchronous up to that, so the caller's future holds a
    /// receiver across its await, not the record.
    pub fn record_durably(
        &self,
        mut decision: DecisionRecord,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        match self.writer() {
            Some(w) if w.syncs_every_record() => {
                decision.generation = self.generation.load(Ordering::Relaxed);
                if self.live.receiver_count() > 0 {
                    let _ = self.live.send(Arc::new(decision.clone()));
                }
                w.submit_synced(decision)
            }
            _ => {
                self.record(decision);
                None
            }
        }
    }

    fn writer(&self) -> Option<Arc<Writer>> {
        self.writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Uses `writer` for the records from now on (none: no audit file); returns the previous one.
    pub fn set_writer(&self, writer: Option<Arc<Writer>>) -> Option<Arc<Writer>> {
        std::mem::replace(
            &mut *self.writer.write().unwrap_or_else(|e| e.into_inner()),
            writer,
        )
    }

    /// The writer in use, to reuse it when a reload keeps the same settings.
    pub fn current_writer(&self) -> Option<Arc<Writer>> {
        self.writer()
    }

    /// Moves to the next configuration generation.
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A receiver of every decision from now on; it lags out if it falls behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DecisionRecord>> {
        self.live.subscribe()
    }
}
