//! The config file exactly as written, with source spans kept for error messages.

use serde::Deserialize;
use toml::Spanned;

/// A value together with where it was written.
pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub identity: S<RawIdentity>,
    #[serde(default)]
    pub crypto: RawCrypto,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub shutdown: RawShutdown,
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub resumption: RawResumption,
    #[serde(default)]
    pub inbound: Vec<S<RawInbound>>,
    #[serde(default)]
    pub outbound: Vec<S<RawOutbound>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub trust_domain: S<String>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub bundle: Option<S<String>>,
    pub crl: Option<S<String>>,
    pub ca_dir: Option<S<String>>,
    pub id: Option<S<String>>,
    pub svid_ttl: Option<S<String>>,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrypto {
    pub backend: Option<S<String>>,
    pub max_in_flight: Option<S<i64>>,
    pub simulate_latency: Option<S<String>>,
    pub pkcs11: Option<S<RawPkcs11>>,
    // Parsed (and its keys checked) with or without the openssl feature, so a file means
    // the same to every build; only a build with the backend reads it.
    #[cfg_attr(not(feature = "openssl"), allow(dead_code))]
    pub openssl: Option<S<RawOpenssl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPkcs11 {
    pub module: S<String>,
    pub pin_file: Option<S<String>>,
    pub pin_env: Option<S<String>>,
    pub pin_credential: Option<S<String>>,
    pub pool_size: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "openssl"), allow(dead_code))]
pub(super) struct RawOpenssl {
    pub engine: Option<S<String>>,
    #[serde(default)]
    pub engine_ctrl: Vec<S<[String; 2]>>,
    pub provider: Option<S<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_connections: Option<S<i64>>,
    pub max_handshakes: Option<S<i64>>,
    pub max_handshakes_per_source: Option<S<i64>>,
    pub client_hello_timeout: Option<S<String>>,
    pub handshake_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResumption {
    pub ticket_key_file: Option<S<String>>,
    pub ticket_rotation: Option<S<String>>,
    pub session_cache_size: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub grace: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    pub name: S<String>,
    pub listen: S<String>,
    pub forward: S<String>,
    pub mode: Option<S<String>>,
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub deny: Vec<S<String>>,
    #[serde(default)]
    pub proxy_protocol: bool,
    pub resumption: Option<S<String>>,
    pub early_data: Option<S<i64>>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbound {
    pub name: S<String>,
    pub listen: S<String>,
    pub connect: S<String>,
    pub server_id: S<String>,
    pub resumption: Option<bool>,
    pub early_data: Option<S<bool>>,
    #[serde(default)]
    pub limits: RawLimits,
}
