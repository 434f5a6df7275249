//! The servers under test: mtlsd and the Debian peers (HAProxy, nginx stream, stunnel), each
//! started as our own child process with generated config files, the same certificates and the
//! same mTLS settings, and measured through `/proc` (CPU and RSS of every process in its tree).

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mtlsd_e2e::{CertFiles, Daemon, Pki, identity_toml};

/// Which server a contender runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mtlsd,
    Haproxy,
    Nginx,
    Stunnel,
}

/// One entry of `--compare`: a server and the client's key-exchange offer.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    /// The client offers only X25519 (what OpenSSL 3.0 peers negotiate); otherwise rustls'
    /// default offer, which prefers X25519MLKEM768.
    pub x25519_only: bool,
    /// mtlsd with its audit trail on (`fsync = "interval"`), to price it against mtlsd-x25519.
    pub audit: bool,
    /// A baseline without TLS: the same accept, upstream connect, bytes and close over plain
    /// TCP (`mtlsd-plain`: a permissive listener admitting `unauthenticated`; `haproxy-tcp`).
    pub plain: bool,
}

/// The contenders `--compare auto` runs; `mtlsd-audit` (mtlsd-x25519 with the audit trail
/// on) is accepted by name only.
pub const ALL: &[&str] = &[
    "mtlsd",
    "mtlsd-x25519",
    "haproxy",
    "nginx",
    "stunnel",
    "mtlsd-plain",
    "haproxy-tcp",
];

impl Spec {
    pub fn parse(name: &str) -> Result<Self, String> {
        let (kind, x25519_only) = match name {
            "mtlsd" => (Kind::Mtlsd, false),
            "mtlsd-x25519" | "mtlsd-audit" | "mtlsd-plain" => (Kind::Mtlsd, true),
            // OpenSSL 3.0 has no ML-KEM: the peers negotiate X25519 whatever the client offers;
            // offering only X25519 keeps the client's own work (not measured) the same.
            "haproxy" | "haproxy-tcp" => (Kind::Haproxy, true),
            "nginx" => (Kind::Nginx, true),
            "stunnel" => (Kind::Stunnel, true),
            other => {
                return Err(format!(
                    "unknown contender {other:?}; expected one of {} or mtlsd-audit",
                    ALL.join(", ")
                ));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            kind,
            x25519_only,
            audit: name == "mtlsd-audit",
            plain: matches!(name, "mtlsd-plain" | "haproxy-tcp"),
        })
    }

    /// The program a peer runs, if it is installed (`None` for mtlsd, which is always built).
    pub fn program(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Mtlsd => None,
            Kind::Haproxy => Some("haproxy"),
            Kind::Nginx => Some("nginx"),
            Kind::Stunnel => Some("stunnel4"),
        }
    }

    /// Whether this contender can run here.
    pub fn available(&self) -> bool {
        match self.kind {
            Kind::Nginx => find_program("nginx").is_some() && nginx_stream_module().is_some(),
            _ => self.program().is_none_or(|p| find_program(p).is_some()),
        }
    }

    /// The Debian package that provides this contender.
    pub fn package(&self) -> &'static str {
        match self.kind {
            Kind::Mtlsd => "(built from this workspace)",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx-light libnginx-mod-stream",
            Kind::Stunnel => "stunnel4",
        }
    }

    /// A one-line version string of the server software.
    pub fn software(&self) -> String {
        let (program, arg) = match self.kind {
            Kind::Mtlsd => (mtlsd_e2e::mtlsd_bin(), "--version"),
            Kind::Haproxy => (find_program("haproxy").unwrap_or_default(), "-v"),
            Kind::Nginx => (find_program("nginx").unwrap_or_default(), "-v"),
            Kind::Stunnel => (find_program("stunnel4").unwrap_or_default(), "-version"),
        };
        Command::new(program)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("Initializing"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.name.clone())
    }
}

/// Where the server and this client run: `--server-cpu`, `--client-cpu`, `--no-pin`.
#[derive(clap::Args, Clone, Copy)]
pub struct Pinning {
    /// Core to pin the server to.
    #[arg(long, alias = "daemon-cpu", default_value_t = 0)]
    pub server_cpu: usize,
    /// Core to pin this client (and the upstreams) to.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Leave server and client unpinned.
    #[arg(long)]
    pub no_pin: bool,
}

