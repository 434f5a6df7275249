//! Prometheus metrics: what every listener, handshake and certificate is doing.
//!
//! One [`Metrics`] exists per daemon and outlives reloads, so counters never
//! reset when the config changes. Listeners take a [`ListenerMetrics`] whose
//! hot-path handles (active gauge, byte counters, handshake histogram) are
//! resolved once per listener instead of hashing label sets per connection.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::audit::Decisions;
use crate::identity::WorkloadApi;
use crate::proxy::outcome::{HandshakeKind, RefuseReason};
use crate::signing::DeviceKey;

/// Which way a listener's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// mTLS in, plaintext to a local service.
    Inbound,
    /// Plaintext in from a local client, mTLS out.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    listener: String,
    direction: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    direction: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    listener: String,
    direction: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FlowLabels {
    listener: String,
    direction: &'static str,
    flow: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthzLabels {
    listener: String,
    decision: &'static str,
    rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    decision: &'static str,
    rule: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuditLabels {
    listener: String,
    rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertLabels {
    role: &'static str,
    subject: String,
    serial: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 100 µs .. ~3 s: a proxied local request is well under a millisecond.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
}

fn handshake_histogram() -> Histogram {
    // 250 µs .. ~4 s: a local full handshake is ~0.5 ms, an HSM- or WAN-bound one 100s of ms.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Every metric the daemon exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_active: Family<ListenerLabels, Gauge>,
    connections: Family<ResultLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    handshakes: Family<KindLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    handshake_seconds: HistogramFamily<ListenerLabels>,
    authz: Family<AuthzLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    upstream_errors: Family<ListenerLabels, Counter>,
    cert_expiry: Family<CertLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    last_reload: Gauge,
    early_data_bytes: Family<ListenerLabels, Counter>,
    copy_buffer_bytes: Family<ListenerLabels, Gauge>,
    recheck_closed: Family<ReasonLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_audits: Family<AuditLabels, Counter>,
    http_seconds: HistogramFamily<ListenerLabels>,
    /// Certificates currently exported, so a rotated one's series can be removed.
    exported_certs: Mutex<Vec<CertLabels>>,
    /// Device keys whose counters are read at scrape time.
    devices: Arc<DeviceCollector>,
    /// The Workload API stream, read at scrape time.
    workload: Arc<WorkloadCollector>,
    /// The audit writer's counts, read at scrape time.
    audit: Arc<AuditCollector>,
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mtlsd");
        let m = Self {
            connections_active: Family::default(),
            connections: Family::default(),
            refused: Family::default(),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            handshake_seconds: Family::new_with_constructor(handshake_histogram),
            authz: Family::default(),
            bytes: Family::default(),
            upstream_errors: Family::default(),
            cert_expiry: Family::default(),
            reloads: Family::default(),
            last_reload: Gauge::default(),
            early_data_bytes: Family::default(),
            copy_buffer_bytes: Family::default(),
            recheck_closed: Family::default(),
            http_requests: Family::default(),
            http_audits: Family::default(),
            http_seconds: Family::new_with_constructor(request_histogram),
            exported_certs: Mutex::new(Vec::new()),
            devices: Arc::default(),
            workload: Arc::default(),
            audit: Arc::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(m.devices.clone()));
        registry.register_collector(Box::new(m.workload.clone()));
        registry.register_collector(Box::new(m.audit.clone()));
        registry.register_collector(Box::new(SignatureCollector));
        registry.register(
            "build",
            "mtlsd build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "connections_active",
            "Connections currently open, handshaking or forwarding",
            m.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Connections finished, by result (forwarded or refused)",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "handshakes",
            "Completed TLS handshakes, by kind (full, resumed, early_data)",
            m.handshakes.clone(),
        );
        registry.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from accept (or connect) to a completed TLS handshake",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "authorization_decisions",
            "Inbound policy decisions, by decision and the rule that decided",
            m.authz.clone(),
        );
        registry.register(
            "forwarded_bytes",
            "Bytes forwarded, by flow (from_peer, to_peer)",
            m.bytes.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed connections to the upstream (inbound) or remote server (outbound)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time at which a certificate in use expires, by role (svid, bundle)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "early_data_bytes",
            "Bytes accepted as TLS 1.3 early data (0-RTT) and forwarded after authorization",
            m.early_data_bytes.clone(),
        );
        registry.register(
            "copy_buffer_bytes",
            "Memory held by copy buffers: plain sockets' reads, and a streaming TLS peer's read-ahead and gathered records (idle connections hold none)",
            m.copy_buffer_bytes.clone(),
        );
        registry.register(
            "connections_closed_while_open",
            "Open connections closed by a re-check (revoked, deauthorized, untrusted) or max_connection_lifetime",
            m.recheck_closed.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests on protocol = \"http\" listeners, by decision, deciding rule and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_audit_matches",
            "HTTP requests that matched an audit rule",
            m.http_audits.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's headers to the end of its response headers",
            m.http_seconds.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (success, failure)",
            m.reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful (re)load",
            m.last_reload.clone(),
        );
        Self { registry, ..m }
    }

    /// Handles for one listener's hot path.
    pub fn listener(&self, name: &str, direction: Direction) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.to_owned(),
            direction: direction.as_str(),
        };
        let flow = |flow| FlowLabels {
            listener: name.to_owned(),
            direction: direction.as_str(),
            flow,
        };
        ListenerMetrics {
            active: self.connections_active.get_or_create_owned(&labels),
            forwarded: self.connections.get_or_create_owned(&ResultLabels {
                listener: name.to_owned(),
                direction: direction.as_str(),
                result: "forwarded",
            }),
            from_peer: self.bytes.get_or_create_owned(&flow("from_peer")),
            to_peer: self.bytes.get_or_create_owned(&flow("to_peer")),
            handshake_seconds: self.handshake_seconds.get_or_create_owned(&labels),
            early_data_bytes: self.early_data_bytes.get_or_create_owned(&labels),
            buffer_bytes: self.copy_buffer_bytes.get_or_create_owned(&labels),
            labels,
            families: FamilyHandles {
                connections: self.connections.clone(),
                refused: self.refused.clone(),
                handshakes: self.handshakes.clone(),
                handshake_failures: self.handshake_failures.clone(),
                authz: self.authz.clone(),
                upstream_errors: self.upstream_errors.clone(),
            },
        }
    }

    /// An open connection on `listener` was closed for `reason` by a re-check or its lifetime.
    pub fn closed_while_open(&self, listener: &str, direction: Direction, reason: &'static str) {
        self.recheck_closed
            .get_or_create(&ReasonLabels {
                listener: listener.to_owned(),
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    /// Handles for one HTTP listener's requests.
    pub fn http(&self, name: &str) -> HttpMetrics {
        HttpMetrics {
            listener: name.to_owned(),
            duration: self.http_seconds.get_or_create_owned(&ListenerLabels {
                listener: name.to_owned(),
                direction: Direction::Inbound.as_str(),
            }),
            requests: self.http_requests.clone(),
            audits: self.http_audits.clone(),
        }
    }

    /// Records a config (re)load attempt.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        if ok {
            self.last_reload.set(unix_seconds(SystemTime::now()));
        }
    }

    /// The Workload API stream whose health `mtlsd_workload_api_connected` reports (none: not exported).
    pub fn set_workload(&self, api: Option<&Arc<WorkloadApi>>) {
        *self.workload.0.write().unwrap_or_else(|e| e.into_inner()) = api.map(Arc::downgrade);
    }

    /// Where the audit counts (`mtlsd_audit_records_total`, `mtlsd_audit_dropped_total`) come from.
    pub fn set_decisions(&self, decisions: &Arc<Decisions>) {
        *self.audit.0.write().unwrap_or_else(|e| e.into_inner()) = Some(decisions.clone());
    }

    /// Replaces the device keys whose crypto counters are exported.
    pub fn set_device_keys(&self, keys: Vec<DeviceKey>) {
        *self.devices.0.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Replaces the exported certificate expiry series with `certs`.
    pub fn set_certificates(&self, certs: &[CertExpiry]) {
        let mut exported = self
            .exported_certs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for old in exported.drain(..) {
            self.cert_expiry.remove(&old);
        }
        for cert in certs {
            let labels = CertLabels {
                role: cert.role,
                subject: cert.subject.clone(),
                serial: cert.serial.clone(),
            };
            self.cert_expiry
                .get_or_create(&labels)
                .set(unix_seconds(cert.not_after));
            exported.push(labels);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeviceLabels {
    backend: &'static str,
    key: String,
}

/// A metric name, its help, and how to read its value off a device key.
type Series<T> = (&'static str, &'static str, fn(&DeviceKey) -> T);

/// Exports the audit writer's written and dropped counts, read on every scrape.
#[derive(Debug, Default)]
struct AuditCollector(RwLock<Option<Arc<Decisions>>>);

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let decisions = self.0.read().unwrap_or_else(|e| e.into_inner());
        let Some(writer) = decisions.as_ref().and_then(|d| d.current_writer()) else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "audit_records",
                "Records written to the audit file",
                writer.written(),
            ),
            (
                "audit_dropped",
                "Audit records dropped because the queue was full (on_full = \"drop\")",
                writer.dropped(),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }
}

/// Exports how many peer certificate signatures were verified and how many were answered
/// from memory ([`mtlsd_crypto::verify_cache`]), read on every scrape.
#[derive(Debug)]
struct SignatureCollector;

impl Collector for SignatureCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = mtlsd_crypto::verify_cache::stats();
        for (name, help, value) in [
            (
                "certificate_signatures_verified",
                "Signatures on peer certificates and CRLs verified by computation",
                stats.verified,
            ),
            (
                "certificate_signatures_remembered",
                "Signatures on peer certificates and CRLs found already verified (no computation)",
                stats.remembered,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }
}

/// Exports whether the Workload API stream is up (`mtlsd_workload_api_connected`), read on every scrape.
#[derive(Debug, Default)]
struct WorkloadCollector(RwLock<Option<std::sync::Weak<WorkloadApi>>>);

impl Collector for WorkloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let api = self.0.read().unwrap_or_else(|e| e.into_inner());
        let Some(api) = api.as_ref().and_then(std::sync::Weak::upgrade) else {
            return Ok(());
        };
        let family = encoder.encode_descriptor(
            "workload_api_connected",
            "1 while the stream from the SPIRE agent's Workload API is up; 0 while it reconnects",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(api.is_connected())).encode(family)?;
        let family = encoder.encode_descriptor(
            "workload_api_reconnects",
            "Reconnection attempts to the Workload API",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(api.reconnects()).encode(family)
    }
}

/// Exports the offload counters of device keys (`mtlsd_crypto_*`), read live on every scrape.
#[derive(Debug, Default)]
struct DeviceCollector(RwLock<Vec<DeviceKey>>);

impl Collector for DeviceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        let counters: [Series<u64>; 4] = [
            (
                "crypto_operations",
                "Private-key operations completed by a device key",
                |d| d.stats.ops(),
            ),
            (
                "crypto_errors",
                "Private-key operations that failed on the device",
                |d| d.stats.errors(),
            ),
            (
                "crypto_fallbacks",
                "Signatures made by the software copy while the device failed",
                |d| d.stats.fallbacks(),
            ),
            (
                "crypto_rejected",
                "Signatures refused because max_in_flight stayed full past the wait",
                |d| d.stats.rejected(),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for d in keys.iter() {
                let labels = DeviceLabels {
                    backend: d.backend,
                    key: d.key.clone(),
                };
                ConstCounter::new(read(d)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "crypto_operation_seconds",
            "Time spent in device operations (divide by crypto_operations_total for the mean)",
            None,
            MetricType::Counter,
        )?;
        for d in keys.iter() {
            let labels = DeviceLabels {
                backend: d.backend,
                key: d.key.clone(),
            };
            ConstCounter::new(d.stats.latency_us() as f64 / 1e6)
                .encode(latency.encode_family(&labels)?)?;
        }
        let gauges: [Series<i64>; 2] = [
            ("crypto_in_flight", "Device operations in flight now", |d| {
                d.stats.in_flight() as i64
            }),
            (
                "crypto_device_healthy",
                "1 while the device signs, 0 while it fails",
                |d| i64::from(d.health.is_healthy()),
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for d in keys.iter() {
                let labels = DeviceLabels {
                    backend: d.backend,
                    key: d.key.clone(),
                };
                ConstGauge::new(read(d)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A certificate whose expiry is exported.
#[derive(Debug, Clone)]
pub struct CertExpiry {
    /// `svid` or `bundle`.
    pub role: &'static str,
    /// The SPIFFE ID (SVID) or subject DN (CA).
    pub subject: String,
    /// Hex serial number.
    pub serial: String,
    /// When it expires.
    pub not_after: SystemTime,
}

#[derive(Debug, Clone)]
struct FamilyHandles {
    connections: Family<ResultLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    handshakes: Family<KindLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    upstream_errors: Family<ListenerLabels, Counter>,
}

/// One HTTP listener's request metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    listener: String,
    duration: Histogram,
    requests: Family<RequestLabels, Counter>,
    audits: Family<AuditLabels, Counter>,
}

impl HttpMetrics {
    /// A request was answered with `status` after `decision` by `rule` (empty: no rule).
    pub fn request(&self, decision: &'static str, rule: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                listener: self.listener.clone(),
                decision,
                rule: rule.to_owned(),
                status,
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A request matched the audit rule `rule`.
    pub fn audit(&self, rule: &str) {
        self.audits
            .get_or_create(&AuditLabels {
                listener: self.listener.clone(),
                rule: rule.to_owned(),
            })
            .inc();
    }
}

/// One listener's metrics, cheap to clone into every connection.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    labels: ListenerLabels,
    /// Connections open on this listener.
    pub active: Gauge,
    forwarded: Counter,
    /// Bytes read from the peer and sent on.
    pub from_peer: Counter,
    /// Bytes sent to the peer.
    pub to_peer: Counter,
    handshake_seconds: Histogram,
    early_data_bytes: Counter,
    /// Bytes of copy buffers allocated now.
    pub buffer_bytes: Gauge,
    families: FamilyHandles,
}

impl ListenerMetrics {
    /// A connection ended after being forwarded.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// A connection was refused for `reason`.
    pub fn refused(&self, reason: RefuseReason) {
        self.families
            .connections
            .get_or_create(&ResultLabels {
                listener: self.labels.listener.clone(),
                direction: self.labels.direction,
                result: "refused",
            })
            .inc();
        self.families
            .refused
            .get_or_create(&self.reason(reason))
            .inc();
        if reason.is_handshake_failure() {
            self.families
                .handshake_failures
                .get_or_create(&self.reason(reason))
                .inc();
        }
        if reason == RefuseReason::UpstreamUnavailable {
            self.families
                .upstream_errors
                .get_or_create(&self.labels)
                .inc();
        }
    }

    /// A handshake of `kind` completed after `took`.
    pub fn handshake(&self, kind: HandshakeKind, took: Duration) {
        self.families
            .handshakes
            .get_or_create(&KindLabels {
                listener: self.labels.listener.clone(),
                direction: self.labels.direction,
                kind: kind.as_str(),
            })
            .inc();
        self.handshake_seconds.observe(took.as_secs_f64());
    }

    /// `bytes` of early data were accepted.
    pub fn early_data(&self, bytes: usize) {
        self.early_data_bytes.inc_by(bytes as u64);
    }

    /// The policy decided `decision` (`allow`, `deny`, `no_match`) by `rule`.
    pub fn authorization(&self, decision: &'static str, rule: &str) {
        self.families
            .authz
            .get_or_create(&AuthzLabels {
                listener: self.labels.listener.clone(),
                decision,
                rule: rule.to_owned(),
            })
            .inc();
    }

    fn reason(&self, reason: RefuseReason) -> ReasonLabels {
        ReasonLabels {
            listener: self.labels.listener.clone(),
            direction: self.labels.direction,
            reason: reason.as_str(),
        }
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_count_by_reason_and_handshake_failures_only_for_tls_reasons() {
        let m = Metrics::new();
        let l = m.listener("api", Direction::Inbound);
        l.refused(RefuseReason::UnknownIssuer);
        l.refused(RefuseReason::NotAllowed);
        l.refused(RefuseReason::NotAllowed);
        l.forwarded();
        let text = m.encode();
        assert!(text.contains(
            r#"mtlsd_connections_refused_total{listener="api",direction="inbound",reason="not_allowed"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"mtlsd_handshake_failures_total{listener="api",direction="inbound",reason="unknown_issuer"} 1"#
        ));
        assert!(!text.contains(r#"mtlsd_handshake_failures_total{listener="api",direction="inbound",reason="not_allowed"}"#));
        assert!(text.contains(
            r#"mtlsd_connections_total{listener="api",direction="inbound",result="refused"} 3"#
        ));
        assert!(text.contains(
            r#"mtlsd_connections_total{listener="api",direction="inbound",result="forwarded"} 1"#
        ));
    }

    #[test]
    fn replacing_certificates_removes_the_old_series() {
        let m = Metrics::new();
        let cert = |serial: &str| CertExpiry {
            role: "svid",
            subject: "spiffe://td/a".into(),
            serial: serial.into(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        };
        m.set_certificates(&[cert("01")]);
        m.set_certificates(&[cert("02")]);
        let text = m.encode();
        assert!(text.contains(r#"serial="02"} 2000000000"#), "{text}");
        assert!(!text.contains(r#"serial="01""#));
    }
}
