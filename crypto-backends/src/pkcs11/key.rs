//! A private key inside a token, usable by rustls (handshakes) and rcgen (certificates).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{SubjectPublicKeyInfoDer, alg_id};

use super::pool::{Fault, SessionPool, fault};
use super::uri::Pkcs11Uri;
use crate::{Error, der};

/// An elliptic curve the PKCS#11 backend can generate and sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcCurve {
    /// NIST P-256 (secp256r1), signing with SHA-256.
    P256,
    /// NIST P-384 (secp384r1), signing with SHA-384.
    P384,
}

impl EcCurve {
    /// `CKA_EC_PARAMS`: the DER named-curve OID.
    pub(crate) fn params(self) -> &'static [u8] {
        match self {
            Self::P256 => der::EC_PARAMS_P256,
            Self::P384 => der::EC_PARAMS_P384,
        }
    }

    fn from_params(params: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.params() == params)
    }

    fn point_len(self) -> usize {
        match self {
            Self::P256 => 65,
            Self::P384 => 97,
        }
    }

    fn hash(self) -> Hash {
        match self {
            Self::P256 => Hash::Sha256,
            Self::P384 => Hash::Sha384,
        }
    }
}

/// A hash used by a signature scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, msg: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, msg).as_ref().to_vec()
    }

    fn len(self) -> u64 {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    fn ck(self) -> MechanismType {
        match self {
            Self::Sha256 => MechanismType::SHA256,
            Self::Sha384 => MechanismType::SHA384,
            Self::Sha512 => MechanismType::SHA512,
        }
    }

    fn mgf(self) -> PkcsMgfType {
        match self {
            Self::Sha256 => PkcsMgfType::MGF1_SHA256,
            Self::Sha384 => PkcsMgfType::MGF1_SHA384,
            Self::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }

    fn digest_info(self) -> &'static [u8] {
        match self {
            Self::Sha256 => der::DIGEST_INFO_SHA256,
            Self::Sha384 => der::DIGEST_INFO_SHA384,
            Self::Sha512 => der::DIGEST_INFO_SHA512,
        }
    }
}

/// How one signature scheme is computed on this token: which mechanism, and who hashes.
///
/// Tokens differ: SoftHSM2 has raw `CKM_ECDSA` only, many HSMs have the hashed
/// `CKM_ECDSA_SHA256`, some smart cards only raw `CKM_RSA_PKCS`. The method is
/// chosen once from `C_GetMechanismList` when the key is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `CKM_ECDSA_SHA*`: the token hashes.
    EcdsaHashed(Hash),
    /// `CKM_ECDSA` over a digest computed on the host.
    EcdsaRaw(Hash),
    /// `CKM_SHA*_RSA_PKCS_PSS`: the token hashes.
    PssHashed(Hash),
    /// `CKM_RSA_PKCS_PSS` over a host digest.
    PssRaw(Hash),
    /// `CKM_SHA*_RSA_PKCS`: the token hashes.
    Pkcs1Hashed(Hash),
    /// `CKM_RSA_PKCS` over a host-built DigestInfo.
    Pkcs1Raw(Hash),
}

