//! Real SPIRE, the SPIFFE reference implementation, for the Workload API tests: a
//! `spire-server` per trust domain and a `spire-agent` serving the Workload API on a Unix
//! socket, all on 127.0.0.1 in temporary directories.
//!
//! The binaries are SPIRE v1.13.3, pinned as Go tools in `tests/spire/go.mod` and built once
//! into a cache outside the repository by `scripts/spire-tools`. Servers sync entries to
//! agents every second (`cache_reload_interval`, `sync_interval`), so a new entry's SVID
//! reaches the Workload API about 1 s after [`SpireServer::create_entry`]. See
//! `tests/spire/README.md` for the configs, the timings and SPIRE's rotation rule.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{CertFiles, WAIT};

/// The directory holding `spire-server` and `spire-agent`, built by `scripts/spire-tools`
/// once per process; `None` (saying what to install) when Go is missing, a panic then if `CI` is set.
pub fn spire_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(build_spire).clone()
}

#[allow(clippy::print_stderr)] // a skipped test says why on the test's stderr
fn build_spire() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spire-tools");
    // stderr is inherited: the first build takes minutes and says so as it starts.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    match out.status.code() {
        Some(0) => Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())),
        Some(3) => {
            let why = "SPIRE tests need Go >= 1.25.3 to build spire-server and spire-agent \
                       (scripts/spire-tools); install Go from https://go.dev/dl/";
            assert!(std::env::var_os("CI").is_none(), "{why} (CI must run them)");
            eprintln!("SPIRE test skipped: {why}");
            None
        }
        _ => panic!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        ),
    }
}

/// The SPIRE binary `name` (`spire-server` or `spire-agent`); panics if [`spire_bin`] is `None`.
fn program(name: &str) -> PathBuf {
    spire_bin()
        .expect("SPIRE is unavailable: a test calls spire_bin() first and skips on None")
        .join(name)
}

/// Two distinct ports on 127.0.0.1 that were free a moment ago (SPIRE takes no port 0).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

/// Runs `command`, panicking with both its outputs (SPIRE's CLI reports failures on stdout too).
fn run(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Spawns `program` with `args`, its stdout and stderr appended to `log`.
fn spawn_logged(program: &Path, args: &[&str], log: &Path) -> Child {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
}

/// Polls `<program> healthcheck -socketPath <socket>` (bounded by [`WAIT`]) while `child` runs.
fn wait_healthy(child: &mut Child, program: &Path, socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("exited ({status})"));
        }
        let healthy = Command::new(program)
            .args(["healthcheck", "-socketPath"])
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if healthy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not healthy within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills `child` and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The JSON lines of a SPIRE log file (`log_format = "json"`); other lines as `{"raw": line}`.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| serde_json::json!({ "raw": l })))
        .collect()
}

/// HCL duration in whole seconds.
fn hcl_secs(d: Duration) -> String {
    format!("\"{}s\"", d.as_secs())
}

/// Settings for [`SpireServer::start`]; `Default` suits most tests.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `ca_ttl`: the lifetime of the server's self-signed X.509 CA (default 24 h).
    pub ca_ttl: Duration,
    /// `default_x509_svid_ttl`: SVID lifetime for entries that set none (default 1 h).
    pub default_x509_svid_ttl: Duration,
    /// `refresh_hint` in bundles from the federation bundle endpoint (default 5 min, SPIRE's).
    pub bundle_refresh_hint: Duration,
}

impl Default for ServerOpts {
    fn default() -> Self {
        Self {
            ca_ttl: Duration::from_secs(24 * 3600),
            default_x509_svid_ttl: Duration::from_secs(3600),
            bundle_refresh_hint: Duration::from_secs(300),
        }
    }
}

/// A running `spire-server` for one trust domain: join-token node attestation, a sqlite
/// datastore and disk keys in a temporary directory, a federation bundle endpoint.
pub struct SpireServer {
    child: Child,
    dir: tempfile::TempDir,
    trust_domain: String,
    /// The port agents dial on 127.0.0.1 (`bind_port`).
    pub port: u16,
    /// The federation bundle endpoint's port on 127.0.0.1 (`https_spiffe` profile).
    pub bundle_port: u16,
}

