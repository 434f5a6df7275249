//! The audit trail and the live view: exactly the decisions made, in a hash chain that
//! `mtlsd audit verify` checks and that names the first broken record; nothing lost on a
//! kill -9 with `fsync = "every_record"`; drops counted; `/decisions` shows a deny at once.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mtlsd_e2e::http::{Service, request};
use mtlsd_e2e::journald::Journald;
use mtlsd_e2e::{
    Daemon, Pki, WAIT, admin_request, client_config, echo_round_trip, echo_upstream, identity_toml,
    metric, mtlsd_bin, tls_connect, write_config,
};
use serde_json::Value;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

fn records(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `mtlsd audit verify FILES…`: (success, stdout + stderr).
fn verify(files: &[&Path]) -> (bool, String) {
    let out = Command::new(mtlsd_bin())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn audit_table(file: &Path, extra: &str) -> String {
    format!("[audit]\nfile = \"{}\"\n{extra}\n", file.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_holds_exactly_the_decisions_made_and_verify_finds_any_tampering() {
    let pki = Pki::new("audit.test");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let service = Service::start().await;
    let deny = "[[inbound.http.rules]]\nname = \"no-admin\"\naction = \"deny\"\nto = [{ paths = [\"/admin/*\"] }]\n";
    let config = identity_toml(&pki, &pki.issue(&pki.id("/web")))
        + ADMIN
        + &audit_table(&file, "fsync = \"every_record\"")
        + &pki
            .inbound(
                "api",
                service.addr,
                &format!("protocol = \"http\"\n[inbound.http]\n{deny}"),
            )
            .replace(
                "allow = [\"spiffe://audit.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/frontend")),
            );
    let daemon = Daemon::start(&config);
    let addr = daemon.addr("api");
    let frontend = pki.issue(&pki.id("/frontend"));
    // The script: two requests allowed, one denied (three connections), one peer refused.
    assert_eq!(
        request(addr, &pki.bundle(), &frontend, &[], "/a").status,
        200
    );
    assert_eq!(
        request(addr, &pki.bundle(), &frontend, &[], "/admin/x").status,
        403
    );
    assert_eq!(
        request(addr, &pki.bundle(), &frontend, &[], "/b").status,
        200
    );
    let stranger = client_config(&pki.bundle(), Some(&pki.issue(&pki.id("/stranger"))));
    if let Ok(mut tls) = tls_connect(addr, stranger).await {
        assert!(echo_round_trip(&mut tls, b"x").await.is_err());
    }
    daemon.refused("not_allowed");
    daemon.wait_for_logs("three closes", 3, |l| l["message"] == "connection closed");
    daemon.terminate();
    let mut daemon = daemon;
    assert!(daemon.wait_exit().success());

    let all = records(&file);
    let count = |event: &str, outcome: &str| {
        all.iter()
            .filter(|r| r["event"] == event && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("admitted", "allow"), 3, "{all:#?}");
    assert_eq!(count("closed", "allow"), 3);
    assert_eq!(count("request", "allow"), 2);
    assert_eq!(count("request", "deny"), 1);
    assert_eq!(count("refused", "deny"), 1);
    assert_eq!(all.len(), 10);
    let denied = all
        .iter()
        .find(|r| r["event"] == "request" && r["outcome"] == "deny")
        .unwrap();
    assert_eq!(denied["rule"], "no-admin");
    assert_eq!(denied["path"], "/admin/x");
    assert_eq!(denied["peer_id"], pki.id("/frontend"));
    let refused = all.iter().find(|r| r["event"] == "refused").unwrap();
    assert_eq!(refused["decision"], "not_allowed");
    assert_eq!(refused["peer_id"], pki.id("/stranger"));
    assert!(all.iter().all(|r| r["generation"] == 1));
    let admitted = all.iter().find(|r| r["event"] == "admitted").unwrap();
    assert!(
        admitted["peer_serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    let (ok, out) = verify(&[&file]);
    assert!(ok, "{out}");
    assert!(out.contains("10 records"), "{out}");

    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let tampered = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    // One byte changed in record 4.
    let mut changed = lines.clone();
    changed[3] = changed[3].replacen("\"allow\"", "\"allox\"", 1);
    let (ok, out) = verify(&[&tampered("changed", &changed)]);
    assert!(!ok && out.contains("changed:4:"), "{out}");
    // Record 6 deleted.
    let mut deleted = lines.clone();
    deleted.remove(5);
    let (ok, out) = verify(&[&tampered("deleted", &deleted)]);
    assert!(
        !ok && out.contains("deleted:6:") && out.contains("missing"),
        "{out}"
    );
    // Records 2 and 3 swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let (ok, out) = verify(&[&tampered("swapped", &swapped)]);
    assert!(!ok && out.contains("swapped:2:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_record_fsync_a_kill_loses_no_admitted_connection_the_client_saw() {
    let pki = Pki::new("kill.test");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let upstream = echo_upstream().await;
    let mut daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &audit_table(&file, "fsync = \"every_record\"")
            + &pki.inbound("web", upstream.addr, "").replace(
                "allow = [\"spiffe://journal.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/frontend")),
            )),
    );
    let addr = daemon.addr("web");
    let client = pki.client("/client");
    let mut served = Vec::new();
    for _ in 0..40 {
        let mut tls = tls_connect(addr, client.clone()).await.unwrap();
        // A byte echoed back means the daemon admitted it and forwarded: the client saw it work.
        assert_eq!(echo_round_trip(&mut tls, b"x").await.unwrap(), b"x");
        served.push(tls.get_ref().0.local_addr().unwrap().to_string());
    }
    Command::new("kill")
        .args(["-KILL", &daemon.pid().to_string()])
        .status()
        .unwrap();
    daemon.wait_exit();
    let admitted: Vec<String> = records(&file)
        .iter()
        .filter(|r| r["event"] == "admitted")
        .map(|r| r["src"].as_str().unwrap().to_owned())
        .collect();
    for src in &served {
        assert!(
            admitted.contains(src),
            "{src} is missing from the audit file"
        );
    }
    let (ok, out) = verify(&[&file]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_with_on_full_drop_counts_exactly_what_it_dropped() {
    let pki = Pki::new("drop.test");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + ADMIN
            + &audit_table(
                &file,
                "on_full = \"drop\"\nqueue = 1\nfsync = \"every_record\"",
            )
            + &pki.inbound("web", upstream.addr, "").replace(
                "allow = [\"spiffe://journal.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/frontend")),
            )),
    );
    let addr = daemon.addr("web");
    let client = pki.client("/client");
    // Bursts of connections until the writer (syncing each record) has fallen behind once.
    let mut connections = 0;
    let dropped = |d: &Daemon| {
        let (_, text) = admin_request(d.admin_addr(), "/metrics", None);
        (
            metric(&text, "mtlsd_audit_dropped_total").unwrap_or(0.0) as usize,
            metric(&text, "mtlsd_audit_records_total").unwrap_or(0.0) as usize,
        )
    };
    for _ in 0..20 {
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut tls = tls_connect(addr, client).await.unwrap();
                    echo_round_trip(&mut tls, b"x").await.unwrap();
                })
            })
            .collect();
        for b in burst {
            b.await.unwrap();
        }
        connections += 20;
        daemon.wait_for_logs("closes", connections, |l| {
            l["message"] == "connection closed"
        });
        if dropped(&daemon).0 > 0 {
            break;
        }
    }
    // Each connection made two records (admitted, closed): written + dropped accounts for all.
    let deadline = Instant::now() + WAIT;
    loop {
        let (dropped, written) = dropped(&daemon);
        if dropped + written == 2 * connections {
            assert!(
                dropped > 0,
                "the queue never filled in {connections} connections"
            );
            assert_eq!(records(&file).len(), written);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dropped} dropped + {written} written != {}",
            2 * connections
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.wait_for_log("drop warning", |l| {
        l["message"] == "audit queue full: records dropped (on_full = \"drop\")"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_appears_on_the_live_decision_stream_at_once() {
    let pki = Pki::new("live.test");
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + ADMIN
            + &pki.inbound("web", upstream.addr, "").replace(
                "allow = [\"spiffe://live.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/ok")),
            )),
    );
    let admin = daemon.admin_addr();
    // A real client, curl, reading the stream of denies only.
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .arg(format!(
            "http://{admin}/decisions?outcome=deny&listener=web"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    // The stream opens with a comment: the subscription is in place before the deny.
    assert_eq!(lines.next().unwrap().unwrap(), ": mtlsd decisions");
    let started = Instant::now();
    let stranger = pki.client("/stranger");
    if let Ok(mut tls) = tls_connect(daemon.addr("web"), stranger).await {
        assert!(echo_round_trip(&mut tls, b"x").await.is_err());
    }
    let event = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .expect("a decision event");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["outcome"], "deny");
    assert_eq!(event["peer_id"], pki.id("/stranger"));
    assert_eq!(event["decision"], "not_allowed");
    let _ = curl.kill();
    let _ = curl.wait();

    // `mtlsd watch` shows the same, as plain lines when piped.
    let mut watch = Command::new(mtlsd_bin())
        .args(["watch", "--admin", &admin.to_string(), "--deny-only"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    // Wait for its subscription: it prints a header line first.
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    let stranger = pki.client("/stranger");
    if let Ok(mut tls) = tls_connect(daemon.addr("web"), stranger).await {
        assert!(echo_round_trip(&mut tls, b"x").await.is_err());
    }
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    let deadline = Instant::now() + WAIT;
    while !line.contains("not_allowed") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0);
        assert!(Instant::now() < deadline);
    }
    assert!(line.contains(&pki.id("/stranger")), "{line}");
    assert!(!line.contains('\u{1b}'), "no colour when piped: {line:?}");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_journal_on_every_audit_record_reaches_a_real_journald_with_its_fields() {
    let Some(journald) = Journald::start() else {
        return;
    };
    let pki = Pki::new("journal.test");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let upstream = echo_upstream().await;
    let config = write_config(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &audit_table(&file, "journal = true")
            + &pki.inbound("web", upstream.addr, "").replace(
                "allow = [\"spiffe://journal.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/frontend")),
            )),
    );
    let path = config.path().to_str().unwrap().to_owned();
    // Outside the namespace there is no journald here: `check` says so, naming the key.
    let check = Command::new(mtlsd_bin())
        .args(["check", "--config", &path])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).into_owned();
    if !Path::new("/run/systemd/journal/socket").exists() {
        assert!(!check.status.success(), "{said}");
        assert!(
            said.contains("audit.journal") && said.contains("no journald socket"),
            "{said}"
        );
    }

    let mut command = journald.command(&mtlsd_bin());
    command.args([
        "--log-format",
        "json",
        "--log",
        "info",
        "run",
        "--config",
        &path,
    ]);
    let daemon = Daemon::spawn_command(command, config);
    daemon.wait_for_log("ready", |l| l["message"] == "ready");
    let addr = daemon.addr("web");
    let mut tls = tls_connect(addr, pki.client("/frontend")).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"hi").await.unwrap(), b"hi");
    drop(tls);
    let stranger = client_config(&pki.bundle(), Some(&pki.issue(&pki.id("/stranger"))));
    if let Ok(mut tls) = tls_connect(addr, stranger).await {
        assert!(echo_round_trip(&mut tls, b"x").await.is_err());
    }
    daemon.refused("not_allowed");
    daemon.wait_for_log("the close", |l| l["message"] == "connection closed");

    // admitted, closed, refused: in the file, and the same three in the journal.
    let deadline = Instant::now() + WAIT;
    let mut all = records(&file);
    while all.len() < 3 {
        assert!(Instant::now() < deadline, "{all:#?}");
        std::thread::sleep(Duration::from_millis(50));
        all = records(&file);
    }
    assert_eq!(all.len(), 3, "{all:#?}");
    let message_id = format!("MESSAGE_ID={}", mtlsd::audit::journal::MESSAGE_ID);
    let entries = journald.wait_for_entries(&[&message_id], 3);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    for record in &all {
        let seq = record["seq"].to_string();
        let entry = entries
            .iter()
            .find(|e| e["MTLSD_AUDIT_SEQ"] == seq.as_str())
            .unwrap_or_else(|| panic!("no entry for record {seq} in {entries:#?}"));
        assert_eq!(entry["MTLSD_AUDIT_HASH"], record["hash"]);
        for key in [
            "event",
            "listener",
            "direction",
            "src",
            "outcome",
            "decision",
            "peer_id",
        ] {
            let field = format!("MTLSD_{}", key.to_ascii_uppercase());
            assert_eq!(entry[&field], record[key], "{field} of {entry:#}");
        }
        let priority = if record["outcome"] == "deny" {
            "5"
        } else {
            "6"
        };
        assert_eq!(entry["PRIORITY"], priority);
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "mtlsd");
        assert_eq!(entry["_TRANSPORT"], "journal");
        assert_eq!(entry["_PID"], daemon.pid().to_string().as_str());
    }
    let refused = entries
        .iter()
        .find(|e| e["MTLSD_EVENT"] == "refused")
        .unwrap();
    assert_eq!(refused["MTLSD_PEER_ID"], pki.id("/stranger").as_str());
    // Denials are notices: `journalctl -p notice` lists exactly them.
    let notices = journald.entries(&[&message_id, "PRIORITY=5"]);
    assert_eq!(notices.len(), 1, "{notices:#?}");
}
