//! The fuzz target bodies, one function per parser of outside input.
//!
//! Shared by the cargo-fuzz binaries (`tests/fuzz/fuzz_targets/`) and by the
//! stable corpus replay (`tests/tests/fuzz_corpus.rs`, which includes this file
//! with `#[path]`), so this file uses nothing that only one of them has.
//!
//! A target panics only when the code under test does, or when an invariant
//! checked here fails: what parses prints back to something that parses to the
//! same value, errors point inside the input, and the PROXY v2 header we encode
//! reads back through the independent `ppp` parser. Loaders that only take a
//! path (certificates, CRLs, key files) read the input from a scratch file
//! that is unlinked as soon as it is created (see [`scratch_file`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Seek, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use mtlsd::ca::{Authority, LeafSpec};
use mtlsd::config::{Config, ConfigError, format_duration, parse_duration};
use mtlsd::identity::{
    CertInfo, ParsedChain, Revocations, SpiffeId, Svid, check_validity, load_bundle, load_certs,
    spiffe_id_of, validate_trust_domain,
};
use mtlsd::policy::{Decision, Peer, Policy, Principal};
use mtlsd::proxy::client_hello;
use mtlsd::proxy::proxy_protocol::{self, TLV_EARLY_DATA, TLV_SPIFFE_ID, TlsInfo};
use mtlsd::proxy::server_tls::ServerTlsStream;
use mtlsd::tls::tickets::{KeyFileError, parse_key_file};
use mtlsd::tls::{ServerResumption, TlsIdentity};
use mtlsd_crypto::pkcs11::Pkcs11Uri;
use mtlsd_crypto::software::Software;
use mtlsd_crypto::{Backend, KeyRef};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::{ClientConnection, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fuzz target: takes one input, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name; the fuzz binary and its corpus directory are named the same.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("pkcs11_uri", pkcs11_uri),
    ("spiffe_id", spiffe_id),
    ("policy_principal", policy_principal),
    ("ticket_key_file", ticket_key_file),
    ("key_pem", key_pem),
    ("cert_pem", cert_pem),
    ("crl", crl),
    ("client_hello", client_hello),
    ("proxy_v2", proxy_v2),
    ("early_tls", early_tls),
];

/// Config text → validated [`Config`]; a valid one serializes as `/config` shows it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            serde_json::to_string(&config).expect("a valid config serializes for /config");
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty(), "rejected without naming a problem");
            let lines = text.split('\n').count();
            for p in &problems {
                assert!(p.line >= 1 && p.line <= lines, "{p} is past the text");
                assert!(p.column >= 1, "{p}");
            }
            let _ = ConfigError::Invalid(problems).to_string();
        }
        Err(other) => panic!("text parsing cannot fail to read a file: {other}"),
    }
    // Durations are the config's own syntax: what parses prints back to the same value.
    if let Ok(d) = parse_duration(text) {
        let printed = format_duration(d);
        assert_eq!(
            parse_duration(&printed),
            Ok(d),
            "{text:?} printed as {printed:?}"
        );
    }
}

/// `pkcs11:` URIs: parsing, re-parsing what is displayed, and never echoing a `pin-value`.
pub fn pkcs11_uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = Pkcs11Uri::parse(text) {
        // Display drops the query (it may name a PIN file); the rest names the same key.
        let shown = uri.to_string();
        let again = Pkcs11Uri::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which fails: {e}"));
        assert_eq!(
            (&again.token, again.slot_id, &again.object, &again.id),
            (&uri.token, uri.slot_id, &uri.object, &uri.id),
            "{text:?} displays as {shown:?}"
        );
        assert_eq!((again.module_path, again.pin_source), (None, None));
    }
    if !text.contains('?') {
        const PIN: &str = "S3CRET-PIN-4711";
        let err = Pkcs11Uri::parse(&format!("{text}?pin-value={PIN}"))
            .expect_err("a pin-value is always refused");
        assert!(!err.to_string().contains(PIN), "PIN echoed: {err}");
    }
    // The URIs written after key generation read back as the same key.
    let mut parts = text.splitn(3, '\n');
    let (token, label, id) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let made = Pkcs11Uri::for_key(token, label, id.as_bytes());
    let read = Pkcs11Uri::parse(&made.to_string())
        .unwrap_or_else(|e| panic!("generated {made} does not parse: {e}"));
    assert_eq!(read, made);
}

