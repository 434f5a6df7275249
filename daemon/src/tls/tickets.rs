//! TLS session-ticket keys: rotated on a schedule, or read from a file several instances share.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ AES-256-GCM(session state)`, with
//! the key name as associated data. Keys are never used as written: each one is
//! expanded with HKDF-SHA256 over the *trust configuration* (trust domain and
//! the bundle's certificates), so a listener, instance or reload with another
//! trust configuration derives other keys and cannot decrypt the ticket. The
//! peer then simply does a full handshake.
//!
//! Key file format (`resumption.ticket_key_file`): one key per line, 64 hex
//! digits (32 random bytes); `#` starts a comment. The first key encrypts new
//! tickets, every listed key decrypts. Rotate by prepending a new key and
//! dropping the oldest ([`rotate_key_file`], behind `mtlsd ticket-keys rotate`),
//! on every instance. The file is parsed as bytes, never as text, and only off the
//! handshake path: a watcher task re-reads it when it changes (within a second)
//! and on SIGHUP; handshakes only ever see keys already loaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use rustls_pki_types::CertificateDer;
use tracing::{error, info};
use zeroize::Zeroizing;

/// Bytes of a key as written in the key file.
pub const KEY_LEN: usize = 32;
/// Most keys a key file may list: rotation keeps two or three, so more is a broken file.
pub const MAX_KEYS: usize = 64;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// How often the watcher looks at the key file's metadata.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Keys kept when they are generated in memory: the current one and the previous one.
const GENERATED_KEYS: usize = 2;
const FILE_HEADER: &str = "# mtlsd session ticket keys: the first encrypts, all decrypt\n";

/// What is wrong with the contents of a ticket key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// A line is not exactly 64 hex digits.
    #[error("line {line}: a ticket key is {} hex digits (32 random bytes)", KEY_LEN * 2)]
    BadKey {
        /// 1-based line number.
        line: usize,
    },
    /// A key is all zeroes: not a random key.
    #[error("line {line}: an all-zero ticket key is not a random key")]
    ZeroKey {
        /// 1-based line number.
        line: usize,
    },
    /// The file lists more keys than any rotation keeps.
    #[error("more than {MAX_KEYS} ticket keys; rotation keeps a few, drop the oldest")]
    TooMany,
    /// The file lists no key.
    #[error("no ticket key in the file")]
    Empty,
}

/// Why ticket keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketKeyError {
    /// The key file could not be read, or has loose permissions.
    #[error(transparent)]
    File(#[from] mtlsd_crypto::Error),
    /// The key file was read but its contents are unusable.
    #[error("{}: {cause}", path.display())]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        cause: KeyFileError,
    },
    /// The rotated key file could not be written.
    #[error("writing {}: {cause}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The OS error (in the message, so not also a `source()`: see ARCHITECTURE.md, Errors).
        cause: std::io::Error,
    },
}

/// Where ticket keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Random keys, replaced every `rotation`; the previous key still decrypts.
    Generated {
        /// How long a key encrypts new tickets.
        rotation: Duration,
    },
    /// Keys read from a file shared with other instances.
    File(PathBuf),
}

/// A ticket key after derivation: its public name and its AEAD key.
struct DerivedKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

struct OkmLen(usize);

impl KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl DerivedKey {
    fn derive(secret: &[u8], context: &[u8; 32]) -> Self {
        let prk = Salt::new(HKDF_SHA256, b"mtlsd session ticket key v1").extract(secret);
        let mut okm = Zeroizing::new([0u8; NAME_LEN + KEY_LEN]);
        prk.expand(&[context.as_slice()], OkmLen(okm.len()))
            .and_then(|okm_| okm_.fill(okm.as_mut_slice()))
            .expect("HKDF-SHA256 can expand 48 bytes");
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&okm[..NAME_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, &okm[NAME_LEN..]).expect("32-byte AES-256 key");
        Self {
            name,
            aead: LessSafeKey::new(key),
        }
    }
}

/// The key file's (modified, length) when it was read, to notice changes.
type Stamp = Option<(SystemTime, u64)>;

