//! A minimal certificate authority for a trust domain: root, intermediate and short-lived leaf SVIDs.
//!
//! Keys are generated and kept as files (mode 0600) in one directory:
//!
//! | file | what |
//! |---|---|
//! | `root.pem`, `root.key` | self-signed root, the trust anchor |
//! | `intermediate.pem`, `intermediate.key` | day-to-day issuer, signed by the root |
//! | `bundle.pem` | what peers trust: the root certificate |
//! | `root.uri` | instead of `root.key` when the root key lives in a PKCS#11 token |
//! | `ledger.json` | every leaf issued: serial, SPIFFE ID, expiry, revocation time |
//! | `crl.pem` | the revocation list, signed by the intermediate, rewritten on every revocation |
//! | `lock` | held (`flock`) while the ledger and CRL change |
//!
//! Leaves are ECDSA P-256 X.509-SVIDs with one `spiffe://` URI SAN (plus any
//! DNS and IP SANs asked for), the SPIFFE ID as subject CN, usable as TLS client
//! and server certificates, backdated a few minutes for clock skew. No
//! certificate is issued that would outlive the CA certificate signing it.
//! Every change to the ledger happens under an exclusive lock on `lock` and
//! every file is replaced atomically, so concurrent `mtlsd ca` invocations and
//! daemons issuing their own SVIDs cannot corrupt the directory.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::format_duration;
use crate::files::Staged;
use crate::identity::{SpiffeId, rfc3339, spiffe_id_of, validate_trust_domain};

mod issue;
mod ledger;

use ledger::DirLock;
pub use ledger::{IssuedRecord, LeafStatus, Revoke, parse_serial};

/// How far back leaves are dated, so peers with slightly slow clocks accept them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The longest subject CN X.509 allows (RFC 5280's `ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, so not also a `source()`: see ARCHITECTURE.md, Errors).
        cause: io::Error,
    },
    /// `init` found an existing CA.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(rcgen::Error),
    /// A trust domain or SPIFFE ID argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// `ledger.json` does not parse.
    #[error("{path}: {reason}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate asked for would stay valid after the CA certificate that signs it expires.
    #[error(
        "{what} would be valid until {not_after}, but its issuer ({issuer}) expires {issuer_not_after}: \
         a certificate must not outlive the CA that signed it; ask for a lifetime of at most {at_most}"
    )]
    OutlivesIssuer {
        /// What was asked for: "the leaf", "the intermediate CA".
        what: &'static str,
        /// The expiry asked for, RFC 3339.
        not_after: String,
        /// The issuing CA: "the intermediate CA", "the root CA".
        issuer: &'static str,
        /// The issuer's expiry, RFC 3339.
        issuer_not_after: String,
        /// The longest lifetime that still fits, as `--ttl` takes it.
        at_most: String,
    },
    /// Delivering an issued certificate failed, and so did removing its ledger entry again.
    #[error(
        "{failed}; removing its ledger entry (serial {serial}) failed too, so `ca list` shows \
         a certificate nobody received: {rollback}"
    )]
    Rollback {
        /// Why delivery failed.
        failed: Box<CaError>,
        /// The serial left in the ledger.
        serial: String,
        /// Why the ledger could not be restored.
        rollback: Box<CaError>,
    },
    /// The directory holds no CA (no `intermediate.pem`).
    #[error(
        "{} is not a CA directory; run `mtlsd ca init --dir {}` first",
        .0.display(),
        .0.display()
    )]
    NotInitialized(PathBuf),
}

// By hand rather than `#[from]`, which would also make the error its `source()`: the message
// already quotes it (see ARCHITECTURE.md, Errors).
impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        Self::Cert(e)
    }
}

