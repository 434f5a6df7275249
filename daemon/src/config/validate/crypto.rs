//! Validates `[crypto]`: the backend name, its `[crypto.pkcs11]` or `[crypto.openssl]`
//! table, and the bounds on device operations.

use std::path::{Path, PathBuf};

#[cfg(feature = "openssl")]
use super::super::OpensslSettings;
#[cfg(feature = "openssl")]
use super::super::raw::RawOpenssl;
use super::super::raw::{RawCrypto, RawPkcs11, S};
use super::super::{
    BackendKind, CryptoConfig, MAX_IN_FLIGHT, MAX_POOL_SIZE, PinSource, Pkcs11Settings,
    parse_duration,
};
use super::{Validator, count_up_to, non_empty};

impl Validator<'_> {
    pub(super) fn crypto(&mut self, raw: &RawCrypto) -> Option<CryptoConfig> {
        let defaults = CryptoConfig::default();
        // A bad bound stops here, before the backend is looked at.
        let max_in_flight = self.check_or(
            &raw.max_in_flight,
            "crypto.max_in_flight",
            defaults.max_in_flight,
            |n| count_up_to(n, MAX_IN_FLIGHT),
        )?;
        let simulate_latency =
            self.check_opt(&raw.simulate_latency, "crypto.simulate_latency", |s| {
                parse_duration(s)
            })?;
        let backend = match &raw.backend {
            None => defaults.backend,
            Some(name) => self.backend(name, raw)?,
        };
        Some(CryptoConfig {
            backend,
            max_in_flight,
            simulate_latency,
        })
    }

    fn backend(&mut self, name: &S<String>, raw: &RawCrypto) -> Option<BackendKind> {
        Some(match name.get_ref().as_str() {
            "software" => BackendKind::Software,
            "pkcs11" => {
                let Some(p) = &raw.pkcs11 else {
                    self.report(
                        name,
                        "crypto.pkcs11",
                        "backend = \"pkcs11\" needs a [crypto.pkcs11] table with module and a PIN source",
                    );
                    return None;
                };
                BackendKind::Pkcs11(self.pkcs11(p)?)
            }
            #[cfg(feature = "openssl")]
            "openssl" => BackendKind::Openssl(match &raw.openssl {
                Some(o) => self.openssl(o)?,
                None => OpensslSettings::default(),
            }),
            // Refused here, located, so nothing past validation needs a "not built in" path.
            #[cfg(not(feature = "openssl"))]
            "openssl" => {
                self.report(
                    name,
                    "crypto.backend",
                    "this mtlsd was built without the openssl feature; rebuild with --features openssl",
                );
                return None;
            }
            other => {
                self.report(
                    name,
                    "crypto.backend",
                    format!("unknown backend {other:?}; expected \"software\", \"pkcs11\" or \"openssl\""),
                );
                return None;
            }
        })
    }

    fn pkcs11(&mut self, raw: &S<RawPkcs11>) -> Option<Pkcs11Settings> {
        let p = raw.get_ref();
        let module = self.check(&p.module, "crypto.pkcs11.module", |m| {
            non_empty(m).map(PathBuf::from)
        });
        let mut sources = Vec::new();
        if let Some(f) = &p.pin_file {
            sources.push(PinSource::File(PathBuf::from(f.get_ref())));
        }
        if let Some(e) = &p.pin_env {
            sources.push(PinSource::Env(e.get_ref().clone()));
        }
        if let Some(c) = &p.pin_credential {
            sources.push(PinSource::Credential(c.get_ref().clone()));
        }
        if sources.len() != 1 {
            self.report(
                raw,
                "crypto.pkcs11",
                "set exactly one of pin_file, pin_env or pin_credential (a PIN is never read from the command line)",
            );
            return None;
        }
        let pool_size = self.check_or(&p.pool_size, "crypto.pkcs11.pool_size", 4, |n| {
            count_up_to(n, MAX_POOL_SIZE)
        });
        if let Some(path) = &module {
            self.readable_file(p.module.span(), "crypto.pkcs11.module", path);
        }
        if let Some(f) = &p.pin_file {
            self.pin_file(f.span(), "crypto.pkcs11.pin_file", Path::new(f.get_ref()));
        }
        Some(Pkcs11Settings {
            module: module?,
            pin: sources.pop()?,
            pool_size: pool_size?,
        })
    }

    #[cfg(feature = "openssl")]
    fn openssl(&mut self, raw: &S<RawOpenssl>) -> Option<OpensslSettings> {
        let o = raw.get_ref();
        if o.engine.is_none() && !o.engine_ctrl.is_empty() {
            self.report(
                raw,
                "crypto.openssl.engine_ctrl",
                "engine_ctrl needs an engine",
            );
            return None;
        }
        if o.engine.is_some() && o.provider.is_some() {
            self.report(
                raw,
                "crypto.openssl",
                "set engine or provider, not both (OpenSSL 3 providers replace engines)",
            );
            return None;
        }
        Some(OpensslSettings {
            engine: o.engine.as_ref().map(|e| e.get_ref().clone()),
            engine_ctrl: o
                .engine_ctrl
                .iter()
                .map(|c| {
                    let [k, v] = c.get_ref().clone();
                    (k, v)
                })
                .collect(),
            provider: o.provider.as_ref().map(|p| p.get_ref().clone()),
        })
    }
}
