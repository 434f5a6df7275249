//! The audit file's hash chain: each line carries the SHA-256 of its own body (`hash`) and
//! the `hash` of the line before it (`prev`), so a changed byte, a deleted record or two
//! swapped records break the chain at a line that [`verify`] names.
//!
//! A line is `{"seq":N,<record>,"prev":"<hex>","hash":"<hex>"}`, where `hash` is the SHA-256
//! of the line up to `"prev":"<hex>"` followed by `}`: the raw bytes written, so no JSON
//! canonicalization stands between the writer and the verifier.

use std::path::Path;

/// The `prev` of the very first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The marker before a line's own hash.
const HASH_FIELD: &str = ",\"hash\":\"";

/// Where a chain stands: the last record's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last record's `seq` (0 before the first).
    pub seq: u64,
    /// The last record's `hash` ([`GENESIS`] before the first).
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Appends the record whose JSON object is `record` (`{...}`) to the chain at `head`:
/// returns the line (without newline) and moves `head` to it.
pub fn seal(record: &str, head: &mut Head) -> String {
    let mut line = Vec::new();
    seal_into(record.as_bytes(), head, &mut line);
    line.pop(); // the newline
    String::from_utf8(line).unwrap_or_default()
}

/// [`seal`] for the writer: appends the line and its newline to `out`, allocating nothing
/// once `out` and `head` have grown to size.
pub fn seal_into(record: &[u8], head: &mut Head, out: &mut Vec<u8>) {
    let inner = record.trim_ascii();
    let inner = inner
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .unwrap_or(b"");
    let start = out.len();
    let seq = head.seq + 1;
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    if !inner.is_empty() {
        out.push(b',');
        out.extend_from_slice(inner);
    }
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(head.hash.as_bytes());
    out.push(b'"');
    let mut hex = [0u8; 64];
    digest_into(&out[start..], &mut hex);
    let hex = std::str::from_utf8(&hex).unwrap_or(GENESIS);
    head.seq = seq;
    head.hash.clear();
    head.hash.push_str(hex);
    out.extend_from_slice(HASH_FIELD.as_bytes());
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The hex SHA-256 of `body` followed by `}`, into `hex`.
fn digest_into(body: &[u8], hex: &mut [u8; 64]) {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(body);
    ctx.update(b"}");
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(ctx.finish(), hex);
}

fn digest(body: &str) -> String {
    let mut hex = [0u8; 64];
    digest_into(body.as_bytes(), &mut hex);
    String::from_utf8_lossy(&hex).into_owned()
}

/// The head a line leaves the chain at, if the line is a well-formed, self-consistent record.
pub fn head_of(line: &str) -> Result<Head, String> {
    let (seq, _prev, hash) = open(line)?;
    Ok(Head { seq, hash })
}

/// Splits a line into (seq, prev, hash), checking its own hash.
fn open(line: &str) -> Result<(u64, String, String), String> {
    let at = line
        .rfind(HASH_FIELD)
        .ok_or("not an audit record: no hash field")?;
    let (body, rest) = line.split_at(at);
    let hash = rest[HASH_FIELD.len()..]
        .strip_suffix("\"}")
        .filter(|h| h.len() == 64)
        .ok_or("not an audit record: malformed hash field")?;
    if digest(body) != hash {
        return Err("the record does not match its own hash: it was changed".into());
    }
    let value: serde_json::Value = serde_json::from_str(&format!("{body}}}"))
        .map_err(|e| format!("not an audit record: {e}"))?;
    let seq = value["seq"].as_u64().ok_or("not an audit record: no seq")?;
    let prev = value["prev"]
        .as_str()
        .ok_or("not an audit record: no prev")?
        .to_owned();
    Ok((seq, prev, hash.to_owned()))
}

/// A break in the chain: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct Broken {
    /// The file.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong there.
    pub problem: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The first record's `seq` and the chain's head at the end.
    pub first_seq: u64,
    /// Where the chain ends.
    pub head: Head,
}

