//! Validates `[identity]`: the trust domain, and SVID files from an external PKI or the
//! built-in CA, never a mix.

use std::time::Duration;

use mtlsd_crypto::KeyRef;

use super::super::raw::{RawIdentity, S};
use super::super::{FederatedBundle, IdentityConfig, IdentitySource};
use super::{Validator, duration_at_least, non_empty, nonzero_duration};
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
        let source_kind = self.check_opt(&raw.source, "identity.source", |s| match s.as_str() {
            "files" | "ca" | "workload_api" => Ok(s.clone()),
            other => Err(format!(
                "unknown source {other:?}; expected \"files\", \"ca\" or \"workload_api\""
            )),
        });
        let startup_timeout = self.check_or(
            &raw.startup_timeout,
            "identity.startup_timeout",
            Duration::from_secs(30),
            |s| nonzero_duration(s),
        );
        let socket = self.check_opt(&raw.socket, "identity.socket", |s| {
            workload_socket(s).map(|()| s.clone())
        });
        let federated = self.federated(raw, trust_domain.as_deref());
        let (cert, key, bundle, crl, ca_dir, id, ttl) =
            (cert?, key?, bundle?, crl?, ca_dir?, id?, ttl?);
        let (source_kind, startup_timeout, socket, federated) =
            (source_kind?, startup_timeout?, socket?, federated?);
        // Which of several keys is wrong is unclear here, so these point at the table.
        let here = |v: &mut Self, msg: &str| {
            let p = v.loc.problem(raw.trust_domain.span(), "identity", msg);
            v.problems.push(p);
        };
        if source_kind.as_deref() == Some("workload_api") {
            if cert.is_some() || key.is_some() || ca_dir.is_some() || bundle.is_some() {
                here(
                    self,
                    "source = \"workload_api\" takes the SVID and bundles from the SPIRE agent: \
                     remove cert, key, bundle and ca_dir",
                );
                return None;
            }
            let socket = match socket.or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok()) {
                Some(s) => s,
                None => {
                    here(
                        self,
                        "source = \"workload_api\" needs socket = \"unix:/run/spire/agent.sock\" \
                         (or SPIFFE_ENDPOINT_SOCKET in the environment)",
                    );
                    return None;
                }
            };
            let source = IdentitySource::WorkloadApi {
                socket,
                id,
                startup_timeout,
            };
            self.identity_files(raw, &source, None, crl.as_deref());
            return Some(IdentityConfig {
                trust_domain: trust_domain?,
                source,
                bundle: None,
                crl,
                federated,
            });
        }
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
            (_, None) => None,
        };
        self.identity_files(raw, &source, Some(&bundle), crl.as_deref());
        Some(IdentityConfig {
            trust_domain: trust_domain?,
            source,
            bundle: Some(bundle),
            crl,
            federated,
        })
    }

    /// `[[identity.federated]]`: other trust domains, each with its bundle file.
    fn federated(&mut self, raw: &RawIdentity, own: Option<&str>) -> Option<Vec<FederatedBundle>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut ok = true;
        for (i, f) in raw.federated.iter().enumerate() {
            let f = f.get_ref();
            let key = format!("identity.federated[{i}]");
            let td = self.check(&f.trust_domain, &format!("{key}.trust_domain"), |td| {
                validate_trust_domain(td).map_err(|e| e.to_string())?;
                if Some(td.as_str()) == own {
                    return Err(
                        "this is our own trust domain; its bundle is identity.bundle".into(),
                    );
                }
                Ok::<_, String>(td.clone())
            });
            if let Some(td) = &td
                && !seen.insert(td.clone())
            {
                self.report(
                    &f.trust_domain,
                    &format!("{key}.trust_domain"),
                    "federated twice",
                );
                ok = false;
            }
            let bundle = self.check(&f.bundle, &format!("{key}.bundle"), |p| {
                non_empty(p).map(std::path::PathBuf::from)
            });
            match (td, bundle) {
                (Some(trust_domain), Some(bundle)) => out.push(FederatedBundle {
                    trust_domain,
                    bundle,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Checks a Workload API address: `unix:/absolute/path`, an absolute path, or `tcp://ip:port`.
pub(super) fn workload_socket(s: &str) -> Result<(), String> {
    let ok = s.starts_with('/')
        || s.strip_prefix("unix:")
            .is_some_and(|p| p.trim_start_matches("//").starts_with('/'))
        || s.strip_prefix("tcp://")
            .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Workload API address; write \"unix:/run/spire/agent.sock\" or \"tcp://127.0.0.1:8081\""
        ))
    }
}
