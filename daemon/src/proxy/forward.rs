//! Copies bytes both ways between an authorized peer and its upstream.
//!
//! Backpressure and half-close work as in tokio's bidirectional copy: a side is
//! only read when the other side accepted the previous bytes, and EOF in one
//! direction shuts down writing in that direction only (TLS `close_notify` or
//! TCP FIN) while the other direction keeps flowing.
//!
//! Each direction writes straight from its reader's buffer ([`AsyncBufRead`]).
//! A TLS peer lends the record rustls has just decrypted, or, while it streams,
//! the records already read gathered into one piece; a plain socket reads into a
//! [`Buffered`] that exists only while bytes are in flight and grows while they
//! keep coming, so a bulk transfer moves in reads and writes of up to [`BUF_MAX`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
pub use crate::proxy::outcome::{CloseReason, Forwarded};

/// A plain socket's read buffer when bytes start to flow: one maximum-size TLS record.
const BUF_SIZE: usize = 16 * 1024;

/// The most a busy direction reads (and so writes) at once: each read that fills the buffer
/// quadruples the next one up to this, so a bulk transfer makes a sixteenth of the syscalls.
pub const BUF_MAX: usize = 256 * 1024;

/// The capacity a read buffer should have for its next read, given what the last one
/// `filled` of its `capacity`: four times more after a full read, up to [`BUF_MAX`].
pub fn next_read_capacity(filled: usize, capacity: usize) -> usize {
    if capacity > 0 && filled == capacity && capacity < BUF_MAX {
        (capacity * 4).min(BUF_MAX)
    } else {
        capacity
    }
}

/// Forwards until both directions finish, the connection idles out, or `hard_stop` fires.
///
/// `peer` lends its read buffer: a TLS stream its decrypted records, a plain socket a
/// [`Buffered`]. Bytes are added to `metrics` as they move, so long-lived connections
/// show up in the byte counters before they close.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub fn splice<P, U>(
    mut peer: P,
    upstream: U,
    idle_timeout: Duration,
    hard_stop: &CancellationToken,
    metrics: &ListenerMetrics,
) -> impl Future<Output = Forwarded>
where
    P: AsyncBufRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut upstream = Buffered::new(upstream, &metrics.buffer_bytes);
        let activity = Activity::new();
        let mut from_peer = Transfer::Running(Half::new(&activity, &metrics.from_peer));
        let mut to_peer = Transfer::Running(Half::new(&activity, &metrics.to_peer));
        let (reason, error) = tokio::select! {
            r = copy_bidirectional(&mut peer, &mut upstream, &mut from_peer, &mut to_peer) => {
                match r {
                    Ok(()) => (CloseReason::Completed, None),
                    Err(e) => (CloseReason::of_error(&e), Some(e)),
                }
            }
            () = activity.idle_for(idle_timeout) => (CloseReason::IdleTimeout, None),
            () = hard_stop.cancelled() => (CloseReason::ShutdownGraceElapsed, None),
        };
        Forwarded {
            from_peer: from_peer.copied(),
            to_peer: to_peer.copied(),
            reason,
            error,
        }
    }
}

/// Bytes read when a [`Buffered`] has no buffer: a probe on the stack, so an idle
/// connection that is woken without data allocates nothing.
const PROBE_SIZE: usize = 2048;

/// A plain stream with a read buffer that exists only while bytes are in flight.
///
/// tokio's bidirectional copy allocates both buffers when the connection starts and
/// keeps them until it ends, so an idle connection holds two 16 KiB buffers. This
/// reads into a small stack probe while it has no buffer, allocates one when data
/// arrives, grows it while reads fill it (up to [`BUF_MAX`]), and gives it back as
/// soon as it is empty and the next read would wait or the stream has ended.
pub struct Buffered<'m, S> {
    inner: S,
    /// What the last read brought, from `pos` on not yet consumed; its capacity is the
    /// buffer, none while nothing flows. Never zeroed: reads fill its spare capacity.
    buf: Vec<u8>,
    pos: usize,
    /// Buffer bytes held by all connections of the listener.
    held: &'m Gauge,
}

