//! Open connections and the identity they were admitted on, so a change of policy, CRL or
//! trust bundle reaches connections already open, not only the next handshake.
//!
//! Each admitted connection registers what a re-check needs (its peer's SPIFFE ID, the
//! issuer and serial of each certificate of its chain, the CA its chain ends at) and a
//! token that closes it. After every reload, rotation or CRL change the runtime asks
//! [`LiveConnections::recheck`] to judge them all against the state now in force;
//! a sweep closes connections older than their listener's `max_connection_lifetime`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{ParsedExtension, X509Certificate};

use super::outcome::CloseReason;
use crate::identity::{ParsedChain, SpiffeId};
use crate::metrics::Direction;

/// What a re-check needs to know about a connection's peer, kept small: a few hundred bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFacts {
    /// The peer's SPIFFE ID.
    pub id: SpiffeId,
    /// (issuer name, serial) of every certificate of the chain: what a CRL names.
    pub serials: Vec<(Vec<u8>, Vec<u8>)>,
    /// The CA the chain ends at: the issuer of its last certificate.
    pub anchor: Anchor,
}

/// A CA as a chain names it: its DER name and, when the certificate says, its key identifier
/// (CAs are rotated under the same name, so the name alone does not tell them apart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Anchor {
    /// The CA's DER-encoded name.
    pub name: Vec<u8>,
    /// Its key identifier, if known.
    pub key_id: Option<Vec<u8>>,
}

impl Anchor {
    /// The CA that issued `cert` (its issuer name and authority key identifier).
    pub fn issuer_of(cert: &X509Certificate<'_>) -> Self {
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        Self {
            name: cert.issuer().as_raw().to_vec(),
            key_id,
        }
    }

