//! Copies bytes both ways between an authorized peer and its upstream.
//!
//! Backpressure and half-close come from tokio's bidirectional copy: a side is
//! only read when the other side accepted the previous bytes, and EOF in one
//! direction shuts down writing in that direction only (TLS `close_notify` or
//! TCP FIN) while the other direction keeps flowing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
pub use crate::proxy::outcome::{CloseReason, Forwarded};

/// Per-direction buffer: one maximum-size TLS record.
const BUF_SIZE: usize = 16 * 1024;

/// Forwards until both directions finish, the connection idles out, or `hard_stop` fires.
///
/// Bytes are added to `metrics` as they move, so long-lived connections show up
/// in the byte counters before they close.
pub async fn splice<P, U>(
    peer: P,
    upstream: U,
    idle_timeout: Duration,
    hard_stop: &CancellationToken,
    metrics: &ListenerMetrics,
) -> Forwarded
where
    P: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut peer = Metered::new(peer, &activity, &metrics.from_peer);
    let mut upstream = Metered::new(upstream, &activity, &metrics.to_peer);
    let (reason, error) = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut peer, &mut upstream, BUF_SIZE, BUF_SIZE) => match r {
            Ok(_) => (CloseReason::Completed, None),
            Err(e) => (CloseReason::of_error(&e), Some(e)),
        },
        () = activity.idle_for(idle_timeout) => (CloseReason::IdleTimeout, None),
        () = hard_stop.cancelled() => (CloseReason::ShutdownGraceElapsed, None),
    };
    Forwarded {
        from_peer: peer.bytes_read,
        to_peer: upstream.bytes_read,
        reason,
        error,
    }
}

/// A TLS stream whose connection may hold records it has not sent yet.
pub trait TlsQueue {
    /// Moves what rustls holds back (a KeyUpdate answer) into its send queue;
    /// true when there is anything to write to the socket.
    fn release_queued(&mut self) -> bool;
}

/// Releases what `conn` holds back and says whether it has records to write.
///
/// rustls keeps the answer to a peer's KeyUpdate until the next record it sends;
/// an empty write makes it queue that answer without sending any data.
pub fn release_queued<D>(conn: &mut rustls::ConnectionCommon<D>) -> bool {
    let _ = std::io::Write::write(&mut conn.writer(), &[]);
    conn.wants_write()
}

/// A TLS stream that sends what rustls queued while reading at once.
///
/// Reading can make rustls owe the peer records of its own: the answer to a
/// KeyUpdate, or an alert refusing renegotiation. A copy loop only writes to the
/// peer when the other side has bytes for it, so without this those records
/// would wait for the upstream's next write and a peer waiting for them would hang.
#[derive(Debug)]
pub struct FlushOnRead<S>(pub S);

impl<S> AsyncRead for FlushOnRead<S>
where
    S: AsyncRead + AsyncWrite + TlsQueue + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.0).poll_read(cx, buf);
        if self.0.release_queued() {
            // Pending registers for writability, and the wake-up polls this read again; an
            // error surfaces on the next write.
            let _ = Pin::new(&mut self.0).poll_flush(cx);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlushOnRead<S> {
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
}

impl<IO> TlsQueue for tokio_rustls::client::TlsStream<IO> {
    fn release_queued(&mut self) -> bool {
        release_queued(self.get_mut().1)
    }
}

/// When bytes last moved on a connection, shared by both directions.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once no bytes have moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if deadline <= Instant::now() {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

/// A stream wrapper that counts the bytes read through it and records activity.
struct Metered<'a, S> {
    inner: S,
    bytes_read: u64,
    activity: &'a Activity,
    counter: &'a Counter,
}

impl<'a, S> Metered<'a, S> {
    fn new(inner: S, activity: &'a Activity, counter: &'a Counter) -> Self {
        Self {
            inner,
            bytes_read: 0,
            activity,
            counter,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes_read += n as u64;
            self.counter.inc_by(n as u64);
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;
    use crate::metrics::{Direction, Metrics};

    fn meters() -> ListenerMetrics {
        Metrics::new().listener("test", Direction::Inbound)
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut client, peer) = duplex(64);
        let (upstream, mut service) = duplex(64);
        let never = CancellationToken::new();
        let counted = meters();
        let m = counted.clone();
        let fwd = tokio::spawn(async move {
            splice(peer, upstream, Duration::from_secs(60), &never, &m).await
        });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        service.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The service answers after seeing EOF; the client still receives it.
        service.write_all(b"response").await.unwrap();
        service.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"response");

        let done = fwd.await.unwrap();
        assert_eq!(
            (done.from_peer, done.to_peer, done.reason),
            (7, 8, CloseReason::Completed)
        );
        assert_eq!((counted.from_peer.get(), counted.to_peer.get()), (7, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_activity_postpones_it() {
        let (mut client, peer) = duplex(64);
        let (upstream, mut service) = duplex(64);
        let never = CancellationToken::new();
        let start = Instant::now();
        let fwd = tokio::spawn(async move {
            splice(peer, upstream, Duration::from_secs(10), &never, &meters()).await
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        service.read_exact(&mut b).await.unwrap();
        let done = fwd.await.unwrap();
        assert_eq!(done.reason, CloseReason::IdleTimeout);
        // Paused time is exact: the byte at t=6s moved the deadline to t=16s.
        assert_eq!(start.elapsed().as_secs(), 16);
    }

    #[tokio::test]
    async fn hard_stop_ends_an_open_connection() {
        let (_client, peer) = duplex(64);
        let (upstream, _service) = duplex(64);
        let stop = CancellationToken::new();
        stop.cancel();
        let done = splice(peer, upstream, Duration::from_secs(60), &stop, &meters()).await;
        assert_eq!(done.reason, CloseReason::ShutdownGraceElapsed);
    }
}