/// Checks `files`, oldest first (a rotated series: `audit.jsonl.2 audit.jsonl.1 audit.jsonl`),
/// as one chain; names the first record that breaks it.
pub fn verify(files: &[&Path]) -> Result<Verified, Broken> {
    let mut last: Option<Head> = None;
    let mut first_seq = 0;
    let mut records = 0;
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Broken {
            file: file.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        for (i, line) in text.lines().enumerate() {
            let broken = |problem: String| Broken {
                file: file.clone(),
                line: i + 1,
                problem,
            };
            let (seq, prev, hash) = open(line).map_err(broken)?;
            match &last {
                None => first_seq = seq,
                Some(head) => {
                    if seq != head.seq + 1 {
                        return Err(broken(format!(
                            "record {seq} follows record {}: {}",
                            head.seq,
                            if seq > head.seq + 1 {
                                "records are missing"
                            } else {
                                "records are out of order"
                            }
                        )));
                    }
                    if prev != head.hash {
                        return Err(broken(format!(
                            "record {seq} does not chain to record {} before it",
                            head.seq
                        )));
                    }
                }
            }
            last = Some(Head { seq, hash });
            records += 1;
        }
    }
    Ok(Verified {
        records,
        first_seq,
        head: last.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_is_seq_record_prev_and_the_sha256_of_all_that() {
        let mut head = Head::default();
        let mut out = b"earlier\n".to_vec();
        let mut prev = GENESIS.to_owned();
        for (seq, record, inner) in [
            (1, "{\"n\":1}", ",\"n\":1"),
            (2, " {} ", ""),
            (3, "{\"s\":\"x\"}", ",\"s\":\"x\""),
        ] {
            let from = out.len();
            seal_into(record.as_bytes(), &mut head, &mut out);
            let body = format!("{{\"seq\":{seq}{inner},\"prev\":\"{prev}\"");
            let hash = hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                format!("{body}}}").as_bytes(),
            ));
            let line = format!("{body},\"hash\":\"{hash}\"}}");
            assert_eq!(
                std::str::from_utf8(&out[from..]).unwrap(),
                format!("{line}\n")
            );
            assert_eq!(
                head,
                Head {
                    seq,
                    hash: hash.clone()
                }
            );
            assert_eq!(head_of(&line).unwrap(), head);
            prev = hash;
        }
        assert!(out.starts_with(b"earlier\n"));
    }

    fn chain(n: usize) -> Vec<String> {
        let mut head = Head::default();
        (0..n)
            .map(|i| seal(&format!("{{\"n\":{i}}}"), &mut head))
            .collect()
    }

    fn check(lines: &[String]) -> Result<Verified, Broken> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        verify(&[&path]).map_err(|mut b| {
            b.file = "audit.jsonl".into();
            b
        })
    }

    #[test]
    fn an_intact_chain_verifies_and_every_tampering_is_named() {
        let lines = chain(5);
        let ok = check(&lines).unwrap();
        assert_eq!((ok.records, ok.first_seq, ok.head.seq), (5, 1, 5));

        let mut changed = lines.clone();
        changed[2] = changed[2].replace("\"n\":2", "\"n\":7");
        let err = check(&changed).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.problem.contains("changed"), "{err}");

        let mut deleted = lines.clone();
        deleted.remove(1);
        let err = check(&deleted).unwrap_err();
        assert_eq!(
            (err.line, err.problem.contains("missing")),
            (2, true),
            "{err}"
        );

        let mut swapped = lines.clone();
        swapped.swap(1, 3);
        let err = check(&swapped).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn a_rotated_series_is_one_chain() {
        let lines = chain(6);
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("a.1"), dir.path().join("a"));
        std::fs::write(&old, lines[..3].join("\n") + "\n").unwrap();
        std::fs::write(&new, lines[3..].join("\n") + "\n").unwrap();
        assert_eq!(verify(&[&old, &new]).unwrap().records, 6);
        // In the wrong order, the series breaks where the files meet.
        let err = verify(&[&new, &old]).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.file.ends_with("a.1"), "{err}");
    }
}
