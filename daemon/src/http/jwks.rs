//! An issuer's public keys (JWKS): fetched over HTTP(S) or read from a file, cached,
//! refreshed on their cache lifetime and at once for an unknown `kid`, with a bound on
//! how often a fetch may start and back-off while the endpoint fails.
//!
//! Keys outlive reloads: listeners that name the same source share one [`Jwks`], so a
//! reload while the endpoint is down keeps the keys already fetched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::config::JwksSource;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A fetch for an unknown `kid` starts at most this often, so tokens with made-up key IDs
/// cannot turn into a flood of requests to the identity provider.
const MIN_REFETCH: Duration = Duration::from_secs(5);

/// The longest wait between retries while the endpoint keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where the system's CA certificates are, for `https` JWKS URIs without `jwks_ca`.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One verification key of a JWKS.
pub struct Key {
    /// The key, ready to verify.
    pub decoding: DecodingKey,
    /// The algorithm the JWK pins (`alg`), if it does.
    pub alg: Option<Algorithm>,
}

/// The keys of one fetch, by `kid`; keys without one are tried in order.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    anonymous: Vec<Arc<Key>>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the signature keys mtlsd can verify with: RSA, EC
    /// and Ed25519 keys not marked for encryption. Symmetric (`oct`) keys are dropped, so
    /// an HMAC token can never be checked against a public key.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Self::default();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                || matches!(
                    jwk.algorithm,
                    AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
                )
            {
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let key = Arc::new(Key { decoding, alg });
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.anonymous.push(key),
            }
        }
        Ok(keys)
    }

    /// The keys a token with `kid` may be signed with.
    fn candidates(&self, kid: Option<&str>) -> Vec<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().into_iter().collect(),
            None => self
                .by_kid
                .values()
                .chain(&self.anonymous)
                .cloned()
                .collect(),
        }
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads and parses a local JWKS file (for `mtlsd check` and for file sources).
pub fn read_file(path: &Path) -> Result<KeySet, String> {
    let json = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let keys = KeySet::parse(&json).map_err(|e| format!("{}: {e}", path.display()))?;
    if keys.is_empty() {
        return Err(format!(
            "{} holds no RSA, EC or Ed25519 signature key",
            path.display()
        ));
    }
    Ok(keys)
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The current keys do not have it, and they were fetched successfully.
    Unknown(String),
    /// The keys do not have it and the JWKS could not be fetched.
    Unavailable(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(m) | Self::Unavailable(m) => f.write_str(m),
        }
    }
}

struct FetchState {
    /// When the last fetch started, successful or not.
    last_attempt: Option<Instant>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
    /// Fetches failed in a row, for back-off.
    failures: u32,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
}