impl SpireServer {
    /// Starts a server for `trust_domain` on free loopback ports; waits (bounded by [`WAIT`]) until healthy.
    pub fn start(trust_domain: &str, opts: &ServerOpts) -> Self {
        let bin = program("spire-server");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (config, log) = (
            dir.path().join("server.conf"),
            dir.path().join("server.log"),
        );
        // The ports are picked before SPIRE binds them: another process may take one
        // meanwhile, and then SPIRE exits at once, so that is tried again with others.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (port, bundle_port) = free_ports();
            std::fs::write(
                &config,
                server_hcl(dir.path(), trust_domain, port, bundle_port, opts),
            )
            .unwrap();
            let mut child = spawn_logged(&bin, &["run", "-config", config.to_str().unwrap()], &log);
            let socket = dir.path().join("server.sock");
            let outcome = wait_healthy(&mut child, &bin, &socket).and_then(|()| {
                for p in [port, bundle_port] {
                    let addr = SocketAddr::from(([127, 0, 0, 1], p));
                    TcpStream::connect_timeout(&addr, WAIT)
                        .map_err(|e| format!("nothing listens on {addr}: {e}"))?;
                }
                Ok(())
            });
            match outcome {
                Ok(()) => {
                    return Self {
                        child,
                        dir,
                        trust_domain: trust_domain.to_owned(),
                        port,
                        bundle_port,
                    };
                }
                Err(e) => {
                    kill(&mut child);
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 3 && text.contains("address already in use") {
                        continue;
                    }
                    panic!("spire-server for {trust_domain} {e}; its log:\n{text}");
                }
            }
        }
    }

    /// The trust domain's name (`example.org`, without `spiffe://`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `spiffe://<trust domain><path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// The server's temporary directory (config, `server.log`, `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's JSON log lines so far.
    pub fn logs(&self) -> Vec<Value> {
        log_lines(&self.dir.path().join("server.log"))
    }

    /// Runs `spire-server <command> -socketPath <admin socket> <flags>`; returns its stdout.
    pub fn cli(&self, command: &[&str], flags: &[&str]) -> String {
        run(Command::new(program("spire-server"))
            .args(command)
            .arg("-socketPath")
            .arg(self.dir.path().join("server.sock"))
            .args(flags))
    }

    /// A fresh single-use join token whose agent also gets the alias `spiffe_id`, the parent for its entries.
    pub fn join_token(&self, spiffe_id: &str) -> String {
        let out = self.cli(
            &["token", "generate"],
            &["-spiffeID", spiffe_id, "-output", "json"],
        );
        let json: Value = serde_json::from_str(&out).unwrap();
        json["value"].as_str().expect("a token").to_owned()
    }

    /// Registers `spiffe_id` for workloads with `selector` (`unix:uid:0`) under agent alias
    /// `parent`, with `x509_ttl_secs` (0: the server default) and federated bundles of
    /// `federates_with` (trust domain names, whose bundles the server must hold); returns the entry id.
    pub fn create_entry(
        &self,
        parent: &str,
        spiffe_id: &str,
        selector: &str,
        x509_ttl_secs: u32,
        federates_with: &[&str],
    ) -> String {
        let ttl = x509_ttl_secs.to_string();
        let mut flags = vec![
            "-parentID",
            parent,
            "-spiffeID",
            spiffe_id,
            "-selector",
            selector,
            "-x509SVIDTTL",
            &ttl,
            "-output",
            "json",
        ];
        for td in federates_with {
            flags.extend(["-federatesWith", td]);
        }
        let out = self.cli(&["entry", "create"], &flags);
        // With `-output json` the CLI exits 0 even when the entry was refused: the status says so.
        let json: Value = serde_json::from_str(&out).unwrap();
        let result = &json["results"][0];
        assert_eq!(result["status"]["code"], 0, "entry create refused: {out}");
        result["entry"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no entry id in {out}"))
            .to_owned()
    }

    /// Deletes the entry `id`; agents drop its SVID at their next sync (about a second).
    pub fn delete_entry(&self, id: &str) {
        self.cli(&["entry", "delete"], &["-entryID", id]);
    }

    /// The trust domain's X.509 bundle as PEM (what agents bootstrap with).
    pub fn bundle_pem(&self) -> String {
        self.cli(&["bundle", "show"], &[])
    }

    /// The trust domain's bundle as a SPIFFE bundle (JWKS), for another server or mtlsd.
    pub fn bundle_spiffe(&self) -> String {
        self.cli(&["bundle", "show"], &["-format", "spiffe"])
    }

    /// Stores `bundle` (SPIFFE format) as the federated bundle of `trust_domain`, statically.
    pub fn set_federated_bundle(&self, trust_domain: &str, bundle: &str) {
        let path = self.dir.path().join(format!("bundle-{trust_domain}.json"));
        std::fs::write(&path, bundle).unwrap();
        self.cli(
            &["bundle", "set"],
            &[
                "-format",
                "spiffe",
                "-id",
                &format!("spiffe://{trust_domain}"),
                "-path",
                path.to_str().unwrap(),
            ],
        );
    }

    /// `https://127.0.0.1:<bundle_port>`: this server's SPIFFE bundle endpoint.
    pub fn bundle_endpoint_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.bundle_port)
    }

    /// `spiffe://<trust domain>/spire/server`: the ID the bundle endpoint authenticates as.
    pub fn server_id(&self) -> String {
        self.id("/spire/server")
    }

    /// Federates with `other`: its current bundle, bootstrapped now, then kept fresh from its
    /// bundle endpoint (`https_spiffe`). Call it both ways for mutual federation.
    pub fn federate_with(&self, other: &SpireServer) {
        let path = self
            .dir
            .path()
            .join(format!("bundle-{}.json", other.trust_domain));
        std::fs::write(&path, other.bundle_spiffe()).unwrap();
        self.cli(
            &["federation", "create"],
            &[
                "-trustDomain",
                &other.trust_domain,
                "-bundleEndpointURL",
                &other.bundle_endpoint_url(),
                "-bundleEndpointProfile",
                "https_spiffe",
                "-endpointSpiffeID",
                &other.server_id(),
                "-trustDomainBundlePath",
                path.to_str().unwrap(),
                "-trustDomainBundleFormat",
                "spiffe",
            ],
        );
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The server's HCL config: short entry-cache reloads, sqlite and keys under `dir/data`.
fn server_hcl(dir: &Path, td: &str, port: u16, bundle_port: u16, opts: &ServerOpts) -> String {
    let dir = dir.display();
    format!(
        r#"server {{
    bind_address = "127.0.0.1"
    bind_port = {port}
    socket_path = "{dir}/server.sock"
    trust_domain = "{td}"
    data_dir = "{dir}/data"
    log_level = "INFO"
    log_format = "json"
    ca_ttl = {ca_ttl}
    default_x509_svid_ttl = {svid_ttl}
    agent_ttl = "1h"
    experimental {{
        cache_reload_interval = "1s"
    }}
    federation {{
        bundle_endpoint {{
            address = "127.0.0.1"
            port = {bundle_port}
            refresh_hint = {refresh_hint}
            profile "https_spiffe" {{}}
        }}
    }}
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{dir}/data/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{dir}/data/keys.json"
        }}
    }}
}}
health_checks {{
    listener_enabled = false
}}
"#,
        ca_ttl = hcl_secs(opts.ca_ttl),
        svid_ttl = hcl_secs(opts.default_x509_svid_ttl),
        refresh_hint = hcl_secs(opts.bundle_refresh_hint),
    )
}

