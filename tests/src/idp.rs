//! A real OpenID provider for the JWT tests: `tests/idp/idp.mjs`, the OpenID-certified
//! `oidc-provider` package on Node.js, issuing `client_credentials` access tokens as JWTs.
//!
//! Tokens come from that provider and a real client (curl), never from our own code. See
//! `tests/idp/README.md` for its clients, their claims and its flags.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{WAIT, run_ok};

/// The fixture's directory, `tests/idp`.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// The version of `package` that `dir/package.json` pins.
fn pinned_version(dir: &Path, package: &str) -> String {
    let manifest = std::fs::read_to_string(dir.join("package.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    manifest["dependencies"][package]
        .as_str()
        .unwrap_or_else(|| panic!("{}/package.json pins {package}", dir.display()))
        .to_owned()
}

/// The version of `package` installed under `dir/node_modules`, if any.
fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("node_modules/{package}/package.json"))).ok()?;
    let manifest: Value = serde_json::from_str(&text).ok()?;
    Some(manifest["version"].as_str()?.to_owned())
}

/// Installs the IdP fixture's npm packages (`npm ci`) unless the pinned ones are there already.
pub fn npm_ready() {
    npm_ready_in(&idp_dir(), "oidc-provider");
}

/// Installs the npm packages of the fixture in `dir` (`npm ci`) unless `package` is already
/// there at its pinned version.
///
/// Once per process and directory; across processes (nextest), each installs into its own
/// staging directory and renames it into place, so concurrent installs cannot corrupt each other.
pub fn npm_ready_in(dir: &Path, package: &str) {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    // A failed install poisons nothing for the next test: it simply tries again.
    let mut done = DONE.lock().unwrap_or_else(PoisonError::into_inner);
    if done.iter().any(|d| d == dir) {
        return;
    }
    let pinned = pinned_version(dir, package);
    if installed_version(dir, package).as_deref() != Some(pinned.as_str()) {
        // Beside tests/idp, not inside it: npm ci under another package's directory
        // checks the wrong lock file. Same filesystem, so the rename below is atomic.
        let staging = tempfile::Builder::new()
            .prefix(".npm-")
            .tempdir_in(dir.parent().unwrap())
            .unwrap();
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(dir.join(file), staging.path().join(file)).unwrap();
        }
        run_ok(
            Command::new("npm")
                .args([
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(staging.path()),
        );
        let target = dir.join("node_modules");
        if target.exists() && installed_version(dir, package).as_deref() != Some(pinned.as_str()) {
            // A stale install: move it aside, into the staging directory that is removed below.
            let _ = std::fs::rename(&target, staging.path().join("stale"));
        }
        if let Err(e) = std::fs::rename(staging.path().join("node_modules"), &target) {
            // Another process may have won the race with the same install.
            assert_eq!(
                installed_version(dir, package).as_deref(),
                Some(pinned.as_str()),
                "move node_modules into {}: {e}",
                dir.display()
            );
        }
    }
    done.push(dir.to_owned());
}

/// `node tests/idp/idp.mjs` with the fixture's packages installed.
fn idp_command() -> Command {
    npm_ready();
    let mut command = Command::new("node");
    command.arg(idp_dir().join("idp.mjs"));
    command
}

/// Writes a fresh private JWKS to `path` with one key per `(alg, kid)` (alg: RS256, PS256, ES256 or EdDSA).
pub fn generate_keys(path: &Path, keys: &[(&str, &str)]) {
    let mut command = idp_command();
    command.arg("--generate").arg(path);
    for (alg, kid) in keys {
        command.arg("--key").arg(format!("{alg}:{kid}"));
    }
    run_ok(&mut command);
}

/// Rotates the JWKS at `path`: a fresh `(alg, kid)` key goes first (the one a restarted IdP signs with), the old keys stay after it.
pub fn rotate_keys(path: &Path, alg: &str, kid: &str) {
    run_ok(
        idp_command()
            .arg("--generate")
            .arg(path)
            .arg("--key")
            .arg(format!("{alg}:{kid}"))
            .arg("--keep")
            .arg(path),
    );
}

/// The public half of the private JWKS at `path`, as the IdP's `/jwks` serves it (for inline JWKS configs).
pub fn public_jwks(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let mut jwks: Value = serde_json::from_str(&text).unwrap();
    for key in jwks["keys"].as_array_mut().expect("a JWKS").iter_mut() {
        let key = key.as_object_mut().unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            key.remove(private);
        }
    }
    jwks
}