/// One issuer's keys and how to get them again.
pub struct Jwks {
    source: JwksSource,
    issuer: String,
    fetch_timeout: Duration,
    cache: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Held across a fetch, so concurrent requests for an unknown `kid` share one.
    state: tokio::sync::Mutex<FetchState>,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Why the Workload API's JWT bundle could not be had, while it cannot.
    stream_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

type Registry = Mutex<HashMap<(JwksSource, String), Weak<Jwks>>>;

/// Sources in use, so a reload finds the keys it already has.
fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Jwks {
    /// The keys of `source` for `issuer`: the ones already loaded if a listener uses them,
    /// otherwise a new cache (a file is read now; a URI is fetched on first use or by
    /// [`prefetch`](Self::prefetch)).
    pub fn shared(
        source: &JwksSource,
        issuer: &str,
        fetch_timeout: Duration,
        cache: Duration,
    ) -> Result<Arc<Self>, String> {
        let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|_, weak| weak.strong_count() > 0);
        let key = (source.clone(), issuer.to_owned());
        if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let (keys, tls) = match source {
            JwksSource::File { path } => (read_file(path)?, None),
            JwksSource::Uri { uri, ca } => {
                let tls = uri
                    .starts_with("https://")
                    .then(|| https_connector(ca.as_deref()))
                    .transpose()?;
                (KeySet::default(), tls)
            }
            // Filled by the stream started below.
            JwksSource::WorkloadApi { .. } => (KeySet::default(), None),
        };
        let jwks = Arc::new(Self {
            source: source.clone(),
            issuer: issuer.to_owned(),
            fetch_timeout,
            cache,
            keys: RwLock::new(Arc::new(keys)),
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                fetched: None,
                failures: 0,
                last_error: None,
            }),
            tls,
            stream_error: Mutex::new(None),
        });
        registry.insert(key, Arc::downgrade(&jwks));
        if let JwksSource::WorkloadApi {
            socket,
            trust_domain,
        } = source
            && tokio::runtime::Handle::try_current().is_ok()
        {
            stream_jwt_bundle(Arc::downgrade(&jwks), socket.clone(), trust_domain.clone());
        }
        Ok(jwks)
    }

    /// Starts the first fetch in the background, so the first token does not wait for it.
    pub fn prefetch(self: &Arc<Self>) {
        if matches!(self.source, JwksSource::Uri { .. })
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let this = Arc::downgrade(self);
            tokio::spawn(async move {
                if let Some(this) = this.upgrade() {
                    this.refresh(false).await;
                }
            });
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys a token with `kid` may be verified with; fetches the JWKS first when the
    /// `kid` is unknown (at most every few seconds) or the cache has expired.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<Arc<Key>>, KeyError> {
        let found = self.current().candidates(kid);
        if let JwksSource::WorkloadApi {
            socket,
            trust_domain,
        } = &self.source
        {
            if !found.is_empty() {
                return Ok(found);
            }
            let error = self
                .stream_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(match error {
                Some(e) => KeyError::Unavailable(format!(
                    "{} in the JWT bundle of {trust_domain}, and the Workload API at {socket} \
                     could not be read: {e}",
                    describe(kid)
                )),
                None => KeyError::Unknown(format!(
                    "{} in the JWT bundle of {trust_domain}",
                    describe(kid)
                )),
            });
        }
        let JwksSource::Uri { uri, .. } = &self.source else {
            return self.found_or(found, kid, None);
        };
        if !found.is_empty() {
            if self.expired().await {
                // Stale keys keep serving while a fresh copy is fetched.
                self.refresh(false).await;
                let fresh = self.current().candidates(kid);
                if !fresh.is_empty() {
                    return Ok(fresh);
                }
            }
            return Ok(found);
        }
        let error = self.refresh(true).await;
        let found = self.current().candidates(kid);
        match (found.is_empty(), error) {
            (false, _) => Ok(found),
            (true, Some(e)) => Err(KeyError::Unavailable(format!(
                "{} from {uri}, and the JWKS could not be fetched: {e}",
                describe(kid)
            ))),
            (true, None) => self.found_or(found, kid, Some(uri)),
        }
    }

    fn found_or(
        &self,
        found: Vec<Arc<Key>>,
        kid: Option<&str>,
        uri: Option<&str>,
    ) -> Result<Vec<Arc<Key>>, KeyError> {
        if found.is_empty() {
            let from = uri.map_or_else(|| "the configured JWKS".to_owned(), str::to_owned);
            return Err(KeyError::Unknown(format!(
                "{} in the keys of {} ({from})",
                describe(kid),
                self.issuer
            )));
        }
        Ok(found)
    }

    async fn expired(&self) -> bool {
        let state = self.state.lock().await;
        state.fetched.is_none_or(|t| t.elapsed() >= self.cache)
    }

    /// Fetches the JWKS unless one was just tried; returns why the keys could not be fetched.
    ///
    /// `for_unknown_kid` fetches when the last attempt is at least [`MIN_REFETCH`] old;
    /// otherwise (expiry) it waits out the back-off of failed attempts.
    async fn refresh(&self, for_unknown_kid: bool) -> Option<String> {
        let JwksSource::Uri { uri, .. } = &self.source else {
            return None;
        };
        let mut state = self.state.lock().await;
        let wait = if for_unknown_kid {
            MIN_REFETCH
        } else if state.failures == 0 {
            if state.fetched.is_some_and(|t| t.elapsed() < self.cache) {
                return None;
            }
            Duration::ZERO
        } else {
            backoff(state.failures)
        };
        if state.last_attempt.is_some_and(|t| t.elapsed() < wait) {
            return state.last_error.clone();
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(uri).await {
            Ok(keys) => {
                tracing::info!(
                    issuer = %self.issuer,
                    jwks_uri = %uri,
                    keys = keys.len(),
                    "JWKS fetched"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                state.fetched = Some(Instant::now());
                state.failures = 0;
                state.last_error = None;
                None
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                tracing::warn!(
                    issuer = %self.issuer,
                    jwks_uri = %uri,
                    failures = state.failures,
                    retry_in = ?backoff(state.failures),
                    error = %e,
                    "JWKS fetch failed; cached keys stay in use"
                );
                state.last_error = Some(e.clone());
                Some(e)
            }
        }
    }

    async fn fetch(&self, uri: &str) -> Result<KeySet, String> {
        let body = timeout(self.fetch_timeout, get(uri, self.tls.as_ref()))
            .await
            .map_err(|_| format!("no answer within {:?}", self.fetch_timeout))??;
        let keys = KeySet::parse(&body)?;
        if keys.is_empty() {
            return Err("the JWKS holds no RSA, EC or Ed25519 signature key".into());
        }
        Ok(keys)
    }
}

/// Keeps `jwks`'s keys equal to the JWT bundle of `trust_domain` that the Workload API at
/// `socket` streams, reconnecting with back-off, until `jwks` is dropped.
fn stream_jwt_bundle(jwks: Weak<Jwks>, socket: String, trust_domain: String) {
    use ::spiffe::jwt_source::JwtSource;
    tokio::spawn(async move {
        let Ok(td) = ::spiffe::TrustDomain::new(&trust_domain) else {
            return;
        };
        let mut failures = 0;
        loop {
            let built = JwtSource::builder()
                .endpoint(crate::identity::workload_endpoint(&socket))
                .build()
                .await;
            let source = match built {
                Ok(source) => source,
                Err(e) => {
                    let Some(this) = jwks.upgrade() else { return };
                    failures += 1;
                    this.stream_failed(&socket, e.to_string(), failures);
                    drop(this);
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            };
            failures = 0;
            let mut updates = source.updated();
            loop {
                let Some(this) = jwks.upgrade() else {
                    source.shutdown().await;
                    return;
                };
                match source.bundle_set() {
                    Ok(set) => match set.get(&td) {
                        Some(bundle) => this.take_jwt_bundle(&socket, &trust_domain, &bundle),
                        None => this.stream_failed(
                            &socket,
                            format!("it sent no JWT bundle for {trust_domain}"),
                            1,
                        ),
                    },
                    Err(e) => this.stream_failed(&socket, e.to_string(), 1),
                }
                drop(this);
                if updates.changed().await.is_err() {
                    break;
                }
            }
        }
    });
}

impl Jwks {
    fn take_jwt_bundle(&self, socket: &str, trust_domain: &str, bundle: &::spiffe::JwtBundle) {
        let keys: Vec<serde_json::Value> = bundle
            .jwt_authorities()
            .filter_map(|a| {
                let mut jwk: serde_json::Value = serde_json::from_slice(a.jwk_json()).ok()?;
                if let Some(obj) = jwk.as_object_mut() {
                    obj.entry("kid").or_insert_with(|| a.key_id().into());
                }
                Some(jwk)
            })
            .collect();
        let json = serde_json::json!({ "keys": keys }).to_string();
        match KeySet::parse(json.as_bytes()) {
            Ok(set) => {
                tracing::info!(
                    trust_domain,
                    socket,
                    keys = set.len(),
                    "JWT bundle received from the Workload API"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                *self.stream_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => self.stream_failed(socket, e, 1),
        }
    }

    fn stream_failed(&self, socket: &str, error: String, failures: u32) {
        tracing::warn!(
            issuer = %self.issuer,
            socket,
            failures,
            error = %error,
            "JWT bundle from the Workload API unavailable; keys already received stay in use"
        );
        *self.stream_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

fn describe(kid: Option<&str>) -> String {
    kid.map_or_else(
        || "no key for a token without kid".to_owned(),
        |k| format!("key {k:?} not found"),
    )
}

/// 1 s after the first failure, doubling up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// A TLS client for `https` JWKS URIs trusting `ca` or the system's CAs.
fn https_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let path: PathBuf = ca.map_or_else(|| PathBuf::from(SYSTEM_CAS), Path::to_owned);
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read CAs from {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// GETs `uri` and returns its body if the status is 200.
async fn get(uri: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Bytes, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    let host = parsed.host().unwrap_or_default();
    let https = parsed.scheme_str() == Some("https");
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let authority = parsed.authority().map_or(host, |a| a.as_str());
    match tls {
        Some(tls) if https => {
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("{host} is not a server name: {e}"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port} failed: {e}"))?;
            request(stream, authority, path).await
        }
        _ => request(tcp, authority, path).await,
    }
}

async fn request<IO>(io: IO, authority: &str, path: &str) -> Result<Bytes, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .header(hyper::header::USER_AGENT, "mtlsd")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body failed: {e}"))?
        .to_bytes();
    conn.abort();
    if status != StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_never_loaded() {
        let json = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"enc","use":"enc","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"sig","alg":"ES256","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = KeySet::parse(json).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.candidates(Some("sig")).len(), 1);
        assert!(keys.candidates(Some("h")).is_empty());
        assert_eq!(keys.candidates(Some("sig"))[0].alg, Some(Algorithm::ES256));
    }

    /// A JWKS served over HTTPS by a loopback server whose certificate is in `ca.pem`.
    #[tokio::test]
    async fn an_https_jwks_uri_is_fetched_trusting_jwks_ca_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = r#"{"keys":[{"kty":"EC","kid":"k1","alg":"ES256","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 2048];
                let _ = tls.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        let uri = format!("https://localhost:{port}/jwks");
        let source = JwksSource::Uri {
            uri: uri.clone(),
            ca: Some(ca),
        };
        let jwks = Jwks::shared(
            &source,
            "https://idp.test",
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
        .unwrap();
        let keys = jwks.keys_for(Some("k1")).await.unwrap();
        assert_eq!(keys[0].alg, Some(Algorithm::ES256));
        // Without the CA, the same server is not trusted.
        let untrusted = https_connector(Some(&dir.path().join("missing.pem")));
        assert!(untrusted.is_err());
        let system = https_connector(None).unwrap();
        let err = get(&uri, Some(&system)).await.unwrap_err();
        assert!(err.contains("TLS"), "{err}");
    }

    #[test]
    fn back_off_doubles_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
