//! Test harness for end-to-end tests: the real `mtlsd` binary, a test PKI, upstreams and TLS clients.
//!
//! Tests synchronise on the daemon's JSON log events ("ready", "connection refused",
//! ...) instead of sleeping, and every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mtlsd::ca::{Authority, IssuedSvid, LeafSpec};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub mod http;
pub mod idp;
pub mod in_memory;
pub mod journald;
pub mod spire;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The `mtlsd` binary cargo built next to this test.
pub fn mtlsd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MTLSD_BIN") {
        return bin.into();
    }
    // Test executables live in target/<profile>/deps, other binaries in target/<profile>.
    let exe = std::env::current_exe().expect("executable path");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("mtlsd"))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| {
            panic!(
                "no mtlsd binary near {}: run `cargo build -p mtlsd` first",
                exe.display()
            )
        })
}

/// A key and certificate chain on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM key, mode 0600.
    pub key: PathBuf,
}

/// A trust domain's CA in a temporary directory, issuing test certificates.
pub struct Pki {
    /// The directory holding the CA and everything issued.
    pub dir: tempfile::TempDir,
    /// The CA itself.
    pub ca: Authority,
}

impl Pki {
    /// A fresh CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(365 * 86_400);
        let ca = Authority::init(&dir.path().join("ca"), trust_domain, year, year).unwrap();
        Self { dir, ca }
    }

    /// The bundle peers of this trust domain trust.
    pub fn bundle(&self) -> PathBuf {
        self.ca.bundle_path()
    }

    /// A one-hour SVID for `id` (also valid for DNS `localhost`, for curl).
    pub fn issue(&self, id: &str) -> CertFiles {
        self.issue_for(id, Duration::from_secs(3600))
    }

    /// Issues an SVID for `id` valid for `ttl` from now.
    pub fn issue_for(&self, id: &str, ttl: Duration) -> CertFiles {
        let mut spec = LeafSpec::new(id.parse().unwrap(), ttl);
        spec.dns_names.push("localhost".into());
        self.write(&id.replace(['/', ':'], "_"), &self.ca.issue(&spec).unwrap())
    }

    /// `spiffe://<trust domain><path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.ca.trust_domain())
    }

    /// A rustls client presenting a fresh SVID for `path` in this trust domain.
    pub fn client(&self, path: &str) -> Arc<ClientConfig> {
        client_config(&self.bundle(), Some(&self.issue(&self.id(path))))
    }

    /// An `[[inbound]]` table admitting the whole trust domain; `extra` adds keys to it.
    pub fn inbound(&self, name: &str, forward: impl std::fmt::Display, extra: &str) -> String {
        format!(
            "\n[[inbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\
             allow = [\"spiffe://{}\"]\n{extra}\n",
            self.ca.trust_domain()
        )
    }

    /// Starts a daemon whose identity is `<trust domain>/web`, serving the TOML `listeners`.
    pub fn start_daemon(&self, listeners: &str) -> Daemon {
        Daemon::start(&(identity_toml(self, &self.issue(&self.id("/web"))) + listeners))
    }

    /// Writes an issued SVID under `name` in the PKI directory.
    pub fn write(&self, name: &str, issued: &IssuedSvid) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        issued.write(&files.cert, &files.key).unwrap();
        files
    }
}

/// Runs `command` (bounded by the program's own timeouts), asserts it succeeded, returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl https://localhost:<port>/` with `client`'s certificate, trusting `bundle`; returns the body.
pub fn curl_https(addr: SocketAddr, bundle: &Path, client: &CertFiles) -> String {
    run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(bundle)
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key)
            .arg(format!("https://localhost:{}/", addr.port())),
    )
}

/// Runs `openssl s_client` against `addr` with `client`'s certificate and chain, trusting
/// `bundle`, feeding it `stdin`; `args` adds options (`-quiet`, `-sess_out F`, ...).
pub fn s_client(
    addr: SocketAddr,
    bundle: &Path,
    client: &CertFiles,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(bundle)
        .arg("-cert")
        .arg(&client.cert)
        // s_client sends only the leaf from -cert; the intermediate comes from -cert_chain.
        .arg("-cert_chain")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// GETs (or with `body`, PUTs) `path` on the admin endpoint with curl; returns (status, body).
pub fn admin_request(addr: SocketAddr, path: &str, body: Option<&str>) -> (u16, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        curl.args(["-X", "PUT", "--data-binary", body]);
    }
    let out = curl
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exposed) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Writes `toml` to a temporary `.toml` file that lives as long as the returned handle.
pub fn write_config(toml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    file
}

/// Writes the `[identity]` table for `svid`.
pub fn identity_toml(pki: &Pki, svid: &CertFiles) -> String {
    format!(
        "[identity]\ntrust_domain = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n",
        pki.ca.trust_domain(),
        svid.cert.display(),
        svid.key.display(),
        pki.bundle().display()
    )
}

struct LogState {
    lines: Vec<Value>,
    closed: bool,
}

/// A running `mtlsd run` process whose JSON logs the test can wait on.
pub struct Daemon {
    child: Child,
    logs: Arc<(Mutex<LogState>, Condvar)>,
    _config: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `mtlsd run` with `config` and waits until it logs "ready".
    pub fn start(config: &str) -> Self {
        let file = write_config(config);
        let path = file.path().to_str().unwrap().to_owned();
        Self::spawn(&["run", "--config", &path], file)
    }

    /// Starts `mtlsd` with `args` (the config file is kept alive with the process).
    pub fn spawn(args: &[&str], config: tempfile::NamedTempFile) -> Self {
        Self::spawn_with_env(args, &[], config)
    }

