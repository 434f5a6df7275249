//! The reload plan: for each configured listener, where its socket comes from.
//!
//! Deciding is pure (names, directions and addresses in, a plan out) so every
//! case is unit-tested; binding the sockets the plan asks for is the caller's job.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, InboundConfig, ListenerCommon, OutboundConfig};
use crate::http::HttpRoute;
use crate::metrics::{Direction, Metrics};
use crate::proxy::inbound::Inbound;
use crate::proxy::listener::Route;
use crate::proxy::outbound::Outbound;
use crate::tls::{ServerResumption, TlsIdentity};

use super::StartError;

/// One configured listener, before it has a route.
pub(super) enum ListenerConfig {
    Inbound(InboundConfig),
    Outbound(OutboundConfig),
}

/// What decides where a listener's socket comes from: its name, direction and configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SocketKey {
    /// The listener's name.
    pub name: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The address as configured (port 0: any free port).
    pub listen: SocketAddr,
}

/// Where one configured listener's socket comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketSource {
    /// Same name, direction and address: keep running listener `i`, swap its route.
    Keep(usize),
    /// Running listener `i` (going away) is bound to the same fixed address: take its socket.
    Handover(usize),
    /// A socket systemd passed under this listener's name.
    Activated,
    /// Bind a fresh socket.
    Bind,
}

/// Decides, for each of `wanted` in order, where its socket comes from, given the `running`
/// listeners and whether systemd passed a socket under a name.
///
/// A running listener serves at most one wanted listener. Exact matches are kept first, so a
/// handover never steals the socket of a listener that stays. Port 0 never hands over: each
/// "any free port" listener gets its own.
pub(super) fn plan_sockets(
    running: &[SocketKey],
    wanted: &[SocketKey],
    activated: impl Fn(&str) -> bool,
) -> Vec<SocketSource> {
    let mut claimed = vec![false; running.len()];
    let mut plan: Vec<Option<SocketSource>> = wanted
        .iter()
        .map(|w| {
            let i = (0..running.len()).find(|&i| !claimed[i] && running[i] == *w)?;
            claimed[i] = true;
            Some(SocketSource::Keep(i))
        })
        .collect();
    for (w, p) in wanted.iter().zip(plan.iter_mut()) {
        if p.is_some() {
            continue;
        }
        let handover = (w.listen.port() != 0)
            .then(|| (0..running.len()).find(|&i| !claimed[i] && running[i].listen == w.listen))
            .flatten();
        *p = Some(match handover {
            Some(i) => {
                claimed[i] = true;
                SocketSource::Handover(i)
            }
            None if activated(&w.name) => SocketSource::Activated,
            None => SocketSource::Bind,
        });
    }
    plan.into_iter().flatten().collect()
}

impl ListenerConfig {
    /// The listener's name, direction and configured address.
    pub(super) fn key(&self) -> SocketKey {
        SocketKey {
            name: self.name().to_owned(),
            direction: self.direction(),
            listen: self.listen(),
        }
    }

    pub(super) fn all(config: &Config) -> Vec<Self> {
        let inbound = config.inbound.iter().cloned().map(Self::Inbound);
        let outbound = config.outbound.iter().cloned().map(Self::Outbound);
        inbound.chain(outbound).collect()
    }

    pub(super) fn name(&self) -> &str {
        self.common().name()
    }

    fn common(&self) -> &dyn ListenerCommon {
        match self {
            Self::Inbound(c) => c,
            Self::Outbound(c) => c,
        }
    }

    pub(super) fn direction(&self) -> Direction {
        match self {
            Self::Inbound(_) => Direction::Inbound,
            Self::Outbound(_) => Direction::Outbound,
        }
    }

    pub(super) fn listen(&self) -> SocketAddr {
        self.common().listen()
    }

    /// Builds the route.
    pub(super) fn route(
        self,
        tls: &TlsIdentity,
        resumption: &ServerResumption,
        metrics: &Metrics,
    ) -> Result<Route, StartError> {
        let name = self.name().to_owned();
        let listener_metrics = metrics.listener(&name, self.direction());
        let tls_err = |source| StartError::Tls {
            listener: name.clone(),
            cause: source,
        };
        Ok(match self {
            Self::Inbound(c) => {
                let http = HttpRoute::new(&c, metrics.http(&name))
                    .map_err(|cause| StartError::Http {
                        listener: name.clone(),
                        cause,
                    })?
                    .map(Arc::new);
                let route =
                    Inbound::new(c, tls, resumption, listener_metrics, http).map_err(tls_err)?;
                Route::Inbound(Arc::new(route))
            }
            Self::Outbound(c) => {
                let route = Outbound::new(c, tls, listener_metrics).map_err(tls_err)?;
                Route::Outbound(Arc::new(route))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Inbound as In, Outbound as Out};
    use SocketSource::{Activated, Bind, Handover, Keep};

    fn key(name: &str, direction: Direction, listen: &str) -> SocketKey {
        SocketKey {
            name: name.to_owned(),
            direction,
            listen: listen.parse().unwrap(),
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn an_unchanged_listener_keeps_its_socket_and_a_new_one_binds() {
        let running = [key("web", In, "127.0.0.1:8443")];
        let wanted = [
            key("web", In, "127.0.0.1:8443"),
            key("api", In, "127.0.0.1:9443"),
        ];
        assert_eq!(plan_sockets(&running, &wanted, none), [Keep(0), Bind]);
        // A removed listener is simply absent from the plan.
        assert_eq!(plan_sockets(&running, &[], none), []);
    }

    #[test]
    fn a_renamed_or_redirected_listener_on_the_same_fixed_address_takes_over_its_socket() {
        let running = [key("web", In, "127.0.0.1:8443")];
        for wanted in [
            key("www", In, "127.0.0.1:8443"),
            key("web", Out, "127.0.0.1:8443"),
        ] {
            assert_eq!(plan_sockets(&running, &[wanted], none), [Handover(0)]);
        }
        // A new address binds, and the old socket is not handed to anyone.
        assert_eq!(
            plan_sockets(&running, &[key("web", In, "127.0.0.1:9443")], none),
            [Bind]
        );
    }

    #[test]
    fn exact_matches_win_over_handovers_and_each_socket_serves_once() {
        let running = [
            key("a", In, "127.0.0.1:1000"),
            key("b", In, "127.0.0.1:2000"),
        ];
        // "c" wants a's address but a stays: c binds (and will fail to), a keeps its socket.
        let wanted = [
            key("c", In, "127.0.0.1:1000"),
            key("a", In, "127.0.0.1:1000"),
        ];
        assert_eq!(plan_sockets(&running, &wanted, none), [Bind, Keep(0)]);
        // Two new listeners on b's address: only the first takes it over.
        let wanted = [
            key("x", In, "127.0.0.1:2000"),
            key("y", Out, "127.0.0.1:2000"),
        ];
        assert_eq!(plan_sockets(&running, &wanted, none), [Handover(1), Bind]);
    }

    #[test]
    fn port_zero_never_hands_over_and_activated_sockets_are_matched_by_name() {
        let running = [key("old", In, "127.0.0.1:0")];
        assert_eq!(
            plan_sockets(&running, &[key("new", In, "127.0.0.1:0")], none),
            [Bind]
        );
        let wanted = [
            key("web", In, "0.0.0.0:443"),
            key("api", In, "0.0.0.0:8443"),
        ];
        assert_eq!(
            plan_sockets(&[], &wanted, |name| name == "web"),
            [Activated, Bind]
        );
    }
}
