//! The first stage of an inbound TLS connection: its complete ClientHello, read
//! before it may take a handshake slot, and the per-address count of
//! connections that have not finished their handshake yet.
//!
//! A handshake slot (`max_handshakes`) is the expensive resource: it admits the
//! key exchange and the signature. A client that trickles its ClientHello one
//! byte at a time must not hold one, or a thousand such clients from one address
//! push every legitimate handshake back by seconds. So the ClientHello is read
//! here first, under its own `client_hello_timeout`, and only a complete and
//! well-formed one proceeds to wait for a slot. [`SourceLimit`] bounds how many
//! connections one IP address may have in this phase at once.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustls::server::{Accepted, Acceptor};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Refusal, RefuseReason};

/// `std::io::Read` over a tokio socket that never waits: `WouldBlock` when empty.
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Reads until rustls has a complete ClientHello; a malformed one is answered with its alert.
///
/// Everything that goes wrong here happened in the client's first flight, so a
/// protocol error is `bad_client_hello` and nothing else is.
pub async fn read(stream: &mut TcpStream) -> Result<Accepted, Refusal> {
    let mut acceptor = Acceptor::default();
    loop {
        stream
            .readable()
            .await
            .map_err(|e| Refusal::new(RefuseReason::PeerClosed, e.to_string()))?;
        match acceptor.read_tls(&mut TryRead(stream)) {
            Ok(0) => {
                return Err(Refusal::new(
                    RefuseReason::PeerClosed,
                    "closed before its ClientHello was complete",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // rustls refuses a first flight larger than any ClientHello may be.
            Err(e) if e.kind() == io::ErrorKind::Other => {
                return Err(Refusal::new(RefuseReason::BadClientHello, e.to_string()));
            }
            Err(e) => return Err(Refusal::new(RefuseReason::PeerClosed, e.to_string())),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted),
            Ok(None) => {}
            Err((error, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                // Best effort: the refusal stands whether or not the alert gets through.
                let _ = stream.write_all(&bytes).await;
                return Err(Refusal::new(
                    RefuseReason::BadClientHello,
                    error.to_string(),
                ));
            }
        }
    }
}

/// Counts, per IP address, the connections that have not finished their handshake.
#[derive(Debug)]
pub struct SourceLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceLimit {
    /// At most `max` connections per address before their handshake completes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `ip`, or `None` when that address is at its limit.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            limit: self.clone(),
            ip,
        })
    }

    /// Connections from `ip` counted now.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

/// One connection counted against its address until the guard drops.
#[derive(Debug)]
pub struct SourceGuard {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut counts = self.limit.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            // Addresses leave the map with their last connection, so it cannot grow without bound.
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_counted_alone_and_forgotten_with_its_last_connection() {
        let limit = SourceLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let a1 = limit.enter(a).unwrap();
        let a2 = limit.enter(a).unwrap();
        assert!(limit.enter(a).is_none(), "a third from the same address");
        let b1 = limit.enter(b).unwrap();
        assert_eq!((limit.count(a), limit.count(b)), (2, 1));
        drop(a1);
        let a3 = limit.enter(a).unwrap();
        drop((a2, a3, b1));
        assert!(limit.counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_complete_client_hello_is_read_and_garbage_is_a_bad_client_hello() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        // A real ClientHello from rustls, written in two pieces.
        let client = tokio::spawn(async move {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let mut conn =
                rustls::ClientConnection::new(Arc::new(config), "example.org".try_into().unwrap())
                    .unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (first, rest) = hello.split_at(7);
            s.write_all(first).await.unwrap();
            s.flush().await.unwrap();
            s.write_all(rest).await.unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let accepted = read(&mut server).await.unwrap();
        assert_eq!(accepted.client_hello().server_name(), Some("example.org"));
        drop(client.await.unwrap());

        let garbage = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let refusal = read(&mut server).await.unwrap_err();
        assert_eq!(refusal.reason, RefuseReason::BadClientHello, "{refusal:?}");
        drop(garbage.await.unwrap());
    }
}