    /// Like [`Self::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        config: tempfile::NamedTempFile,
    ) -> Self {
        let mut command = Command::new(mtlsd_bin());
        command
            .args(["--log-format", "json", "--log", "info"])
            .args(args)
            .envs(env.iter().copied());
        let daemon = Self::spawn_command(command, config);
        daemon.wait_for_log("ready", |l| l["message"] == "ready");
        daemon
    }

    /// Runs `command` (which must end up running mtlsd with JSON logs on stderr) without
    /// waiting for anything; for launchers such as `systemd-socket-activate`.
    pub fn spawn_command(mut command: Command, config: tempfile::NamedTempFile) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mtlsd");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new((
            Mutex::new(LogState {
                lines: Vec::new(),
                closed: false,
            }),
            Condvar::new(),
        ));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.0.lock().unwrap().lines.push(value);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        Self {
            child,
            logs,
            _config: config,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address listener `name` is bound to (its latest "listening" line, so reloads count).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.logs_where(|l| l["message"] == "listening" && l["listener"] == name)
            .last()
            .unwrap_or_else(|| panic!("no listener {name:?} has logged \"listening\""))["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The admin endpoint's address, from its "admin endpoint listening" line.
    pub fn admin_addr(&self) -> SocketAddr {
        self.wait_for_log("admin endpoint", |l| {
            l["message"] == "admin endpoint listening"
        })["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The config file the daemon was started with; rewrite it, then [`Self::reload`].
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// Sends SIGHUP and waits for the `n`th reload outcome line; returns it.
    ///
    /// `n` counts reloads since start (1 for the first), so a test that reloads
    /// several times waits for each one's own line.
    pub fn reload(&self, n: usize) -> Value {
        self.signal("HUP");
        self.wait_for_logs("reload outcome", n, |l| {
            l["message"] == "configuration reloaded"
                || l["message"] == "reload rejected; the previous configuration keeps serving"
        })
        .remove(n - 1)
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Every log line so far that satisfies `pred`.
    pub fn logs_where(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.logs
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| pred(l))
            .cloned()
            .collect()
    }

    /// Waits (bounded by [`WAIT`]) for the first log line satisfying `pred`.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_logs(what, 1, pred).remove(0)
    }

    /// Waits (bounded by [`WAIT`]) until `n` log lines satisfy `pred`.
    pub fn wait_for_logs(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let (lock, cvar) = &*self.logs;
        let mut state = lock.lock().unwrap();
        loop {
            let found: Vec<Value> = state.lines.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || state.closed {
                let all: Vec<String> = state.lines.iter().map(Value::to_string).collect();
                panic!(
                    "no {n} log lines for {what:?} (daemon exited: {}); logs:\n{}",
                    state.closed,
                    all.join("\n")
                );
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits for one "connection refused" line with `reason` and returns it.
    pub fn refused(&self, reason: &str) -> Value {
        self.wait_for_log(reason, |l| {
            l["message"] == "connection refused" && l["reason"] == reason
        })
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits (bounded by [`WAIT`]) for the process to exit; its stderr closing is the signal.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let (lock, cvar) = &*self.logs;
        let mut state = lock.lock().unwrap();
        while !state.closed {
            let now = Instant::now();
            assert!(now < deadline, "mtlsd did not exit");
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
        drop(state);
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local TCP service that counts the connections it accepted.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many connections it accepted.
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Starts an upstream on loopback that runs `serve` for each connection.
pub async fn upstream<F, Fut>(serve: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    Upstream { addr, accepted }
}

/// An upstream that echoes every byte and closes when the peer does.
pub async fn echo_upstream() -> Upstream {
    upstream(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An upstream that reads an HTTP request head and answers `200 OK` with `body`, then closes.
pub async fn http_upstream(body: &'static str) -> Upstream {
    upstream(move |mut s| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A plain rustls client trusting `bundle` (checking the DNS name `localhost`), presenting `cert` if given.
pub fn client_config(bundle: &Path, cert: Option<&CertFiles>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots_of(bundle));
    Arc::new(match cert {
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

/// A rustls client trusting `bundle` that presents `chain` (leaf first, as given, even if
/// altered) with `key`.
pub fn client_config_presenting(
    bundle: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: &Path,
) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots_of(bundle))
            .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
    )
}

fn roots_of(bundle: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// Connects and completes the client side of a TLS handshake with `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // Without this, a small write right after the handshake waits out a delayed ACK (~40 ms).
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Writes `msg` and reads back exactly as many bytes (for echo upstreams).
pub async fn echo_round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(back)
}

/// Waits (in bounded steps) until the wall clock is past `when`: for tests whose condition is
/// a certificate expiring, where the passing of time is what is under test.
pub async fn wait_until(when: std::time::SystemTime) {
    for _ in 0..600 {
        if std::time::SystemTime::now() > when {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the clock did not reach {when:?} within a minute");
}

/// Waits for the daemon to refuse a resumed session whose certificate expired, and checks it said so.
pub fn refused_as_expired_resumption(daemon: &Daemon) {
    let refused = daemon.refused("cert_expired");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("resumed session: certificate"),
        "{refused}"
    );
}

/// Whether a connection that the daemon should refuse yields no application data.
///
/// With TLS 1.3 the client's handshake can finish before the server has judged
/// its certificate, so refusal shows up on the first read: an alert or EOF.
pub async fn refused_on_read(mut stream: TlsStream<TcpStream>) -> bool {
    let _ = stream.write_all(b"ping").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("connection neither answered nor closed"),
    }
}
