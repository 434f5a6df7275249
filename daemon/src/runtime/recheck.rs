//! After every change of policy, CRL or trust bundle, the open connections are judged
//! again against the state now in force; and, once a second, connections past their
//! listener's `max_connection_lifetime` are closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::metrics::{Direction, Metrics};
use crate::policy::{Decision, Peer};
use crate::proxy::listener::Route;
use crate::proxy::live::{Anchor, Closing, LiveConnections, PeerFacts, RecheckMode};
use crate::proxy::outcome::CloseReason;
use crate::tls::TlsIdentity;

/// How often connections are checked against their lifetime.
const LIFETIME_SWEEP: Duration = Duration::from_secs(1);

/// Judges every open connection against `routes` (by listener name) and `tls` (CRLs and
/// bundle), closing the ones no longer admissible unless `mode` says otherwise.
pub fn recheck(
    live: &LiveConnections,
    mode: RecheckMode,
    routes: &HashMap<String, Route>,
    tls: &TlsIdentity,
    metrics: &Metrics,
) {
    if mode == RecheckMode::Off || live.is_empty() {
        return;
    }
    let anchors: Vec<Anchor> = tls
        .all_cas()
        .filter_map(|c| X509Certificate::from_der(c).ok())
        .map(|(_, x509)| Anchor::of_ca(&x509))
        .collect();
    let open = live.len();
    let closing = live.recheck(mode, |listener, direction, peer| {
        judge(routes.get(listener), direction, peer, tls, &anchors)
    });
    report(&closing, mode, metrics);
    info!(
        open_connections = open,
        closed = closing.len(),
        dry_run = mode == RecheckMode::DryRun,
        "open connections re-checked"
    );
}

/// Why a connection may no longer stay open, or `None`.
fn judge(
    route: Option<&Route>,
    direction: Direction,
    peer: &PeerFacts,
    tls: &TlsIdentity,
    anchors: &[Anchor],
) -> Option<(CloseReason, String)> {
    if let Some((_, serial)) = peer
        .serials
        .iter()
        .find(|(issuer, serial)| tls.revocations.revokes(issuer, serial))
    {
        return Some((
            CloseReason::RevokedWhileOpen,
            format!(
                "certificate serial {} of its chain is revoked",
                hex::encode(serial)
            ),
        ));
    }
    if !peer.anchor.name.is_empty() && !anchors.iter().any(|ca| peer.anchor.is(ca)) {
        return Some((
            CloseReason::UntrustedWhileOpen,
            "the trust bundle no longer holds the CA its chain ends at".to_owned(),
        ));
    }
    match (route, direction) {
        (Some(Route::Inbound(inbound)), Direction::Inbound) => {
            match inbound.policy().authorize(Peer::Spiffe(&peer.id)) {
                Decision::Allow(_) => None,
                Decision::Deny(rule) => Some((
                    CloseReason::DeauthorizedWhileOpen,
                    format!("deny rule {rule} matches it now"),
                )),
                Decision::NoMatch => Some((
                    CloseReason::DeauthorizedWhileOpen,
                    "no allow rule matches it any more".to_owned(),
                )),
            }
        }
        (Some(Route::Outbound(outbound)), Direction::Outbound)
            if outbound.config().server_id != peer.id =>
        {
            Some((
                CloseReason::DeauthorizedWhileOpen,
                format!("server_id is now {}", outbound.config().server_id),
            ))
        }
        // A listener removed by the reload: its open connections continue, as documented.
        _ => None,
    }
}

fn report(closing: &[Closing], mode: RecheckMode, metrics: &Metrics) {
    for c in closing {
        if mode == RecheckMode::DryRun {
            warn!(
                listener = %c.listener,
                direction = c.direction.as_str(),
                peer_id = %c.peer,
                reason = c.reason.as_str(),
                detail = %c.detail,
                "dry run: would close an open connection"
            );
        } else {
            warn!(
                listener = %c.listener,
                direction = c.direction.as_str(),
                peer_id = %c.peer,
                reason = c.reason.as_str(),
                detail = %c.detail,
                "closing an open connection"
            );
            metrics.closed_while_open(&c.listener, c.direction, c.reason.as_str());
        }
    }
}

/// Closes connections past their lifetime, once a second, until aborted.
pub fn spawn_lifetime_sweep(
    live: Arc<LiveConnections>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIFETIME_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let closing = live.expire(tokio::time::Instant::now());
            report(&closing, RecheckMode::Close, &metrics);
        }
    })
}
