//! rustls configurations for both directions, built from our SVID and trust bundle.
//!
//! Resumption is safe with client authentication here because nothing is
//! decided by the handshake alone: every connection, resumed or not, is
//! authorized afterwards from the certificate chain the session carries
//! (`proxy::inbound`), against the policy in force now, with the chain's
//! validity checked again. Ticket keys are bound to the trust configuration
//! ([`tickets`]), so a session from another bundle never resumes.

pub mod tickets;

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};

use rustls_pki_types::CertificateDer;

use crate::identity::{
    Bundle, CertInfo, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier, Svid, TrustDomains,
};

/// The TLS material shared by every listener: who we are and whom we trust.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// Our certificate chain and key.
    pub svid: Svid,
    /// CA certificates of our trust domain.
    pub bundle: Bundle,
    /// CA certificates of each federated trust domain whose peers we accept.
    pub federated: std::collections::BTreeMap<String, Bundle>,
    /// The trust domain peers must belong to.
    pub trust_domain: String,
    /// Key exchange, ciphers and signature verification.
    pub provider: Arc<CryptoProvider>,
    /// Set when our key lives in a device: its counters and health.
    pub device: Option<crate::signing::DeviceKey>,
    /// Revoked certificates: no peer chain may contain one.
    pub revocations: Arc<crate::identity::Revocations>,
    /// When an SVID issued by the built-in CA should be renewed.
    pub renew_at: Option<std::time::Instant>,
}

/// How a listener lets clients resume.
#[derive(Clone)]
pub enum ServerResumption {
    /// Full handshakes only.
    Off,
    /// Stateless tickets.
    Tickets(Arc<tickets::Ticketer>),
    /// Single-use sessions in a server-side cache, with up to `early_data` bytes of 0-RTT.
    Cache {
        /// The listener's session cache.
        cache: Arc<dyn StoresServerSessions>,
        /// Most early-data bytes accepted; 0 refuses early data.
        early_data: u32,
    },
}

impl std::fmt::Debug for ServerResumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("Off"),
            Self::Tickets(t) => f.debug_tuple("Tickets").field(t).finish(),
            Self::Cache { early_data, .. } => f
                .debug_struct("Cache")
                .field("early_data", early_data)
                .finish_non_exhaustive(),
        }
    }
}

/// A single-use session cache that allocates its table on the first session stored.
///
/// rustls sizes its table up front; a listener that never sees a resumption, or a
/// large `session_cache_size`, should not pay that memory at start or on reload.
#[derive(Debug)]
pub struct LazySessionCache {
    size: usize,
    cache: OnceLock<Arc<ServerSessionMemoryCache>>,
}

impl LazySessionCache {
    /// A cache for at most `size` sessions, not allocated yet.
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            cache: OnceLock::new(),
        })
    }

    /// The number of sessions it was sized for.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl StoresServerSessions for LazySessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache
            .get_or_init(|| ServerSessionMemoryCache::new(self.size))
            .put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.get()?.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.get()?.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// How many bytes of early data a listener that cannot accept it skips before giving up.
///
/// rustls 0.23 charges a rejected early-data record against this budget once per
/// `process_new_packets` call until a later record decrypts, not once per record,
/// and its 16 KiB default then runs out at about 8 KiB of early data: the client
/// gets `bad_record_mac` instead of the promised full handshake. Where rustls can
/// never accept early data (no resumption, or stateless tickets), a large budget
/// costs nothing but bounded AEAD work on records that fail to decrypt.
pub const REJECTED_EARLY_DATA_SKIP: u32 = 1 << 20;

/// Sessions a client keeps per outbound route, so reconnects resume.
const CLIENT_SESSIONS: usize = 64;

/// Session tickets a server sends after each TLS 1.3 handshake, unless the client asks.
pub const TICKETS_PER_HANDSHAKE: usize = 1;

/// The most tickets a client may ask for in one handshake (RFC 9149 `ticket_request`).
pub const MAX_TICKETS_PER_HANDSHAKE: usize = 8;

impl TlsIdentity {
    /// The digest ticket keys are bound to: our trust domain and every bundle certificate.
    pub fn trust_context(&self) -> [u8; 32] {
        tickets::trust_context(&self.trust_domain, &self.bundle.certs)
    }

