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

/// Where an issued leaf stands, as `ca list` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafStatus {
    /// Unexpired and not revoked.
    Valid,
    /// Past its notAfter (and never revoked).
    Expired,
    /// On the CRL.
    Revoked,
}

impl LeafStatus {
    /// The word `ca list` prints: `valid`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl IssuedRecord {
    /// The leaf's status at `now` (Unix seconds); revocation wins over expiry.
    pub fn status(&self, now: i64) -> LeafStatus {
        match (self.revoked_at, self.not_after <= now) {
            (Some(_), _) => LeafStatus::Revoked,
            (None, true) => LeafStatus::Expired,
            (None, false) => LeafStatus::Valid,
        }
    }
}

/// Normalises a serial number as people paste it: `4A:0B:…` (openssl's `-text`),
/// `4A0B…` (`-serial`) or `4a0b…` (`ca list`) all become lowercase hex without colons.
pub fn parse_serial(text: &str) -> Result<String, CaError> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CaError::Invalid(format!(
            "serial {text:?} is not hexadecimal (write it as `ca list` or openssl shows it, e.g. 4a0b… or 4A:0B:…)"
        )));
    }
    Ok(hex)
}

/// Whether two normalised hex serials name the same integer (openssl drops leading zero bytes).
fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0')
        .eq_ignore_ascii_case(b.trim_start_matches('0'))
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
    /// The certificate with this hex serial (any case, colons allowed: see [`parse_serial`]).
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

    /// Issues a leaf SVID as `spec` describes, with a fresh P-256 key, kept in memory.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedSvid, CaError> {
        self.issue_then(spec, |_| Ok(Vec::new()))
    }

    /// Issues a leaf SVID with a fresh key and writes the chain to `cert` (0644) and the key to `key` (0600).
    ///
    /// The ledger records the leaf only once both files are in place: when
    /// either cannot be written, neither is replaced and the ledger is unchanged.
    pub fn issue_to_files(
        &self,
        spec: &LeafSpec,
        cert: &Path,
        key: &Path,
    ) -> Result<IssuedSvid, CaError> {
        self.issue_then(spec, |issued| {
            Ok(vec![
                stage(key, &issued.key_pem, 0o600)?,
                stage(cert, &issued.chain_pem, 0o644)?,
            ])
        })
    }

    fn issue_then(
        &self,
        spec: &LeafSpec,
        stage_files: impl FnOnce(&IssuedSvid) -> Result<Vec<Staged>, CaError>,
    ) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        self.certify(self.leaf_params(spec)?, &key, |cert| {
            let issued = IssuedSvid {
                chain_pem: cert.chain_pem,
                key_pem,
                serial: cert.serial,
                not_after: cert.not_after,
            };
            let staged = stage_files(&issued)?;
            Ok((issued, staged))
        })
    }

    /// Issues a leaf SVID for a key held elsewhere (an HSM, a CSR's key): only its public half is needed.
    pub fn issue_for_key(
        &self,
        spec: &LeafSpec,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        self.certify(self.leaf_params(spec)?, public_key, |cert| {
            Ok((cert, Vec::new()))
        })
    }

    /// Like [`Self::issue_for_key`], writing the chain to `cert` (0644); recorded only once written.
    pub fn issue_for_key_to_file(
        &self,
        spec: &LeafSpec,
        public_key: &impl PublicKeyData,
        cert: &Path,
    ) -> Result<IssuedCert, CaError> {
        self.certify(self.leaf_params(spec)?, public_key, |issued| {
            let staged = stage(cert, &issued.chain_pem, 0o644)?;
            Ok((issued, vec![staged]))
        })
    }

    /// Signs arbitrary leaf parameters with a fresh P-256 key; [`Self::issue`] is the usual entry point.
    pub fn sign(&self, params: CertificateParams) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        self.certify(params, &key, |cert| {
            let issued = IssuedSvid {
                chain_pem: cert.chain_pem,
                key_pem,
                serial: cert.serial,
                not_after: cert.not_after,
            };
            Ok((issued, Vec::new()))
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
        // Not rcgen's placeholder CN: tools that show only the subject (openssl x509
        // -subject, browsers, logs) then name the workload. A SPIFFE ID too long for a
        // CN gives an empty subject instead, which RFC 5280 allows with a critical SAN
        // (rcgen marks it so) and X.509-SVIDs are read by their URI SAN anyway.
        let mut dn = DistinguishedName::new();
        match &spec.common_name {
            Some(name) if name.is_empty() || name.chars().count() > MAX_COMMON_NAME => {
                return Err(CaError::Invalid(format!(
                    "subject name {name:?} must be 1 to {MAX_COMMON_NAME} characters"
                )));
            }
            Some(name) => dn.push(DnType::CommonName, name.as_str()),
            None if spec.id.as_str().len() <= MAX_COMMON_NAME => {
                dn.push(DnType::CommonName, spec.id.as_str());
            }
            None => {}
        }
        params.distinguished_name = dn;
        params
            .subject_alt_names
            .push(SanType::URI(spec.id.as_str().try_into()?));
        for dns in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .map_err(|e| CaError::Invalid(format!("DNS name {dns:?}: {e}")))?,
            ));
        }
        params
            .subject_alt_names
            .extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        Ok(params)
    }

    /// Makes `params` a leaf (usages, serial, AKI), signs it for `public_key` with the
    /// intermediate, stages its files with `deliver`, records it in the ledger and then
    /// puts the files in place.
    ///
    /// Staging first means the usual failures (a missing directory, permissions, a full
    /// disk) happen before anything is recorded; the ledger is saved before the files are
    /// renamed into place, so a certificate that exists on disk is always in the ledger
    /// and can be revoked. Should a rename still fail, the entry is removed again.
    fn certify<T>(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        deliver: impl FnOnce(IssuedCert) -> Result<(T, Vec<Staged>), CaError>,
    ) -> Result<T, CaError> {
        check_within(
            "the leaf",
            params.not_after,
            "the intermediate CA",
            self.issuer_not_after,
        )?;
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
        let record = IssuedRecord {
            serial: serial.clone(),
            id,
            not_after: params.not_after.unix_timestamp(),
            revoked_at: None,
        };
        let (out, staged) = deliver(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.intermediate_pem),
            serial,
            not_after: params.not_after,
        })?;

        let _lock = DirLock::take(&self.dir, true)?;
        let mut ledger = self.read_ledger()?;
        ledger.issued.push(record);
        self.save_ledger(&mut ledger, false)?;
        for file in staged {
            let path = file.path().to_owned();
            if let Err(e) = file.commit() {
                let failed = Box::new(CaError::Io { path, cause: e });
                let serial = ledger.issued.pop().map(|r| r.serial).unwrap_or_default();
                return Err(match self.save_ledger(&mut ledger, false) {
                    Ok(()) => *failed,
                    Err(rollback) => CaError::Rollback {
                        failed,
                        serial,
                        rollback: Box::new(rollback),
                    },
                });
            }
        }
        Ok(out)
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
        let serial = match which {
            Revoke::Serial(serial) => Some(parse_serial(serial)?),
            Revoke::Id(_) => None,
        };
        self.with_ledger(|ledger| {
            let mut revoked = Vec::new();
            for record in &mut ledger.issued {
                let matches = match which {
                    Revoke::Serial(_) => serial
                        .as_deref()
                        .is_some_and(|serial| same_serial(&record.serial, serial)),
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
        let revoked = |ledger: &Ledger| {
            ledger
                .issued
                .iter()
                .filter(|r| r.revoked_at.is_some())
                .count()
        };
        let revoked_before = revoked(&ledger);
        let out = f(&mut ledger)?;
        let changed = revoked(&ledger) != revoked_before;
        self.save_ledger(&mut ledger, changed)?;
        Ok(out)
    }

    /// Writes `ledger.json` (the caller holds the exclusive lock), first republishing the
    /// CRL when `revocations_changed` or when there is none yet.
    fn save_ledger(&self, ledger: &mut Ledger, revocations_changed: bool) -> Result<(), CaError> {
        if revocations_changed || !self.crl_path().exists() {
            ledger.crl_number += 1;
            self.publish_crl(ledger)?;
        }
        let path = self.dir.join("ledger.json");
        let json = serde_json::to_string_pretty(&ledger).map_err(|e| CaError::Ledger {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_public(&path, &json)
    }

    fn read_ledger(&self) -> Result<Ledger, CaError> {
        let path = self.dir.join("ledger.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| CaError::Ledger {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(CaError::Io { path, cause: e }),
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

#[cfg(test)]
mod issue_tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn ca(dir: &Path, intermediate_ttl: Duration) -> Authority {
        Authority::init(&dir.join("ca"), "example.org", 3650 * DAY, intermediate_ttl).unwrap()
    }

    fn leaf_der(chain_pem: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_subject_names_the_workload_and_ip_sans_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), 30 * DAY);
        let id: SpiffeId = "spiffe://example.org/ns/web".parse().unwrap();
        let mut spec = LeafSpec::new(id, DAY);
        spec.ip_addresses = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let der = leaf_der(&ca.issue(&spec).unwrap().chain_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=spiffe://example.org/ns/web");
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(
            !san.critical,
            "a subject is present, the SAN need not be critical"
        );
        let ips: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(ip) => Some(ip.len()),
                _ => None,
            })
            .collect();
        assert_eq!(ips, [4, 16]);

        spec.common_name = Some("web-1".into());
        let der = leaf_der(&ca.issue(&spec).unwrap().chain_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=web-1");
        spec.common_name = Some("x".repeat(65));
        assert!(matches!(ca.issue(&spec), Err(CaError::Invalid(_))));

        // An ID too long for a CN: no subject, and then the SAN is critical (RFC 5280 4.2.1.6).
        let long: SpiffeId = format!("spiffe://example.org/{}", "a".repeat(64))
            .parse()
            .unwrap();
        let der = leaf_der(&ca.issue(&LeafSpec::new(long, DAY)).unwrap().chain_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x509.subject().iter().count(), 0);
        assert!(x509.subject_alternative_name().unwrap().unwrap().critical);
    }

    #[test]
    fn a_leaf_may_not_outlive_its_intermediate_nor_the_intermediate_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), 30 * DAY);
        let id: SpiffeId = "spiffe://example.org/long".parse().unwrap();
        let err = ca
            .issue(&LeafSpec::new(id.clone(), 3650 * DAY))
            .unwrap_err();
        let CaError::OutlivesIssuer {
            ref not_after,
            ref issuer_not_after,
            ref at_most,
            ..
        } = err
        else {
            panic!("{err}");
        };
        let message = err.to_string();
        assert!(
            message.contains(not_after.as_str()) && message.contains(issuer_not_after.as_str()),
            "{message}"
        );
        // RFC 3339, and the suggested lifetime is one that fits.
        assert!(issuer_not_after.ends_with('Z'), "{issuer_not_after}");
        assert_eq!(at_most, "29d");
        assert!(ca.issue(&LeafSpec::new(id.clone(), 29 * DAY)).is_ok());
        assert!(ca.check_ttl(29 * DAY).is_ok() && ca.check_ttl(31 * DAY).is_err());
        assert_eq!(
            ca.issued().unwrap().len(),
            1,
            "the refused leaf is not in the ledger"
        );

        let err =
            Authority::init(&dir.path().join("ca2"), "example.org", DAY, 2 * DAY).unwrap_err();
        assert!(matches!(err, CaError::OutlivesIssuer { .. }), "{err}");
        assert!(!dir.path().join("ca2/root.pem").exists());
    }

    #[test]
    fn a_leaf_whose_files_cannot_be_written_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), 30 * DAY);
        let ledger = || fs::read_to_string(dir.path().join("ca/ledger.json")).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let spec = LeafSpec::new(id, DAY);
        let before = ledger();
        let (cert, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        let missing = dir.path().join("missing/web.pem");
        // The key's directory exists, the certificate's does not: neither file may change.
        let err = ca.issue_to_files(&spec, &missing, &key).unwrap_err();
        assert!(err.to_string().contains("missing/web.pem"), "{err}");
        assert_eq!(ledger(), before);
        assert!(!key.exists());
        let public = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(ca.issue_for_key_to_file(&spec, &public, &missing).is_err());
        assert_eq!(ledger(), before);

        let issued = ca.issue_to_files(&spec, &cert, &key).unwrap();
        assert_eq!(fs::read_to_string(&cert).unwrap(), issued.chain_pem);
        assert_eq!(*fs::read_to_string(&key).unwrap(), *issued.key_pem);
        let records = ca.issued().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].serial, issued.serial);
    }

    #[test]
    fn serials_are_taken_as_openssl_and_ca_list_write_them() {
        assert_eq!(parse_serial("4A:0B:ff").unwrap(), "4a0bff");
        assert_eq!(parse_serial(" 4a0bff\n").unwrap(), "4a0bff");
        assert!(parse_serial("").is_err() && parse_serial("4a:0g").is_err());
        assert!(same_serial("004a0b", "4a0b"));

        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), 30 * DAY);
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let issued = ca.issue(&LeafSpec::new(id, DAY)).unwrap();
        let colons = issued
            .serial
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(ca.revoke(&Revoke::Serial(colons)).unwrap().len(), 1);
        let record = &ca.issued().unwrap()[0];
        assert_eq!(record.status(0), LeafStatus::Revoked);
    }
}

#[cfg(test)]
mod revocation_tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::identity::{ParsedChain, Revocations};

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
        let err = list
            .check(&ParsedChain::parse(&a_chain).unwrap())
            .unwrap_err();
        assert_eq!(err.serial, a.serial);
        assert!(list.check(&ParsedChain::parse(&b_chain).unwrap()).is_ok());
        assert!(ca.issued().unwrap()[0].revoked_at.is_some());

        // Revoking twice is an error that says so; revoking by ID takes every live leaf of it.
        assert!(ca.revoke(&Revoke::Serial(a.serial.clone())).is_err());
        let (_b2, b2_chain) = leaf(&ca, "/b");
        let by_id = ca
            .revoke(&Revoke::Id("spiffe://example.org/b".parse().unwrap()))
            .unwrap();
        assert_eq!(by_id.len(), 2);
        let list = Revocations::load(&crl).unwrap();
        assert!(
            list.check(&ParsedChain::parse(&b_chain).unwrap()).is_err()
                && list.check(&ParsedChain::parse(&b2_chain).unwrap()).is_err()
        );
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
