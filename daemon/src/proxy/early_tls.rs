//! A server TLS stream that hands early data (0-RTT) to the proxy before the handshake completes.
//!
//! tokio-rustls finishes the whole handshake, client `Finished` included,
//! before its stream yields a byte. That costs 0-RTT its point: the early
//! request would reach the local service one round trip late, just like a
//! normal one. Listeners that accept early data use this stream instead. Its
//! [`EarlyTlsStream::accept`] returns as soon as a resumed client's early data
//! has arrived (and the server's flight is on the wire), so the proxy can
//! authorize the resumed identity and forward the early bytes at once. The
//! rest of the handshake completes as the stream is read.
//!
//! With `send_half_rtt_data`, which rustls only honours when no client
//! certificate is requested (that is, on resumption), the local service's
//! answer travels back in the same round trip.
//!
//! The I/O glue follows tokio-rustls: rustls is driven through a synchronous
//! adapter that turns `Pending` into `WouldBlock`.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TLS server connection over TCP that can be used before its handshake completes.
#[derive(Debug)]
pub struct EarlyTlsStream {
    io: TcpStream,
    conn: ServerConnection,
    /// Early data drained from rustls, not yet read by the caller.
    early: Vec<u8>,
    eof: bool,
    close_sent: bool,
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

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl EarlyTlsStream {
    /// Handshakes `conn` (made from the ClientHello already read) until it completes, or
    /// until a resuming client's early data is here.
    pub async fn accept(io: TcpStream, mut conn: ServerConnection) -> io::Result<Self> {
        // Records that arrived with the ClientHello (early data) are already buffered.
        conn.process_new_packets().map_err(tls_error)?;
        let mut s = Self {
            io,
            conn,
            early: Vec::new(),
            eof: false,
            close_sent: false,
        };
        loop {
            std::future::poll_fn(|cx| s.poll_flush_tls(cx)).await?;
            if !s.conn.is_handshaking() {
                return Ok(s);
            }
            s.drain_early_data();
            if !s.early.is_empty() {
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

    /// The rustls connection, to queue records on it.
    pub fn connection_mut(&mut self) -> &mut ServerConnection {
        &mut self.conn
    }

    /// The early data received so far, removed from the stream.
    pub fn take_early_data(&mut self) -> Vec<u8> {
        self.drain_early_data();
        std::mem::take(&mut self.early)
    }

    fn drain_early_data(&mut self) {
        if let Some(mut reader) = self.conn.early_data() {
            // Bounded by the listener's early_data limit, which rustls enforces on receipt.
            let _ = reader.read_to_end(&mut self.early);
        }
    }

    /// Reads what the socket has into rustls and processes it; `Ok(0)` is end of stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = match self.conn.read_tls(&mut SyncIo {
            io: &mut self.io,
            cx,
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Let the peer see the alert rustls queued; the error is what counts.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(tls_error(e)));
        }
        Poll::Ready(Ok(n))
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

impl AsyncRead for EarlyTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Early data first, in order, then the application data that follows it.
            this.drain_early_data();
            if !this.early.is_empty() {
                let n = this.early.len().min(buf.remaining());
                buf.put_slice(&this.early[..n]);
                this.early.drain(..n);
                return Poll::Ready(Ok(()));
            }
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                // rustls has seen end of stream and has nothing more: report it.
                return Poll::Ready(Ok(()));
            }
            // Tickets, alerts or handshake replies may be waiting to go out.
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl AsyncWrite for EarlyTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
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
