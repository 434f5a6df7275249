//! A SoftHSM2 token fixture for tests in this crate and the daemon's end-to-end tests.
//!
//! Enabled by the `test-support` feature. SoftHSM2 reads its configuration from
//! `SOFTHSM2_CONF` once, when the module is initialised, so there are two ways in:
//!
//! * [`SoftHsm::process`]: one token directory for the whole test binary, with
//!   `SOFTHSM2_CONF` set for this process; use it when the test loads the module
//!   in-process ([`SoftHsm::backend`]). Tokens are created with [`SoftHsm::token`].
//! * [`SoftHsm::new`]: a private token directory whose config is only handed to
//!   child processes ([`SoftHsm::env`]), for tests that run the `mtlsd` binary.
//!
//! Tests call [`SoftHsm::available`] first: it returns `false` (skip) only when
//! the softhsm2 package is missing *and* `CI` is unset; in CI a missing package
//! is a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::pkcs11::{Pin, Pkcs11Backend, Pkcs11Config};

/// The user PIN of every fixture token.
pub const USER_PIN: &str = "4711-user";
/// The security officer PIN of every fixture token.
pub const SO_PIN: &str = "0815-so";

/// Where Debian and other distributions install the SoftHSM2 module.
const MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module, if installed.
pub fn module_path() -> Option<PathBuf> {
    MODULE_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A SoftHSM2 token directory with its own `softhsm2.conf`.
#[derive(Debug)]
pub struct SoftHsm {
    dir: tempfile::TempDir,
    module: PathBuf,
    conf: PathBuf,
    /// Whether this process's SoftHSM2 reads this fixture (see [`SoftHsm::process`]).
    in_process: bool,
}

/// Serialises token creation: `softhsm2-util --free` picks the first free slot.
static TOKEN_LOCK: Mutex<()> = Mutex::new(());

impl SoftHsm {
    /// Whether tests can run; panics in CI (`CI` set) when softhsm2 is missing.
    pub fn available() -> bool {
        let have = module_path().is_some() && util_present();
        if !have {
            assert!(
                std::env::var_os("CI").is_none(),
                "softhsm2 is not installed but CI is set: install softhsm2 (scripts/test does)"
            );
            tracing::warn!("softhsm2 not installed; skipping PKCS#11 test");
        }
        have
    }

    /// Creates a fresh token directory and config without touching this process's environment.
    pub fn new() -> Self {
        let module = module_path().expect("softhsm2 module (check SoftHsm::available first)");
        let dir = tempfile::Builder::new()
            .prefix("mtlsd-softhsm-")
            .tempdir()
            .expect("temp dir for SoftHSM2 tokens");
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        Self {
            dir,
            module,
            conf,
            in_process: false,
        }
    }

    /// The fixture shared by this test binary, with `SOFTHSM2_CONF` pointing at it for the process.
    ///
    /// Call it before anything loads the SoftHSM2 module in this process.
    pub fn process() -> &'static Self {
        static SHARED: OnceLock<SoftHsm> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut hsm = Self::new();
            set_conf_env(&hsm.conf);
            hsm.in_process = true;
            hsm
        })
    }

    /// The SoftHSM2 module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The `softhsm2.conf` to hand to child processes as `SOFTHSM2_CONF`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The fixture's directory (tokens live in `tokens/` below it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Environment for a child process that should see these tokens.
    pub fn env(&self) -> [(&'static str, PathBuf); 1] {
        [("SOFTHSM2_CONF", self.conf.clone())]
    }

    /// Initialises a token labelled `label` with [`USER_PIN`] and [`SO_PIN`]; returns the label.
    ///
    /// Token labels must be unique within the fixture. A SoftHSM2 module loaded
    /// in a process does not see tokens another process creates afterwards, so
    /// the [`process`](Self::process) fixture initialises tokens through the
    /// loaded module (`C_InitToken`, `C_InitPIN`) and a [`new`](Self::new)
    /// fixture uses `softhsm2-util --init-token --free`.
    pub fn token(&self, label: &str) -> String {
        let _guard = TOKEN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_process {
            init_token_in_process(&self.module, label);
            return label.to_owned();
        }
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        label.to_owned()
    }

    /// The fixture tokens' user PIN.
    pub fn pin(&self) -> Pin {
        Pin::new(USER_PIN)
    }

    /// A PKCS#11 backend over this fixture's module with `pool_size` sessions per token.
    pub fn backend(&self, pool_size: usize) -> Pkcs11Backend {
        let mut config = Pkcs11Config::new(&self.module, self.pin());
        config.pool_size = pool_size;
        Pkcs11Backend::new(config).expect("load SoftHSM2 module")
    }

    /// Writes the user PIN to a mode-0600 file in the fixture dir (for `pin-source=` and PIN-file configs).
    pub fn pin_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("user.pin");
        fs::write(&path, USER_PIN).expect("write PIN file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod PIN file");
        path
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

/// `softhsm2-util --init-token --free`, through the module already loaded in this process.
fn init_token_in_process(module: &Path, label: &str) {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let ctx = crate::pkcs11::module(module).expect("load SoftHSM2 module");
    // SoftHSM2 always keeps one uninitialised token and adds another after each C_InitToken.
    let slot = ctx
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|t| !t.token_initialized()))
        .expect("a free SoftHSM2 slot");
    let so_pin = AuthPin::from(SO_PIN);
    ctx.init_token(slot, &so_pin, label)
        .unwrap_or_else(|e| panic!("C_InitToken {label}: {e}"));
    let session = ctx.open_rw_session(slot).expect("C_OpenSession");
    session
        .login(UserType::So, Some(&so_pin))
        .expect("C_Login as SO");
    session
        .init_pin(&AuthPin::from(USER_PIN))
        .expect("C_InitPIN");
    session.logout().expect("C_Logout");
}

fn util_present() -> bool {
    Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Points SoftHSM2 at the fixture for this whole process.
#[allow(unsafe_code)]
fn set_conf_env(conf: &Path) {
    // SAFETY: `set_var` races with concurrent `getenv` calls in other threads.
    // This runs once, inside `OnceLock::get_or_init`, in test binaries only,
    // before the SoftHSM2 module (the reader of this variable) is loaded; the
    // test harness's own threads do not read the environment while tests run.
    unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
}

/// Runs one TLS handshake between in-memory connections (no sockets), including the session
/// tickets that follow it, and returns the kind of handshake the client saw.
pub fn handshake_in_memory(
    server: &std::sync::Arc<rustls::ServerConfig>,
    client: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("valid name");
    let mut c = rustls::ClientConnection::new(client.clone(), name).expect("client connection");
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server connection");
    let mut buf = Vec::with_capacity(8192);
    let mut server_to_client = |c: &mut rustls::ClientConnection,
                                s: &mut rustls::ServerConnection| {
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server writes");
        }
        c.read_tls(&mut buf.as_slice()).expect("client reads");
        c.process_new_packets().expect("client handshake");
    };
    let mut flight = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        flight.clear();
        while c.wants_write() {
            c.write_tls(&mut flight).expect("client writes");
        }
        s.read_tls(&mut flight.as_slice()).expect("server reads");
        s.process_new_packets().expect("server handshake");
        server_to_client(&mut c, &mut s);
    }
    // Session tickets follow the handshake; the client must read them to resume next time.
    server_to_client(&mut c, &mut s);
    c.handshake_kind()
}