/// A running `spire-agent` attested to a [`SpireServer`] by join token, serving the Workload
/// API to workloads it identifies by Unix uid/gid (`unix` attestor).
pub struct SpireAgent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    join_token: String,
    /// The Workload API socket (`socket_path`); the same across [`Self::restart`].
    pub socket: PathBuf,
}

impl SpireAgent {
    /// Starts an agent attesting to `server` with `join_token`, trusting its current bundle;
    /// waits (bounded by [`WAIT`]) until its Workload API is healthy.
    pub fn start(server: &SpireServer, join_token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let bundle = dir.path().join("bootstrap-bundle.pem");
        std::fs::write(&bundle, server.bundle_pem()).unwrap();
        std::fs::write(
            dir.path().join("agent.conf"),
            agent_hcl(dir.path(), server.trust_domain(), server.port),
        )
        .unwrap();
        let mut agent = Self {
            child: None,
            socket: dir.path().join("workload.sock"),
            dir,
            join_token: join_token.to_owned(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let bin = program("spire-agent");
        let config = self.dir.path().join("agent.conf");
        let log = self.dir.path().join("agent.log");
        // Once attested, the agent reuses the SVID and key in data/ and ignores the token.
        let mut child = spawn_logged(
            &bin,
            &[
                "run",
                "-config",
                config.to_str().unwrap(),
                "-joinToken",
                &self.join_token,
            ],
            &log,
        );
        if let Err(e) = wait_healthy(&mut child, &bin, &self.socket) {
            kill(&mut child);
            panic!(
                "spire-agent {e}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.child = Some(child);
    }

    /// The agent's temporary directory (config, `agent.log`, `data/`, the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's JSON log lines so far, across restarts ("Renewing X509-SVID" marks a rotation).
    pub fn logs(&self) -> Vec<Value> {
        log_lines(&self.dir.path().join("agent.log"))
    }

    /// Stops the agent with SIGTERM (SIGKILL after [`WAIT`]); it removes its socket on the way out.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut child);
    }

    /// Stops the agent if it runs and starts it again on the same data and socket; it serves
    /// again within a fraction of a second, without re-attesting (its SVID and key are on disk).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill(child);
        }
    }
}

/// The agent's HCL config: entry syncs every second, keys on disk so a restart needs no new token.
fn agent_hcl(dir: &Path, td: &str, server_port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"agent {{
    data_dir = "{dir}/data"
    log_level = "INFO"
    log_format = "json"
    server_address = "127.0.0.1"
    server_port = {server_port}
    socket_path = "{dir}/workload.sock"
    trust_bundle_path = "{dir}/bootstrap-bundle.pem"
    trust_domain = "{td}"
    experimental {{
        sync_interval = "1s"
    }}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{dir}/data"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
health_checks {{
    listener_enabled = false
}}
"#
    )
}