/// An issued leaf: PEM chain (leaf, then intermediate) and PEM key.
pub struct IssuedSvid {
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PEM; wiped when dropped.
    pub key_pem: Zeroizing<String>,
    /// The leaf's serial number in hex.
    pub serial: String,
    /// When the leaf expires.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedSvid {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a leaf should say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The SPIFFE ID (the one URI SAN).
    pub id: SpiffeId,
    /// Extra DNS SANs, for clients that check host names (curl, browsers).
    pub dns_names: Vec<String>,
    /// IP address SANs, for clients that connect to an address and check it.
    pub ip_addresses: Vec<IpAddr>,
    /// Subject CN; `None` means the SPIFFE ID (or no subject at all when the ID is longer than a CN may be).
    pub common_name: Option<String>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A leaf for `id` valid from a few minutes ago for `ttl`.
    pub fn new(id: SpiffeId, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            id,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            common_name: None,
            not_before: now - BACKDATE,
            not_after: now + ttl,
        }
    }
}

/// An opened CA directory, ready to issue.
pub struct Authority {
    dir: PathBuf,
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    /// The intermediate's notAfter: no leaf may outlive it.
    issuer_not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a root and an intermediate for `trust_domain` in `dir`, both keys in files.
    pub fn init(
        dir: &Path,
        trust_domain: &str,
        root_ttl: Duration,
        intermediate_ttl: Duration,
    ) -> Result<Self, CaError> {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::create(
            dir,
            trust_domain,
            &root_key,
            root_ttl,
            intermediate_ttl,
            || write_private(&dir.join("root.key"), &root_key.serialize_pem()),
        )
    }

    /// Like [`Self::init`], with a root key held elsewhere (a PKCS#11 token) that never leaves it.
    ///
    /// The root key signs exactly two things, its own certificate and the
    /// intermediate's. `root.key` is not written; `root.uri` records `uri`.
    pub fn init_with_external_root<K: rcgen::SigningKey>(
        dir: &Path,
        trust_domain: &str,
        root_key: &K,
        uri: &str,
        root_ttl: Duration,
        intermediate_ttl: Duration,
    ) -> Result<Self, CaError> {
        Self::create(
            dir,
            trust_domain,
            root_key,
            root_ttl,
            intermediate_ttl,
            || write_public(&dir.join("root.uri"), &format!("{uri}\n")),
        )
    }

    fn create<K: rcgen::SigningKey>(
        dir: &Path,
        trust_domain: &str,
        root_key: &K,
        root_ttl: Duration,
        intermediate_ttl: Duration,
        keep_root_key: impl FnOnce() -> Result<(), CaError>,
    ) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain)
            .map_err(|e| CaError::Invalid(format!("trust domain {trust_domain:?}: {e}")))?;
        if dir.join("root.pem").exists() {
            return Err(CaError::AlreadyInitialized(dir.to_owned()));
        }
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let now = OffsetDateTime::now_utc();

        let root_params = ca_params(trust_domain, "root", now, root_ttl, None)?;
        let int_params = ca_params(trust_domain, "intermediate", now, intermediate_ttl, Some(0))?;
        check_within(
            "the intermediate CA",
            int_params.not_after,
            "the root CA",
            root_params.not_after,
        )?;
        let root_cert = root_params.self_signed(root_key)?;
        let root = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let int_cert = int_params.signed_by(&int_key, &root)?;

        keep_root_key()?;
        write_private(&dir.join("intermediate.key"), &int_key.serialize_pem())?;
        write_public(&dir.join("intermediate.pem"), &int_cert.pem())?;
        write_public(&dir.join("bundle.pem"), &root_cert.pem())?;
        // root.pem last: its presence marks a complete CA.
        write_public(&dir.join("root.pem"), &root_cert.pem())?;
        let ca = Self::open(dir)?;
        // An empty CRL from the start, so daemons can point identity.crl at it right away.
        ca.with_ledger(|_| Ok(()))?;
        Ok(ca)
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(io_at(&path))
        };
        let intermediate_pem = read("intermediate.pem").map_err(|e| match e {
            CaError::Io { cause, .. } if cause.kind() == io::ErrorKind::NotFound => {
                CaError::NotInitialized(dir.to_owned())
            }
            e => e,
        })?;
        let key = KeyPair::from_pem(&Zeroizing::new(read("intermediate.key")?))?;
        let der: rustls_pki_types::CertificateDer<'_> =
            rustls_pki_types::pem::PemObject::from_pem_slice(intermediate_pem.as_bytes())
                .map_err(|e| CaError::Invalid(format!("intermediate.pem: {e}")))?;
        let trust_domain = spiffe_id_of(&der)
            .map_err(|e| CaError::Invalid(format!("intermediate.pem: {e}")))?
            .trust_domain()
            .to_owned();
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::Invalid(format!("intermediate.pem: {e}")))?;
        let issuer_not_after =
            OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
                .map_err(|e| CaError::Invalid(format!("intermediate.pem: notAfter: {e}")))?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain,
            issuer: Issuer::from_ca_cert_pem(&intermediate_pem, key)?,
            intermediate_pem,
            issuer_not_after,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Path of the trust bundle peers should use.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// When the intermediate CA expires: the latest notAfter a leaf can get.
    pub fn issuer_not_after(&self) -> OffsetDateTime {
        self.issuer_not_after
    }

    /// Checks that a leaf issued now for `ttl` would expire before the intermediate does.
    pub fn check_ttl(&self, ttl: Duration) -> Result<(), CaError> {
        let not_after = OffsetDateTime::now_utc() + ttl;
        check_within(
            "the leaf",
            not_after,
            "the intermediate CA",
            self.issuer_not_after,
        )
    }
}

