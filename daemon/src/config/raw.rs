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
    pub recheck: RawRecheck,
    pub audit: Option<S<RawAudit>>,
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
    pub source: Option<S<String>>,
    pub socket: Option<S<String>>,
    pub startup_timeout: Option<S<String>>,
    #[serde(default)]
    pub federated: Vec<S<RawFederated>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFederated {
    pub trust_domain: S<String>,
    pub bundle: S<String>,
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
    pub max_connection_lifetime: Option<S<String>>,
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
pub(super) struct RawAudit {
    pub file: S<String>,
    pub on_full: Option<S<String>>,
    pub queue: Option<S<i64>>,
    pub fsync: Option<S<String>>,
    pub fsync_interval: Option<S<String>>,
    pub rotate_bytes: Option<S<i64>>,
    pub keep: Option<S<i64>>,
    pub journal: Option<S<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecheck {
    pub mode: Option<S<String>>,
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
    pub protocol: Option<S<String>>,
    pub http: Option<S<RawHttp>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub upstream: Option<S<String>>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub early_data_unsafe_methods: bool,
    pub issuer_header: Option<S<String>>,
    pub subject_header: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    #[serde(default)]
    pub jwt: Vec<S<RawJwt>>,
    #[serde(default)]
    pub rules: Vec<S<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub issuer: S<String>,
    #[serde(default)]
    pub audiences: Vec<S<String>>,
    pub jwks_uri: Option<S<String>>,
    pub jwks: Option<S<String>>,
    pub jwks_ca: Option<S<String>>,
    pub jwks_cache: Option<S<String>>,
    pub jwks_timeout: Option<S<String>>,
    pub socket: Option<S<String>>,
    #[serde(default)]
    pub from_headers: Vec<S<RawTokenHeader>>,
    #[serde(default)]
    pub from_params: Vec<S<String>>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<S<RawClaimHeader>>,
    pub clock_skew: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenHeader {
    pub name: S<String>,
    pub prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimHeader {
    pub header: S<String>,
    pub claim: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: Option<S<String>>,
    pub action: S<String>,
    #[serde(default)]
    pub from: Vec<S<RawSource>>,
    #[serde(default)]
    pub to: Vec<S<RawOperation>>,
    #[serde(default)]
    pub when: Vec<S<RawCondition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(default)]
    pub principals: Vec<S<String>>,
    #[serde(default)]
    pub not_principals: Vec<S<String>>,
    #[serde(default)]
    pub request_principals: Vec<S<String>>,
    #[serde(default)]
    pub not_request_principals: Vec<S<String>>,
    #[serde(default)]
    pub ip_blocks: Vec<S<String>>,
    #[serde(default)]
    pub not_ip_blocks: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOperation {
    #[serde(default)]
    pub methods: Vec<S<String>>,
    #[serde(default)]
    pub not_methods: Vec<S<String>>,
    #[serde(default)]
    pub paths: Vec<S<String>>,
    #[serde(default)]
    pub not_paths: Vec<S<String>>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    #[serde(default)]
    pub not_hosts: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    pub key: S<String>,
    #[serde(default)]
    pub values: Vec<S<String>>,
    #[serde(default)]
    pub not_values: Vec<S<String>>,
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
