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
//! Leaves are ECDSA P-256 X.509-SVIDs with one `spiffe://` URI SAN, usable as
//! TLS client and server certificates, backdated a few minutes for clock skew.
//! Every change to the ledger happens under an exclusive lock on `lock` and
//! every file is replaced atomically, so concurrent `mtlsd ca` invocations and
//! daemons issuing their own SVIDs cannot corrupt the directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::identity::{SpiffeId, spiffe_id_of, validate_trust_domain};

/// How far back leaves are dated, so peers with slightly slow clocks accept them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `init` found an existing CA.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
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
}

/// How long a published CRL says it stays current; it is rewritten on every revocation anyway.
const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// One leaf the CA issued, as recorded in `ledger.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID in its URI SAN.
    pub id: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Revocation time, Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Ledger {
    /// Number of the last CRL published (CRL numbers must increase).
    #[serde(default)]
    crl_number: u64,
    #[serde(default)]
    issued: Vec<IssuedRecord>,
}

/// Which certificates `revoke` applies to.
#[derive(Debug, Clone)]
pub enum Revoke {
    /// The certificate with this hex serial.
    Serial(String),
    /// Every unexpired certificate issued for this SPIFFE ID.
    Id(SpiffeId),
}

/// An exclusive or shared `flock` on the CA directory's `lock` file, released when the file closes.
struct DirLock {
    _file: fs::File,
}

impl DirLock {
    fn take(dir: &Path, exclusive: bool) -> Result<Self, CaError> {
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        if exclusive {
            file.lock().map_err(io_at(&path))?;
        } else {
            file.lock_shared().map_err(io_at(&path))?;
        }
        Ok(Self { _file: file })
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

/// What a leaf should say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The SPIFFE ID (the one URI SAN).
    pub id: SpiffeId,
    /// Extra DNS SANs, for clients that check host names (curl, browsers).
    pub dns_names: Vec<String>,
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
        let root_cert = root_params.self_signed(root_key)?;
        let root = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let int_params = ca_params(trust_domain, "intermediate", now, intermediate_ttl, Some(0))?;
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
        let intermediate_pem = read("intermediate.pem")?;
        let key = KeyPair::from_pem(&Zeroizing::new(read("intermediate.key")?))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(intermediate_pem.as_bytes())
            .map_err(|e| CaError::Invalid(format!("intermediate.pem: {e}")))?;
        let trust_domain = spiffe_id_of(&der)
            .map_err(|e| CaError::Invalid(format!("intermediate.pem: {e}")))?
            .trust_domain()
            .to_owned();
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain,
            issuer: Issuer::from_ca_cert_pem(&intermediate_pem, key)?,
            intermediate_pem,
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

    /// Issues a leaf SVID as `spec` describes, with a fresh P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = self.certify(self.leaf_params(spec)?, &key)?;
        Ok(IssuedSvid {
            chain_pem: cert.chain_pem,
            key_pem: Zeroizing::new(key.serialize_pem()),
            serial: cert.serial,
            not_after: cert.not_after,
        })
    }

    /// Issues a leaf SVID for a key held elsewhere (an HSM, a CSR's key): only its public half is needed.
    pub fn issue_for_key(
        &self,
        spec: &LeafSpec,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        self.certify(self.leaf_params(spec)?, public_key)
    }