/// SPIFFE IDs: a valid ID is its own text, split into a valid trust domain and path.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = text.parse::<SpiffeId>() else {
        return;
    };
    assert_eq!(id.as_str(), text);
    assert_eq!(id.to_string(), text);
    assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), text);
    validate_trust_domain(id.trust_domain()).expect("the trust domain of a valid ID is valid");
    assert!(id.path().is_empty() || id.path().starts_with('/'));
}

/// Policy principals (`spiffe://td/ns/*`, `unauthenticated`, ...) and what they match.
///
/// Input: the rule, optionally followed by a newline and a SPIFFE ID to authorize.
pub fn policy_principal(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule, peer) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(principal) = rule.parse::<Principal>() else {
        return;
    };
    let shown = principal.to_string();
    assert_eq!(
        shown.parse::<Principal>().as_ref(),
        Ok(&principal),
        "{rule:?} displays as {shown:?}"
    );
    let allow = Policy {
        allow: vec![principal.clone()],
        deny: Vec::new(),
    };
    let deny = Policy {
        allow: vec![principal.clone()],
        deny: vec![principal.clone()],
    };
    let allowed = |peer: Peer<'_>| {
        let decision = allow.authorize(peer);
        // The same rule on the deny list always wins.
        let denied = matches!(deny.authorize(peer), Decision::Deny(_));
        assert_eq!(matches!(decision, Decision::Allow(_)), denied, "{rule:?}");
        denied
    };
    assert_eq!(
        allowed(Peer::Unauthenticated),
        principal == Principal::Unauthenticated
    );
    if let Ok(id) = peer.parse::<SpiffeId>() {
        let want = match &principal {
            Principal::Exact(exact) => *exact == id,
            Principal::PathPrefix {
                trust_domain,
                prefix,
            } => id.trust_domain() == trust_domain && id.path().starts_with(prefix.as_str()),
            Principal::TrustDomain(td) => id.trust_domain() == td,
            Principal::Unauthenticated => false,
        };
        assert_eq!(allowed(Peer::Spiffe(&id)), want, "{rule:?} against {id}");
    }
    // A prefix rule admits an ID one segment below it.
    if let Principal::PathPrefix {
        trust_domain,
        prefix,
    } = &principal
    {
        let below: SpiffeId = format!("spiffe://{trust_domain}{prefix}x")
            .parse()
            .expect("a prefix rule extends to a valid ID");
        assert!(allowed(Peer::Spiffe(&below)), "{rule:?} refuses {below}");
    }
}

/// The shared ticket-key file: keys read back the same when written out again.
pub fn ticket_key_file(data: &[u8]) {
    match parse_key_file(data) {
        Ok(keys) => {
            assert!(!keys.is_empty(), "a file with no key is an error");
            let lines = data.split(|&b| b == b'\n').count();
            assert!(keys.len() <= lines, "more keys than lines");
            let written: String = keys.iter().map(|k| hex_line(k.as_slice())).collect();
            let again = parse_key_file(written.as_bytes()).expect("written keys parse");
            assert!(
                again.iter().map(|k| **k).eq(keys.iter().map(|k| **k)),
                "keys changed when written out and read again"
            );
        }
        Err(e) => {
            if let KeyFileError::BadKey { line } | KeyFileError::ZeroKey { line } = e {
                let lines = data.split(|&b| b == b'\n').count();
                assert!(line >= 1 && line <= lines, "{e} is past the file");
            }
            let _ = e.to_string();
        }
    }
}

fn hex_line(bytes: &[u8]) -> String {
    let mut line: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    line.push('\n');
    line
}

/// PEM private keys, in memory (`key_from_pem`) and from a 0600 file (`load_signing_key`).
pub fn key_pem(data: &[u8]) {
    let backend = software();
    if let Ok(key) = backend.key_from_pem(data) {
        let _ = (key.algorithm(), key.public_key());
    }
    if let Ok(key) = backend.load_signing_key(&KeyRef::File(scratch_file("key", data))) {
        let _ = (key.algorithm(), key.public_key());
    }
}

