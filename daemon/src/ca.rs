//! A minimal certificate authority for a trust domain: root, intermediate and short-lived leaf SVIDs.
//!
//! Keys are generated and kept as files (mode 0600) in one directory:
//!
//! | file | what |
//! |---|---|
//! | `root.pem`, `root.key` | self-signed root, the trust anchor |
//! | `intermediate.pem`, `intermediate.key` | day-to-day issuer, signed by the root |
//! | `bundle.pem` | what peers trust: the root certificate |
//!
//! Leaves are ECDSA P-256 X.509-SVIDs with one `spiffe://` URI SAN, usable as
//! TLS client and server certificates, backdated a few minutes for clock skew.

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
        Self::open(dir)
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
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.intermediate_pem),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_after: params.not_after,
        })
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
