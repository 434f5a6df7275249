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

/// `std::io::Read` over a tokio socket that never waits (`WouldBlock` when empty), keeping a
/// copy of what it read when asked to.
struct TryRead<'a> {
    stream: &'a TcpStream,
    copy: Option<&'a mut Vec<u8>>,
}

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.try_read(buf)?;
        if let Some(copy) = self.copy.as_deref_mut() {
            copy.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// A complete ClientHello: rustls' view of it, and its bytes as received when they were kept.
pub struct Hello {
    /// Ready to become a server connection with the config of our choice.
    pub accepted: Accepted,
    /// The records as received (the ClientHello, and any early data sent with it).
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("raw_len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// Reads until rustls has a complete ClientHello; a malformed one is answered with its alert.
///
/// Everything that goes wrong here happened in the client's first flight, so a
/// protocol error is `bad_client_hello` and nothing else is. With `keep_raw` the
/// bytes are kept too, for [`offered_early_psks`].
pub async fn read(stream: &mut TcpStream, keep_raw: bool) -> Result<Hello, Refusal> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::new();
    loop {
        stream
            .readable()
            .await
            .map_err(|e| Refusal::new(RefuseReason::PeerClosed, e.to_string()))?;
        let mut reader = TryRead {
            stream,
            copy: keep_raw.then_some(&mut raw),
        };
        match acceptor.read_tls(&mut reader) {
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
            Ok(Some(accepted)) => return Ok(Hello { accepted, raw }),
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

/// TLS extension numbers (RFC 8446, 4.2).
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;

/// The PSK identities of a ClientHello that also sends early data, from its raw records;
/// `None` when it sends no early data, or the bytes do not parse.
///
/// A listener that accepts 0-RTT uses this to see, before rustls decides, whether
/// the session the client resumes is still in its cache: when it is not, the early
/// data will be rejected, and the connection is served with a config whose skip
/// budget covers it (see `tls::REJECTED_EARLY_DATA_SKIP`).
pub fn offered_early_psks(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let hello = handshake_message(raw)?;
    let mut r = Reader(&hello);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut body = Reader(r.bytes(len)?);
    body.bytes(2 + 32)?; // legacy_version, random
    body.vec8()?; // legacy_session_id
    body.vec16()?; // cipher_suites
    body.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(body.vec16()?);
    let (mut early, mut identities) = (false, None);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            EXT_EARLY_DATA => early = true,
            EXT_PRE_SHARED_KEY => {
                let mut list = Reader(Reader(data).vec16()?);
                let mut ids = Vec::new();
                while !list.0.is_empty() {
                    ids.push(list.vec16()?.to_vec());
                    list.bytes(4)?; // obfuscated_ticket_age
                }
                identities = Some(ids);
            }
            _ => {}
        }
    }
    identities.filter(|_| early)
}

/// The first handshake message of `raw`, joined from as many handshake records as it spans.
fn handshake_message(raw: &[u8]) -> Option<Vec<u8>> {
    const HANDSHAKE: u8 = 22;
    let mut records = Reader(raw);
    let mut message = Vec::new();
    while !records.0.is_empty() {
        let kind = records.u8()?;
        records.bytes(2)?; // legacy_record_version
        let fragment = records.vec16()?;
        if kind != HANDSHAKE {
            break;
        }
        message.extend_from_slice(fragment);
        if message.len() >= 4 {
            let len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if message.len() >= 4 + len {
                message.truncate(4 + len);
                return Some(message);
            }
        }
    }
    None
}

/// A cursor over bytes where every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
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

    /// A TLS 1.3 ClientHello record carrying `extensions`, split into records of `split` bytes.
    fn client_hello(extensions: &[(u16, Vec<u8>)], split: usize) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]); // random
        body.extend([0]); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut message = vec![1];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        let mut records = Vec::new();
        for fragment in message.chunks(split) {
            records.extend([22, 3, 1]);
            records.extend((fragment.len() as u16).to_be_bytes());
            records.extend(fragment);
        }
        // Early data follows as application-data records; it must not confuse the parser.
        records.extend([23, 3, 3, 0, 3, 1, 2, 3]);
        records
    }

    fn psk(ids: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for id in ids {
            list.extend((id.len() as u16).to_be_bytes());
            list.extend(*id);
            list.extend([0, 0, 0, 9]); // obfuscated age
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data.extend([0, 33, 32]); // binders: one of 32 bytes
        data.extend([0u8; 32]);
        data
    }

    #[test]
    fn early_psk_identities_are_read_only_when_early_data_is_offered() {
        let both = [
            (0u16, vec![0, 0]),
            (EXT_EARLY_DATA, vec![]),
            (EXT_PRE_SHARED_KEY, psk(&[b"ticket-1", b"t2"])),
        ];
        for split in [16, 1000] {
            assert_eq!(
                offered_early_psks(&client_hello(&both, split)),
                Some(vec![b"ticket-1".to_vec(), b"t2".to_vec()]),
                "records of {split} bytes"
            );
        }
        let no_early = [(EXT_PRE_SHARED_KEY, psk(&[b"ticket-1"]))];
        assert_eq!(offered_early_psks(&client_hello(&no_early, 1000)), None);
        assert_eq!(
            offered_early_psks(&client_hello(&[(EXT_EARLY_DATA, vec![])], 1000)),
            None
        );
        // Truncated anywhere: no answer, no panic.
        let full = client_hello(&both, 1000);
        for cut in 0..full.len() - 8 {
            assert_eq!(offered_early_psks(&full[..cut]), None, "cut at {cut}");
        }
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
        let hello = read(&mut server, true).await.unwrap();
        assert_eq!(
            hello.accepted.client_hello().server_name(),
            Some("example.org")
        );
        assert!(
            hello.raw.starts_with(&[0x16, 0x03]),
            "the records as received"
        );
        // A first connection offers no PSK.
        assert_eq!(offered_early_psks(&hello.raw), None);
        drop(client.await.unwrap());

        let garbage = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let refusal = read(&mut server, false).await.unwrap_err();
        assert_eq!(refusal.reason, RefuseReason::BadClientHello, "{refusal:?}");
        drop(garbage.await.unwrap());
    }
}