/// Certificate PEM as identity loading reads it: our chain, the bundle, SPIFFE IDs, summaries.
pub fn cert_pem(data: &[u8]) {
    let path = scratch_file("certs", data);
    let Ok(certs) = load_certs(&path) else {
        return;
    };
    assert!(!certs.is_empty(), "loaded no certificate without an error");
    for cert in &certs {
        let id = spiffe_id_of(cert);
        if let Some(info) = CertInfo::of(cert) {
            assert_eq!(info.spiffe_id, id.ok().map(|id| id.to_string()));
            serde_json::to_string(&info).expect("a certificate summary serializes for /certs");
        }
    }
    if let Ok(parsed) = ParsedChain::parse(&certs) {
        let _ = check_validity(&parsed);
    }
    let _ = load_bundle(&path);
    let key = KeyRef::File(path.clone());
    let _ = Svid::from_chain(certs, &path, &key, pki().spare_key.clone());
}

/// CRL PEM as revocation loading reads it, then checked against a real chain.
pub fn crl(data: &[u8]) {
    let path = scratch_file("crl", data);
    if let Ok(revocations) = Revocations::load(&[path]) {
        let _ = (revocations.len(), revocations.files());
        let chain = ParsedChain::parse(&pki().server.svid.certified_key.cert)
            .expect("the fixture's own chain parses");
        let _ = revocations.check(&chain);
    }
}

/// The ClientHello scan an early-data listener makes before rustls decides on 0-RTT.
///
/// Input: the client's first records as received.
pub fn client_hello(data: &[u8]) {
    if let Some(ids) = client_hello::offered_early_psks(data) {
        let total: usize = ids.iter().map(|id| id.len() + 2).sum();
        assert!(total <= data.len(), "PSK identities larger than the input");
    }
}

/// What the PROXY v2 encoder is given, as the fuzzer picks it.
#[derive(Arbitrary, Debug)]
struct ProxyInput {
    source: SocketAddr,
    destination: SocketAddr,
    tls: Option<ProxyTls>,
}

/// The TLS half of a PROXY v2 header.
#[derive(Arbitrary, Debug)]
struct ProxyTls {
    /// Tried as the SPIFFE ID first; when it is not one, the ID is built from the parts below.
    id: String,
    trust_domain: Vec<u8>,
    segments: Vec<Vec<u8>>,
    version: String,
    early_data: u32,
}

impl ProxyTls {
    /// A valid SPIFFE ID from the fuzzer's bytes, or `None` if it would be too long.
    fn spiffe_id(&self) -> Option<SpiffeId> {
        const TD: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-_";
        const PATH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_";
        if let Ok(id) = self.id.parse() {
            return Some(id);
        }
        let pick = |set: &[u8], bytes: &[u8]| -> String {
            bytes
                .iter()
                .map(|b| char::from(set[usize::from(*b) % set.len()]))
                .collect()
        };
        let mut id = format!("spiffe://x{}", pick(TD, &self.trust_domain));
        for segment in &self.segments {
            // `.` and `..` are not segments: the leading `s` keeps them out.
            id.push_str("/s");
            id.push_str(&pick(PATH, segment));
        }
        id.parse().ok()
    }
}

