//! Validates `[[inbound]]`, `[[outbound]]` and `[limits]`: addresses, upstreams, policy,
//! resumption and early data, limits, and that names and addresses are unique.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::{RawConfig, RawInbound, RawLimits, RawOutbound, S};
use super::super::{
    InboundConfig, Limits, MAX_CONNECTIONS, MAX_EARLY_DATA, Mode, OutboundConfig,
    SessionResumption, Upstream, host_port,
};
use super::{Validator, count_up_to, duration_at_least, nonzero_duration};
use crate::identity::SpiffeId;
use crate::policy::{Policy, Principal};

impl Validator<'_> {
    /// Every listener, each with `defaults` (the file's `[limits]`) under its own limits.
    pub(super) fn listeners(
        &mut self,
        raw: &RawConfig,
        defaults: Limits,
    ) -> (Vec<InboundConfig>, Vec<OutboundConfig>) {
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut unique = |v: &mut Self, name: &S<String>, listen: Option<SocketAddr>, key: &str| {
            if !names.insert(name.get_ref().clone()) {
                v.report(
                    name,
                    &format!("{key}.name"),
                    format!("listener name {:?} is used twice", name.get_ref()),
                );
            }
            // Port 0 asks the kernel for a free port, so two of them never collide.
            if let Some(addr) = listen.filter(|a| a.port() != 0 && !addrs.insert(*a)) {
                v.report(
                    name,
                    &format!("{key}.listen"),
                    format!("{addr} is used by two listeners"),
                );
            }
        };

        let mut inbound = Vec::new();
        for (i, raw_in) in raw.inbound.iter().enumerate() {
            let key = format!("inbound[{i}]");
            let item = self.inbound(raw_in.get_ref(), defaults, &key);
            unique(
                self,
                &raw_in.get_ref().name,
                item.as_ref().map(|c| c.listen),
                &key,
            );
            inbound.extend(item);
        }
        let mut outbound = Vec::new();
        for (i, raw_out) in raw.outbound.iter().enumerate() {
            let key = format!("outbound[{i}]");
            let item = self.outbound(raw_out.get_ref(), defaults, &key);
            unique(
                self,
                &raw_out.get_ref().name,
                item.as_ref().map(|c| c.listen),
                &key,
            );
            outbound.extend(item);
        }
        if raw.inbound.is_empty() && raw.outbound.is_empty() {
            let p = self.loc.problem(
                0..0,
                "",
                "no listeners: add at least one [[inbound]] or [[outbound]] table",
            );
            self.problems.push(p);
        }
        (inbound, outbound)
    }

    /// `[limits]` or a listener's `limits`: each key given overrides `base`.
    pub(super) fn limits(&mut self, raw: &RawLimits, base: Limits, key: &str) -> Option<Limits> {
        let count = |v: &mut Self, field: &Option<S<i64>>, name: &str, default: usize| {
            v.check_or(field, &format!("{key}.{name}"), default, |n| {
                count_up_to(n, MAX_CONNECTIONS)
            })
        };
        let timeout = |v: &mut Self, field: &Option<S<String>>, name: &str, default: Duration| {
            v.check_or(field, &format!("{key}.{name}"), default, |s| {
                nonzero_duration(s)
            })
        };
        let max_connections = count(
            self,
            &raw.max_connections,
            "max_connections",
            base.max_connections,
        );
        let max_handshakes = count(
            self,
            &raw.max_handshakes,
            "max_handshakes",
            base.max_handshakes,
        );
        let max_handshakes_per_source = count(
            self,
            &raw.max_handshakes_per_source,
            "max_handshakes_per_source",
            base.max_handshakes_per_source,
        );
        let handshake_timeout = timeout(
            self,
            &raw.handshake_timeout,
            "handshake_timeout",
            base.handshake_timeout,
        );
        let client_hello_timeout = timeout(
            self,
            &raw.client_hello_timeout,
            "client_hello_timeout",
            base.client_hello_timeout,
        );
        let idle_timeout = timeout(self, &raw.idle_timeout, "idle_timeout", base.idle_timeout);
        let connect_timeout = timeout(
            self,
            &raw.connect_timeout,
            "connect_timeout",
            base.connect_timeout,
        );
        let max_connection_lifetime = match &raw.max_connection_lifetime {
            None => Some(base.max_connection_lifetime),
            Some(v) => self
                .check(v, &format!("{key}.max_connection_lifetime"), |s| {
                    duration_at_least(s, Duration::from_secs(1))
                })
                .map(Some),
        };
        Some(Limits {
            max_connections: max_connections?,
            max_handshakes: max_handshakes?,
            max_handshakes_per_source: max_handshakes_per_source?,
            client_hello_timeout: client_hello_timeout?,
            handshake_timeout: handshake_timeout?,
            idle_timeout: idle_timeout?,
            connect_timeout: connect_timeout?,
            max_connection_lifetime: max_connection_lifetime?,
        })
    }

    /// The `listen` address of a listener or the admin endpoint under `key`.
    pub(super) fn listen(&mut self, raw: &S<String>, key: &str) -> Option<SocketAddr> {
        self.check(raw, &format!("{key}.listen"), |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "{s:?} is not an IP:port address (e.g. \"0.0.0.0:15443\" or \"[::1]:15001\")"
                )
            })
        })
    }

    fn inbound(&mut self, raw: &RawInbound, defaults: Limits, key: &str) -> Option<InboundConfig> {
        let listen = self.listen(&raw.listen, key);
        let forward = self.check(&raw.forward, &format!("{key}.forward"), |s| {
            parse_upstream(s)
        });
        let mode = self.check_or(&raw.mode, &format!("{key}.mode"), Mode::Strict, |m| match m
            .as_str()
        {
            "strict" => Ok(Mode::Strict),
            "permissive" => Ok(Mode::Permissive),
            other => Err(format!(
                "unknown mode {other:?}; expected \"strict\" or \"permissive\""
            )),
        });
        let rules = |v: &mut Self, list: &[S<String>], name: &str| -> Option<Vec<Principal>> {
            let parsed: Vec<_> = list
                .iter()
                .enumerate()
                .map(|(i, r)| v.check(r, &format!("{key}.{name}[{i}]"), |s| s.parse::<Principal>()))
                .collect();
            parsed.into_iter().collect()
        };
        let allow = rules(self, &raw.allow, "allow");
        let deny = rules(self, &raw.deny, "deny");
        if raw.allow.is_empty() {
            self.report(
                &raw.name,
                &format!("{key}.allow"),
                "allow is empty, so this listener would refuse every peer; list the SPIFFE IDs, \
                 spiffe://td/prefix/* patterns or trust domains that may connect",
            );
        }
        let policy = Policy {
            allow: allow?,
            deny: deny?,
        };
        if mode == Some(Mode::Strict) && policy.mentions_unauthenticated() {
            // Each rule is reported under its own list and index: a deny rule is not `allow`.
            let lists = [("allow", &raw.allow), ("deny", &raw.deny)];
            for (list, rules) in lists {
                for (i, rule) in rules.iter().enumerate() {
                    if rule.get_ref() == crate::policy::UNAUTHENTICATED {
                        self.report(
                            rule,
                            &format!("{key}.{list}[{i}]"),
                            "\"unauthenticated\" only applies to mode = \"permissive\"",
                        );
                    }
                }
            }
        }
        let limits = self.limits(&raw.limits, defaults, &format!("{key}.limits"));
        let resumption = self.check_or(
            &raw.resumption,
            &format!("{key}.resumption"),
            SessionResumption::Tickets,
            |r| match r.as_str() {
                "off" => Ok(SessionResumption::Off),
                "tickets" => Ok(SessionResumption::Tickets),
                "cache" => Ok(SessionResumption::Cache),
                other => Err(format!(
                    "unknown resumption {other:?}; expected \"tickets\", \"cache\" or \"off\""
                )),
            },
        );
        let early_data = self.check_or(&raw.early_data, &format!("{key}.early_data"), 0, |n| {
            u32::try_from(*n)
                .ok()
                .filter(|n| *n <= MAX_EARLY_DATA)
                .ok_or(format!(
                    "must be between 0 (off) and {MAX_EARLY_DATA} bytes"
                ))
        });
        if let (Some(n), Some(r), Some(at)) = (early_data, resumption, &raw.early_data)
            && n > 0
            && r != SessionResumption::Cache
        {
            self.report(
                at,
                &format!("{key}.early_data"),
                "0-RTT needs resumption = \"cache\": single-use server-side sessions are what \
                     stops a replayed ClientHello from delivering its early data twice",
            );
        }
        let protocol = self.protocol(raw, key);
        Some(InboundConfig {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            forward: forward?,
            mode: mode?,
            policy,
            proxy_protocol: raw.proxy_protocol,
            resumption: resumption?,
            early_data: early_data?,
            limits: limits?,
            protocol: protocol.as_ref()?.0,
            http: protocol?.1,
        })
    }

    fn outbound(
        &mut self,
        raw: &RawOutbound,
        defaults: Limits,
        key: &str,
    ) -> Option<OutboundConfig> {
        let listen = self.listen(&raw.listen, key);
        let connect = self.check(&raw.connect, &format!("{key}.connect"), |s| {
            parse_host_port(s).map(|()| s.clone())
        });
        let server_id = self.check(&raw.server_id, &format!("{key}.server_id"), |s| {
            s.parse::<SpiffeId>()
        });
        let limits = self.limits(&raw.limits, defaults, &format!("{key}.limits"));
        if let Some(e) = &raw.early_data
            && *e.get_ref()
            && raw.resumption == Some(false)
        {
            self.report(
                e,
                &format!("{key}.early_data"),
                "early data is only sent on resumed sessions: it needs resumption = true",
            );
        }
        Some(OutboundConfig {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            connect: connect?,
            server_id: server_id?,
            resumption: raw.resumption.unwrap_or(true),
            early_data: raw.early_data.as_ref().is_some_and(|e| *e.get_ref()),
            limits: limits?,
        })
    }
}

/// Checks `host:port` (IPv6 hosts in brackets) without resolving the host.
fn parse_host_port(s: &str) -> Result<(), String> {
    host_port(s).map(drop).ok_or_else(|| {
        format!(
            "{s:?} is not host:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\" or \"web.internal:8080\")"
        )
    })
}

/// An inbound `forward`: `unix:/absolute/path` or `host:port`.
fn parse_upstream(s: &str) -> Result<Upstream, String> {
    match s.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(Upstream::Unix(PathBuf::from(path))),
        Some(_) => Err(format!(
            "{s:?}: a Unix socket path must be absolute, as in \"unix:/run/web.sock\""
        )),
        None => parse_host_port(s).map(|()| Upstream::Tcp(s.to_owned())),
    }
}
