//! Signing keys, their JWKS and PEM public keys, and tokens signed with them: the benchmarks'
//! stand-in for an identity provider (the end-to-end tests use a real one). Shared by the
//! `http` workload of `mtlsd-bench` and the criterion `authz` benchmark.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize};
use serde_json::{Value, json};

/// One issuer's signing key.
pub struct SigningKey {
    /// Its JWS algorithm.
    pub alg: Algorithm,
    /// Its `kid`, in the JWKS and in every token's header.
    pub kid: String,
    /// Its public half as a JWK (with `kid`, `use: sig` and `alg`).
    pub jwk: Jwk,
    /// Its public half as a PEM `PUBLIC KEY` (what HAProxy's `jwt_verify` loads).
    pub public_pem: String,
    encoding: EncodingKey,
}

impl SigningKey {
    /// A fresh ECDSA P-256 key for ES256.
    pub fn es256(kid: &str) -> Self {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        // jsonwebtoken takes the PKCS#8 document for EC keys.
        let encoding = EncodingKey::from_ec_der(pair.serialized_der());
        Self::new(Algorithm::ES256, kid, encoding, pair.public_key_pem())
    }

    /// A fresh 2048-bit RSA key for RS256.
    pub fn rs256(kid: &str) -> Self {
        let pair =
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("an RSA key");
        // jsonwebtoken takes RSA keys as a bare RSAPrivateKey (PKCS#1).
        let encoding = EncodingKey::from_rsa_der(pkcs1_of(pair.serialized_der()));
        Self::new(Algorithm::RS256, kid, encoding, pair.public_key_pem())
    }

    fn new(alg: Algorithm, kid: &str, encoding: EncodingKey, public_pem: String) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("a JWK of the public key");
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Self {
            alg,
            kid: kid.to_owned(),
            jwk,
            public_pem,
            encoding,
        }
    }

    /// `claims` signed with this key, `kid` in the header.
    pub fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a signed token")
    }
}

/// The JWKS document publishing `keys`.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    };
    serde_json::to_string_pretty(&set).expect("a JWKS document")
}

/// The claims of an access token from `issuer` for `subject`, valid for an hour from now.
pub fn claims(issuer: &str, subject: &str, audience: &str, groups: &[&str]) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "groups": groups,
        "scope": "read",
    })
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (or `der` itself when it is one already).
fn pkcs1_of(der: &[u8]) -> &[u8] {
    let inner = || {
        let (tag, seq, _) = der_item(der)?;
        (tag == 0x30).then_some(())?;
        let (tag, _version, rest) = der_item(seq)?;
        (tag == 0x02).then_some(())?;
        let (tag, _algorithm, rest) = der_item(rest)?;
        // PKCS#1 goes on with the modulus (an INTEGER); PKCS#8 with the AlgorithmIdentifier.
        if tag == 0x02 {
            return Some(der);
        }
        let (tag, key, _) = der_item(rest)?;
        (tag == 0x04).then_some(key)
    };
    inner().expect("an RSA private key in PKCS#8 or PKCS#1 DER")
}

/// One DER item: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b)),
            rest,
        )
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}
