//! The embedded default: `mtlsd run` with no config serves a self-contained demo.
//!
//! It creates a development trust domain in the state directory, issues SVIDs
//! for the daemon and for curl, and starts
//!
//! ```text
//! curl ──▶ outbound 127.0.0.1:15001 ──mTLS──▶ inbound 127.0.0.1:15443 ──PROXY v2──▶ demo service (Unix socket)
//! ```
//!
//! The demo service answers every HTTP request with the caller's verified
//! SPIFFE ID, which it reads from the PROXY protocol header, never from a certificate.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::ca::{Authority, CaError, LeafSpec};
use crate::config::{
    AdminConfig, Config, CryptoConfig, IdentityConfig, IdentitySource, InboundConfig, Limits, Mode,
    OutboundConfig, ResumptionConfig, SessionResumption, Upstream,
};
use crate::identity::SpiffeId;
use crate::policy::{Policy, Principal};
use crate::proxy::proxy_protocol::TLV_SPIFFE_ID;

/// The demo's trust domain.
pub const TRUST_DOMAIN: &str = "mtlsd.demo";
/// The demo's preferred ports: inbound mTLS, outbound plaintext, admin.
pub const DEFAULT_PORTS: DemoPorts = DemoPorts {
    inbound: 15443,
    outbound: 15001,
    admin: 15900,
};
const SVID_TTL: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The state directory: `$STATE_DIRECTORY` under systemd, else `$XDG_STATE_HOME/mtlsd` or `~/.local/state/mtlsd`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("mtlsd")
}

/// The loopback ports the demo listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoPorts {
    /// The inbound listener (mTLS).
    pub inbound: u16,
    /// The outbound listener (plaintext from local clients).
    pub outbound: u16,
    /// The admin endpoint.
    pub admin: u16,
}

impl DemoPorts {
    /// The default ports, each replaced by a free one when something else holds it.
    ///
    /// Checked before the demo creates anything, so a busy port never leaves a
    /// half-made demo behind; the ports chosen are logged and kept for reloads.
    pub fn choose() -> std::io::Result<Self> {
        let pick = |preferred: u16| -> std::io::Result<u16> {
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, preferred)).is_ok() {
                return Ok(preferred);
            }
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            warn!(
                preferred,
                port, "demo port in use; using a free one instead"
            );
            Ok(port)
        };
        Ok(Self {
            inbound: pick(DEFAULT_PORTS.inbound)?,
            outbound: pick(DEFAULT_PORTS.outbound)?,
            admin: pick(DEFAULT_PORTS.admin)?,
        })
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

/// Files the demo wrote, for the instructions it prints.
#[derive(Debug)]
pub struct DemoFiles {
    /// Trust bundle for curl's `--cacert`.
    pub bundle: PathBuf,
    /// curl's client certificate.
    pub client_cert: PathBuf,
    /// curl's client key.
    pub client_key: PathBuf,
    /// The demo service's socket.
    pub upstream_socket: PathBuf,
    /// Where the demo listens.
    pub ports: DemoPorts,
}

