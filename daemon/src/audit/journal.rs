//! Audit records to the systemd journal, one entry per record with its fields as journal
//! fields (`MTLSD_LISTENER=web`, `MTLSD_PEER_ID=…`), over journald's native protocol.
//!
//! The protocol (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>) is one datagram per entry
//! of `NAME=value\n` lines; a value holding a newline is sent as `NAME\n`, its length as a
//! 64-bit little-endian integer, the bytes and `\n`. Records are small (well under the
//! socket's datagram limit), so the memfd path for huge entries is not needed.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DecisionRecord;
use super::chain::Head;

/// Where journald listens for native entries (a service with `LogNamespace=` sees its
/// namespace's socket here too).
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// `MESSAGE_ID` of every audit entry, so `journalctl MESSAGE_ID=…` lists exactly them.
pub const MESSAGE_ID: &str = "6a0f3c1e9b8d4f52a7e41c2d90b3f815";

/// A connected journald socket.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// Connects to journald's native socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    /// The socket's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `record`, sealed as `head` (its place in the audit file's chain), as one entry.
    pub fn send(&self, record: &DecisionRecord, head: &Head) -> std::io::Result<()> {
        self.socket.send(&entry(record, head)).map(drop)
    }
}

/// The native-protocol datagram for `record`.
pub fn entry(record: &DecisionRecord, head: &Head) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    let who = record.peer_id.as_deref().unwrap_or(&record.src);
    let mut message = format!(
        "{} {} {} {who}: {}",
        record.listener, record.event, record.outcome, record.decision
    );
    if let Some(reason) = &record.reason {
        message.push_str(" (");
        message.push_str(reason);
        message.push(')');
    }
    field(&mut out, "MESSAGE", &message);
    field(&mut out, "MESSAGE_ID", MESSAGE_ID);
    // notice for a refusal, info for the rest: `journalctl -p notice` shows the denials.
    field(
        &mut out,
        "PRIORITY",
        if record.outcome == "deny" { "5" } else { "6" },
    );
    field(&mut out, "SYSLOG_IDENTIFIER", "mtlsd");
    field(&mut out, "MTLSD_AUDIT_SEQ", &head.seq.to_string());
    field(&mut out, "MTLSD_AUDIT_HASH", &head.hash);
    if let Ok(Value::Object(fields)) = serde_json::to_value(record) {
        for (name, value) in fields {
            let name = format!("MTLSD_{}", name.to_ascii_uppercase());
            match value {
                Value::String(s) => field(&mut out, &name, &s),
                Value::Null => {}
                other => field(&mut out, &name, &other.to_string()),
            }
        }
    }
    out
}

/// Appends one field in the native encoding.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a native-protocol datagram back into (name, value) pairs.
    fn parse(mut data: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|b| *b == b'\n' || *b == b'=').unwrap();
            let name = String::from_utf8(data[..end].to_vec()).unwrap();
            if data[end] == b'=' {
                let rest = &data[end + 1..];
                let nl = rest.iter().position(|b| *b == b'\n').unwrap();
                fields.push((name, String::from_utf8(rest[..nl].to_vec()).unwrap()));
                data = &rest[nl + 1..];
            } else {
                let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &data[end + 9..end + 9 + len];
                assert_eq!(data[end + 9 + len], b'\n');
                fields.push((name, String::from_utf8(value.to_vec()).unwrap()));
                data = &data[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn an_entry_carries_every_field_of_the_record_and_its_place_in_the_chain() {
        let mut record = DecisionRecord::new("refused", "web", "inbound");
        record.src = "127.0.0.1:4000".into();
        record.peer_id = Some("spiffe://example.org/intruder".into());
        record.outcome = "deny";
        record.decision = "not_allowed".into();
        record.reason = Some("line one\nline two".into());
        record.status = Some(403);
        record.generation = 3;
        let head = Head {
            seq: 42,
            hash: "ab".repeat(32),
        };
        let fields = parse(&entry(&record, &head));
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("MESSAGE"),
            Some(
                "web refused deny spiffe://example.org/intruder: not_allowed (line one\nline two)"
            )
        );
        assert_eq!(get("PRIORITY"), Some("5"));
        assert_eq!(get("MESSAGE_ID"), Some(MESSAGE_ID));
        assert_eq!(get("MTLSD_AUDIT_SEQ"), Some("42"));
        assert_eq!(get("MTLSD_AUDIT_HASH"), Some(head.hash.as_str()));
        assert_eq!(get("MTLSD_LISTENER"), Some("web"));
        assert_eq!(get("MTLSD_PEER_ID"), Some("spiffe://example.org/intruder"));
        assert_eq!(get("MTLSD_REASON"), Some("line one\nline two"));
        assert_eq!(get("MTLSD_STATUS"), Some("403"));
        assert_eq!(get("MTLSD_GENERATION"), Some("3"));
        // Absent options are absent fields, not empty ones.
        assert_eq!(get("MTLSD_JWT_ISS"), None);
    }
}