impl Method {
    fn mechanism(self) -> Mechanism<'static> {
        let pss = |h: Hash| PkcsPssParams {
            hash_alg: h.ck(),
            mgf: h.mgf(),
            // TLS 1.3 (RFC 8446 §4.2.3) requires the salt to be as long as the digest.
            s_len: h.len().into(),
        };
        match self {
            Self::EcdsaHashed(Hash::Sha256) => Mechanism::EcdsaSha256,
            Self::EcdsaHashed(Hash::Sha384) => Mechanism::EcdsaSha384,
            Self::EcdsaHashed(Hash::Sha512) => Mechanism::EcdsaSha512,
            Self::EcdsaRaw(_) => Mechanism::Ecdsa,
            Self::PssHashed(h @ Hash::Sha256) => Mechanism::Sha256RsaPkcsPss(pss(h)),
            Self::PssHashed(h @ Hash::Sha384) => Mechanism::Sha384RsaPkcsPss(pss(h)),
            Self::PssHashed(h @ Hash::Sha512) => Mechanism::Sha512RsaPkcsPss(pss(h)),
            Self::PssRaw(h) => Mechanism::RsaPkcsPss(pss(h)),
            Self::Pkcs1Hashed(Hash::Sha256) => Mechanism::Sha256RsaPkcs,
            Self::Pkcs1Hashed(Hash::Sha384) => Mechanism::Sha384RsaPkcs,
            Self::Pkcs1Hashed(Hash::Sha512) => Mechanism::Sha512RsaPkcs,
            Self::Pkcs1Raw(_) => Mechanism::RsaPkcs,
        }
    }

    /// The bytes handed to `C_Sign`.
    fn input(self, msg: &[u8]) -> Cow<'_, [u8]> {
        match self {
            Self::EcdsaHashed(_) | Self::PssHashed(_) | Self::Pkcs1Hashed(_) => Cow::Borrowed(msg),
            Self::EcdsaRaw(h) | Self::PssRaw(h) => Cow::Owned(h.digest(msg)),
            Self::Pkcs1Raw(h) => {
                let mut info = h.digest_info().to_vec();
                info.extend_from_slice(&h.digest(msg));
                Cow::Owned(info)
            }
        }
    }

    fn is_ecdsa(self) -> bool {
        matches!(self, Self::EcdsaHashed(_) | Self::EcdsaRaw(_))
    }

    /// Picks the mechanism for `hashed`/`raw` variants from what the token lists.
    fn pick(
        mechs: &[MechanismType],
        hashed: (MechanismType, Self),
        raw: (MechanismType, Self),
    ) -> Option<Self> {
        if mechs.contains(&hashed.0) {
            Some(hashed.1)
        } else if mechs.contains(&raw.0) {
            Some(raw.1)
        } else {
            None
        }
    }
}

/// What kind of key, as far as signing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ec(EcCurve),
    Rsa,
}

/// A private key held in a PKCS#11 token; signs through the backend's session pool.
///
/// Implements rustls' [`SigningKey`] for handshakes and rcgen's
/// [`rcgen::SigningKey`] for issuing certificates; the private key never leaves
/// the token. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct Pkcs11Key {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    pool: Arc<SessionPool>,
    uri: Pkcs11Uri,
    /// Re-resolved after a re-login, since some tokens renumber private objects.
    handle: Mutex<ObjectHandle>,
    kind: Kind,
    /// TLS schemes in preference order, each with the method this token supports.
    schemes: Vec<(SignatureScheme, Method)>,
    spki: Vec<u8>,
    /// The subjectPublicKey bits: the EC point or PKCS#1 RSAPublicKey (what rcgen calls `der_bytes`).
    raw_public: Vec<u8>,
    /// The method and algorithm used for certificates, if the token supports one.
    cert_method: Option<(Method, &'static rcgen::SignatureAlgorithm)>,
}

