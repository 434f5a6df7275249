//! The listener's policy applied inside the handshake, so a refused peer hears why.
//!
//! After the chain and SPIFFE ID checks, [`PolicyVerifier`] asks the listener's
//! policy about the client's ID. A refusal fails the handshake with
//! `ApplicationVerificationFailure`, which rustls sends as an `access_denied`
//! alert: curl prints "alert access denied" instead of "Empty reply from
//! server". The verified ID and the policy's answer are left in a per-connection
//! slot, so the proxy logs and counts a refusal exactly as it does one decided
//! after the handshake, and does not read the leaf again for an admitted peer.
//!
//! A resumed session skips certificate verification, so the proxy still
//! authorizes every connection after its handshake; a resumed peer that the
//! policy no longer admits is closed without an alert.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::identity::{SpiffeClientVerifier, SpiffeId};
use crate::policy::{Decision, Peer, Policy};

/// A client whose chain and SPIFFE ID were verified in the handshake, and the policy's answer.
#[derive(Debug)]
pub struct Verified {
    /// The client's SPIFFE ID.
    pub id: SpiffeId,
    /// Whether the policy admitted it.
    pub admitted: bool,
}

/// A client verifier for one connection: the listener's verifier, then its policy.
#[derive(Debug)]
pub struct PolicyVerifier {
    inner: Arc<SpiffeClientVerifier>,
    policy: Arc<Policy>,
    verified: Arc<OnceLock<Verified>>,
}

impl PolicyVerifier {
    /// Verifies with `inner`, then refuses IDs `policy` does not admit; either way the ID and
    /// the answer go to `verified`.
    pub fn new(
        inner: Arc<SpiffeClientVerifier>,
        policy: Arc<Policy>,
        verified: Arc<OnceLock<Verified>>,
    ) -> Self {
        Self {
            inner,
            policy,
            verified,
        }
    }
}

impl ClientCertVerifier for PolicyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let id = self.inner.verify_peer(end_entity, intermediates, now)?;
        let admitted = matches!(self.policy.authorize(Peer::Spiffe(&id)), Decision::Allow(_));
        let _ = self.verified.set(Verified { id, admitted });
        if admitted {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
}