    /// Server side: require a client SVID from our trust domain.
    pub fn server_config(
        &self,
        resumption: &ServerResumption,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        self.server_config_with(resumption, self.client_verifier()?)
    }

    /// Our trust domain's roots and every federated domain's.
    pub fn trust_domains(&self) -> TrustDomains {
        TrustDomains::new(
            &self.trust_domain,
            self.bundle.roots.clone(),
            self.federated
                .iter()
                .map(|(td, b)| (td.clone(), b.roots.clone())),
        )
    }

    /// Every CA certificate we trust: ours, then the federated domains'.
    pub fn all_cas(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.bundle
            .certs
            .iter()
            .chain(self.federated.values().flat_map(|b| &b.certs))
    }

    /// The verifier of client SVIDs: a chain to its own trust domain's bundle and one SPIFFE ID
    /// in a trust domain we accept.
    pub fn client_verifier(&self) -> Result<Arc<SpiffeClientVerifier>, rustls::Error> {
        let verifier = SpiffeClientVerifier::new(&self.trust_domains(), self.provider.clone())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Arc::new(verifier))
    }

    /// Server side with `verifier` deciding which clients are accepted (e.g. one that also
    /// applies a listener's policy).
    pub fn server_config_with(
        &self,
        resumption: &ServerResumption,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(
                self.svid.certified_key.clone(),
            )));
        // Our suite order (AES-128-GCM-SHA256 first, see `mtlsd_crypto::software::provider`),
        // not the client's: most clients list AES-256-GCM-SHA384 first.
        config.ignore_client_order = true;
        // One ticket per handshake rather than rustls' two: a client reconnecting one
        // connection at a time uses one, and each costs an encryption and ~1.2 KB on the
        // wire (it carries the client's chain). A client that wants more for parallel
        // connections asks with RFC 9149's ticket_request, up to the maximum.
        config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
        config.max_tls13_tickets = MAX_TICKETS_PER_HANDSHAKE;
        match resumption {
            ServerResumption::Off => {
                config.session_storage = Arc::new(NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
                config.max_tls13_tickets = 0;
                // Nothing resumes here, so nothing is accepted or advertised: this only sizes
                // the skip budget for early data a client sends anyway.
                config.max_early_data_size = REJECTED_EARLY_DATA_SKIP;
            }
            ServerResumption::Tickets(ticketer) => {
                config.session_storage = Arc::new(NoServerSessionStorage {});
                config.ticketer = ticketer.clone();
                // rustls neither accepts nor advertises early data with stateless tickets, so
                // this too only sizes the skip budget.
                config.max_early_data_size = REJECTED_EARLY_DATA_SKIP;
            }
            ServerResumption::Cache { cache, early_data } => {
                config.session_storage = cache.clone();
                config.max_early_data_size = *early_data;
                // The answer to an early request may leave before the client's Finished. rustls
                // allows this only when no client certificate is requested, i.e. on resumption,
                // where the PSK binder already proved the ticket holder.
                config.send_half_rtt_data = *early_data > 0;
            }
        }
        Ok(Arc::new(config))
    }

    /// Client side: present our SVID and accept only a server proving `server_id`.
    ///
    /// With `resume`, sessions are cached (in this config, so per route) and reconnects resume.
    pub fn client_config(
        &self,
        server_id: &SpiffeId,
        resume: bool,
        early_data: bool,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let verifier =
            SpiffeServerVerifier::new(self.trust_domains(), server_id.clone(), &self.provider);
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
                self.svid.certified_key.clone(),
            )));
        config.enable_early_data = early_data;
        config.resumption = if resume {
            Resumption::in_memory_sessions(CLIENT_SESSIONS)
        } else {
            Resumption::disabled()
        };
        Ok(Arc::new(config))
    }
}

impl TlsIdentity {
    /// Our chain (leaf first) and the bundle's CAs, summarised for operators.
    pub fn certificates(&self) -> (Vec<CertInfo>, Vec<CertInfo>) {
        let chain = self
            .svid
            .certified_key
            .cert
            .iter()
            .filter_map(CertInfo::of)
            .collect();
        let bundle = self.bundle.certs.iter().filter_map(CertInfo::of).collect();
        (chain, bundle)
    }
}