/// The PROXY v2 encoder, read back by the independent `ppp` parser.
pub fn proxy_v2(data: &[u8]) {
    let Ok(input) = ProxyInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let id = input.tls.as_ref().and_then(ProxyTls::spiffe_id);
    let tls = match (&input.tls, &id) {
        (Some(tls), Some(id)) => Some(TlsInfo {
            spiffe_id: id,
            // A protocol name such as `TLSv1_3`: short, whatever the fuzzer wrote.
            version: truncate(&tls.version, 64),
            early_data: tls.early_data,
        }),
        _ => None,
    };
    let header = proxy_protocol::encode(input.source, input.destination, tls);
    // The service reads the header and then the (possibly early) payload from one stream.
    let mut stream = header.clone();
    stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let parsed = ppp::v2::Header::try_from(stream.as_slice())
        .unwrap_or_else(|e| panic!("ppp rejects {header:02x?}: {e:?}"));
    assert_eq!(parsed.as_bytes(), header.as_slice(), "header length");
    assert_eq!(parsed.version, ppp::v2::Version::Two);
    assert_eq!(parsed.command, ppp::v2::Command::Proxy);
    assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);

    let (src, dst) = (input.source, input.destination);
    match (unmap(src.ip()), unmap(dst.ip()), parsed.addresses) {
        (IpAddr::V4(s), IpAddr::V4(d), ppp::v2::Addresses::IPv4(a)) => {
            assert_eq!((a.source_address, a.source_port), (s, src.port()));
            assert_eq!((a.destination_address, a.destination_port), (d, dst.port()));
        }
        (IpAddr::V4(_), IpAddr::V4(_), other) => panic!("two IPv4 peers sent as {other:?}"),
        (s, d, ppp::v2::Addresses::IPv6(a)) => {
            assert_eq!((a.source_address, a.source_port), (as_v6(s), src.port()));
            assert_eq!(
                (a.destination_address, a.destination_port),
                (as_v6(d), dst.port())
            );
        }
        (_, _, other) => panic!("IPv6 peers sent as {other:?}"),
    }

    let tlvs: Vec<_> = parsed
        .tlvs()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("ppp cannot read our TLVs in {header:02x?}: {e:?}"));
    let Some(tls) = tls else {
        assert!(tlvs.is_empty(), "TLVs without TLS: {tlvs:?}");
        return;
    };
    let kinds: Vec<u8> = tlvs.iter().map(|t| t.kind).collect();
    let mut want = vec![0x20, TLV_SPIFFE_ID];
    if tls.early_data > 0 {
        want.push(TLV_EARLY_DATA);
    }
    assert_eq!(kinds, want);
    // PP2_TYPE_SSL: client flags (SSL, certificate on this connection), verify = 0, then
    // the PP2_SUBTYPE_SSL_VERSION sub-TLV.
    let ssl = tlvs[0].value.as_ref();
    let version = tls.version.as_bytes();
    assert_eq!(&ssl[..5], &[0x03, 0, 0, 0, 0]);
    assert_eq!(ssl[5], 0x21);
    assert_eq!(
        usize::from(u16::from_be_bytes([ssl[6], ssl[7]])),
        version.len()
    );
    assert_eq!(&ssl[8..], version);
    assert_eq!(tlvs[1].value.as_ref(), tls.spiffe_id.as_str().as_bytes());
    if tls.early_data > 0 {
        assert_eq!(tlvs[2].value.as_ref(), tls.early_data.to_be_bytes());
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn as_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Most 0-RTT bytes the early-data listener accepts.
const EARLY_DATA_LIMIT: u32 = 16 * 1024;
/// What the recorded resuming client sends as early data.
const EARLY_REQUEST: &[u8] = b"GET /early HTTP/1.1\r\nHost: fuzz\r\n\r\n";

/// A client's flight into an early-data listener (`client_hello::read` and
/// `offered_early_psks`, then [`ServerTlsStream`]); nothing may panic.
///
/// Input: byte 0 is the write size the flight is cut into (0: one write); byte 1
/// holds flags: bit 0 edits a recorded resuming client's flight (ClientHello with
/// a PSK, then 0-RTT records) instead of sending the rest of the input as it is,
/// bit 1 makes the proxy answer and close once `accept` returns. An edit script
/// is 3-byte edits `[position (u16, BE, modulo the length), xor]`, where xor 0
/// truncates at the position; an edit starting `0xff` appends what follows it.
pub fn early_tls(data: &[u8]) {
    let [chunk, flags, rest @ ..] = data else {
        return;
    };
    let fixture = early();
    let flight = if flags & 1 == 1 {
        edit(&fixture.flight, rest)
    } else {
        rest.to_vec()
    };
    let chunk = match *chunk {
        0 => flight.len().max(1),
        n => usize::from(n),
    };
    let reply = flags & 2 == 2;
    let early =
        RUNTIME.with(|rt| rt.block_on(serve_flight(fixture.server.clone(), flight, chunk, reply)));
    if flags & 1 == 1 && rest.is_empty() {
        // The recorded flight as it was: resumed, its 0-RTT request handed over at once.
        assert_eq!(early.as_deref(), Some(EARLY_REQUEST), "0-RTT not accepted");
    }
}

fn edit(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let mut i = 0;
    while i < script.len() {
        if script[i] == 0xff {
            out.extend_from_slice(&script[i + 1..]);
            break;
        }
        let Some(&[hi, lo, xor]) = script.get(i..i + 3) else {
            break;
        };
        i += 3;
        if out.is_empty() {
            continue;
        }
        let at = usize::from(u16::from_be_bytes([hi, lo])) % out.len();
        match xor {
            0 => out.truncate(at),
            x => out[at] ^= x,
        }
    }
    out
}

thread_local! {
    /// One single-threaded runtime per thread: the corpus replay runs targets on many threads.
    static RUNTIME: tokio::runtime::Runtime = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        // A write to a peer that has gone must fail with EPIPE, as it does in the daemon,
        // whose Rust runtime ignores SIGPIPE; libFuzzer's does not, and a vectored write
        // (a TLS flight) cannot ask for MSG_NOSIGNAL. Handling the signal overrides its
        // default action for the rest of the process.
        let enter = rt.enter();
        let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe());
        drop(enter);
        rt
    };
}

