//! rustls configurations for both directions, built from our SVID and trust bundle.
//!
//! Session resumption is off in both directions until it can carry the peer's
//! identity safely (re-authorization and revocation on every resumed handshake,
//! ticket lifetime bounded by the client certificate); a full handshake always
//! re-verifies the chain.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};

use crate::identity::{
    Bundle, CertInfo, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier, Svid,
};

/// The TLS material shared by every listener: who we are and whom we trust.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// Our certificate chain and key.
    pub svid: Svid,
    /// CA certificates of our trust domain.
    pub bundle: Bundle,
    /// The trust domain peers must belong to.
    pub trust_domain: String,
    /// Key exchange, ciphers and signature verification.
    pub provider: Arc<CryptoProvider>,
}

impl TlsIdentity {
    /// Server side: require a client SVID from our trust domain.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let verifier = SpiffeClientVerifier::new(
            self.bundle.roots.clone(),
            &self.trust_domain,
            self.provider.clone(),
        )
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(
                self.svid.certified_key.clone(),
            )));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Client side: present our SVID and accept only a server proving `server_id`.
    pub fn client_config(&self, server_id: &SpiffeId) -> Result<Arc<ClientConfig>, rustls::Error> {
        let verifier =
            SpiffeServerVerifier::new(self.bundle.roots.clone(), server_id.clone(), &self.provider);
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
                self.svid.certified_key.clone(),
            )));
        config.resumption = Resumption::disabled();
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
