//! rustls certificate verifiers that add SPIFFE checks on top of webpki path validation.
//!
//! X.509-SVID validation ignores DNS names: a peer is who its URI SAN says,
//! provided the chain ends at a root of *its own* trust domain's bundle: ours, or a
//! federated domain's. A certificate naming domain B is never checked against domain
//! A's CAs, so A's CA cannot vouch for B's identities.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{SpiffeId, SvidError, spiffe_id_of};

fn svid_error(e: SvidError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The CA roots of every trust domain we accept peers from: ours first, then federated ones.
#[derive(Debug, Clone)]
pub struct TrustDomains {
    own: String,
    roots: BTreeMap<String, Arc<RootCertStore>>,
}

impl TrustDomains {
    /// Our trust domain with its roots, and the federated domains with theirs.
    pub fn new(
        own: &str,
        own_roots: Arc<RootCertStore>,
        federated: impl IntoIterator<Item = (String, Arc<RootCertStore>)>,
    ) -> Self {
        let mut roots: BTreeMap<_, _> = federated.into_iter().collect();
        roots.insert(own.to_owned(), own_roots);
        Self {
            own: own.to_owned(),
            roots,
        }
    }

    /// The roots of `trust_domain`, if we accept it.
    pub fn roots(&self, trust_domain: &str) -> Option<&Arc<RootCertStore>> {
        self.roots.get(trust_domain)
    }

    /// The leaf's SPIFFE ID as read (one parse), and the trust domain whose roots its chain
    /// is verified against: the one the ID names, or ours when it names none we know (the
    /// SPIFFE check refuses it after).
    fn read(&self, cert: &CertificateDer<'_>) -> (Result<SpiffeId, SvidError>, &str) {
        let id = spiffe_id_of(cert);
        let td = match &id {
            Ok(id) => self
                .roots
                .get_key_value(id.trust_domain())
                .map_or(self.own.as_str(), |(k, _)| k.as_str()),
            Err(_) => &self.own,
        };
        (id, td)
    }

    /// Insists the peer's ID (as read) is one SPIFFE ID in a trust domain we accept.
    fn admit(&self, id: Result<SpiffeId, SvidError>) -> Result<SpiffeId, Error> {
        let id = id.map_err(svid_error)?;
        if !self.roots.contains_key(id.trust_domain()) {
            return Err(svid_error(SvidError::ForeignTrustDomain {
                id,
                expected: self.own.clone(),
            }));
        }
        Ok(id)
    }
}

/// Requires a client certificate that chains to its own trust domain's bundle and names one
/// SPIFFE ID in a trust domain we accept.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    by_domain: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
    domains: TrustDomains,
}

impl SpiffeClientVerifier {
    /// Builds a verifier for peers of `domains`.
    pub fn new(
        domains: &TrustDomains,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let mut by_domain = BTreeMap::new();
        for (td, roots) in &domains.roots {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()?;
            by_domain.insert(td.clone(), verifier);
        }
        Ok(Self {
            by_domain,
            domains: domains.clone(),
        })
    }

    fn own(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.by_domain[&self.domains.own]
    }

    /// Verifies the client's chain and returns its SPIFFE ID, reading the leaf once.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, Error> {
        let (id, td) = self.domains.read(end_entity);
        // The chain first: a certificate we cannot trust is refused as such, whatever it names.
        self.by_domain[td].verify_client_cert(end_entity, intermediates, now)?;
        self.domains.admit(id)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.own().root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify_peer(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.own().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.own().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.own().supported_verify_schemes()
    }
}

/// Accepts a server only if it chains to its trust domain's bundle and presents exactly `expected`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    domains: TrustDomains,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Builds a verifier that expects the server `expected`, anchored at the roots of its domain.
    pub fn new(domains: TrustDomains, expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            domains,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let (got, td) = self.domains.read(end_entity);
        let roots = self
            .domains
            .roots(td)
            .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = self.domains.admit(got)?;
        if got != self.expected {
            return Err(svid_error(SvidError::UnexpectedServerId {
                expected: self.expected.clone(),
                got,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