/// A leaf certificate issued for a key the CA never saw.
pub struct IssuedCert {
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// The leaf's serial number in hex.
    pub serial: String,
    /// When the leaf expires.
    pub not_after: OffsetDateTime,
}

impl IssuedSvid {
    /// Writes the chain (mode 0644) and key (mode 0600), replacing both atomically.
    ///
    /// Both are staged before either is replaced, so a path that cannot be written
    /// leaves the old pair intact. [`Authority::issue_to_files`] does this and keeps
    /// the ledger consistent with it.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), CaError> {
        let key = stage(key, &self.key_pem, 0o600)?;
        let cert = stage(cert, &self.chain_pem, 0o644)?;
        for file in [key, cert] {
            let path = file.path().to_owned();
            file.commit().map_err(|cause| CaError::Io { path, cause })?;
        }
        Ok(())
    }
}

/// Stages `contents` for `path` (see [`Staged`]), naming the path on failure.
fn stage(path: &Path, contents: &str, mode: u32) -> Result<Staged, CaError> {
    Staged::write(path, contents.as_bytes(), mode).map_err(io_at(path))
}

/// Refuses a certificate whose `not_after` is later than its issuer's.
///
/// Refused rather than capped at the issuer's expiry: an operator asking for
/// `--ttl 3650d` plans renewals around that date, and a silently (or, in a log
/// line nobody reads, loudly) shortened certificate would break that plan
/// later instead of now. Peers would reject the leaf past the issuer's expiry
/// anyway; the error says how long a lifetime still fits.
fn check_within(
    what: &'static str,
    not_after: OffsetDateTime,
    issuer: &'static str,
    issuer_not_after: OffsetDateTime,
) -> Result<(), CaError> {
    // X.509 times have whole seconds; compare what the certificates will say.
    if not_after.unix_timestamp() <= issuer_not_after.unix_timestamp() {
        return Ok(());
    }
    let left =
        u64::try_from((issuer_not_after - OffsetDateTime::now_utc()).whole_seconds()).unwrap_or(0);
    // Whole days when there are any, else whole minutes: a value --ttl accepts and that fits.
    let at_most = match left {
        0..60 => "nothing: the issuer has expired or is about to".to_owned(),
        60..86_400 => format_duration(Duration::from_secs(left / 60 * 60)),
        _ => format_duration(Duration::from_secs(left / 86_400 * 86_400)),
    };
    Err(CaError::OutlivesIssuer {
        what,
        not_after: rfc3339(not_after.unix_timestamp()),
        issuer,
        issuer_not_after: rfc3339(issuer_not_after.unix_timestamp()),
        at_most,
    })
}

