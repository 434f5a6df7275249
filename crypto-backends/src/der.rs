//! The few DER encodings device backends need and no dependency offers in the shape we want.
//!
//! Tokens hand back raw values (ECDSA `r‖s`, an RSA modulus and exponent, a
//! wrapped EC point); TLS and X.509 want them DER-encoded.

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends a tag-length-value.
fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Appends an unsigned big-endian integer as a DER INTEGER (minimal, non-negative).
fn push_uint(out: &mut Vec<u8>, be: &[u8]) {
    let trimmed = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => &[0u8][..],
    };
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    // A set top bit would read as negative: prepend a zero byte.
    if trimmed[0] & 0x80 != 0 {
        value.push(0);
    }
    value.extend_from_slice(trimmed);
    push_tlv(out, 0x02, &value);
}

/// Encodes a SEQUENCE of two unsigned integers.
fn sequence_of_two(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(a.len() + b.len() + 8);
    push_uint(&mut body, a);
    push_uint(&mut body, b);
    let mut out = Vec::with_capacity(body.len() + 4);
    push_tlv(&mut out, 0x30, &body);
    out
}

/// Converts a PKCS#11 ECDSA signature (`r‖s`, equal halves) to the DER `Ecdsa-Sig-Value` TLS wants.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(sequence_of_two(r, s))
}

/// Encodes an RSA public key as PKCS#1 `RSAPublicKey`.
pub(crate) fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    sequence_of_two(modulus, exponent)
}

/// Unwraps `CKA_EC_POINT`, which PKCS#11 specifies as a DER OCTET STRING but some tokens return raw.
///
/// `point_len` is the uncompressed point length for the curve (65 for P-256, 97 for P-384).
pub(crate) fn unwrap_ec_point(data: &[u8], point_len: usize) -> Option<&[u8]> {
    if data.len() == point_len && data[0] == 0x04 {
        return Some(data);
    }
    // Both supported curves have points shorter than 128 bytes: a one-byte length.
    if data.len() == point_len + 2 && data[0] == 0x04 && usize::from(data[1]) == point_len {
        let inner = &data[2..];
        if inner[0] == 0x04 {
            return Some(inner);
        }
    }
    None
}

/// DigestInfo prefixes for PKCS#1 v1.5 signatures made with a raw `CKM_RSA_PKCS` (RFC 8017 §9.2 note 1).
pub(crate) const DIGEST_INFO_SHA256: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// See [`DIGEST_INFO_SHA256`].
pub(crate) const DIGEST_INFO_SHA384: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
/// See [`DIGEST_INFO_SHA256`].
pub(crate) const DIGEST_INFO_SHA512: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// `CKA_EC_PARAMS` for P-256: the named-curve OID `prime256v1`.
pub(crate) const EC_PARAMS_P256: &[u8] =
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` for P-384: the named-curve OID `secp384r1`.
pub(crate) const EC_PARAMS_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signature_becomes_der_with_sign_padding() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero to stay positive
        raw[32] = 0x00;
        raw[33] = 0x01; // s has a leading zero byte to trim
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 0x44, 0x02, 0x21]);
        assert_eq!(der[4], 0x00);
        // s: 31 bytes after trimming, starting 0x01.
        assert_eq!(&der[37..40], &[0x02, 0x1f, 0x01]);
        assert_eq!(der.len(), 2 + 0x44);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn ec_point_is_unwrapped_from_an_octet_string_or_taken_raw() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65), Some(&point[..]));
        assert_eq!(unwrap_ec_point(&point, 65), Some(&point[..]));
        assert_eq!(unwrap_ec_point(&point[..10], 65), None);
    }

    #[test]
    fn long_lengths_use_the_multi_byte_form() {
        let modulus = vec![0xffu8; 256];
        let der = rsa_public_key(&modulus, &[1, 0, 1]);
        // 257-byte INTEGER (leading zero) + 5-byte exponent, inside a SEQUENCE with a 2-byte length.
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x0a]);
        assert_eq!(&der[4..8], &[0x02, 0x82, 0x01, 0x01]);
    }
}
