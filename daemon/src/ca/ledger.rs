//! The ledger of issued leaves (`ledger.json`), revocation and the CRL it publishes.

use super::*;

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
pub(super) struct Ledger {
    /// Number of the last CRL published (CRL numbers must increase).
    #[serde(default)]
    crl_number: u64,
    #[serde(default)]
    pub(super) issued: Vec<IssuedRecord>,
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
pub(super) struct DirLock {
    _file: fs::File,
}

impl DirLock {
    pub(super) fn take(dir: &Path, exclusive: bool) -> Result<Self, CaError> {
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

impl Authority {
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
    pub(super) fn with_ledger<T>(
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
    pub(super) fn save_ledger(
        &self,
        ledger: &mut Ledger,
        revocations_changed: bool,
    ) -> Result<(), CaError> {
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

    pub(super) fn read_ledger(&self) -> Result<Ledger, CaError> {
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

#[cfg(test)]
mod tests {
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
    fn serials_are_taken_as_openssl_and_ca_list_write_them() {
        assert_eq!(parse_serial("4A:0B:ff").unwrap(), "4a0bff");
        assert_eq!(parse_serial(" 4a0bff\n").unwrap(), "4a0bff");
        assert!(parse_serial("").is_err() && parse_serial("4a:0g").is_err());
        assert!(same_serial("004a0b", "4a0b"));

        let (_dir, ca) = ca();
        let (issued, _) = leaf(&ca, "/web");
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
