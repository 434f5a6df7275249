//! Shared helpers for the integration tests: certificates for any key and an in-memory TLS handshake.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// A software CA that issues leaf certificates for any public key.
pub struct TestCa {
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mtlsd test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for `dns` (server) or a client certificate for `key`'s public half.
    pub fn issue(&self, dns: &str, key: &impl rcgen::PublicKeyData) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.signed_by(key, &self.issuer).unwrap().der().clone()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(roots)
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// One side's identity: its certificate and the key that signs for it.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: Arc<dyn SigningKey>,
}

impl Identity {
    fn certified(&self) -> Arc<CertifiedKey> {
        let ck = CertifiedKey::new(vec![self.cert.clone()], self.key.clone());
        // rustls checks that the certificate matches the key's public half.
        ck.keys_match().expect("certificate matches key");
        Arc::new(ck)
    }
}

/// Runs a TLS 1.3 handshake in memory; with `client` set the server requires a client certificate.
///
/// Returns the negotiated cipher suite so callers can assert the handshake really completed.
pub fn handshake(
    ca: &TestCa,
    server: &Identity,
    client: Option<&Identity>,
) -> Result<rustls::SupportedCipherSuite, rustls::Error> {
    let provider = Arc::new(mtlsd_crypto::software::provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let server_config = match client {
        Some(_) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots(), provider.clone())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(Arc::new(Fixed(server.certified())));

    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(ca.roots());
    let client_config = match client {
        Some(id) => builder.with_client_cert_resolver(Arc::new(Fixed(id.certified()))),
        None => builder.with_no_client_auth(),
    };

    let mut s = ServerConnection::new(Arc::new(server_config))?;
    let mut c = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("server.test").unwrap(),
    )?;
    // A TLS 1.3 handshake needs a handful of flights; 16 rounds is ample.
    for _ in 0..16 {
        if !s.is_handshaking() && !c.is_handshaking() {
            break;
        }
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        let server_result = s.process_new_packets();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        server_result?;
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets()?;
    }
    assert!(
        !s.is_handshaking() && !c.is_handshaking(),
        "handshake did not finish"
    );
    if client.is_some() {
        assert!(
            s.peer_certificates().is_some_and(|p| !p.is_empty()),
            "server saw no client certificate"
        );
    }
    Ok(c.negotiated_cipher_suite().expect("suite after handshake"))
}