    /// Signs arbitrary leaf parameters with a fresh P-256 key; [`Self::issue`] is the usual entry point.
    pub fn sign(&self, params: CertificateParams) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = self.certify(params, &key)?;
        Ok(IssuedSvid {
            chain_pem: cert.chain_pem,
            key_pem: Zeroizing::new(key.serialize_pem()),
            serial: cert.serial,
            not_after: cert.not_after,
        })
    }

    fn leaf_params(&self, spec: &LeafSpec) -> Result<CertificateParams, CaError> {
        if spec.id.trust_domain() != self.trust_domain {
            return Err(CaError::Invalid(format!(
                "{} is outside trust domain {}",
                spec.id, self.trust_domain
            )));
        }
        let mut params = CertificateParams::default();
        params
            .subject_alt_names
            .push(SanType::URI(spec.id.as_str().try_into()?));
        for dns in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into()?));
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        Ok(params)
    }

    /// Makes `params` a leaf (usages, serial, AKI) and signs it for `public_key` with the intermediate.
    fn certify(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        // A leaf says it is no CA with a critical, *empty* BasicConstraints: DER forbids
        // encoding the default `cA FALSE` (rcgen's `ExplicitNoCa` does, and strict
        // parsers such as Python's `cryptography` reject it).
        params.is_ca = IsCa::NoCa;
        let mut not_ca =
            rcgen::CustomExtension::from_oid_content(BASIC_CONSTRAINTS_OID, vec![0x30, 0x00]);
        not_ca.set_criticality(true);
        params.custom_extensions.push(not_ca);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        let serial = hex::encode(serial);
        let id = params
            .subject_alt_names
            .iter()
            .find_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .unwrap_or_default();
        self.with_ledger(|ledger| {
            ledger.issued.push(IssuedRecord {
                serial: serial.clone(),
                id,
                not_after: params.not_after.unix_timestamp(),
                revoked_at: None,
            });
            Ok(())
        })?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.intermediate_pem),
            serial,
            not_after: params.not_after,
        })
    }

    /// Path of the revocation list peers should load (`identity.crl`).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// Every leaf issued so far, oldest first.
    pub fn issued(&self) -> Result<Vec<IssuedRecord>, CaError> {
        let _lock = DirLock::take(&self.dir, false)?;
        Ok(self.read_ledger()?.issued)
    }

    /// Revokes the matching certificates and republishes the CRL; returns what was newly revoked.
    pub fn revoke(&self, which: &Revoke) -> Result<Vec<IssuedRecord>, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.with_ledger(|ledger| {
            let mut revoked = Vec::new();
            for record in &mut ledger.issued {
                let matches = match which {
                    Revoke::Serial(serial) => record.serial.eq_ignore_ascii_case(serial),
                    Revoke::Id(id) => record.id == id.as_str() && record.not_after > now,
                };
                if matches && record.revoked_at.is_none() {
                    record.revoked_at = Some(now);
                    revoked.push(record.clone());
                }
            }
            if revoked.is_empty() {
                return Err(CaError::Invalid(match which {
                    Revoke::Serial(s) => format!("no unrevoked certificate with serial {s}"),
                    Revoke::Id(id) => format!("no unrevoked, unexpired certificate for {id}"),
                }));
            }
            Ok(revoked)
        })
    }

    /// Runs `f` on the ledger under the exclusive lock, then saves it and republishes the CRL.
    fn with_ledger<T>(
        &self,
        f: impl FnOnce(&mut Ledger) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let _lock = DirLock::take(&self.dir, true)?;
        let mut ledger = self.read_ledger()?;
        let revoked_before = ledger
            .issued
            .iter()
            .filter(|r| r.revoked_at.is_some())
            .count();
        let out = f(&mut ledger)?;
        let revoked_after = ledger
            .issued
            .iter()
            .filter(|r| r.revoked_at.is_some())
            .count();
        if revoked_after != revoked_before || !self.crl_path().exists() {
            ledger.crl_number += 1;
            self.publish_crl(&ledger)?;
        }
        let path = self.dir.join("ledger.json");
        let json = serde_json::to_string_pretty(&ledger).map_err(|e| CaError::Ledger {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_public(&path, &json)?;
        Ok(out)
    }

    fn read_ledger(&self) -> Result<Ledger, CaError> {
        let path = self.dir.join("ledger.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| CaError::Ledger {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(CaError::Io { path, source: e }),
        }
    }

    /// Writes `crl.pem`: every revoked leaf that has not expired yet, signed by the intermediate.
    fn publish_crl(&self, ledger: &Ledger) -> Result<(), CaError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = ledger
            .issued
            .iter()
            .filter(|r| r.not_after > now.unix_timestamp())
            .filter_map(|r| {
                let at = r.revoked_at?;
                Some(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(&r.serial).ok()?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at).ok()?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(ledger.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        write_public(&self.crl_path(), &crl.pem()?)
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
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), CaError> {
        write_private(key, &self.key_pem)?;
        write_public(cert, &self.chain_pem)
    }
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
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
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

#[cfg(test)]
mod revocation_tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::identity::Revocations;

    fn ca() -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(365 * 86_400);
        let ca = Authority::init(&dir.path().join("ca"), "example.org", year, year).unwrap();
        (dir, ca)
    }

    fn leaf(ca: &Authority, path: &str) -> (IssuedSvid, Vec<CertificateDer<'static>>) {
        let id: SpiffeId = format!("spiffe://example.org{path}").parse().unwrap();
        let issued = ca
            .issue(&LeafSpec::new(id, Duration::from_secs(3600)))
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (issued, chain)
    }

    #[test]
    fn the_ledger_lists_every_issued_leaf_and_revocation_republishes_the_crl() {
        let (_dir, ca) = ca();
        let (a, a_chain) = leaf(&ca, "/a");
        let (_b, b_chain) = leaf(&ca, "/b");
        let issued = ca.issued().unwrap();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0].serial, a.serial);
        assert_eq!(issued[0].id, "spiffe://example.org/a");

        // init published an empty CRL.
        let crl = [ca.crl_path()];
        assert!(Revocations::load(&crl).unwrap().is_empty());

        let revoked = ca.revoke(&Revoke::Serial(a.serial.to_uppercase())).unwrap();
        assert_eq!(revoked.len(), 1);
        let list = Revocations::load(&crl).unwrap();
        assert_eq!(list.len(), 1);
        let err = list.check(&a_chain).unwrap_err();
        assert_eq!(err.serial, a.serial);
        assert!(list.check(&b_chain).is_ok());
        assert!(ca.issued().unwrap()[0].revoked_at.is_some());

        // Revoking twice is an error that says so; revoking by ID takes every live leaf of it.
        assert!(ca.revoke(&Revoke::Serial(a.serial.clone())).is_err());
        let (_b2, b2_chain) = leaf(&ca, "/b");
        let by_id = ca
            .revoke(&Revoke::Id("spiffe://example.org/b".parse().unwrap()))
            .unwrap();
        assert_eq!(by_id.len(), 2);
        let list = Revocations::load(&crl).unwrap();
        assert!(list.check(&b_chain).is_err() && list.check(&b2_chain).is_err());
    }

    #[test]
    fn concurrent_issuers_never_lose_a_ledger_entry() {
        let (_dir, ca) = ca();
        let ca = std::sync::Arc::new(ca);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ca = ca.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        leaf(&ca, &format!("/t{t}/{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // A second handle on the same directory (another process would be the same) sees all 40.
        let reopened = Authority::open(&ca.dir).unwrap();
        assert_eq!(reopened.issued().unwrap().len(), 40);
    }
}
