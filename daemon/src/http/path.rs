//! Request-path normalization, so a rule on `/admin/*` cannot be walked around with
//! `//admin`, `/./admin`, `/x/../admin` or `/%61dmin`: the path is normalized once, the
//! rules see it, and the service receives the same path the rules saw.

/// Normalizes `path` (without its query): percent-encoded unreserved characters are decoded,
/// other escapes upper-cased, `.` and `..` segments resolved and repeated slashes merged.
/// An encoded `/` or `\` and a raw `\` are refused: what they mean differs by server.
pub fn normalize(path: &str) -> Result<String, &'static str> {
    if path == "*" {
        return Ok(path.to_owned());
    }
    if !path.starts_with('/') {
        return Err("the path does not start with '/'");
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("the path holds a backslash"),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .ok_or("the path holds a malformed %-escape")?;
                let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("00"), 16)
                    .map_err(|_| "the path holds a malformed %-escape")?;
                match byte {
                    b'/' | b'\\' => return Err("the path holds an encoded slash"),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        decoded.push(char::from(b));
                    }
                    _ => {
                        decoded.push('%');
                        decoded
                            .push_str(&std::str::from_utf8(hex).unwrap_or("").to_ascii_uppercase());
                    }
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        // Valid UTF-8 in, so a multi-byte character is copied whole.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        decoded.push(ch);
        i += ch.len_utf8();
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn dot_segments_repeated_slashes_and_unreserved_escapes_are_normalized() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/users", "/api/users"),
            ("//admin", "/admin"),
            ("/./admin/", "/admin/"),
            ("/x/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%2e%2e/b", "/a../b"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%7e", "/a/~"),
            ("/a%20b", "/a%20b"),
            ("/a%3f", "/a%3F"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_backslashes_and_broken_escapes_are_refused() {
        for bad in [
            "/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b", "/a%", "/a%zz", "admin",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
