//! The daemon's code without the network, for benchmarks: TLS identities built the way the
//! daemon builds them, and its copy loop between in-memory pipes or socket pairs.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mtlsd::ca::{Authority, LeafSpec};
use mtlsd::identity::{Svid, load_bundle};
use mtlsd::metrics::ListenerMetrics;
use mtlsd::proxy::forward::{Buffered, Forwarded, splice};
use mtlsd::proxy::server_tls::ServerTlsStream;
use mtlsd::tls::TlsIdentity;
use mtlsd_crypto::{Backend, KeyRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A TLS identity for `id`, issued by `ca` into `dir` and loaded through `backend`.
pub fn tls_identity(ca: &Authority, dir: &Path, id: &str, backend: &dyn Backend) -> TlsIdentity {
    let spec = LeafSpec::new(id.parse().unwrap(), Duration::from_secs(3600));
    let name = spec.id.path().replace('/', "_");
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    ca.issue(&spec).unwrap().write(&cert, &key).unwrap();
    TlsIdentity {
        svid: Svid::load(&cert, &KeyRef::File(key), backend).unwrap(),
        bundle: load_bundle(&ca.bundle_path()).unwrap(),
        federated: Default::default(),
        trust_domain: ca.trust_domain().to_owned(),
        provider: backend.provider().clone(),
        device: None,
        revocations: Default::default(),
        renew_at: None,
    }
}

/// `total` bytes (a multiple of 16 KiB) from a client pipe through [`splice`] to a service
/// pipe that reads them all; the copy loop's outcome.
pub async fn forward(total: usize, metrics: &ListenerMetrics) -> Forwarded {
    let (client, peer) = tokio::io::duplex(256 * 1024);
    let (upstream, service) = tokio::io::duplex(256 * 1024);
    let never = CancellationToken::new();
    let m = metrics.clone();
    let fwd = tokio::spawn(async move {
        let peer = Buffered::new(peer, &m.buffer_bytes);
        splice(peer, upstream, Duration::from_secs(60), &never, &m).await
    });
    pump(total, async move { client }, service, fwd).await
}

/// Has the client that `connect` yields write `total` bytes (16 KiB at a time) and close,
/// while `service` reads them all; then the outcome of `fwd`, the copy loop between them.
async fn pump<C, F>(
    total: usize,
    connect: F,
    mut service: tokio::io::DuplexStream,
    fwd: tokio::task::JoinHandle<Forwarded>,
) -> Forwarded
where
    C: tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = C> + Send + 'static,
{
    const CHUNK: usize = 16 * 1024;
    let writer = tokio::spawn(async move {
        let mut client = connect.await;
        let chunk = vec![0u8; CHUNK];
        for _ in 0..total / CHUNK {
            client.write_all(&chunk).await.unwrap();
        }
        client.shutdown().await.unwrap();
        client
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        got += service.read(&mut buf).await.unwrap();
    }
    drop(service);
    drop(writer.await.unwrap());
    fwd.await.unwrap()
}

/// A connected pair of stream sockets registered with tokio as TCP streams, which is what
/// [`ServerTlsStream`] takes: the daemon's I/O paths without a network.
pub fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let as_tcp = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(s))).unwrap()
    };
    (as_tcp(a), as_tcp(b))
}

/// `total` bytes (a multiple of 16 KiB) from a rustls client, through the inbound side's
/// [`ServerTlsStream`] and [`splice`], to a service pipe that reads them all: the handshake,
/// the client's encryption, the daemon's decryption and its copy loop.
pub async fn forward_tls(
    total: usize,
    metrics: &ListenerMetrics,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Forwarded {
    let (client_io, server_io) = socket_pair();
    let (upstream, service) = tokio::io::duplex(256 * 1024);
    let never = CancellationToken::new();
    let m = metrics.clone();
    let fwd = tokio::spawn(async move {
        let conn = rustls::ServerConnection::new(server).unwrap();
        let held = m.buffer_bytes.clone();
        let mut tls = ServerTlsStream::accept(server_io, conn, held)
            .await
            .unwrap();
        splice(&mut tls, upstream, Duration::from_secs(60), &never, &m).await
    });
    let connect = async move {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .unwrap()
    };
    pump(total, connect, service, fwd).await
}
