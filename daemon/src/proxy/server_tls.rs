//! The inbound side's TLS stream: rustls driven by us rather than by tokio-rustls.
//!
//! Three things need rustls in our hands:
//!
//! - **0-RTT.** tokio-rustls finishes the whole handshake, client `Finished`
//!   included, before its stream yields a byte, so an early request would reach
//!   the local service one round trip late, just like a normal one.
//!   [`ServerTlsStream::accept`] returns as soon as a resumed client's early data
//!   has arrived (and the server's flight is on the wire), so the proxy can
//!   authorize the resumed identity and forward the early bytes at once; the rest
//!   of the handshake completes as the stream is read. With `send_half_rtt_data`,
//!   which rustls only honours when no client certificate is requested (that is,
//!   on resumption), the local service's answer travels back in the same round
//!   trip.
//! - **Session tickets in the answer's segment.** A TLS 1.3 server sends its
//!   tickets after the client's `Finished`; tokio-rustls writes them at once, one
//!   more write and one more loopback or network segment per connection, although
//!   the client needs them only for its next connection. Here they wait for the
//!   first application data we send and leave in the same write. They go out
//!   earlier when the client sends more after its first request (a client that only
//!   uploads) and before `close_notify`, so every client that stays to the end of
//!   its connection gets them.
//! - **Records lent, not copied; a stream read and written in large pieces.** As an
//!   [`AsyncBufRead`] the stream hands the copy loop rustls' decrypted record itself,
//!   which goes to the upstream without first being copied into a buffer of ours.
//!   When the peer streams (a read fills what rustls offers), ciphertext is read
//!   ahead, 64 KiB at a time and four times more after each read that filled the
//!   buffer, up to [`BUF_MAX`](super::forward::BUF_MAX); the records already here are gathered into one
//!   piece for the upstream. A bulk upload makes one read and one write per
//!   256 KiB instead of one of each per 16 KiB record, for one more copy of the
//!   plaintext. Both buffers are given back when the peer pauses.
//!
//! The I/O glue follows tokio-rustls: rustls is driven through a synchronous
//! adapter that turns `Pending` into `WouldBlock`.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConnection;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::forward::{next_read_capacity, poll_read_from_buf, release_queued};

/// rustls offers a read this much when its buffer is empty: a read that fills it means
/// the peer is streaming, and the next reads go through the read-ahead buffer.
const STREAMING_READ: usize = 4096;

/// The most plaintext one TLS record carries.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// The read-ahead buffer of a peer that starts streaming: four records.
const READ_AHEAD_MIN: usize = 4 * MAX_RECORD_PLAINTEXT;

/// A TLS server connection over TCP that can be used before its handshake completes.
#[derive(Debug)]
pub struct ServerTlsStream {
    io: TcpStream,
    conn: ServerConnection,
    /// Buffers of a streaming peer or of early data; none while the peer is quiet.
    bulk: Option<Box<Bulk>>,
    /// Counts the bytes `bulk` holds, with the listener's other copy buffers.
    held: Gauge,
    eof: bool,
    close_sent: bool,
    /// TLS 1.3 session tickets are queued and wait to share a write (see the module docs).
    tickets_held: bool,
    /// The caller has read application data: more from the peer releases the tickets.
    data_read: bool,
    /// rustls failed on a record after good ones: the error is reported once they are taken.
    failed: bool,
}

/// What a streaming peer's connection holds between reads.
#[derive(Debug, Default)]
struct Bulk {
    /// Ciphertext read ahead of rustls, which takes in at most one record at a time.
    inbox: Vec<u8>,
    inbox_at: usize,
    /// Plaintext taken out of rustls for the caller: early data, or records gathered
    /// into one piece.
    plain: Vec<u8>,
    plain_at: usize,
}

impl Bulk {
    fn capacity(&self) -> usize {
        self.inbox.capacity() + self.plain.capacity()
    }

    fn plain(&self) -> &[u8] {
        &self.plain[self.plain_at..]
    }

    fn inbox(&self) -> &[u8] {
        &self.inbox[self.inbox_at..]
    }
}

