//! Issuing leaves: fresh keys or keys held elsewhere, each recorded in the ledger.

use super::*;

impl Authority {
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
}

#[cfg(test)]
mod tests {
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
}
