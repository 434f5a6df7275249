//! Identity-aware HTTP on `protocol = "http"` inbound listeners: per-request authorization
//! ([`rules`], Istio's `AuthorizationPolicy`), JWT validation ([`jwt`], [`jwks`]; Istio's
//! `RequestAuthentication`), the verified identity passed to the service and a pool of
//! upstream connections ([`upstream`]); [`serve`] runs one peer connection.

pub mod body;
pub mod jwks;
pub mod jwt;
pub mod path;
pub mod rules;
pub mod serve;
pub mod upstream;

use crate::config::{HttpConfig, InboundConfig};
use crate::metrics::HttpMetrics;

/// One HTTP listener's request handling, rebuilt on every reload.
#[derive(Debug)]
pub struct HttpRoute {
    /// The listener's name, for logs.
    pub listener: String,
    /// Its `[inbound.http]` settings.
    pub config: HttpConfig,
    /// Its trusted JWT issuers.
    pub authn: jwt::Authenticator,
    /// Connections to its service.
    pub pool: upstream::UpstreamPool,
    /// Its request metrics.
    pub metrics: HttpMetrics,
}

impl HttpRoute {
    /// The HTTP side of `listener`, or `None` for a `protocol = "tcp"` one.
    pub fn new(listener: &InboundConfig, metrics: HttpMetrics) -> Result<Option<Self>, String> {
        let Some(config) = &listener.http else {
            return Ok(None);
        };
        Ok(Some(Self {
            listener: listener.name.clone(),
            authn: jwt::Authenticator::new(&config.jwt)?,
            pool: upstream::UpstreamPool::new(
                &listener.forward,
                config.upstream,
                listener.limits.connect_timeout,
            ),
            metrics,
            config: config.clone(),
        }))
    }
}