struct State {
    /// Newest first; the first encrypts.
    keys: Vec<DerivedKey>,
    /// When the generated keys last rotated.
    rotated_at: Instant,
    file_stamp: Stamp,
}

/// Encrypts and decrypts session tickets for one trust configuration.
pub struct Ticketer {
    source: KeySource,
    context: [u8; 32],
    lifetime: Duration,
    rng: SystemRandom,
    state: Mutex<State>,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("source", &self.source)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// A digest of what decides whether a peer is trusted: tickets are bound to it.
pub fn trust_context(trust_domain: &str, bundle: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut input = Vec::new();
    for part in std::iter::once(trust_domain.as_bytes()).chain(bundle.iter().map(|c| c.as_ref())) {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

impl Ticketer {
    /// Keys from `source`, bound to `context` (see [`trust_context`]); tickets say they live `lifetime`.
    pub fn new(
        source: KeySource,
        context: [u8; 32],
        lifetime: Duration,
    ) -> Result<Self, TicketKeyError> {
        let rng = SystemRandom::new();
        let (keys, file_stamp) = match &source {
            KeySource::Generated { .. } => (vec![generate(&rng, &context)], None),
            KeySource::File(path) => {
                let (secrets, stamp) = read_key_file(path)?;
                (derive_all(&secrets, &context), stamp)
            }
        };
        Ok(Self {
            source,
            context,
            lifetime,
            rng,
            state: Mutex::new(State {
                keys,
                rotated_at: Instant::now(),
                file_stamp,
            }),
        })
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Replaces the encrypting key now; the previous one keeps decrypting until the next rotation.
    pub fn rotate(&self) {
        let mut state = self.lock();
        self.rotate_locked(&mut state);
    }

    /// Re-reads the key file (SIGHUP); a broken file keeps the old keys and is logged.
    pub fn reload(&self) {
        self.reread(true);
    }

    /// Re-reads a shared key file whenever it changes, until the ticketer is dropped.
    ///
    /// Handshakes never touch the file: they use the keys this task loaded last.
    /// Generated keys need no watcher.
    pub fn watch(self: &Arc<Self>) {
        if !matches!(self.source, KeySource::File(_)) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(ticketer) = weak.upgrade() else {
                    return;
                };
                // A stat and a small read; on the blocking pool so a slow disk stalls no handshake.
                let reread = tokio::task::spawn_blocking(move || ticketer.reread(false));
                if let Err(e) = reread.await {
                    // A bug while reading must not end the watching: the keys in use stay.
                    error!(error = %e, "reading the session ticket key file failed; keys stay as they are");
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rotate_locked(&self, state: &mut State) {
        state.keys.insert(0, generate(&self.rng, &self.context));
        state.keys.truncate(GENERATED_KEYS);
        state.rotated_at = Instant::now();
    }

    /// Reads and derives outside the lock, then swaps the keys in: handshakes never wait on I/O.
    fn reread(&self, forced: bool) {
        let KeySource::File(path) = &self.source else {
            return;
        };
        let current = stamp(path);
        if !forced && current.is_some() && current == self.lock().file_stamp {
            return;
        }
        match read_key_file(path) {
            Ok((secrets, file_stamp)) => {
                let keys = derive_all(&secrets, &self.context);
                let count = keys.len();
                let mut state = self.lock();
                let changed = file_stamp != state.file_stamp;
                state.keys = keys;
                state.file_stamp = file_stamp;
                if changed {
                    info!(file = %path.display(), keys = count, "session ticket keys reloaded");
                }
            }
            Err(e) => {
                // Remember the broken file so the error is logged once, not every second.
                self.lock().file_stamp = current;
                error!(error = %e, "session ticket key file unusable; keeping the previous keys");
            }
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut state = self.lock();
        if let KeySource::Generated { rotation } = &self.source
            && state.rotated_at.elapsed() >= *rotation
        {
            self.rotate_locked(&mut state);
        }
        let key = state.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let state = self.lock();
        let key = state.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(key.name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn derive_all(secrets: &[Zeroizing<[u8; KEY_LEN]>], context: &[u8; 32]) -> Vec<DerivedKey> {
    secrets
        .iter()
        .map(|s| DerivedKey::derive(s.as_ref(), context))
        .collect()
}

fn random_secret() -> Zeroizing<[u8; KEY_LEN]> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(secret.as_mut_slice())
        .expect("the system RNG is available");
    secret
}

fn generate(rng: &SystemRandom, context: &[u8; 32]) -> DerivedKey {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(secret.as_mut_slice())
        .expect("the system RNG is available");
    DerivedKey::derive(secret.as_slice(), context)
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Ticket key secrets, newest first.
pub type Secrets = Vec<Zeroizing<[u8; KEY_LEN]>>;

/// Parses a key file's bytes: one key of 64 hex digits per line, `#` comments, blank lines.
///
/// Works on bytes so that no input (invalid UTF-8, a multi-byte character, a sign)
/// can make it panic or read a key that is not 64 hex digits.
pub fn parse_key_file(bytes: &[u8]) -> Result<Secrets, KeyFileError> {
    let mut secrets = Secrets::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.split(|&b| b == b'#').next().unwrap_or_default();
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if secrets.len() == MAX_KEYS {
            return Err(KeyFileError::TooMany);
        }
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(line, secret.as_mut_slice())
            .map_err(|_| KeyFileError::BadKey { line: i + 1 })?;
        if secret.iter().all(|&b| b == 0) {
            return Err(KeyFileError::ZeroKey { line: i + 1 });
        }
        secrets.push(secret);
    }
    if secrets.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(secrets)
}

/// Reads and parses a key file, refusing loose permissions; returns the keys, newest first.
pub fn load_key_file(path: &Path) -> Result<Secrets, TicketKeyError> {
    read_key_file(path).map(|(secrets, _)| secrets)
}

fn read_key_file(path: &Path) -> Result<(Secrets, Stamp), TicketKeyError> {
    let file_stamp = stamp(path);
    let bytes = mtlsd_crypto::read_secret_file(path)?;
    let secrets = parse_key_file(&bytes).map_err(|cause| TicketKeyError::Invalid {
        path: path.to_owned(),
        cause,
    })?;
    Ok((secrets, file_stamp))
}

/// Puts a fresh random key first and keeps the newest `keep` keys in all (creating the file
/// when it does not exist); returns how many keys the file now lists.
///
/// A file that does not parse is refused, not rewritten: rotating would spread its
/// broken line to every instance.
pub fn rotate_key_file(path: &Path, keep: usize) -> Result<usize, TicketKeyError> {
    let old = match load_key_file(path) {
        Ok(secrets) => secrets,
        Err(TicketKeyError::File(mtlsd_crypto::Error::Io { cause, .. }))
            if cause.kind() == std::io::ErrorKind::NotFound =>
        {
            Secrets::new()
        }
        Err(e) => return Err(e),
    };
    let keys: Secrets = std::iter::once(random_secret())
        .chain(old)
        .take(keep.clamp(1, MAX_KEYS))
        .collect();
    let mut out = Zeroizing::new(String::from(FILE_HEADER));
    for key in &keys {
        out.push_str(&Zeroizing::new(hex::encode(key.as_slice())));
        out.push('\n');
    }
    crate::files::write_atomic(path, out.as_bytes(), 0o600).map_err(|source| {
        TicketKeyError::Write {
            path: path.to_owned(),
            cause: source,
        }
    })?;
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn new_key_line() -> String {
        hex::encode(random_secret().as_slice())
    }

    fn generated() -> Ticketer {
        Ticketer::new(KeySource::Generated { rotation: HOUR }, [7; 32], HOUR).unwrap()
    }

    fn key_file(dir: &Path, lines: &[&str]) -> PathBuf {
        let path = dir.join("ticket.keys");
        std::fs::write(&path, lines.join("\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_ticket_decrypts_to_what_was_sealed_and_tampering_is_detected() {
        let t = generated();
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(t.decrypt(&bad), None);
        assert_eq!(t.decrypt(&ticket[..20]), None);
    }

    #[test]
    fn the_previous_key_decrypts_until_the_second_rotation() {
        let t = generated();
        let ticket = t.encrypt(b"s").unwrap();
        t.rotate();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"s", "one rotation old");
        t.rotate();
        assert_eq!(t.decrypt(&ticket), None, "two rotations old");
    }

    #[test]
    fn another_trust_configuration_cannot_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key_line();
        let path = key_file(dir.path(), &[&key]);
        let a = Ticketer::new(KeySource::File(path.clone()), [1; 32], HOUR).unwrap();
        let same = Ticketer::new(KeySource::File(path.clone()), [1; 32], HOUR).unwrap();
        let other = Ticketer::new(KeySource::File(path), [2; 32], HOUR).unwrap();
        let ticket = a.encrypt(b"s").unwrap();
        assert_eq!(same.decrypt(&ticket).unwrap(), b"s");
        assert_eq!(other.decrypt(&ticket), None);
    }

    #[test]
    fn trust_context_depends_on_domain_and_every_bundle_certificate() {
        let a = CertificateDer::from(vec![1, 2, 3]);
        let b = CertificateDer::from(vec![4, 5]);
        let one = std::slice::from_ref(&a);
        let base = trust_context("example.org", one);
        assert_eq!(base, trust_context("example.org", one));
        assert_ne!(base, trust_context("example.com", one));
        assert_ne!(base, trust_context("example.org", &[a, b]));
    }

    #[test]
    fn a_rewritten_key_file_is_picked_up_on_reload_and_old_keys_keep_decrypting_while_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (new_key_line(), new_key_line());
        let path = key_file(dir.path(), &[&k1]);
        let t = Ticketer::new(KeySource::File(path.clone()), [3; 32], HOUR).unwrap();
        let old = t.encrypt(b"old").unwrap();

        key_file(dir.path(), &["# rotated", &k2, &k1]);
        t.reload();
        let new = t.encrypt(b"new").unwrap();
        assert_ne!(old[..NAME_LEN], new[..NAME_LEN], "the first key encrypts");
        assert_eq!(t.decrypt(&old).unwrap(), b"old");

        key_file(dir.path(), &[&k2]);
        t.reload();
        assert_eq!(t.decrypt(&old), None);
        assert_eq!(t.decrypt(&new).unwrap(), b"new");
    }

    #[test]
    fn a_broken_key_file_keeps_the_previous_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), &[&new_key_line()]);
        let t = Ticketer::new(KeySource::File(path.clone()), [3; 32], HOUR).unwrap();
        let ticket = t.encrypt(b"s").unwrap();
        key_file(dir.path(), &["not hex"]);
        t.reload();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"s");
    }

    #[test]
    fn bad_key_files_are_refused_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), &["# comment", "abcd"]);
        let err = Ticketer::new(KeySource::File(path.clone()), [0; 32], HOUR).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: line 2: a ticket key is 64 hex digits (32 random bytes)",
                path.display()
            )
        );
        let path = key_file(dir.path(), &["# nothing"]);
        assert!(matches!(
            Ticketer::new(KeySource::File(path), [0; 32], HOUR),
            Err(TicketKeyError::Invalid {
                cause: KeyFileError::Empty,
                ..
            })
        ));
        let path = key_file(dir.path(), &[&new_key_line()]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Ticketer::new(KeySource::File(path), [0; 32], HOUR),
            Err(TicketKeyError::File(
                mtlsd_crypto::Error::LoosePermissions { .. }
            ))
        ));
    }

    /// 61 hex digits, then `middle`, then one more digit: 64 bytes when `middle` is 2 bytes.
    fn straddling(middle: &[u8]) -> Vec<u8> {
        let mut line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc".to_vec();
        line.extend_from_slice(middle);
        line.push(b'd');
        line
    }

    #[test]
    fn hostile_key_lines_are_refused_without_panicking() {
        let two_byte_char = "é".as_bytes();
        assert_eq!(straddling(two_byte_char).len(), 64);
        for (bytes, why) in [
            (
                straddling(two_byte_char),
                "a multi-byte character across a digit pair",
            ),
            (straddling(&[0xff, b'0']), "a byte that is not UTF-8"),
            (
                "+0".repeat(32).into_bytes(),
                "signs accepted by from_str_radix",
            ),
            ("-0".repeat(32).into_bytes(), "a minus sign"),
            (" 0".repeat(32).into_bytes(), "inner spaces"),
            (vec![0u8; 64], "NUL bytes"),
            ("0".repeat(66).into_bytes(), "too long"),
        ] {
            assert_eq!(
                parse_key_file(&bytes).map(|k| k.len()),
                Err(KeyFileError::BadKey { line: 1 }),
                "{why}"
            );
        }
        let mut second_line = new_key_line().into_bytes();
        second_line.push(b'\n');
        second_line.extend(straddling(two_byte_char));
        assert_eq!(
            parse_key_file(&second_line).map(|k| k.len()),
            Err(KeyFileError::BadKey { line: 2 })
        );
    }

    #[test]
    fn an_all_zero_key_and_too_many_keys_are_refused() {
        assert_eq!(
            parse_key_file("0".repeat(64).as_bytes()).map(|k| k.len()),
            Err(KeyFileError::ZeroKey { line: 1 })
        );
        let lines = |n: usize| (0..n).map(|_| new_key_line() + "\n").collect::<String>();
        assert_eq!(
            parse_key_file(lines(MAX_KEYS).as_bytes()).unwrap().len(),
            MAX_KEYS
        );
        assert_eq!(
            parse_key_file(lines(MAX_KEYS + 1).as_bytes()).map(|k| k.len()),
            Err(KeyFileError::TooMany)
        );
    }

    #[test]
    fn keys_parse_with_comments_crlf_and_either_case() {
        let key = new_key_line();
        let text = format!("# keys\r\n{}  # newest\r\n\r\n{key}\n", key.to_uppercase());
        let secrets = parse_key_file(text.as_bytes()).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0].as_slice(), secrets[1].as_slice());
        assert_eq!(hex::encode(secrets[1].as_slice()), key);
    }

    #[test]
    fn a_hostile_file_on_reload_keeps_serving_the_previous_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), &[&new_key_line()]);
        let t = Ticketer::new(KeySource::File(path.clone()), [3; 32], HOUR).unwrap();
        let ticket = t.encrypt(b"s").unwrap();
        std::fs::write(&path, straddling("é".as_bytes())).unwrap();
        t.reload();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"s");
        assert!(t.encrypt(b"t").is_some());
    }

    #[test]
    fn rotation_puts_a_new_key_first_keeps_the_newest_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.keys");
        assert_eq!(rotate_key_file(&path, 3).unwrap(), 1, "created");
        let first = load_key_file(&path).unwrap();
        assert_eq!(rotate_key_file(&path, 3).unwrap(), 2);
        assert_eq!(rotate_key_file(&path, 3).unwrap(), 3);
        assert_eq!(rotate_key_file(&path, 3).unwrap(), 3);
        let now = load_key_file(&path).unwrap();
        assert_ne!(now[0].as_slice(), now[1].as_slice());
        assert!(
            now.iter().all(|k| k.as_slice() != first[0].as_slice()),
            "the oldest is dropped"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut corrupt = std::fs::read(&path).unwrap();
        corrupt.extend(straddling("é".as_bytes()));
        std::fs::write(&path, &corrupt).unwrap();
        let err = rotate_key_file(&path, 3).unwrap_err();
        assert!(
            matches!(
                err,
                TicketKeyError::Invalid {
                    cause: KeyFileError::BadKey { line: 5 },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            corrupt,
            "a refused rotation writes nothing"
        );
    }

    #[tokio::test]
    async fn the_watcher_picks_up_a_rewritten_file_off_the_handshake_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), &[&new_key_line()]);
        let t = Arc::new(Ticketer::new(KeySource::File(path.clone()), [3; 32], HOUR).unwrap());
        let old = t.encrypt(b"s").unwrap();
        t.watch();
        // A different length, so the stamp differs even within one mtime tick.
        key_file(dir.path(), &["# replaced", &new_key_line()]);
        let mut waited = 0;
        while t.decrypt(&old).is_some() {
            assert!(waited < 100, "the watcher never reloaded the file");
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
    }
}