/// Sends `flight` (then end of stream) to an early-data listener's [`ServerTlsStream`];
/// returns the early data `accept` had when it returned, if it did.
async fn serve_flight(
    config: Arc<ServerConfig>,
    flight: Vec<u8>,
    chunk: usize,
    reply: bool,
) -> Option<Vec<u8>> {
    // `ServerTlsStream` takes a `TcpStream`; a socket pair wrapped as one keeps the
    // test off the network. A closed peer is an error, not SIGPIPE (see `RUNTIME`).
    let (server, client) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let as_tcp = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true).expect("non-blocking");
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(s)))
            .expect("register with tokio")
    };
    let (mut server, mut client) = (as_tcp(server), as_tcp(client));
    let peer = async move {
        for piece in flight.chunks(chunk) {
            if client.write_all(piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
    };
    let proxy = async move {
        // As an inbound listener does: the whole ClientHello first, then the handshake.
        let hello = client_hello::read(&mut server, true).await.ok()?;
        // The early-PSK parser sees the same hostile bytes rustls does.
        let offered = client_hello::offered_early_psks(&hello.raw);
        let conn = hello.accepted.into_connection(config).ok()?;
        let held = Default::default();
        let mut tls = ServerTlsStream::accept(server, conn, Clone::clone(&held))
            .await
            .ok()?;
        let early = tls.take_early_data();
        assert!(
            early.len() <= EARLY_DATA_LIMIT as usize,
            "more early data than allowed"
        );
        // The listener picks its config from what that parser sees: it and rustls must agree.
        if !early.is_empty() {
            assert!(
                offered.is_some_and(|ids| !ids.is_empty()),
                "rustls took early data that offered_early_psks did not see"
            );
        }
        if reply {
            let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        }
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        let _ = tls.shutdown().await;
        drop(tls);
        assert_eq!(
            held.get(),
            0,
            "buffers counted after the stream was dropped"
        );
        Some(early)
    };
    tokio::join!(peer, proxy).1
}

/// The early-data listener and a resuming client's recorded first flight.
struct Early {
    /// The daemon's server config for `resumption = "cache"`, `early_data > 0`.
    server: Arc<ServerConfig>,
    /// ClientHello with a PSK for a session in `server`'s cache, then 0-RTT records.
    flight: Vec<u8>,
}

/// A session cache whose `take` leaves the session in place.
///
/// The daemon's cache is single-use (that is its replay protection); keeping the
/// session lets one recorded 0-RTT flight resume on every run.
#[derive(Debug)]
struct ReplayableCache(Arc<ServerSessionMemoryCache>);

impl StoresServerSessions for ReplayableCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A clock stopped when the flight was recorded: rustls accepts 0-RTT only within 60 s
/// of the ticket's age, and a campaign runs longer.
#[derive(Debug)]
struct StoppedClock(UnixTime);

impl rustls::time_provider::TimeProvider for StoppedClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

fn early() -> &'static Early {
    static EARLY: OnceLock<Early> = OnceLock::new();
    EARLY.get_or_init(|| {
        let pki = pki();
        let resumption = ServerResumption::Cache {
            cache: Arc::new(ReplayableCache(ServerSessionMemoryCache::new(64))),
            early_data: EARLY_DATA_LIMIT,
        };
        let mut server = (*pki
            .server
            .server_config(&resumption)
            .expect("server config"))
        .clone();
        server.time_provider = Arc::new(StoppedClock(UnixTime::now()));
        let server = Arc::new(server);
        let client = pki
            .client
            .client_config(&pki.server.svid.id, true, true)
            .expect("client config");
        let full = mtlsd_crypto::test_support::handshake_in_memory(&server, &client);
        assert_eq!(full, Some(rustls::HandshakeKind::Full));

        let name = ServerName::try_from("localhost").expect("server name");
        let mut conn = ClientConnection::new(client, name).expect("client connection");
        conn.early_data()
            .expect("the stored session allows 0-RTT")
            .write_all(EARLY_REQUEST)
            .expect("early data fits");
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight).expect("write to memory");
        }
        Early { server, flight }
    })
}

