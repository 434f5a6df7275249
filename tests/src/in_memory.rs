//! The daemon's code without sockets, for benchmarks: TLS identities built the way the
//! daemon builds them, and its copy loop between in-memory pipes.

use std::path::Path;
use std::time::Duration;

use mtlsd::ca::{Authority, LeafSpec};
use mtlsd::identity::{Svid, load_bundle};
use mtlsd::metrics::ListenerMetrics;
use mtlsd::proxy::forward::{Buffered, Forwarded, splice};
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
    const CHUNK: usize = 16 * 1024;
    let (mut client, peer) = tokio::io::duplex(256 * 1024);
    let (upstream, mut service) = tokio::io::duplex(256 * 1024);
    let never = CancellationToken::new();
    let m = metrics.clone();
    let fwd = tokio::spawn(async move {
        let peer = Buffered::new(peer, &m.buffer_bytes);
        splice(peer, upstream, Duration::from_secs(60), &never, &m).await
    });
    let writer = tokio::spawn(async move {
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
