//! `mtlsd watch`: decisions as they happen, read from the admin endpoint's `/decisions`
//! stream, one line each, with running allow/deny counts per listener.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// What to show.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only refusals and denied requests.
    pub deny_only: bool,
    /// Only this listener.
    pub listener: Option<String>,
    /// Colour allow green and deny red (on a terminal).
    pub colour: bool,
}

/// Streams decisions from the admin endpoint at `admin` to `out` until the daemon ends the
/// stream (shutdown, or this reader fell behind).
pub async fn watch(
    admin: SocketAddr,
    options: &WatchOptions,
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut query = Vec::new();
    if options.deny_only {
        query.push("outcome=deny".to_owned());
    }
    if let Some(l) = &options.listener {
        query.push(format!("listener={l}"));
    }
    let path = format!("/decisions?{}", query.join("&"));
    let tcp = TcpStream::connect(admin)
        .await
        .map_err(|e| format!("cannot reach the admin endpoint at {admin}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, admin.to_string())
        .header(hyper::header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{admin}/decisions: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "{admin}/decisions answered {} (is this mtlsd's admin endpoint?)",
            response.status()
        ));
    }
    writeln!(out, "watching decisions at {admin} (Ctrl-C to stop)").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(line) = render(&event, &mut counts, options.colour) {
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// One line for an SSE event carrying a decision, counting it; `None` for comments.
fn render(event: &str, counts: &mut BTreeMap<String, (u64, u64)>, colour: bool) -> Option<String> {
    if event.starts_with("event: lagged") {
        return Some("the daemon cut this view off: it fell behind".to_owned());
    }
    let data = event.lines().find_map(|l| l.strip_prefix("data: "))?;
    let d: Value = serde_json::from_str(data).ok()?;
    let listener = d["listener"].as_str().unwrap_or("?");
    let deny = d["outcome"] == "deny";
    let count = counts.entry(listener.to_owned()).or_default();
    if deny {
        count.1 += 1;
    } else {
        count.0 += 1;
    }
    let outcome = match (deny, colour) {
        (true, true) => "\u{1b}[31mDENY \u{1b}[0m",
        (false, true) => "\u{1b}[32mALLOW\u{1b}[0m",
        (true, false) => "DENY ",
        (false, false) => "ALLOW",
    };
    let time = d["time"].as_str().unwrap_or("");
    let what = match (d["method"].as_str(), d["path"].as_str()) {
        (Some(m), Some(p)) => format!(" {m} {p} -> {}", d["status"]),
        _ => String::new(),
    };
    let rule = d["rule"]
        .as_str()
        .map(|r| format!(" rule={r}"))
        .unwrap_or_default();
    Some(format!(
        "{time} {outcome} {listener} {} {} {}{what}{rule} [{listener}: {} allowed, {} denied]",
        d["event"].as_str().unwrap_or(""),
        d["peer_id"]
            .as_str()
            .unwrap_or(d["src"].as_str().unwrap_or("?")),
        d["decision"].as_str().unwrap_or(""),
        count.0,
        count.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_lines_with_running_counts_and_colour_only_when_asked() {
        let mut counts = BTreeMap::new();
        let deny = "event: decision\ndata: {\"time\":\"t\",\"event\":\"request\",\"listener\":\"api\",\"peer_id\":\"spiffe://ex/a\",\"outcome\":\"deny\",\"decision\":\"deny\",\"rule\":\"no-admin\",\"method\":\"GET\",\"path\":\"/admin\",\"status\":403}\n\n";
        let line = render(deny, &mut counts, false).unwrap();
        assert_eq!(
            line,
            "t DENY  api request spiffe://ex/a deny GET /admin -> 403 rule=no-admin [api: 0 allowed, 1 denied]"
        );
        let coloured = render(deny, &mut counts, true).unwrap();
        assert!(
            coloured.contains("\u{1b}[31m") && coloured.ends_with("[api: 0 allowed, 2 denied]")
        );
        assert_eq!(render(": keep-alive\n\n", &mut counts, false), None);
    }
}