impl Pkcs11Key {
    /// Finds the key `uri` names in `pool`'s token, reads its public half and picks mechanisms.
    pub(crate) fn load(
        pool: Arc<SessionPool>,
        uri: Pkcs11Uri,
        mechs: &[MechanismType],
    ) -> Result<Self, Error> {
        let checked_out = pool.checkout()?;
        let session = checked_out.session();
        let handle =
            find_key(&pool, session, &uri, ObjectClass::PRIVATE_KEY)?.ok_or_else(|| {
                Error::Pkcs11KeyNotFound {
                    key: uri.to_string(),
                    token: pool.token().to_owned(),
                }
            })?;
        let unsupported = |reason: String| Error::UnsupportedDeviceKey {
            key: uri.to_string(),
            reason,
        };
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|e| pool.err(format!("C_GetAttributeValue on {uri}"), e))?;
        let mut key_type = None;
        let (mut params, mut modulus, mut exponent) = (None, None, None);
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(p) => params = Some(p),
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let (kind, spki, raw_public) = match key_type {
            Some(t) if t == KeyType::EC => {
                let params =
                    params.ok_or_else(|| unsupported("EC key without CKA_EC_PARAMS".into()))?;
                let curve = EcCurve::from_params(&params).ok_or_else(|| {
                    unsupported("EC curve is not P-256 or P-384 (CKA_EC_PARAMS)".into())
                })?;
                // CKA_EC_POINT lives on the public key object, not the private one.
                let public =
                    find_key(&pool, session, &uri, ObjectClass::PUBLIC_KEY)?.ok_or_else(|| {
                        unsupported(
                            "no public key object with the same label/id (needed for CKA_EC_POINT)"
                                .into(),
                        )
                    })?;
                let point = session
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .map_err(|e| pool.err(format!("reading CKA_EC_POINT of {uri}"), e))?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| unsupported("public key object has no CKA_EC_POINT".into()))?;
                let point = der::unwrap_ec_point(&point, curve.point_len())
                    .ok_or_else(|| unsupported("CKA_EC_POINT is not an uncompressed point".into()))?
                    .to_vec();
                let alg = match curve {
                    EcCurve::P256 => alg_id::ECDSA_P256,
                    EcCurve::P384 => alg_id::ECDSA_P384,
                };
                let spki = rustls::sign::public_key_to_spki(&alg, &point);
                (Kind::Ec(curve), spki.as_ref().to_vec(), point)
            }
            Some(t) if t == KeyType::RSA => {
                let (Some(n), Some(e)) = (modulus, exponent) else {
                    return Err(unsupported(
                        "RSA key without CKA_MODULUS/CKA_PUBLIC_EXPONENT".into(),
                    ));
                };
                let raw = der::rsa_public_key(&n, &e);
                let spki = rustls::sign::public_key_to_spki(&alg_id::RSA_ENCRYPTION, &raw);
                (Kind::Rsa, spki.as_ref().to_vec(), raw)
            }
            Some(t) => return Err(unsupported(format!("key type {t} is not EC or RSA"))),
            None => return Err(unsupported("no CKA_KEY_TYPE".into())),
        };
        drop(checked_out);

        let schemes = schemes_for(kind, mechs);
        if schemes.is_empty() {
            return Err(unsupported(format!(
                "the token offers no signing mechanism for this {} key (mechanisms: {})",
                match kind {
                    Kind::Ec(_) => "EC",
                    Kind::Rsa => "RSA",
                },
                mechs
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let cert_method = match kind {
            Kind::Ec(EcCurve::P256) => schemes
                .first()
                .map(|(_, m)| (*m, &rcgen::PKCS_ECDSA_P256_SHA256)),
            Kind::Ec(EcCurve::P384) => schemes
                .first()
                .map(|(_, m)| (*m, &rcgen::PKCS_ECDSA_P384_SHA384)),
            // PKCS#1 v1.5 with SHA-256 is what every X.509 verifier accepts.
            Kind::Rsa => schemes
                .iter()
                .find(|(s, _)| *s == SignatureScheme::RSA_PKCS1_SHA256)
                .map(|(_, m)| (*m, &rcgen::PKCS_RSA_SHA256)),
        };
        tracing::debug!(key = %uri, token = pool.token(), ?kind, ?schemes, "loaded PKCS#11 key");
        Ok(Self {
            inner: Arc::new(KeyInner {
                pool,
                uri,
                handle: Mutex::new(handle),
                kind,
                schemes,
                spki,
                raw_public,
                cert_method,
            }),
        })
    }

    /// The key's URI (without query).
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.inner.uri
    }

    /// The TLS signature schemes this key can produce on its token, in preference order.
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes.iter().map(|(s, _)| *s).collect()
    }

    /// The key's SubjectPublicKeyInfo.
    pub fn spki(&self) -> SubjectPublicKeyInfoDer<'_> {
        SubjectPublicKeyInfoDer::from(self.inner.spki.as_slice())
    }

    /// Signs `msg` with `method`, re-logging in or reopening the session once if the token asks for it.
    fn sign_with(&self, method: Method, msg: &[u8]) -> Result<Vec<u8>, Error> {
        let inner = &*self.inner;
        let pool = &*inner.pool;
        let input = method.input(msg);
        let mechanism = method.mechanism();
        let what = || format!("C_Sign with {}", inner.uri);
        // Attempt 1 may find us logged out or on a dead session; attempt 2 runs
        // after the fix; a third failure is reported.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let checked_out = pool.checkout()?;
            let handle = *inner.handle.lock().unwrap_or_else(|p| p.into_inner());
            let err = match checked_out.session().sign(&mechanism, handle, &input) {
                Ok(sig) if method.is_ecdsa() => {
                    return der::ecdsa_raw_to_der(&sig).ok_or_else(|| {
                        Error::UnsupportedDeviceKey {
                            key: inner.uri.to_string(),
                            reason: format!("token returned a {}-byte ECDSA signature", sig.len()),
                        }
                    });
                }
                Ok(sig) => return Ok(sig),
                Err(e) => e,
            };
            if attempt >= 3 {
                if fault(&err) != Fault::Other {
                    checked_out.discard();
                }
                return Err(pool.err(what(), err));
            }
            match fault(&err) {
                Fault::SessionLost => {
                    tracing::debug!(key = %inner.uri, error = %err, "PKCS#11 session lost; reopening");
                    checked_out.discard();
                }
                Fault::Device => {
                    checked_out.discard();
                    return Err(pool.err(what(), err));
                }
                // After a logout some tokens answer with an invalid key handle
                // rather than CKR_USER_NOT_LOGGED_IN, and a token that came back
                // (reinserted, restored) has new handles: log in if needed, then
                // look the key up again by its URI.
                Fault::LoggedOut | Fault::Other | Fault::StaleHandle
                    if !SessionPool::is_logged_in(checked_out.session())
                        || fault(&err) == Fault::StaleHandle =>
                {
                    if !SessionPool::is_logged_in(checked_out.session()) {
                        tracing::info!(key = %inner.uri, token = pool.token(), "PKCS#11 token logged out; logging in again");
                        pool.login(checked_out.session())?;
                    } else {
                        tracing::info!(key = %inner.uri, token = pool.token(), "PKCS#11 key handle went stale; looking the key up again");
                    }
                    let fresh = find_key(
                        pool,
                        checked_out.session(),
                        &inner.uri,
                        ObjectClass::PRIVATE_KEY,
                    )?
                    .ok_or_else(|| Error::Pkcs11KeyNotFound {
                        key: inner.uri.to_string(),
                        token: pool.token().to_owned(),
                    })?;
                    *inner.handle.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                }
                Fault::LoggedOut | Fault::Other | Fault::StaleHandle => {
                    return Err(pool.err(what(), err));
                }
            }
        }
    }
}