/// One `spire-agent api fetch x509 -output json` as this process: the response (`svids`
/// with base64 DER, `federated_bundles`), or the error text, e.g. `rpc error: code =
/// PermissionDenied desc = no identity issued` for a workload no entry matches.
pub fn fetch_x509(socket: &Path) -> Result<Value, String> {
    let out = Command::new(program("spire-agent"))
        .args(["api", "fetch", "x509", "-output", "json", "-timeout", "5s"])
        .arg("-socketPath")
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Writes this process's SVIDs as PEM into `dir` (`svid.0.pem`, `svid.0.key`, `bundle.0.pem`,
/// `federated_bundle.0.<n>.pem`), as `spire-agent api fetch x509 -write` does.
pub fn write_x509(socket: &Path, dir: &Path) {
    run(Command::new(program("spire-agent"))
        .args(["api", "fetch", "x509", "-timeout", "5s", "-socketPath"])
        .arg(socket)
        .arg("-write")
        .arg(dir));
}

/// Polls the Workload API (bounded by [`WAIT`]; about 1 s after `create_entry` here) until
/// this process gets `spiffe_id`; returns that fetch's response.
pub fn wait_for_svid(socket: &Path, spiffe_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match fetch_x509(socket) {
            Ok(response) => {
                let svids = response["svids"].as_array().cloned().unwrap_or_default();
                if svids.iter().any(|s| s["spiffe_id"] == spiffe_id) {
                    return response;
                }
                format!(
                    "SVIDs for {:?}",
                    svids.iter().map(|s| &s["spiffe_id"]).collect::<Vec<_>>()
                )
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "the Workload API at {} served no {spiffe_id} within {WAIT:?}; last: {last}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `unix:uid:` selector that matches this process (and every daemon it starts).
pub fn uid_selector() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    format!("unix:uid:{uid}")
}

/// The X.509-SVID for `id` among those `spire-agent api fetch x509 -write` wrote to `dir`.
pub fn svid_files(dir: &Path, id: &str) -> CertFiles {
    for i in 0..8 {
        let cert = dir.join(format!("svid.{i}.pem"));
        let Ok(pem) = std::fs::read(&cert) else { break };
        let leaf = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        if mtlsd::identity::spiffe_id_of(&leaf).is_ok_and(|got| got.as_str() == id) {
            return CertFiles {
                cert,
                key: dir.join(format!("svid.{i}.key")),
            };
        }
    }
    panic!("no SVID for {id} in {}", dir.display());
}

/// Whether a Workload API `fetch_x509` error says no entry matches the caller.
pub fn is_no_identity(error: &str) -> bool {
    error.contains("PermissionDenied") && error.contains("no identity issued")
}
