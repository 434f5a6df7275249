//! With `check_files` (`mtlsd check`), every file the config names is opened the way the
//! daemon will open it, and each one that cannot be is a located problem like any other.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use mtlsd_crypto::KeyRef;

use super::super::IdentitySource;
use super::super::raw::{RawIdentity, S};
use super::Validator;

impl Validator<'_> {
    /// The files of `[identity]`: certificate and key, or the CA directory; bundle and CRL.
    pub(super) fn identity_files(
        &mut self,
        raw: &RawIdentity,
        source: &IdentitySource,
        bundle: Option<&Path>,
        crl: Option<&Path>,
    ) {
        if !self.check_files {
            return;
        }
        let span = |v: &Option<S<String>>| v.as_ref().map_or(raw.trust_domain.span(), S::span);
        // A CA's bundle.pem and crl.pem are used unless given; they have no line of their own.
        let mut defaults_usable = true;
        match source {
            IdentitySource::Files { cert, key } => {
                self.readable_file(span(&raw.cert), "identity.cert", cert);
                if let KeyRef::File(path) = key {
                    self.secret_file(span(&raw.key), "identity.key", path);
                }
            }
            IdentitySource::Ca { dir, .. } => {
                // Opened as the daemon opens it, so a directory that is not a CA, or one whose
                // intermediate cannot be read, is refused here with the daemon's words.
                if let Err(e) = crate::ca::Authority::open(dir) {
                    self.report_at(span(&raw.ca_dir), "identity.ca_dir", e.to_string());
                    defaults_usable = false;
                }
            }
            // Reachability of the agent is checked where the daemon connects (mtlsd check
            // connects too), not as a file.
            IdentitySource::WorkloadApi { .. } => {}
        }
        for (given, name, path) in [
            (&raw.bundle, "identity.bundle", bundle),
            (&raw.crl, "identity.crl", crl),
        ] {
            match (given, path) {
                (Some(at), Some(path)) => self.readable_file(at.span(), name, path),
                // One problem for a directory that is not a CA, not one per file in it.
                (None, Some(path)) if defaults_usable => {
                    self.readable_file(span(&raw.ca_dir), "identity.ca_dir", path);
                }
                _ => {}
            }
        }
        for (i, f) in raw.federated.iter().enumerate() {
            let f = f.get_ref();
            let path = Path::new(f.bundle.get_ref());
            self.readable_file(
                f.bundle.span(),
                &format!("identity.federated[{i}].bundle"),
                path,
            );
        }
    }

    /// A file read at start (certificate, bundle, CRL, PKCS#11 module): it must open for
    /// reading and not be a directory.
    pub(super) fn readable_file(&mut self, at: Range<usize>, key: &str, path: &Path) {
        if !self.check_files {
            return;
        }
        let message = match File::open(path).and_then(|f| f.metadata()) {
            Err(e) => format!("cannot read {}: {e}", path.display()),
            Ok(meta) if meta.is_dir() => format!("{} is a directory, not a file", path.display()),
            Ok(_) => return,
        };
        self.report_at(at, key, message);
    }

    /// A secret file (private key, ticket keys): refused, too, when other users may read it,
    /// by the rule the daemon applies. Read whole and dropped at once; the buffer zeroizes itself.
    pub(super) fn secret_file(&mut self, at: Range<usize>, key: &str, path: &Path) {
        if !self.check_files {
            return;
        }
        if let Err(e) = mtlsd_crypto::read_secret_file(path) {
            self.report_at(at, key, e.to_string());
        }
    }

    /// The PKCS#11 PIN file: a secret file that must also hold a PIN.
    pub(super) fn pin_file(&mut self, at: Range<usize>, key: &str, path: &Path) {
        if !self.check_files {
            return;
        }
        if let Err(e) = mtlsd_crypto::pkcs11::Pin::from_file(path) {
            self.report_at(at, key, e.to_string());
        }
    }
}
