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
//! dropping the oldest (`mtlsd ticket-keys rotate` does exactly that), on every
//! instance; each instance notices the change within a second, or on SIGHUP.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// How often the key file's metadata is looked at from the handshake path.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Keys kept when they are generated in memory: the current one and the previous one.
const GENERATED_KEYS: usize = 2;

/// Why ticket keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketKeyError {
    /// The key file could not be read, or has loose permissions.
    #[error(transparent)]
    File(#[from] mtlsd_crypto::Error),
    /// A line is not 64 hex digits.
    #[error("{path}:{line}: a ticket key is {} hex digits (32 random bytes)", KEY_LEN * 2)]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The file lists no key.
    #[error("{0}: no ticket key in the file")]
    Empty(PathBuf),
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

struct State {
    /// Newest first; the first encrypts.
    keys: Vec<DerivedKey>,
    /// When the generated keys last rotated.
    rotated_at: Instant,
    /// The key file's (modified, length) when it was read, to notice changes.
    file_stamp: Option<(SystemTime, u64)>,
    checked_at: Instant,
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
                let keys = secrets
                    .iter()
                    .map(|s| DerivedKey::derive(s.as_ref(), &context))
                    .collect();
                (keys, stamp)
            }
        };
        let now = Instant::now();
        Ok(Self {
            source,
            context,
            lifetime,
            rng,
            state: Mutex::new(State {
                keys,
                rotated_at: now,
                file_stamp,
                checked_at: now,
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
        let mut state = self.lock();
        self.reread(&mut state, true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rotate_locked(&self, state: &mut State) {
        state.keys.insert(0, generate(&self.rng, &self.context));
        state.keys.truncate(GENERATED_KEYS);
        state.rotated_at = Instant::now();
    }

    /// Brings the keys up to date: rotates generated keys, notices a changed key file.
    fn refresh(&self, state: &mut State) {
        match &self.source {
            KeySource::Generated { rotation } => {
                if state.rotated_at.elapsed() >= *rotation {
                    self.rotate_locked(state);
                }
            }
            KeySource::File(_) => {
                if state.checked_at.elapsed() >= FILE_CHECK_INTERVAL {
                    self.reread(state, false);
                }
            }
        }
    }

    fn reread(&self, state: &mut State, forced: bool) {
        let KeySource::File(path) = &self.source else {
            return;
        };
        state.checked_at = Instant::now();
        if !forced && stamp(path).is_some() && stamp(path) == state.file_stamp {
            return;
        }
        match read_key_file(path) {
            Ok((secrets, file_stamp)) => {
                let changed = file_stamp != state.file_stamp;
                state.keys = secrets
                    .iter()
                    .map(|s| DerivedKey::derive(s.as_ref(), &self.context))
                    .collect();
                state.file_stamp = file_stamp;
                if changed {
                    info!(file = %path.display(), keys = state.keys.len(), "session ticket keys reloaded");
                }
            }
            Err(e) => {
                // Remember the broken file so the error is logged once, not on every handshake.
                state.file_stamp = stamp(path);
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
        self.refresh(&mut state);
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
        let mut state = self.lock();
        self.refresh(&mut state);
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

fn generate(rng: &SystemRandom, context: &[u8; 32]) -> DerivedKey {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(secret.as_mut_slice())
        .expect("the system RNG is available");
    DerivedKey::derive(secret.as_slice(), context)
}

/// A fresh random key in the key file's format (one line, 64 hex digits).
pub fn new_key_line() -> Zeroizing<String> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(secret.as_mut_slice())
        .expect("the system RNG is available");
    let mut line = Zeroizing::new(String::with_capacity(KEY_LEN * 2));
    for b in secret.iter() {
        line.push_str(&format!("{b:02x}"));
    }
    line
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

type Secrets = Vec<Zeroizing<[u8; KEY_LEN]>>;

fn read_key_file(path: &Path) -> Result<(Secrets, Option<(SystemTime, u64)>), TicketKeyError> {
    let file_stamp = stamp(path);
    let bytes = mtlsd_crypto::read_secret_file(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut secrets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || TicketKeyError::BadKey {
            path: path.to_owned(),
            line: i + 1,
        };
        if line.len() != KEY_LEN * 2 {
            return Err(bad());
        }
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        for (j, out) in secret.iter_mut().enumerate() {
            *out = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).map_err(|_| bad())?;
        }
        secrets.push(secret);
    }
    if secrets.is_empty() {
        return Err(TicketKeyError::Empty(path.to_owned()));
    }
    Ok((secrets, file_stamp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

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
                "{}:2: a ticket key is 64 hex digits (32 random bytes)",
                path.display()
            )
        );
        let path = key_file(dir.path(), &["# nothing"]);
        assert!(matches!(
            Ticketer::new(KeySource::File(path), [0; 32], HOUR),
            Err(TicketKeyError::Empty(_))
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
}