impl<'m, S> Buffered<'m, S> {
    /// `inner`, with no buffer yet; `held` counts the buffer while it exists.
    pub fn new(inner: S, held: &'m Gauge) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            held,
        }
    }

    /// Replaces the buffer with `capacity` bytes, counted in `held`.
    fn reallocate(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.buf, Vec::with_capacity(capacity));
        self.held
            .inc_by(self.buf.capacity() as i64 - old.capacity() as i64);
    }

    fn release(&mut self) {
        self.reallocate(0);
        self.pos = 0;
    }
}

impl<S> Drop for Buffered<'_, S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncBufRead for Buffered<'_, S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos == this.buf.len() {
            let capacity = next_read_capacity(this.buf.len(), this.buf.capacity());
            if capacity != this.buf.capacity() {
                this.reallocate(capacity);
            }
            this.buf.clear();
            this.pos = 0;
            let poll = if this.buf.capacity() > 0 {
                tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf)
            } else {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); PROBE_SIZE];
                let mut rb = ReadBuf::uninit(&mut probe);
                let poll = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
                let got = rb.filled();
                if matches!(poll, Poll::Ready(Ok(()))) && !got.is_empty() {
                    this.reallocate(BUF_SIZE);
                    this.buf.extend_from_slice(got);
                }
                poll.map_ok(|()| got.len())
            };
            match poll {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // The end of the stream, or an error: nothing more will come through here.
                Poll::Ready(done) => {
                    this.release();
                    return Poll::Ready(done.map(|_| &[][..]));
                }
                // Nothing to read: hold no memory while waiting.
                Poll::Pending => {
                    this.release();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.buf.len());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Buffered<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_from_buf(self, cx, buf)
    }
}

/// `poll_read` for a reader that lends its buffer: copies out of it what fits in `buf`.
pub fn poll_read_from_buf<R: AsyncBufRead + ?Sized>(
    mut reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let chunk = ready!(reader.as_mut().poll_fill_buf(cx))?;
    let n = chunk.len().min(buf.remaining());
    buf.put_slice(&chunk[..n]);
    reader.consume(n);
    Poll::Ready(Ok(()))
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<'_, S> {
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

/// One direction of a copy: what it has moved and whether the writer owes a flush.
///
/// The loop is tokio's: write what the reader holds, flush when the reader has
/// nothing, shut the writer down after EOF. Bytes count (and postpone the idle
/// timeout) once the writer took them.
struct Half<'m> {
    need_flush: bool,
    copied: u64,
    activity: &'m Activity,
    counter: &'m Counter,
}

impl<'m> Half<'m> {
    fn new(activity: &'m Activity, counter: &'m Counter) -> Self {
        Self {
            need_flush: false,
            copied: 0,
            activity,
            counter,
        }
    }

    /// Copies until `reader` ends and everything read is written and flushed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let chunk = match Pin::new(&mut *reader).poll_fill_buf(cx) {
                Poll::Ready(chunk) => chunk?,
                Poll::Pending => {
                    // Nothing to read: flush what was written (the reader may be waiting
                    // for it).
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            };
            if chunk.is_empty() {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *reader).consume(n);
            self.copied += n as u64;
            self.counter.inc_by(n as u64);
            self.activity.touch();
            self.need_flush = true;
        }
    }
}

/// Where one direction of the copy is.
enum Transfer<'m> {
    Running(Half<'m>),
    ShuttingDown(u64),
    Done(u64),
}

impl Transfer<'_> {
    /// Bytes this direction has moved.
    fn copied(&self) -> u64 {
        match self {
            Self::Running(half) => half.copied,
            Self::ShuttingDown(copied) | Self::Done(copied) => *copied,
        }
    }
}

fn poll_transfer<R, W>(
    cx: &mut Context<'_>,
    state: &mut Transfer<'_>,
    reader: &mut R,
    writer: &mut W,
) -> Poll<io::Result<()>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match state {
            Transfer::Running(half) => {
                ready!(half.poll_copy(cx, reader, writer))?;
                *state = Transfer::ShuttingDown(half.copied);
            }
            Transfer::ShuttingDown(copied) => {
                // Half-close: EOF one way shuts down writing that way only.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                *state = Transfer::Done(*copied);
            }
            Transfer::Done(_) => return Poll::Ready(Ok(())),
        }
    }
}

