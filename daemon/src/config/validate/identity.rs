//! Validates `[identity]`: the trust domain, and SVID files from an external PKI or the
//! built-in CA, never a mix.

use std::time::Duration;

use mtlsd_crypto::KeyRef;

use super::super::raw::{RawIdentity, S};
use super::super::{IdentityConfig, IdentitySource};
use super::{Validator, duration_at_least, non_empty};
use crate::identity::{SpiffeId, validate_trust_domain};

impl Validator<'_> {
    pub(super) fn identity(&mut self, raw: &S<RawIdentity>) -> Option<IdentityConfig> {
        let raw = raw.get_ref();
        let trust_domain = self.check(&raw.trust_domain, "identity.trust_domain", |td| {
            validate_trust_domain(td).map(|()| td.clone())
        });
        let cert = self.opt_path(&raw.cert, "identity.cert");
        let bundle = self.opt_path(&raw.bundle, "identity.bundle");
        let crl = self.opt_path(&raw.crl, "identity.crl");
        let ca_dir = self.opt_path(&raw.ca_dir, "identity.ca_dir");
        let key = self.check_opt(&raw.key, "identity.key", |k| {
            non_empty(k).map(KeyRef::parse)
        });
        let id = self.check_opt(&raw.id, "identity.id", |s| s.parse::<SpiffeId>());
        let ttl = self.check_or(
            &raw.svid_ttl,
            "identity.svid_ttl",
            Duration::from_secs(24 * 3600),
            |s| duration_at_least(s, Duration::from_secs(2)),
        );
        let (cert, key, bundle, crl, ca_dir, id, ttl) =
            (cert?, key?, bundle?, crl?, ca_dir?, id?, ttl?);
        // Which of several keys is wrong is unclear here, so these point at the table.
        let here = |v: &mut Self, msg: &str| {
            let p = v.loc.problem(raw.trust_domain.span(), "identity", msg);
            v.problems.push(p);
        };
        let (source, bundle) = match (cert, key, ca_dir, id) {
            (Some(cert), Some(key), None, None) => {
                let Some(bundle) = bundle else {
                    here(self, "identity.bundle is required with cert and key");
                    return None;
                };
                (IdentitySource::Files { cert, key }, bundle)
            }
            (None, None, Some(dir), Some(id)) => {
                let bundle = bundle.unwrap_or_else(|| dir.join("bundle.pem"));
                let dns = raw.dns.clone();
                (IdentitySource::Ca { dir, id, ttl, dns }, bundle)
            }
            _ => {
                here(
                    self,
                    "set either cert, key and bundle (files from an external PKI) or ca_dir and id \
                     (issued by the built-in CA), not a mix",
                );
                return None;
            }
        };
        let crl = match (&source, crl) {
            (_, Some(crl)) => Some(crl),
            // The built-in CA publishes its revocations next to its bundle.
            (IdentitySource::Ca { dir, .. }, None) => Some(dir.join("crl.pem")),
            (IdentitySource::Files { .. }, None) => None,
        };
        self.identity_files(raw, &source, &bundle, crl.as_deref());
        Some(IdentityConfig {
            trust_domain: trust_domain?,
            source,
            bundle,
            crl,
        })
    }
}
