//! TLS 1.3's key schedule with each HMAC key prepared once.
//!
//! rustls' aws-lc-rs suites derive every traffic secret through aws-lc-rs' `hkdf`, whose
//! extracted keys re-run the extract step (and re-hash the HMAC pads) on every expand: a
//! resumed handshake hashed about 160 SHA-256 blocks on the server, more than its X25519
//! cost in instructions. Here the extract is one HMAC, and the resulting key's inner and outer
//! pads are hashed once ([`aws_lc_rs::hmac::Key`]), so each expand costs two blocks. HKDF
//! itself is rustls' [`HkdfUsingHmac`]; only the HMAC under it is ours, on aws-lc-rs.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use rustls::SupportedCipherSuite;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;

/// HMAC on aws-lc-rs, its keys prepared when made.
struct AwsLcHmac(&'static hmac::Algorithm);

impl Hmac for AwsLcHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(PreparedKey(hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

/// An HMAC key whose pads are already hashed; every tag starts from a copy of that state.
struct PreparedKey(hmac::Key);

impl Key for PreparedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: AwsLcHmac = AwsLcHmac(&hmac::HMAC_SHA256);
static HMAC_SHA384: AwsLcHmac = AwsLcHmac(&hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// `suite` with its key schedule on prepared HMAC keys (TLS 1.3 suites; TLS 1.2's PRF is
/// left as it is). Each suite is rebuilt once per process.
pub fn prepared(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    static REBUILT: LazyLock<Vec<(SupportedCipherSuite, SupportedCipherSuite)>> =
        LazyLock::new(|| {
            rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
                .iter()
                .filter_map(|s| {
                    let SupportedCipherSuite::Tls13(tls13) = s else {
                        return None;
                    };
                    let hkdf: &'static HkdfUsingHmac<'static> =
                        match tls13.common.hash_provider.output_len() {
                            32 => &HKDF_SHA256,
                            48 => &HKDF_SHA384,
                            _ => return None,
                        };
                    let rebuilt = Box::leak(Box::new(rustls::Tls13CipherSuite {
                        common: rustls::CipherSuiteCommon {
                            suite: tls13.common.suite,
                            hash_provider: tls13.common.hash_provider,
                            confidentiality_limit: tls13.common.confidentiality_limit,
                        },
                        hkdf_provider: hkdf,
                        aead_alg: tls13.aead_alg,
                        quic: tls13.quic,
                    }));
                    Some((*s, SupportedCipherSuite::Tls13(rebuilt)))
                })
                .collect()
        });
    REBUILT
        .iter()
        .find(|(original, _)| original.suite() == suite.suite())
        .map_or(suite, |(_, rebuilt)| *rebuilt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::tls13::Hkdf;

    /// RFC 5869, appendix A.1 (SHA-256, basic case).
    #[test]
    fn the_rfc_5869_vector_comes_out() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0; 42];
        HKDF_SHA256
            .extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info], &mut okm)
            .unwrap();
        let expected = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                        34007208d5b887185865";
        assert_eq!(hex(&okm), expected);
    }

    /// Every expand, block and HMAC agrees with aws-lc-rs' own HKDF for both hashes.
    #[test]
    fn it_agrees_with_aws_lc_rs_hkdf() {
        use aws_lc_rs::hkdf;
        for (ours, theirs, len) in [
            (&HKDF_SHA256, hkdf::HKDF_SHA256, 32),
            (&HKDF_SHA384, hkdf::HKDF_SHA384, 48),
        ] {
            let secret = [7u8; 48];
            let salt = [9u8; 48];
            let info: [&[u8]; 2] = [b"tls13 ", b"c hs traffic"];
            let mut want = vec![0; len];
            hkdf::Salt::new(theirs, &salt[..len])
                .extract(&secret[..len])
                .expand(&info, Len(len))
                .unwrap()
                .fill(&mut want)
                .unwrap();
            let block = ours
                .extract_from_secret(Some(&salt[..len]), &secret[..len])
                .expand_block(&info);
            assert_eq!(block.as_ref(), &want[..]);
            // 255 blocks is HKDF's limit; one byte more is refused.
            let expander = ours.extract_from_zero_ikm(None);
            let mut max = vec![0; 255 * len];
            assert!(expander.expand_slice(&info, &mut max).is_ok());
            let mut over = vec![0; 255 * len + 1];
            assert!(expander.expand_slice(&info, &mut over).is_err());
        }
    }

    #[test]
    fn tls13_suites_are_rebuilt_and_tls12_ones_left_alone() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let tls13 = prepared(cs::TLS13_AES_128_GCM_SHA256);
        assert_eq!(tls13.suite(), cs::TLS13_AES_128_GCM_SHA256.suite());
        let (SupportedCipherSuite::Tls13(ours), SupportedCipherSuite::Tls13(theirs)) =
            (tls13, cs::TLS13_AES_128_GCM_SHA256)
        else {
            panic!("not TLS 1.3");
        };
        assert!(!std::ptr::eq(ours, theirs));
        assert!(std::ptr::addr_eq(ours.hkdf_provider, &HKDF_SHA256));
        let tls12 = prepared(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        let SupportedCipherSuite::Tls12(kept) = tls12 else {
            panic!("not TLS 1.2");
        };
        let SupportedCipherSuite::Tls12(original) = cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        else {
            panic!("not TLS 1.2");
        };
        assert!(std::ptr::eq(kept, original));
    }

    struct Len(usize);

    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
