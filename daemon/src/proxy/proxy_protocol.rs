//! PROXY protocol v2 headers that tell a local service who is calling.
//!
//! The header carries the peer's source and the address it connected to, a
//! standard `PP2_TYPE_SSL` TLV (client authenticated with a certificate, TLS
//! version) and the peer's SPIFFE ID in the custom TLV [`TLV_SPIFFE_ID`]. When
//! the first bytes after the header arrived as TLS 1.3 early data (0-RTT), the
//! TLV [`TLV_EARLY_DATA`] says how many, so the service can refuse to act on
//! non-idempotent requests that could have been replayed from elsewhere. A
//! plaintext peer on a permissive listener gets the addresses and no TLVs.

use std::net::{IpAddr, SocketAddr};

use crate::identity::SpiffeId;

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// TLV type carrying the peer's SPIFFE ID (first of the custom range 0xE0-0xEF).
pub const TLV_SPIFFE_ID: u8 = 0xE0;

/// TLV type carrying the count (4 bytes, big-endian) of 0-RTT bytes that follow the header.
pub const TLV_EARLY_DATA: u8 = 0xE1;

/// What the header says about the peer's TLS session.
#[derive(Debug, Clone, Copy)]
pub struct TlsInfo<'a> {
    /// The verified SPIFFE ID.
    pub spiffe_id: &'a SpiffeId,
    /// e.g. `TLSv1.3`.
    pub version: &'a str,
    /// How many bytes right after the header were received as early data (0: none).
    pub early_data: u32,
}

/// Encodes a PROXY v2 header for a connection from `source` to `destination`.
pub fn encode(source: SocketAddr, destination: SocketAddr, tls: Option<TlsInfo<'_>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    out.extend_from_slice(&[0, 0, 0]); // family and length, patched below

    match (canonical(source.ip()), canonical(destination.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = TCP_OVER_IPV4;
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out[13] = TCP_OVER_IPV6;
            out.extend_from_slice(&v6_octets(s));
            out.extend_from_slice(&v6_octets(d));
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());

    if let Some(tls) = tls {
        let mut ssl = vec![PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, 0, 0, 0]; // client flags, verify = 0 (ok)
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
        push_tlv(&mut out, PP2_TYPE_SSL, &ssl);
        push_tlv(&mut out, TLV_SPIFFE_ID, tls.spiffe_id.as_str().as_bytes());
        if tls.early_data > 0 {
            push_tlv(&mut out, TLV_EARLY_DATA, &tls.early_data.to_be_bytes());
        }
    }

    let len = u16::try_from(out.len() - 16).expect("PROXY header under 64 KiB");
    out[14..16].copy_from_slice(&len.to_be_bytes());
    out
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let len = u16::try_from(value.len()).expect("TLV under 64 KiB");
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Unwraps IPv4-mapped IPv6 addresses so a v4 peer on a dual-stack socket stays v4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_without_identity_is_28_bytes() {
        let h = encode(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:15443".parse().unwrap(),
            None,
        );
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[10, 0, 0, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let h = encode(
            "[::1]:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            None,
        );
        assert_eq!(h[13], TCP_OVER_IPV6);
        assert_eq!(
            &h[32..48],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