/// Creates (or reuses) the demo CA, issues fresh SVIDs and returns the demo's config.
pub fn prepare(state_dir: &Path, ports: DemoPorts) -> Result<(Config, DemoFiles), CaError> {
    let ca_dir = state_dir.join("ca");
    let ca = if ca_dir.join("root.pem").exists() {
        Authority::open(&ca_dir)?
    } else {
        info!(dir = %ca_dir.display(), trust_domain = TRUST_DOMAIN, "creating the demo trust domain");
        Authority::init(&ca_dir, TRUST_DOMAIN, 10 * YEAR, YEAR)?
    };
    let id = |path: &str| -> SpiffeId {
        format!("spiffe://{TRUST_DOMAIN}{path}")
            .parse()
            .expect("valid demo ID")
    };
    let daemon_id = id("/demo/mtlsd");
    let curl_id = id("/demo/curl");

    let files = DemoFiles {
        bundle: ca.bundle_path(),
        client_cert: state_dir.join("curl.pem"),
        client_key: state_dir.join("curl.key"),
        upstream_socket: state_dir.join("demo-service.sock"),
        ports,
    };
    ca.issue_to_files(
        &LeafSpec::new(curl_id.clone(), SVID_TTL),
        &files.client_cert,
        &files.client_key,
    )?;

    let config = Config {
        // The daemon issues its own SVID from the CA at start and renews it at half-life.
        identity: IdentityConfig {
            trust_domain: TRUST_DOMAIN.into(),
            source: IdentitySource::Ca {
                dir: ca_dir.clone(),
                id: daemon_id.clone(),
                ttl: SVID_TTL,
                dns: vec!["localhost".into()],
            },
            bundle: Some(files.bundle.clone()),
            crl: Some(ca.crl_path()),
            federated: Vec::new(),
        },
        crypto: CryptoConfig::default(),
        inbound: vec![InboundConfig {
            name: "demo-inbound".into(),
            listen: DemoPorts::addr(ports.inbound),
            forward: Upstream::Unix(files.upstream_socket.clone()),
            mode: Mode::Strict,
            policy: Policy {
                allow: vec![
                    Principal::Exact(daemon_id.clone()),
                    Principal::Exact(curl_id),
                ],
                deny: vec![],
            },
            proxy_protocol: true,
            resumption: SessionResumption::Tickets,
            early_data: 0,
            limits: Limits::default(),
            protocol: crate::config::Protocol::Tcp,
            http: None,
        }],
        outbound: vec![OutboundConfig {
            name: "demo-outbound".into(),
            listen: DemoPorts::addr(ports.outbound),
            connect: DemoPorts::addr(ports.inbound).to_string(),
            server_id: daemon_id,
            resumption: true,
            early_data: false,
            limits: Limits::default(),
        }],
        shutdown_grace: Duration::from_secs(5),
        admin: Some(AdminConfig {
            listen: DemoPorts::addr(ports.admin),
        }),
        resumption: ResumptionConfig::default(),
        recheck: crate::proxy::live::RecheckMode::Close,
        audit: None,
    };
    Ok((config, files))
}

/// Logs how to try the demo.
pub fn log_instructions(files: &DemoFiles) {
    let DemoPorts {
        inbound,
        outbound,
        admin,
    } = files.ports;
    info!("demo ready. Through the outbound listener (plaintext in, mTLS out):");
    info!("    curl http://127.0.0.1:{outbound}/");
    info!("straight to the inbound listener with curl's own client certificate:");
    info!(
        "    curl --cacert {} --cert {} --key {} https://localhost:{inbound}/",
        files.bundle.display(),
        files.client_cert.display(),
        files.client_key.display()
    );
    info!("without a certificate the handshake is refused:");
    info!(
        "    curl --cacert {} https://localhost:{inbound}/",
        files.bundle.display()
    );
    info!("what the daemon is doing (also /ready, /certs, /config, /logging):");
    info!("    curl http://127.0.0.1:{admin}/metrics");
}

/// Starts the demo service on a Unix socket; it answers with the caller's SPIFFE ID.
pub async fn serve_upstream(socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = answer(stream).await {
                    debug!(error = %e, "demo service connection failed");
                }
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: UnixStream) -> std::io::Result<()> {
    let caller = read_proxy_header(&mut stream).await?;
    // Read the request head; the demo answers every request the same way.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let body = format!(
        "hello {}\nyou reached the demo service behind mtlsd; your identity came in a PROXY v2 header, \
         verified by mtlsd's mTLS handshake.\n",
        caller.as_deref().unwrap_or("unauthenticated peer")
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads a PROXY v2 header and returns the SPIFFE ID TLV, if any.
async fn read_proxy_header(stream: &mut UnixStream) -> std::io::Result<Option<String>> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await?;
    let addresses = match fixed[13] >> 4 {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    let mut tlvs = rest.get(addresses..).unwrap_or_default();
    while tlvs.len() >= 3 {
        let (kind, n) = (tlvs[0], u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize);
        let value = tlvs.get(3..3 + n).unwrap_or_default();
        if kind == TLV_SPIFFE_ID {
            return Ok(Some(String::from_utf8_lossy(value).into_owned()));
        }
        tlvs = tlvs.get(3 + n..).unwrap_or_default();
    }
    Ok(None)
}