/// The TLS schemes a key of `kind` can make with the mechanisms the token lists.
fn schemes_for(kind: Kind, mechs: &[MechanismType]) -> Vec<(SignatureScheme, Method)> {
    use Hash::*;
    let mut out = Vec::new();
    match kind {
        Kind::Ec(curve) => {
            let h = curve.hash();
            let hashed = match h {
                Sha256 => MechanismType::ECDSA_SHA256,
                Sha384 => MechanismType::ECDSA_SHA384,
                Sha512 => MechanismType::ECDSA_SHA512,
            };
            let scheme = match curve {
                EcCurve::P256 => SignatureScheme::ECDSA_NISTP256_SHA256,
                EcCurve::P384 => SignatureScheme::ECDSA_NISTP384_SHA384,
            };
            if let Some(m) = Method::pick(
                mechs,
                (hashed, Method::EcdsaHashed(h)),
                (MechanismType::ECDSA, Method::EcdsaRaw(h)),
            ) {
                out.push((scheme, m));
            }
        }
        Kind::Rsa => {
            for (scheme, h, hashed) in [
                (
                    SignatureScheme::RSA_PSS_SHA512,
                    Sha512,
                    MechanismType::SHA512_RSA_PKCS_PSS,
                ),
                (
                    SignatureScheme::RSA_PSS_SHA384,
                    Sha384,
                    MechanismType::SHA384_RSA_PKCS_PSS,
                ),
                (
                    SignatureScheme::RSA_PSS_SHA256,
                    Sha256,
                    MechanismType::SHA256_RSA_PKCS_PSS,
                ),
            ] {
                if let Some(m) = Method::pick(
                    mechs,
                    (hashed, Method::PssHashed(h)),
                    (MechanismType::RSA_PKCS_PSS, Method::PssRaw(h)),
                ) {
                    out.push((scheme, m));
                }
            }
            // PKCS#1 v1.5 is only for TLS 1.2 peers (TLS 1.3 forbids it in handshakes).
            for (scheme, h, hashed) in [
                (
                    SignatureScheme::RSA_PKCS1_SHA512,
                    Sha512,
                    MechanismType::SHA512_RSA_PKCS,
                ),
                (
                    SignatureScheme::RSA_PKCS1_SHA384,
                    Sha384,
                    MechanismType::SHA384_RSA_PKCS,
                ),
                (
                    SignatureScheme::RSA_PKCS1_SHA256,
                    Sha256,
                    MechanismType::SHA256_RSA_PKCS,
                ),
            ] {
                if let Some(m) = Method::pick(
                    mechs,
                    (hashed, Method::Pkcs1Hashed(h)),
                    (MechanismType::RSA_PKCS, Method::Pkcs1Raw(h)),
                ) {
                    out.push((scheme, m));
                }
            }
        }
    }
    out
}