    /// The CA certificate `cert` itself (its subject and subject key identifier).
    pub fn of_ca(cert: &X509Certificate<'_>) -> Self {
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
                _ => None,
            });
        Self {
            name: cert.subject().as_raw().to_vec(),
            key_id,
        }
    }

    /// Whether `ca` (from a bundle) is this anchor: same name and, where both say, same key.
    pub fn is(&self, ca: &Anchor) -> bool {
        self.name == ca.name
            && match (&self.key_id, &ca.key_id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl PeerFacts {
    /// The facts of a peer with `id` that presented `chain` (leaf first).
    pub fn of(id: SpiffeId, chain: &ParsedChain<'_>) -> Self {
        let mut serials = Vec::with_capacity(chain.certs().len());
        let mut anchor = Anchor::default();
        for x509 in chain.certs() {
            let issuer = x509.issuer().as_raw().to_vec();
            serials.push((issuer, x509.tbs_certificate.raw_serial().to_vec()));
            anchor = Anchor::issuer_of(x509);
        }
        Self {
            id,
            serials,
            anchor,
        }
    }
}

impl PeerFacts {
    /// The serial of the peer's leaf certificate, hex.
    pub fn leaf_serial(&self) -> Option<String> {
        self.serials.first().map(|(_, serial)| hex::encode(serial))
    }
}

/// What happens to a connection a re-check finds no longer admissible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecheckMode {
    /// It is closed (the default).
    Close,
    /// It is logged as one that would be closed, and left open.
    DryRun,
    /// Open connections are never re-checked.
    Off,
}

/// A connection in the registry.
struct Entry {
    listener: Arc<str>,
    direction: Direction,
    peer: PeerFacts,
    deadline: Option<Instant>,
    close: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

/// Every open, admitted connection of the daemon.
#[derive(Default)]
pub struct LiveConnections {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConnections")
            .field("open", &self.len())
            .finish()
    }
}

/// A connection's place in the registry; removes it when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<LiveConnections>,
    close: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

impl Registration {
    /// Cancelled when the connection must close: the daemon's hard stop, a re-check or its lifetime.
    pub fn token(&self) -> &CancellationToken {
        &self.close
    }

    /// Why the registry closed it, if it did; otherwise the copy loop's own reason stands.
    pub fn closed_for(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// One connection a re-check or the lifetime sweep closed (or, in a dry run, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// Its listener.
    pub listener: Arc<str>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Its peer.
    pub peer: SpiffeId,
    /// Why.
    pub reason: CloseReason,
    /// The detail for the log.
    pub detail: String,
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers an admitted connection; its token is a child of `hard_stop` and fires at
    /// `lifetime` after now, if given.
    pub fn register(
        self: &Arc<Self>,
        listener: &Arc<str>,
        direction: Direction,
        peer: PeerFacts,
        lifetime: Option<Duration>,
        hard_stop: &CancellationToken,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = hard_stop.child_token();
        let reason = Arc::new(OnceLock::new());
        self.lock().insert(
            id,
            Entry {
                listener: listener.clone(),
                direction,
                peer,
                deadline: lifetime.map(|l| Instant::now() + l),
                close: close.clone(),
                reason: reason.clone(),
            },
        );
        Registration {
            id,
            registry: self.clone(),
            close,
            reason,
        }
    }

    /// Judges every open connection with `judge` (listener, direction, peer → why it may no
    /// longer stay open) and, unless `mode` says otherwise, closes those it refuses.
    /// Returns them, for the log and the metrics.
    pub fn recheck(
        &self,
        mode: RecheckMode,
        judge: impl Fn(&str, Direction, &PeerFacts) -> Option<(CloseReason, String)>,
    ) -> Vec<Closing> {
        if mode == RecheckMode::Off {
            return Vec::new();
        }
        let entries = self.lock();
        let mut closing = Vec::new();
        for entry in entries.values() {
            if let Some((reason, detail)) = judge(&entry.listener, entry.direction, &entry.peer) {
                if mode == RecheckMode::Close {
                    close(entry, reason);
                }
                closing.push(Closing {
                    listener: entry.listener.clone(),
                    direction: entry.direction,
                    peer: entry.peer.id.clone(),
                    reason,
                    detail,
                });
            }
        }
        closing
    }

    /// Closes every connection past its `max_connection_lifetime`.
    pub fn expire(&self, now: Instant) -> Vec<Closing> {
        let entries = self.lock();
        let mut closing = Vec::new();
        for entry in entries.values() {
            if entry.deadline.is_some_and(|d| d <= now) && entry.reason.get().is_none() {
                close(entry, CloseReason::LifetimeExceeded);
                closing.push(Closing {
                    listener: entry.listener.clone(),
                    direction: entry.direction,
                    peer: entry.peer.id.clone(),
                    reason: CloseReason::LifetimeExceeded,
                    detail: "open longer than max_connection_lifetime".to_owned(),
                });
            }
        }
        closing
    }
}

fn close(entry: &Entry, reason: CloseReason) {
    // The first reason wins: a connection closed for revocation stays closed for revocation.
    let _ = entry.reason.set(reason);
    entry.close.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: &str) -> PeerFacts {
        PeerFacts {
            id: id.parse().unwrap(),
            serials: vec![(b"issuer".to_vec(), vec![1])],
            anchor: Anchor {
                name: b"root".to_vec(),
                key_id: None,
            },
        }
    }

    #[test]
    fn a_recheck_closes_only_what_the_judge_refuses_and_a_dry_run_closes_nothing() {
        let live = Arc::new(LiveConnections::default());
        let stop = CancellationToken::new();
        let a = live.register(
            &Arc::from("web"),
            Direction::Inbound,
            facts("spiffe://ex/a"),
            None,
            &stop,
        );
        let b = live.register(
            &Arc::from("web"),
            Direction::Inbound,
            facts("spiffe://ex/b"),
            None,
            &stop,
        );
        let judge = |_: &str, _: Direction, p: &PeerFacts| {
            (p.id.path() == "/a").then(|| (CloseReason::DeauthorizedWhileOpen, "gone".to_owned()))
        };
        let dry = live.recheck(RecheckMode::DryRun, judge);
        assert_eq!(dry.len(), 1);
        assert!(!a.token().is_cancelled());
        assert!(live.recheck(RecheckMode::Off, judge).is_empty());
        let closed = live.recheck(RecheckMode::Close, judge);
        assert_eq!(closed[0].peer.as_str(), "spiffe://ex/a");
        assert!(a.token().is_cancelled() && !b.token().is_cancelled());
        assert_eq!(a.closed_for(), Some(CloseReason::DeauthorizedWhileOpen));
        assert_eq!(b.closed_for(), None);
        drop(a);
        assert_eq!(live.len(), 1);
        // The daemon's hard stop still reaches every connection.
        stop.cancel();
        assert!(b.token().is_cancelled());
        assert_eq!(b.closed_for(), None);
    }

    #[test]
    fn anchors_with_one_name_are_told_apart_by_their_key_identifier() {
        let anchor = |key: Option<&[u8]>| Anchor {
            name: b"CN=root".to_vec(),
            key_id: key.map(<[u8]>::to_vec),
        };
        assert!(anchor(Some(b"k1")).is(&anchor(Some(b"k1"))));
        assert!(!anchor(Some(b"k1")).is(&anchor(Some(b"k2"))));
        assert!(
            anchor(None).is(&anchor(Some(b"k2"))),
            "no key id: the name decides"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connections_past_their_lifetime_are_closed_once() {
        let live = Arc::new(LiveConnections::default());
        let stop = CancellationToken::new();
        let short = live.register(
            &Arc::from("web"),
            Direction::Outbound,
            facts("spiffe://ex/a"),
            Some(Duration::from_secs(60)),
            &stop,
        );
        let forever = live.register(
            &Arc::from("web"),
            Direction::Outbound,
            facts("spiffe://ex/b"),
            None,
            &stop,
        );
        assert!(live.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(live.expire(Instant::now()).len(), 1);
        assert!(live.expire(Instant::now()).is_empty(), "closed once");
        assert_eq!(short.closed_for(), Some(CloseReason::LifetimeExceeded));
        assert!(!forever.token().is_cancelled());
    }
}
