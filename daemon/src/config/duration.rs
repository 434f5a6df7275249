//! Durations as the config file writes them (`500ms`, `10s`, `5m`, `2h`, `1d`): parsing,
//! formatting, and the serde helpers that show them that way in `/config`.

use std::time::Duration;

/// The longest duration any setting takes: a century. Longer ones are typos, and would
/// overflow the clock arithmetic of timers and certificate lifetimes.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `500ms`, `10s`, `5m`, `2h` or `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; write e.g. \"500ms\", \"10s\", \"5m\", \"2h\" or \"1d\"")
    })?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("{s:?} has no unit: add one, e.g. \"{n}s\"")),
        _ => {
            return Err(format!(
                "{s:?} has unit {unit:?}; use ms, s, m, h or d, e.g. \"{n}s\""
            ));
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| {
            format!(
                "{s:?} is too long; at most {}",
                format_duration(MAX_DURATION)
            )
        })
}

/// Writes a duration the way the config file does (`10s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Serializes a duration as [`format_duration`] writes it.
pub(super) fn as_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serializes an optional duration as [`format_duration`] writes it, or as none.
pub(super) fn as_optional_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}