/// A test PKI: our server and client identities from one CA, and a spare key.
struct Pki {
    server: TlsIdentity,
    client: TlsIdentity,
    /// A key that belongs to no certificate here.
    spare_key: Arc<dyn rustls::sign::SigningKey>,
}

const TRUST_DOMAIN: &str = "fuzz.test";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let year = Duration::from_secs(365 * 86_400);
        let ca = Authority::init(&dir.path().join("ca"), TRUST_DOMAIN, year, year).expect("CA");
        let bundle = load_bundle(&ca.bundle_path()).expect("bundle");
        let identity = |path: &str| {
            let id: SpiffeId = format!("spiffe://{TRUST_DOMAIN}{path}")
                .parse()
                .expect("ID");
            // Shorter than the intermediate's year: the CA refuses leaves that outlive it.
            let issued = ca.issue(&LeafSpec::new(id, year / 2)).expect("issue");
            let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("issued chain");
            let key = software()
                .key_from_pem(issued.key_pem.as_bytes())
                .expect("issued key");
            let origin = Path::new("(in memory)");
            TlsIdentity {
                svid: Svid::from_chain(chain, origin, &KeyRef::File(origin.into()), key)
                    .expect("SVID"),
                bundle: bundle.clone(),
                federated: Default::default(),
                trust_domain: TRUST_DOMAIN.into(),
                provider: software().provider().clone(),
                device: None,
                revocations: Default::default(),
                renew_at: None,
            }
        };
        let spare = rcgen::KeyPair::generate().expect("key pair");
        Pki {
            server: identity("/server"),
            client: identity("/client"),
            spare_key: software()
                .key_from_pem(spare.serialize_pem().as_bytes())
                .expect("spare key"),
        }
    })
}

fn software() -> &'static Software {
    static SOFTWARE: OnceLock<Software> = OnceLock::new();
    SOFTWARE.get_or_init(Software::new)
}

thread_local! {
    /// This thread's scratch files by name, already unlinked.
    static SCRATCH: RefCell<HashMap<&'static str, std::fs::File>> = RefCell::new(HashMap::new());
}

/// A path whose file holds `data`, for loaders that only take paths.
///
/// The file is created 0600 (key loading refuses looser modes) and unlinked at
/// once; it stays reachable as `/proc/self/fd/N` while this thread lives, so a
/// campaign neither leaves files behind nor pays for a create per input.
pub fn scratch_file(name: &'static str, data: &[u8]) -> PathBuf {
    SCRATCH.with(|files| {
        let mut files = files.borrow_mut();
        let file = files.entry(name).or_insert_with(|| {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("mtlsd-fuzz-{}-{n}-{name}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            std::fs::remove_file(&path).expect("unlink scratch file");
            file
        });
        file.set_len(0).expect("truncate scratch file");
        file.rewind().expect("rewind scratch file");
        file.write_all(data).expect("write scratch file");
        PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    })
}
