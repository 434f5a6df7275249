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
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
pub use crate::proxy::outcome::{CloseReason, Forwarded};

/// Per-direction buffer while bytes flow: one maximum-size TLS record.
const BUF_SIZE: usize = 16 * 1024;

/// Forwards until both directions finish, the connection idles out, or `hard_stop` fires.
///
/// Bytes are added to `metrics` as they move, so long-lived connections show up
/// in the byte counters before they close.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub fn splice<P, U>(
    peer: P,
    upstream: U,
    idle_timeout: Duration,
    hard_stop: &CancellationToken,
    metrics: &ListenerMetrics,
) -> impl Future<Output = Forwarded>
where
    P: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Not `async fn`, which would keep `peer` and `upstream` twice (as arguments and as
    // locals) in every idle connection's task; the block captures them once.
    async move {
        let activity = Activity::new();
        let mut peer = Metered::new(peer, &activity, &metrics.from_peer);
        let mut upstream = Metered::new(upstream, &activity, &metrics.to_peer);
        let (reason, error) = tokio::select! {
            r = copy_bidirectional(&mut peer, &mut upstream, &metrics.buffer_bytes) => match r {
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
}

/// Bytes read when a direction has no buffer: a probe on the stack, so an idle
/// connection that is woken without data allocates nothing.
const PROBE_SIZE: usize = 2048;

/// One direction of a copy: a buffer that exists only while bytes are in flight.
///
/// tokio's bidirectional copy allocates both buffers when the connection starts and
/// keeps them until it ends, so an idle connection holds two 16 KiB buffers. Here
/// a direction reads into a small stack probe while it has no buffer, allocates one
/// when data arrives, and gives it back as soon as it is empty and the next read
/// would wait. Otherwise the loop is tokio's: read, write everything out, flush when
/// the reader has nothing, shut the writer down after EOF.
struct Half<'m> {
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    copied: u64,
    held: &'m Gauge,
}

impl<'m> Half<'m> {
    fn new(held: &'m Gauge) -> Self {
        Self {
            buf: None,
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            copied: 0,
            held,
        }
    }

    fn release(&mut self) {
        if self.buf.take().is_some() {
            self.held.dec_by(BUF_SIZE as i64);
        }
    }

    /// Reads into the buffer (or the probe, when there is none); `cap` grows by what came.
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<()>> {
        let n = match &mut self.buf {
            Some(buf) => {
                let mut rb = ReadBuf::new(&mut buf[self.cap..]);
                std::task::ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
                rb.filled().len()
            }
            None => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); PROBE_SIZE];
                let mut rb = ReadBuf::uninit(&mut probe);
                std::task::ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
                let got = rb.filled();
                if !got.is_empty() {
                    let mut buf = vec![0u8; BUF_SIZE].into_boxed_slice();
                    buf[..got.len()].copy_from_slice(got);
                    self.held.inc_by(BUF_SIZE as i64);
                    self.buf = Some(buf);
                }
                got.len()
            }
        };
        self.cap += n;
        if n == 0 {
            self.read_done = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Copies until `reader` ends and everything read is written and flushed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                self.pos = 0;
                self.cap = 0;
                match self.poll_fill(cx, reader) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        // Nothing to read: flush what was written (the reader may be waiting
                        // for it), and hold no memory while waiting.
                        if self.need_flush {
                            std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        self.release();
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let buf = self.buf.as_deref().unwrap_or_default();
                let n = std::task::ready!(
                    Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..self.cap])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                self.release();
                std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

impl Drop for Half<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Where one direction of the copy is.
enum Transfer<'m> {
    Running(Half<'m>),
    ShuttingDown(u64),
    Done(u64),
}

fn poll_transfer<R, W>(
    cx: &mut Context<'_>,
    state: &mut Transfer<'_>,
    reader: &mut R,
    writer: &mut W,
) -> Poll<io::Result<u64>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match state {
            Transfer::Running(half) => {
                let copied = std::task::ready!(half.poll_copy(cx, reader, writer))?;
                *state = Transfer::ShuttingDown(copied);
            }
            Transfer::ShuttingDown(copied) => {
                // Half-close: EOF one way shuts down writing that way only.
                std::task::ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                *state = Transfer::Done(*copied);
            }
            Transfer::Done(copied) => return Poll::Ready(Ok(*copied)),
        }
    }
}

/// Copies both ways until both directions have ended; `held` counts the buffer bytes in use.
async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B, held: &Gauge) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Transfer::Running(Half::new(held));
    let mut b_to_a = Transfer::Running(Half::new(held));
    std::future::poll_fn(|cx| {
        let a_done = poll_transfer(cx, &mut a_to_b, a, b)?;
        let b_done = poll_transfer(cx, &mut b_to_a, b, a)?;
        let a_copied = std::task::ready!(a_done);
        let b_copied = std::task::ready!(b_done);
        Poll::Ready(Ok((a_copied, b_copied)))
    })
    .await
}

/// A TLS stream whose connection may hold records it has not sent yet.
pub trait TlsQueue {
    /// Moves what rustls holds back (a KeyUpdate answer) into its send queue;
    /// true when there is anything to write to the socket.
    fn release_queued(&mut self) -> bool;
}

impl<T: TlsQueue + ?Sized> TlsQueue for &mut T {
    fn release_queued(&mut self) -> bool {
        (**self).release_queued()
    }
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

impl<T: TlsQueue + ?Sized> TlsQueue for Box<T> {
    fn release_queued(&mut self) -> bool {
        (**self).release_queued()
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

    /// Yields (a bounded number of times) until the copy task has caught up and `held` is `want`.
    async fn settle(held: &Gauge, want: i64) {
        for _ in 0..1000 {
            if held.get() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(held.get(), want, "copy buffers held");
    }

    #[tokio::test]
    async fn copy_buffers_exist_only_while_bytes_are_in_flight() {
        let (mut client, peer) = duplex(64 * 1024);
        let (upstream, mut service) = duplex(64 * 1024);
        let never = CancellationToken::new();
        let counted = meters();
        let held = counted.buffer_bytes.clone();
        let m = counted.clone();
        let fwd = tokio::spawn(async move {
            splice(peer, upstream, Duration::from_secs(60), &never, &m).await
        });
        settle(&held, 0).await;

        // A request and its answer: once both are through, nothing is held.
        client.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        service.read_exact(&mut got).await.unwrap();
        service.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        settle(&held, 0).await;

        // A burst the service does not read yet: a buffer holds what cannot move on.
        let burst = vec![7u8; 200 * 1024];
        let writer = tokio::spawn(async move {
            client.write_all(&burst).await.unwrap();
            client
        });
        settle(&held, BUF_SIZE as i64).await;
        let mut received = vec![0u8; 200 * 1024];
        service.read_exact(&mut received).await.unwrap();
        assert!(received.iter().all(|&b| b == 7));
        let mut client = writer.await.unwrap();
        settle(&held, 0).await;

        client.shutdown().await.unwrap();
        service.shutdown().await.unwrap();
        let done = fwd.await.unwrap();
        assert_eq!(done.reason, CloseReason::Completed);
        assert_eq!((done.from_peer, done.to_peer), (7 + 200 * 1024, 6));
        assert_eq!(held.get(), 0);
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