/// id-ce-basicConstraints (RFC 5280, 4.2.1.9).
const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];

fn ca_params(
    td: &str,
    role: &str,
    now: OffsetDateTime,
    ttl: Duration,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td);
    dn.push(DnType::CommonName, format!("mtlsd {role} CA for {td}"));
    params.distinguished_name = dn;
    // The trust domain's own SPIFFE ID, which also lets `open` recover the trust domain.
    params
        .subject_alt_names
        .push(SanType::URI(format!("spiffe://{td}").try_into()?));
    params.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = path_len.is_some();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    Ok(params)
}

/// 16 random bytes with the top bit clear, so the DER integer stays positive and 16 bytes long.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut serial)
        .expect("system RNG available");
    serial[0] &= 0x7f;
    serial[0] |= 0x40;
    serial
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> CaError + '_ {
    move |cause| CaError::Io {
        path: path.to_owned(),
        cause,
    }
}

fn write_public(path: &Path, contents: &str) -> Result<(), CaError> {
    write_atomic(path, contents, 0o644)
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    write_atomic(path, contents, 0o600)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    crate::files::write_atomic(path, contents.as_bytes(), mode).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn init_then_issue_a_leaf_that_names_its_spiffe_id() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::init(
            dir.path(),
            "example.org",
            Duration::from_secs(86400 * 365),
            Duration::from_secs(86400 * 30),
        )
        .unwrap();
        assert_eq!(ca.trust_domain(), "example.org");
        let id: SpiffeId = "spiffe://example.org/ns/web".parse().unwrap();
        let leaf = ca
            .issue(&LeafSpec::new(id.clone(), Duration::from_secs(3600)))
            .unwrap();
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(spiffe_id_of(&chain[0]).unwrap(), id);
        assert_eq!(leaf.serial.len(), 32);

        use std::os::unix::fs::PermissionsExt;
        let mode = |n: &str| {
            fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("root.key"), 0o600);
        assert_eq!(mode("intermediate.key"), 0o600);
        assert_eq!(mode("bundle.pem"), 0o644);
    }

    #[test]
    fn a_leaf_says_it_is_no_ca_in_strict_der() {
        let dir = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(86400 * 365);
        let ca = Authority::init(dir.path(), "example.org", year, year).unwrap();
        let id: SpiffeId = "spiffe://example.org/leaf".parse().unwrap();
        let leaf = ca
            .issue(&LeafSpec::new(id, Duration::from_secs(3600)))
            .unwrap();
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let bc: Vec<_> = x509
            .extensions()
            .iter()
            .filter(|e| e.oid.to_id_string() == "2.5.29.19")
            .collect();
        assert_eq!(bc.len(), 1, "exactly one BasicConstraints");
        assert!(bc[0].critical);
        // An empty SEQUENCE: cA takes its DEFAULT (false) and is not encoded.
        assert_eq!(bc[0].value, [0x30, 0x00]);
        assert!(!x509.is_ca());
    }

    #[test]
    fn refuses_to_overwrite_or_issue_outside_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(86400 * 365);
        let ca = Authority::init(dir.path(), "example.org", year, year).unwrap();
        assert!(matches!(
            Authority::init(dir.path(), "example.org", year, year),
            Err(CaError::AlreadyInitialized(_))
        ));
        let other: SpiffeId = "spiffe://other.org/x".parse().unwrap();
        assert!(matches!(
            ca.issue(&LeafSpec::new(other, year)),
            Err(CaError::Invalid(_))
        ));
    }
}
