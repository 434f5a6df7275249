//! The pool of connections to the local service: kept alive between requests and shared
//! by every peer connection of a listener, so a request does not pay an upstream connect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use super::body::Counted;
use crate::config::{Upstream, UpstreamProtocol};

/// How long an unused pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The body of a request sent upstream: the peer's, counted.
pub type UpstreamBody = Counted<Incoming>;

/// Pooled HTTP connections to one local service.
#[derive(Clone, Debug)]
pub struct UpstreamPool {
    client: Client<Connector, UpstreamBody>,
}

impl UpstreamPool {
    /// A pool speaking `protocol` to `target`, each connect bounded by `connect_timeout`.
    pub fn new(target: &Upstream, protocol: UpstreamProtocol, connect_timeout: Duration) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The service sees the authority the peer asked for, not our pool key.
            .set_host(false);
        if protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(Connector {
                target: Arc::new(target.clone()),
                timeout: connect_timeout,
            }),
        }
    }

    /// Sends `req` (its URI already pointing at [`POOL_URI`]) and waits for the response headers.
    pub async fn send(
        &self,
        req: hyper::Request<UpstreamBody>,
    ) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

/// The scheme and authority every upstream request is sent to: one pool key per listener
/// (the connector ignores it and dials the configured service).
pub const POOL_URI: &str = "http://upstream";

/// Dials the listener's service for the pool.
#[derive(Clone, Debug)]
pub struct Connector {
    target: Arc<Upstream>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let target = self.target.clone();
        let limit = self.timeout;
        Box::pin(async move {
            let connect = async {
                match &*target {
                    Upstream::Tcp(addr) => {
                        let s = TcpStream::connect(addr.as_str()).await?;
                        let _ = s.set_nodelay(true);
                        Ok(Either::Left(s))
                    }
                    Upstream::Unix(path) => UnixStream::connect(path).await.map(Either::Right),
                }
            };
            let stream = tokio::time::timeout(limit, connect)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                .map_err(|e| io::Error::new(e.kind(), format!("{target}: {e}")))?;
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

/// A connection to the service, TCP or Unix.
#[derive(Debug)]
pub struct UpstreamIo(TokioIo<Either<TcpStream, UnixStream>>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