/// A running `idp.mjs`: an OpenID provider on `http://127.0.0.1:<port>`.
pub struct Idp {
    child: Child,
    /// Held open: the IdP exits when it closes, even if this process dies without dropping us.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
    /// `http://127.0.0.1:<port>`, the `iss` of every token.
    pub issuer: String,
    /// The port it is bound to.
    pub port: u16,
    /// Its JWKS endpoint, `<issuer>/jwks`.
    pub jwks_uri: String,
    /// Its token endpoint, `<issuer>/token`.
    pub token_endpoint: String,
}

impl Idp {
    /// Starts the IdP signing with `keys` on `port` (0: any free port); access tokens live `ttl_secs`.
    pub fn start(keys: &Path, port: u16, ttl_secs: u64) -> Self {
        let (port, ttl) = (port.to_string(), ttl_secs.to_string());
        Self::spawn([
            OsStr::new("--keys"),
            keys.as_os_str(),
            OsStr::new("--port"),
            OsStr::new(&port),
            OsStr::new("--ttl"),
            OsStr::new(&ttl),
        ])
    }

    /// Starts `idp.mjs` with `args` (`--keys`, `--port`, `--ttl`, `--short-ttl`, `--alg`) and waits (bounded by [`WAIT`]) for its ready line.
    pub fn spawn<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = idp_command()
            .args(args)
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(line) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the IdP never blocks on a full pipe.
            lines.for_each(drop);
        });
        let line = rx.recv_timeout(WAIT);
        let ready: Option<Value> = line
            .as_ref()
            .ok()
            .and_then(|l| serde_json::from_str(l).ok());
        let Some(ready) = ready.filter(|r| r["ready"] == true) else {
            let _ = child.kill();
            let _ = child.wait();
            // The process is gone, so its stderr is closed and the reader ends.
            let _ = stderr_reader.join();
            panic!(
                "the IdP exited or was not ready within {WAIT:?} (first stdout line: {line:?}); stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        let text = |field: &str| ready[field].as_str().unwrap().to_owned();
        Self {
            issuer: text("issuer"),
            port: u16::try_from(ready["port"].as_u64().unwrap()).unwrap(),
            jwks_uri: text("jwks_uri"),
            token_endpoint: text("token_endpoint"),
            child,
            _stdin: stdin,
            stderr,
        }
    }

    /// What the IdP has written on stderr so far (oidc-provider's warnings, server errors).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A JWT access token (scope `api:read`) for `client_id` with `aud` = `audience` (a `urn:mtlsd:` URN).
    pub fn token(&self, client_id: &str, secret: &str, audience: &str) -> String {
        let (status, body) = self.token_request(
            client_id,
            secret,
            &[("resource", audience), ("scope", "api:read")],
        );
        assert_eq!(status, 200, "token request failed: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// A `client_credentials` request authenticated with HTTP Basic, with `form` added; returns (status, JSON body).
    pub fn token_request(
        &self,
        client_id: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "-u"])
            .arg(format!("{client_id}:{secret}"))
            .args(["--data-urlencode", "grant_type=client_credentials"]);
        for (name, value) in form {
            curl.arg("--data-urlencode").arg(format!("{name}={value}"));
        }
        let text = run_ok(curl.arg(&self.token_endpoint));
        let (body, status) = text.rsplit_once('\n').unwrap();
        let body = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("token endpoint answered non-JSON ({e}): {body}"));
        (status.parse().unwrap(), body)
    }

    /// Stops the IdP (SIGTERM, then SIGKILL after [`WAIT`]) and waits for it, freeing its port for a restart.
    pub fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decoded (unverified) header and payload of a compact JWS, for assertions on `kid`, `aud`, claims.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut json = |what: &str| -> Value {
        let part = parts
            .next()
            .unwrap_or_else(|| panic!("no {what} in {token:?}"));
        let bytes = base64url_decode(part).unwrap_or_else(|| panic!("bad base64url {what}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
    };
    let header = json("header");
    let payload = json("payload");
    (header, payload)
}

/// Decodes unpadded base64url (RFC 4648 §5); `None` on any other character.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