/// `std::io` view of the socket inside a poll: `Pending` becomes `WouldBlock`.
struct SyncIo<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    // rustls hands over each queued record as its own slice; one vectored write sends a
    // whole flight (or the tickets with an answer) in one segment.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl ServerTlsStream {
    /// Handshakes `conn` (made from the ClientHello already read) until it completes, or
    /// until a resuming client's early data is here.
    ///
    /// `held` counts the buffers it uses while the peer streams.
    pub async fn accept(
        io: TcpStream,
        mut conn: ServerConnection,
        held: Gauge,
    ) -> io::Result<Self> {
        // Records that arrived with the ClientHello (early data) are already buffered.
        conn.process_new_packets().map_err(tls_error)?;
        let mut s = Self {
            io,
            conn,
            bulk: None,
            held,
            eof: false,
            close_sent: false,
            tickets_held: false,
            data_read: false,
            failed: false,
        };
        loop {
            if !s.conn.is_handshaking() {
                // A TLS 1.3 server's last flight (its Finished) left before the client's
                // Finished came, so all that can be queued now is session tickets. TLS 1.2
                // ends with the server's Finished, which the client waits for.
                if s.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                    s.tickets_held = s.conn.wants_write();
                } else {
                    std::future::poll_fn(|cx| s.poll_flush_tls(cx)).await?;
                }
                return Ok(s);
            }
            std::future::poll_fn(|cx| s.poll_flush_tls(cx)).await?;
            s.drain_early_data();
            if !s.pending_plain().is_empty() {
                return Ok(s);
            }
            if std::future::poll_fn(|cx| s.poll_read_tls(cx)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the handshake",
                ));
            }
        }
    }

    /// The rustls connection (peer certificates, handshake kind, protocol version).
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// The early data received so far, removed from the stream.
    pub fn take_early_data(&mut self) -> Vec<u8> {
        self.drain_early_data();
        let early = self.pending_plain().to_vec();
        self.consume_plain(early.len());
        early
    }

    fn drain_early_data(&mut self) {
        let Some(mut reader) = self.conn.early_data() else {
            return;
        };
        // rustls offers this reader for the whole life of a connection that accepted early
        // data; `read_to_end` probes on the stack before it allocates, so an empty one is free.
        let mut early = Vec::new();
        // Bounded by the listener's early_data limit, which rustls enforces on receipt.
        let _ = reader.read_to_end(&mut early);
        if early.is_empty() {
            return;
        }
        let bulk = self.bulk.get_or_insert_default();
        let before = bulk.capacity();
        bulk.plain.extend_from_slice(&early);
        self.held.inc_by((bulk.capacity() - before) as i64);
    }

    /// Plaintext taken out of rustls and not yet consumed.
    fn pending_plain(&self) -> &[u8] {
        self.bulk.as_deref().map_or(&[], Bulk::plain)
    }

    fn consume_plain(&mut self, amt: usize) {
        if let Some(bulk) = &mut self.bulk {
            bulk.plain_at += amt;
            if bulk.plain_at == bulk.plain.len() {
                bulk.plain.clear();
                bulk.plain_at = 0;
            }
        }
    }

    /// Gives the buffers back: the peer paused, or the stream is dropped.
    fn release_bulk(&mut self) {
        if let Some(bulk) = self.bulk.take() {
            self.held.dec_by(bulk.capacity() as i64);
        }
    }

    /// Reads what the socket has into rustls and processes it; `Ok(0)` is end of stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = if self.bulk.as_ref().is_some_and(|b| b.inbox.capacity() > 0) {
            ready!(self.poll_read_ahead(cx))
        } else {
            let read = self.conn.read_tls(&mut SyncIo {
                io: &mut self.io,
                cx,
            });
            if matches!(read, Ok(n) if n >= STREAMING_READ) && !self.conn.is_handshaking() {
                // The peer streams: read ahead from now on, until it pauses.
                let bulk = self.bulk.get_or_insert_default();
                bulk.inbox.reserve_exact(READ_AHEAD_MIN);
                self.held.inc_by(bulk.inbox.capacity() as i64);
            }
            read
        };
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The peer paused: hold no buffers while waiting, unless plaintext the caller
                // has not taken yet is in one (early data, while a shutdown finishes the handshake).
                if self.pending_plain().is_empty() {
                    self.release_bulk();
                }
                return Poll::Pending;
            }
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Let the peer see the alert rustls queued; the error is what counts.
            let _ = self.poll_flush_tls(cx);
            if !self.has_plaintext() {
                return Poll::Ready(Err(tls_error(e)));
            }
            // Records before the bad one were good: they go first.
            self.failed = true;
        }
        Poll::Ready(Ok(n))
    }

    /// rustls holds decrypted bytes for the caller.
    fn has_plaintext(&mut self) -> bool {
        matches!(self.conn.reader().into_first_chunk(), Ok(chunk) if !chunk.is_empty())
    }

    /// Gives rustls ciphertext from the read-ahead buffer, refilling it from the socket
    /// when it is empty.
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(bulk) = self.bulk.as_deref_mut() else {
            return Poll::Ready(Ok(0));
        };
        if bulk.inbox().is_empty() {
            let capacity = bulk.inbox.capacity();
            let next = next_read_capacity(bulk.inbox.len(), capacity);
            if next != capacity {
                bulk.inbox = Vec::with_capacity(next);
                self.held.inc_by((bulk.inbox.capacity() - capacity) as i64);
            }
            bulk.inbox.clear();
            bulk.inbox_at = 0;
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut bulk.inbox) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
            }
        }
        let read = self.conn.read_tls(&mut bulk.inbox());
        if let Ok(n) = read {
            bulk.inbox_at += n;
        }
        Poll::Ready(read)
    }

    /// Moves the records already read ahead out of rustls into one piece of plaintext.
    fn gather(&mut self) {
        let Some(bulk) = self.bulk.as_deref_mut() else {
            return;
        };
        let before = bulk.capacity();
        // Room for what one read ahead can hold.
        let want = bulk.inbox.capacity().max(READ_AHEAD_MIN);
        if bulk.plain.capacity() < want {
            bulk.plain.reserve_exact(want - bulk.plain.len());
        }
        loop {
            // Take what rustls has decrypted, as long as it fits.
            match self.conn.reader().into_first_chunk() {
                Ok(chunk) if !chunk.is_empty() => {
                    if chunk.len() > bulk.plain.capacity() - bulk.plain.len() {
                        break;
                    }
                    let n = chunk.len();
                    bulk.plain.extend_from_slice(chunk);
                    self.conn.reader().consume(n);
                    continue;
                }
                // Nothing decrypted yet (a record only partly fed), or the peer's close_notify.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => break,
            }
            // Feed rustls more of what was read ahead, if anything is left.
            if self.failed || bulk.inbox().is_empty() {
                break;
            }
            match self.conn.read_tls(&mut bulk.inbox()) {
                Ok(n) if n > 0 => bulk.inbox_at += n,
                _ => break,
            }
            if self.conn.process_new_packets().is_err() {
                // Records before the bad one go first; rustls keeps the error for later.
                self.failed = true;
            }
        }
        self.held.inc_by((bulk.capacity() - before) as i64);
    }

    /// Reads and decrypts until there is plaintext to hand out (early data first), the
    /// peer has closed, or an error.
    fn poll_plaintext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.drain_early_data();
            if !self.pending_plain().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if self.failed {
                if self.has_plaintext() {
                    return Poll::Ready(Ok(()));
                }
                let _ = self.poll_flush_tls(cx);
                return Poll::Ready(self.conn.process_new_packets().map(drop).map_err(tls_error));
            }
            match self.conn.reader().into_first_chunk() {
                // A record's plaintext, or an empty one after close_notify.
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            // About to wait for the peer: first send what we owe it (a KeyUpdate answer rustls
            // keeps for our next record, an alert, tickets not held for an answer).
            if !self.tickets_held {
                release_queued(&mut self.conn);
                if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            ready!(self.poll_read_tls(cx))?;
            // The client sends on before hearing from us: give it its tickets now.
            self.tickets_held &= !self.data_read;
        }
    }

    /// Writes out everything rustls has queued.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SyncIo {
                io: &mut self.io,
                cx,
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Lends the decrypted record itself, or while the peer streams the records already here
/// gathered into one piece, so the copy loop writes them without copying them again.
impl AsyncBufRead for ServerTlsStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if let Err(e) = ready!(this.poll_plaintext(cx)) {
            this.release_bulk();
            return Poll::Ready(Err(e));
        }
        if this.pending_plain().is_empty()
            && this.bulk.as_ref().is_some_and(|b| !b.inbox().is_empty())
        {
            // More records are already here: hand them over as one piece.
            this.gather();
        }
        if !this.pending_plain().is_empty() {
            return Poll::Ready(Ok(this.pending_plain()));
        }
        if !this.has_plaintext() {
            // The end of the stream (or an error, next): nothing more will be read ahead.
            this.release_bulk();
        }
        Poll::Ready(match this.conn.reader().into_first_chunk() {
            // rustls has seen the end of the stream and has nothing more: report it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(&[]),
            chunk => chunk,
        })
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        if amt == 0 {
            return;
        }
        this.data_read = true;
        if this.pending_plain().is_empty() {
            this.conn.reader().consume(amt);
        } else {
            this.consume_plain(amt);
        }
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_from_buf(self, cx, buf)
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.tickets_held = false;
        let mut n = this.conn.writer().write(buf)?;
        let flushed = this.poll_flush_tls(cx)?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer was full: it has room again only once the socket took the backlog.
            ready!(flushed);
            n = this.conn.writer().write(buf)?;
            if n == 0 {
                // Plaintext waits for the handshake (nothing is sent before our Finished); the
                // copy loop's read side drives it, but make sure we are polled again too.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tickets_held = false;
        // An early answer can be complete before the client's Finished has arrived. Closing
        // then would cut the handshake short and the client would never get the session
        // tickets that follow it, so its next connection could not resume: finish first.
        while this.conn.is_handshaking() && !this.eof {
            ready!(this.poll_flush_tls(cx))?;
            ready!(this.poll_read_tls(cx))?;
        }
        if !this.close_sent {
            this.conn.send_close_notify();
            this.close_sent = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl Drop for ServerTlsStream {
    fn drop(&mut self) {
        self.release_bulk();
    }
}