/// Finds the one object of `class` matching the URI's label and id.
pub(crate) fn find_key(
    pool: &SessionPool,
    session: &Session,
    uri: &Pkcs11Uri,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, Error> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| pool.err(format!("C_FindObjects for {uri}"), e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(Error::UnsupportedDeviceKey {
            key: uri.to_string(),
            reason: format!(
                "{} {class} objects match; add id= or object= to make it unique",
                many.len()
            ),
        }),
    }
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("uri", &self.inner.uri)
            .field("token", &self.inner.pool.token())
            .field("kind", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

impl SigningKey for Pkcs11Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let (scheme, method) = self
            .inner
            .schemes
            .iter()
            .find(|(s, _)| offered.contains(s))?;
        Some(Box::new(Pkcs11Signer {
            key: self.clone(),
            scheme: *scheme,
            method: *method,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(self.spki())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.inner.kind {
            Kind::Ec(_) => SignatureAlgorithm::ECDSA,
            Kind::Rsa => SignatureAlgorithm::RSA,
        }
    }
}

/// One handshake's signer: a key plus the scheme rustls chose.
#[derive(Debug)]
struct Pkcs11Signer {
    key: Pkcs11Key,
    scheme: SignatureScheme,
    method: Method,
}

impl Signer for Pkcs11Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign_with(self.method, message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl rcgen::PublicKeyData for Pkcs11Key {
    fn der_bytes(&self) -> &[u8] {
        &self.inner.raw_public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match (self.inner.cert_method, self.inner.kind) {
            (Some((_, alg)), _) => alg,
            // Without a usable mechanism signing fails; the algorithm still
            // describes the public key correctly for use as a subject key.
            (None, Kind::Ec(EcCurve::P256)) => &rcgen::PKCS_ECDSA_P256_SHA256,
            (None, Kind::Ec(EcCurve::P384)) => &rcgen::PKCS_ECDSA_P384_SHA384,
            (None, Kind::Rsa) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for Pkcs11Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let Some((method, _)) = self.inner.cert_method else {
            tracing::warn!(key = %self.inner.uri, "token offers no mechanism rcgen can sign certificates with");
            return Err(rcgen::Error::RemoteKeyError);
        };
        // rcgen's error carries no detail: log ours before it is lost.
        self.sign_with(method, msg).map_err(|error| {
            tracing::warn!(key = %self.inner.uri, %error, "certificate signing in the token failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softhsm_like_token_gets_host_hashing_for_ecdsa() {
        let mechs = [MechanismType::ECDSA, MechanismType::RSA_PKCS];
        assert_eq!(
            schemes_for(Kind::Ec(EcCurve::P384), &mechs),
            vec![(
                SignatureScheme::ECDSA_NISTP384_SHA384,
                Method::EcdsaRaw(Hash::Sha384)
            )]
        );
    }

    #[test]
    fn hashed_mechanisms_are_preferred_and_missing_pss_drops_pss_schemes() {
        let mechs = [
            MechanismType::ECDSA,
            MechanismType::ECDSA_SHA256,
            MechanismType::SHA256_RSA_PKCS,
            MechanismType::RSA_PKCS,
        ];
        assert_eq!(
            schemes_for(Kind::Ec(EcCurve::P256), &mechs)[0].1,
            Method::EcdsaHashed(Hash::Sha256)
        );
        let rsa = schemes_for(Kind::Rsa, &mechs);
        assert_eq!(
            rsa,
            vec![
                (
                    SignatureScheme::RSA_PKCS1_SHA512,
                    Method::Pkcs1Raw(Hash::Sha512)
                ),
                (
                    SignatureScheme::RSA_PKCS1_SHA384,
                    Method::Pkcs1Raw(Hash::Sha384)
                ),
                (
                    SignatureScheme::RSA_PKCS1_SHA256,
                    Method::Pkcs1Hashed(Hash::Sha256)
                ),
            ]
        );
    }

    #[test]
    fn raw_pkcs1_input_is_digest_info_then_digest() {
        let input = Method::Pkcs1Raw(Hash::Sha256).input(b"abc");
        assert_eq!(input.len(), 19 + 32);
        assert_eq!(&input[..19], der::DIGEST_INFO_SHA256);
    }
}
