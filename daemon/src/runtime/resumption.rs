//! Resumption state that survives reloads: the ticketer and each listener's session cache,
//! reused while the trust configuration they are bound to holds.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, SessionResumption};
use crate::tls::tickets::{KeySource, Ticketer};
use crate::tls::{LazySessionCache, ServerResumption, TlsIdentity};

use super::StartError;
use super::plan::ListenerConfig;

/// Resumption state that must outlive a reload, or every returning client would do a full handshake.
#[derive(Debug, Default)]
pub(super) struct ResumptionState {
    /// The ticketer in use, with the source and trust context it was made for.
    ticketer: Option<(KeySource, [u8; 32], Arc<Ticketer>)>,
    /// Per listener: its session cache and the trust context and size it was made for.
    caches: HashMap<String, ([u8; 32], Arc<LazySessionCache>)>,
}

/// What a reload plans for resumption: per listener, and the state to keep if it commits.
pub(super) struct PlannedResumption {
    servers: HashMap<String, ServerResumption>,
    state: ResumptionState,
}

impl PlannedResumption {
    pub(super) fn get(&self, listener: &str) -> Option<&ServerResumption> {
        self.servers.get(listener)
    }
}

impl ResumptionState {
    /// Reuses what still fits the new trust configuration; makes the rest. Changes nothing yet.
    pub(super) fn prepare(
        &self,
        config: &Config,
        tls: &TlsIdentity,
        wanted: &[ListenerConfig],
    ) -> Result<PlannedResumption, StartError> {
        let context = tls.trust_context();
        let r = &config.resumption;
        let source = match &r.ticket_key_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Generated {
                rotation: r.ticket_rotation,
            },
        };
        let mut state = ResumptionState::default();
        let mut servers = HashMap::new();
        for w in wanted {
            let ListenerConfig::Inbound(c) = w else {
                continue;
            };
            let server = match c.resumption {
                SessionResumption::Off => ServerResumption::Off,
                SessionResumption::Tickets => {
                    if state.ticketer.is_none() {
                        let reused = self
                            .ticketer
                            .as_ref()
                            .filter(|(s, ctx, _)| *s == source && *ctx == context)
                            .map(|(_, _, t)| t.clone());
                        let ticketer = match reused {
                            Some(t) => {
                                t.reload();
                                t
                            }
                            None => {
                                let t = Arc::new(
                                    Ticketer::new(source.clone(), context, r.ticket_rotation)
                                        .map_err(StartError::TicketKeys)?,
                                );
                                t.watch();
                                t
                            }
                        };
                        state.ticketer = Some((source.clone(), context, ticketer));
                    }
                    let (_, _, t) = state.ticketer.as_ref().expect("set above");
                    ServerResumption::Tickets(t.clone())
                }
                SessionResumption::Cache => {
                    let cache = self
                        .caches
                        .get(&c.name)
                        .filter(|(ctx, cache)| {
                            *ctx == context && cache.size() == r.session_cache_size
                        })
                        .map(|(_, cache)| cache.clone())
                        .unwrap_or_else(|| LazySessionCache::new(r.session_cache_size));
                    state
                        .caches
                        .insert(c.name.clone(), (context, cache.clone()));
                    ServerResumption::Cache {
                        cache,
                        early_data: c.early_data,
                    }
                }
            };
            servers.insert(c.name.clone(), server);
        }
        Ok(PlannedResumption { servers, state })
    }

    pub(super) fn commit(&mut self, planned: PlannedResumption) {
        *self = planned.state;
    }
}