/// Copies both ways until both directions have ended.
async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &mut Transfer<'_>,
    b_to_a: &mut Transfer<'_>,
) -> io::Result<()>
where
    A: AsyncBufRead + AsyncWrite + Unpin,
    B: AsyncBufRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| {
        let a_done = poll_transfer(cx, a_to_b, a, b)?;
        let b_done = poll_transfer(cx, b_to_a, b, a)?;
        ready!(a_done);
        ready!(b_done);
        Poll::Ready(Ok(()))
    })
    .await
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, duplex};

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
            let peer = Buffered::new(peer, &m.buffer_bytes);
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

    #[tokio::test]
    async fn a_peer_that_lends_its_buffer_is_forwarded_from_it_both_ways() {
        let (mut client, peer) = duplex(64 * 1024);
        let (upstream, mut service) = duplex(64 * 1024);
        let never = CancellationToken::new();
        let counted = meters();
        let m = counted.clone();
        // tokio's BufReader lends its buffer the way the TLS stream lends a decrypted record.
        let fwd = tokio::spawn(async move {
            let peer = tokio::io::BufReader::new(peer);
            splice(peer, upstream, Duration::from_secs(60), &never, &m).await
        });

        // More than the pipes hold, so the copy has to keep up with the service.
        let burst: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = burst.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        service.read_to_end(&mut got).await.unwrap();
        assert!(got == burst, "bytes changed or lost on the way");
        let mut client = writer.await.unwrap();
        service.write_all(b"answer").await.unwrap();
        service.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");

        let done = fwd.await.unwrap();
        assert_eq!(
            (done.from_peer, done.to_peer, done.reason),
            (200 * 1024, 6, CloseReason::Completed)
        );
        assert_eq!(counted.from_peer.get(), 200 * 1024);
        // Only the upstream's side had a buffer of ours, and it is given back.
        assert_eq!(counted.buffer_bytes.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_activity_postpones_it() {
        let (mut client, peer) = duplex(64);
        let (upstream, mut service) = duplex(64);
        let never = CancellationToken::new();
        let start = Instant::now();
        let fwd = tokio::spawn(async move {
            let m = meters();
            splice(
                Buffered::new(peer, &m.buffer_bytes),
                upstream,
                Duration::from_secs(10),
                &never,
                &m,
            )
            .await
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
        settle_until(held, |v| v == want).await;
        assert_eq!(held.get(), want, "copy buffers held");
    }

    /// Yields (a bounded number of times) until `held` satisfies `done`.
    async fn settle_until(held: &Gauge, done: impl Fn(i64) -> bool) {
        for _ in 0..1000 {
            if done(held.get()) {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert!(done(held.get()), "copy buffers held: {}", held.get());
    }

    #[tokio::test]
    async fn a_reader_that_keeps_filling_its_buffer_reads_larger_up_to_the_maximum() {
        let source = vec![3u8; 4 * BUF_MAX];
        let counted = meters();
        let mut reader = Buffered::new(&source[..], &counted.buffer_bytes);
        let mut reads = Vec::new();
        let mut total = 0;
        loop {
            let chunk = reader.fill_buf().await.unwrap();
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            assert!(chunk.iter().all(|&b| b == 3));
            reads.push(n);
            assert!(counted.buffer_bytes.get() >= n as i64);
            reader.consume(n);
            total += n;
        }
        assert_eq!(total, source.len());
        // The stack probe, then one record, then four times more each time a read filled
        // the buffer, until the maximum.
        assert_eq!(
            &reads[..5],
            &[PROBE_SIZE, BUF_SIZE, 4 * BUF_SIZE, BUF_MAX, BUF_MAX]
        );
        // Given back at the end of the stream, before the reader goes.
        assert_eq!(counted.buffer_bytes.get(), 0);
        drop(reader);
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
            let peer = Buffered::new(peer, &m.buffer_bytes);
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
        settle_until(&held, |v| v >= BUF_SIZE as i64).await;
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
        let m = meters();
        let peer = Buffered::new(peer, &m.buffer_bytes);
        let done = splice(peer, upstream, Duration::from_secs(60), &stop, &m).await;
        assert_eq!(done.reason, CloseReason::ShutdownGraceElapsed);
    }
}