impl Pinning {
    /// Pins this process to the client core and returns the server's core, or `None` (saying
    /// why unless asked) when unpinned or the machine has too few cores.
    #[allow(clippy::print_stderr)] // a report tool: stderr is its output
    pub fn apply(&self) -> Option<usize> {
        if self.no_pin {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores <= self.server_cpu.max(self.client_cpu) {
            eprintln!(
                "mtlsd-bench: {cores} core(s): cannot pin to cores {} and {}; running unpinned",
                self.server_cpu, self.client_cpu
            );
            return None;
        }
        pin(std::process::id(), self.client_cpu);
        Some(self.server_cpu)
    }
}

/// Finds `name` on PATH or in the sbin directories (HAProxy and nginx live in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Debian builds the stream module as a dynamic module (package libnginx-mod-stream).
fn nginx_stream_module() -> Option<PathBuf> {
    ["/usr/lib/nginx/modules/ngx_stream_module.so"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
}

/// What every contender gets: the same server identity, trust bundle and upstreams.
pub struct Setup<'a> {
    pub pki: &'a Pki,
    pub server: &'a CertFiles,
    /// Echo upstream (handshakes, resumption, latency, idle connections).
    pub echo: SocketAddr,
    /// Counting sink upstream (bulk).
    pub sink: SocketAddr,
    /// Core to pin the server to.
    pub cpu: Option<usize>,
    /// Idle connections the contender must be able to hold.
    pub max_connections: usize,
}

enum Process {
    // Held for its Drop, which kills the daemon.
    Mtlsd(#[allow(dead_code)] Daemon),
    Peer { child: Child, dir: PathBuf },
}

/// A started server process (mtlsd or a peer) and every process it started: measured through
/// `/proc` and stopped when dropped.
pub struct Server {
    root: u32,
    process: Process,
}

/// A started contender, listening on loopback.
pub struct Running {
    pub echo: SocketAddr,
    pub bulk: SocketAddr,
    server: Server,
}

/// `[audit]` for `mtlsd-audit` (a record per admitted and closed connection and per request,
/// synced once a second, in the PKI's directory); nothing otherwise.
fn audit_toml(pki: &Pki, audit: bool) -> String {
    if !audit {
        return String::new();
    }
    let file = pki
        .dir
        .path()
        .join(format!("audit-{}.jsonl", free_port().port()));
    format!(
        "[audit]\nfile = \"{}\"\nfsync = \"interval\"\n",
        display(&file)
    )
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

impl Running {
    /// Starts `spec` and waits (bounded) until both its listeners accept connections.
    pub fn start(spec: &Spec, setup: &Setup<'_>) -> Result<Self, String> {
        if spec.kind == Kind::Mtlsd {
            return Ok(Self::start_mtlsd(setup, spec));
        }
        let (echo, bulk) = (free_port(), free_port());
        let server =
            Server::spawn_peer(spec, setup.pki, setup.cpu, &[echo, bulk], |d, command| {
                match spec.kind {
                    Kind::Haproxy => {
                        let cfg = haproxy_config(setup, d, echo, bulk, spec.plain)?;
                        command.args(["-db", "-f"]).arg(cfg);
                    }
                    Kind::Nginx => {
                        let cfg = nginx_config(setup, d, echo, bulk)?;
                        command
                            .arg("-c")
                            .arg(cfg)
                            .arg("-p")
                            .arg(d)
                            .arg("-e")
                            .arg(d.join("error.log"));
                    }
                    Kind::Stunnel => {
                        command.arg(stunnel_config(setup, d, echo, bulk)?);
                    }
                    Kind::Mtlsd => unreachable!(),
                }
                Ok(())
            })?;
        Ok(Self { echo, bulk, server })
    }

    fn start_mtlsd(setup: &Setup<'_>, spec: &Spec) -> Self {
        let pki = setup.pki;
        // The plain baseline: a first byte that is not TLS makes the peer `unauthenticated`.
        let inbound = |name: &str, forward: SocketAddr| {
            let table = pki.inbound(name, forward, "");
            if spec.plain {
                let at = table.find("allow = [").expect("an allow list");
                let end = at + table[at..].find(']').expect("the allow list's end") + 1;
                format!(
                    "{}mode = \"permissive\"\nallow = [\"unauthenticated\"]{}",
                    &table[..at],
                    &table[end..]
                )
            } else {
                table
            }
        };
        let limits = format!(
            "\n[limits]\nmax_connections = {}\n",
            setup.max_connections.max(10_000)
        );
        let daemon = Daemon::start(
            &(identity_toml(pki, setup.server)
                + &audit_toml(pki, spec.audit)
                + &limits
                + &inbound("echo", setup.echo)
                + &inbound("bulk", setup.sink)),
        );
        if let Some(cpu) = setup.cpu {
            pin(daemon.pid(), cpu);
        }
        Self {
            echo: daemon.addr("echo"),
            bulk: daemon.addr("bulk"),
            server: Server::mtlsd(daemon),
        }
    }

    /// User + system CPU seconds of every process of the contender.
    pub fn cpu_seconds(&self) -> f64 {
        self.server.cpu_seconds()
    }

    /// Resident memory of every process of the contender, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.server.rss_kib()
    }

    /// Stops the contender and every process it started.
    pub fn stop(self) {
        drop(self);
    }
}

impl Server {
    /// A started mtlsd (killed when the server is dropped).
    fn mtlsd(daemon: Daemon) -> Self {
        Self {
            root: daemon.pid(),
            process: Process::Mtlsd(daemon),
        }
    }

    /// Starts the peer `spec` (pinned to `cpu`) with the arguments and config files `configure`
    /// adds, in a fresh directory of its own, and waits (bounded) until every address of
    /// `listening` accepts a TCP connection.
    fn spawn_peer(
        spec: &Spec,
        pki: &Pki,
        cpu: Option<usize>,
        listening: &[SocketAddr],
        configure: impl FnOnce(&Path, &mut Command) -> Result<(), String>,
    ) -> Result<Self, String> {
        // Configs and logs live in the PKI's temporary directory, one fresh directory per start.
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let dir = pki.dir.path().join(format!("{}-{n}", spec.name));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let program = find_program(spec.program().ok_or("mtlsd is not a peer")?)
            .ok_or_else(|| format!("{} is not installed", spec.name))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        configure(&dir, &mut command)?;
        let d = dir.as_path();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(d.join("stdout.log")).map_err(|e| e.to_string())?,
            ))
            .stderr(Stdio::from(
                std::fs::File::create(d.join("stderr.log")).map_err(|e| e.to_string())?,
            ))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        let mut server = Self {
            root: child.id(),
            process: Process::Peer { child, dir },
        };
        server.wait_listening(&spec.name, listening)?;
        Ok(server)
    }

    /// Polls (bounded: 20 s) until every address of `addrs` accepts a TCP connection.
    fn wait_listening(&mut self, name: &str, addrs: &[SocketAddr]) -> Result<(), String> {
        let deadline = Instant::now() + mtlsd_e2e::WAIT;
        for &addr in addrs {
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    break;
                }
                if let Process::Peer { child, dir } = &mut self.process
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!(
                        "{name} exited ({status}) before listening:\n{}",
                        peer_logs(dir)
                    ));
                }
                if Instant::now() > deadline {
                    return Err(format!("{name} is not listening on {addr}"));
                }
                // Retry pacing for an external process that gives no readiness signal.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Every process of the contender (nginx: master and worker).
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.root)
    }

    /// User + system CPU seconds of every process of the contender.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().iter().filter_map(|p| cpu_seconds(*p)).sum()
    }

    /// Resident memory of every process of the contender, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids().iter().filter_map(|p| rss_kib(*p)).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Process::Peer { child, .. } = &mut self.process {
            let pids = process_tree(self.root);
            // TERM first so nginx's master takes its worker down with it.
            let _ = Command::new("kill")
                .args(["-TERM", &self.root.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            for pid in pids {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What every HTTP contender gets: the same server identity, upstream, token issuer and key.
pub struct HttpSetup<'a> {
    pub pki: &'a Pki,
    pub server: &'a CertFiles,
    /// The keep-alive HTTP/1.1 service every allowed request is proxied to.
    pub upstream: SocketAddr,
    /// Core to pin the server to.
    pub cpu: Option<usize>,
    /// The `iss` of the trusted tokens and the audience they must name.
    pub issuer: &'a str,
    pub audience: &'a str,
    /// The issuer's key: as a JWKS file (mtlsd) and as a PEM public key (HAProxy's `jwt_verify`).
    pub jwks: &'a Path,
    pub public_pem: &'a Path,
    /// The tokens' JWS algorithm (`ES256`, `RS256`, ...).
    pub alg: &'a str,
    /// One log line per request: mtlsd's default access line, HAProxy's `option httplog`.
    pub access_log: bool,
}

/// A started HTTP contender. Both listeners refuse `/admin/*` (403) after normalizing the path,
/// strip identity headers a client may not set and tell the service the peer's certificate
/// hash in `X-Forwarded-Client-Cert`; `jwt` also demands a valid bearer token (401 without
/// one), checks its signature, `iss`, `aud` and `exp`, and passes `iss`/`sub` on instead.
pub struct HttpRunning {
    pub plain: SocketAddr,
    pub jwt: SocketAddr,
    pub server: Server,
}

impl HttpRunning {
    /// Starts `spec` (mtlsd or HAProxy) and waits (bounded) until both listeners accept.
    pub fn start(spec: &Spec, setup: &HttpSetup<'_>) -> Result<Self, String> {
        match spec.kind {
            Kind::Mtlsd => Ok(Self::start_mtlsd(setup, spec.audit)),
            Kind::Haproxy => {
                let (plain, jwt) = (free_port(), free_port());
                let server =
                    Server::spawn_peer(spec, setup.pki, setup.cpu, &[plain, jwt], |d, command| {
                        let cfg = haproxy_http_config(setup, d, plain, jwt)?;
                        command.args(["-db", "-f"]).arg(cfg);
                        Ok(())
                    })?;
                Ok(Self { plain, jwt, server })
            }
            _ => Err(format!(
                "{}: the HTTP workload compares mtlsd and haproxy only",
                spec.name
            )),
        }
    }

    fn start_mtlsd(s: &HttpSetup<'_>, audit: bool) -> Self {
        let deny_admin = "[[inbound.http.rules]]\nname = \"no-admin\"\naction = \"deny\"\n\
                          to = [{ paths = [\"/admin/*\"] }]\n";
        let plain = format!("protocol = \"http\"\n{deny_admin}");
        let jwt = format!(
            "protocol = \"http\"\n[[inbound.http.jwt]]\nissuer = \"{iss}\"\naudiences = [\"{aud}\"]\n\
             jwks = \"{jwks}\"\n{deny_admin}[[inbound.http.rules]]\nname = \"token-holders\"\n\
             action = \"allow\"\nfrom = [{{ request_principals = [\"{iss}/*\"] }}]\n",
            iss = s.issuer,
            aud = s.audience,
            jwks = display(s.jwks),
        );
        let audit = audit_toml(s.pki, audit);
        let config = identity_toml(s.pki, s.server)
            + &audit
            + &s.pki.inbound("plain", s.upstream, &plain)
            + &s.pki.inbound("jwt", s.upstream, &jwt);
        let file = mtlsd_e2e::write_config(&config);
        let path = file.path().to_str().expect("a UTF-8 temp path").to_owned();
        // The access line is on by default; HAProxy logs nothing unless told to.
        let filter = if s.access_log {
            "info"
        } else {
            "info,mtlsd::access=off"
        };
        let mut command = Command::new(mtlsd_e2e::mtlsd_bin());
        command.args([
            "--log-format",
            "json",
            "--log",
            filter,
            "run",
            "--config",
            &path,
        ]);
        let daemon = Daemon::spawn_command(command, file);
        daemon.wait_for_log("ready", |l| l["message"] == "ready");
        if let Some(cpu) = s.cpu {
            pin(daemon.pid(), cpu);
        }
        Self {
            plain: daemon.addr("plain"),
            jwt: daemon.addr("jwt"),
            server: Server::mtlsd(daemon),
        }
    }
}

fn peer_logs(dir: &Path) -> String {
    ["stdout.log", "stderr.log", "error.log", "stunnel.log"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pins every thread of `pid` to `cpu`.
pub fn pin(pid: u32, cpu: usize) {
    let ok = Command::new("taskset")
        .args(["-a", "-pc", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "taskset failed: run with --no-pin or install util-linux"
    );
}

/// `root` and all its descendants, from the parent pids in `/proc/*/stat`.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        out.push(pid);
        queue.extend(children.get(&pid).into_iter().flatten());
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (state is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds `pid` (all its threads) has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime and stime are the 14th and 15th fields overall.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, String> {
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// HAProxy 2.6: one thread, TCP mode, TLS 1.3 only, client certificate required and verified.
fn haproxy_config(
    s: &Setup<'_>,
    dir: &Path,
    echo: SocketAddr,
    bulk: SocketAddr,
    plain: bool,
) -> Result<PathBuf, String> {
    // HAProxy takes the chain and the key in one PEM file.
    let chain = std::fs::read_to_string(&s.server.cert).map_err(|e| e.to_string())?;
    let key = std::fs::read_to_string(&s.server.key).map_err(|e| e.to_string())?;
    let pem = write(dir.join("server.pem"), &(chain + &key))?;
    let bind = |addr: SocketAddr| {
        if plain {
            return format!("bind {addr}");
        }
        format!(
            "bind {addr} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3",
            display(&pem),
            display(&s.pki.bundle())
        )
    };
    let text = format!(
        "global\n  nbthread 1\n  maxconn {max}\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n\n\
         listen echo\n  {b1}\n  server up {up1}\n\n\
         listen bulk\n  {b2}\n  server up {up2}\n",
        max = s.max_connections + 1000,
        b1 = bind(echo),
        up1 = s.echo,
        b2 = bind(bulk),
        up2 = s.sink,
    );
    write(dir.join("haproxy.cfg"), &text)
}

/// HAProxy 2.6 `mode http`: one thread, TLS 1.3 only, client certificate required and verified,
/// ALPN h2 and http/1.1, keep-alive on both sides. What mtlsd does per request, in HAProxy's
/// words: path normalization, the `/admin/` ACL, identity headers, and on `jwt` the documented
/// `jwt_verify` recipe (alg, iss, aud, exp, nbf with mtlsd's 60 s skew, then the signature).
fn haproxy_http_config(
    s: &HttpSetup<'_>,
    dir: &Path,
    plain: SocketAddr,
    jwt: SocketAddr,
) -> Result<PathBuf, String> {
    let chain = std::fs::read_to_string(&s.server.cert).map_err(|e| e.to_string())?;
    let key = std::fs::read_to_string(&s.server.key).map_err(|e| e.to_string())?;
    let pem = write(dir.join("server.pem"), &(chain + &key))?;
    let bind = |addr: SocketAddr| {
        format!(
            "bind {addr} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3 alpn h2,http/1.1",
            display(&pem),
            display(&s.pki.bundle())
        )
    };
    // mtlsd normalizes every path before its rules see it, and removes the identity headers.
    let common = "http-request normalize-uri path-merge-slashes\n  \
                  http-request normalize-uri path-strip-dot\n  \
                  http-request normalize-uri path-strip-dotdot full\n  \
                  http-request normalize-uri percent-decode-unreserved\n  \
                  http-request normalize-uri percent-to-uppercase\n  \
                  http-request del-header x-forwarded-client-cert\n  \
                  http-request del-header x-jwt-issuer\n  \
                  http-request del-header x-jwt-subject";
    let xfcc = "http-request set-header x-forwarded-client-cert \
                \"By=haproxy;Hash=%[ssl_c_der,sha2(256),hex,lower]\"";
    let deny_admin = "http-request deny deny_status 403 if { path_beg /admin/ }";
    let token = format!(
        "http-request set-var(txn.bearer) http_auth_bearer\n  \
         http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}\n  \
         http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')\n  \
         http-request set-var(txn.now) date\n  \
         http-request deny deny_status 401 unless {{ var(txn.alg) -m str {alg} }}\n  \
         http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {iss} }}\n  \
         http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {aud} }}\n  \
         http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.exp','int') -m found }}\n  \
         http-request deny deny_status 401 if {{ var(txn.bearer),jwt_payload_query('$.exp','int'),sub(txn.now) -m int lt -60 }}\n  \
         http-request deny deny_status 401 if {{ var(txn.bearer),jwt_payload_query('$.nbf','int'),sub(txn.now) -m int gt 60 }}\n  \
         http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,\"{key}\") -m int 1 }}\n  \
         {deny_admin}\n  \
         http-request set-header x-jwt-issuer %[var(txn.bearer),jwt_payload_query('$.iss')]\n  \
         http-request set-header x-jwt-subject %[var(txn.bearer),jwt_payload_query('$.sub')]\n  \
         http-request del-header authorization",
        alg = s.alg,
        iss = s.issuer,
        aud = s.audience,
        key = display(s.public_pem),
    );
    let (global_log, defaults_log) = if s.access_log {
        (
            "  log stdout format raw local0\n",
            "  log global\n  option httplog\n",
        )
    } else {
        ("", "")
    };
    let text = format!(
        "global\n  nbthread 1\n  maxconn 1000\n  \
         # normalize-uri is experimental in 2.6\n  expose-experimental-directives\n{global_log}\n\
         defaults\n  mode http\n{defaults_log}  timeout connect 5s\n  timeout client 60s\n  \
         timeout server 60s\n  timeout http-keep-alive 60s\n  http-reuse always\n\n\
         backend up\n  server up {up}\n\n\
         frontend plain\n  {b1}\n  {common}\n  {deny_admin}\n  {xfcc}\n  default_backend up\n\n\
         frontend jwt\n  {b2}\n  {common}\n  {token}\n  {xfcc}\n  default_backend up\n",
        up = s.upstream,
        b1 = bind(plain),
        b2 = bind(jwt),
    );
    write(dir.join("haproxy.cfg"), &text)
}

/// nginx 1.22 stream proxy: one worker, TLS 1.3 only, client certificate required and verified.
fn nginx_config(
    s: &Setup<'_>,
    dir: &Path,
    echo: SocketAddr,
    bulk: SocketAddr,
) -> Result<PathBuf, String> {
    let module = nginx_stream_module().ok_or("the nginx stream module is not installed")?;
    let text = format!(
        "load_module {module};\n\
         daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile {files};\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections {conns}; }}\n\
         stream {{\n\
           ssl_protocols TLSv1.3;\n\
           ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
           ssl_client_certificate {bundle};\n  ssl_verify_client on;\n  ssl_verify_depth 3;\n\
           server {{ listen {echo} ssl; proxy_pass {up1}; }}\n\
           server {{ listen {bulk} ssl; proxy_pass {up2}; }}\n\
         }}\n",
        module = display(&module),
        files = 2 * s.max_connections + 1000,
        conns = 2 * s.max_connections + 500,
        dir = display(dir),
        cert = display(&s.server.cert),
        key = display(&s.server.key),
        bundle = display(&s.pki.bundle()),
        up1 = s.echo,
        up2 = s.sink,
    );
    write(dir.join("nginx.conf"), &text)
}

/// stunnel 5.68 (threads): TLS 1.3 only, client certificate required and its chain verified.
fn stunnel_config(
    s: &Setup<'_>,
    dir: &Path,
    echo: SocketAddr,
    bulk: SocketAddr,
) -> Result<PathBuf, String> {
    let service = |name: &str, accept: SocketAddr, connect: SocketAddr| {
        format!(
            "[{name}]\naccept = {accept}\nconnect = {connect}\ncert = {}\nkey = {}\nCAfile = {}\n\
             verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n\n",
            display(&s.server.cert),
            display(&s.server.key),
            display(&s.pki.bundle())
        )
    };
    let text = format!(
        "foreground = yes\npid =\nsyslog = no\noutput = {}/stunnel.log\n\n{}{}",
        display(dir),
        service("echo", echo, s.echo),
        service("bulk", bulk, s.sink)
    );
    write(dir.join("stunnel.conf"), &text)
}
