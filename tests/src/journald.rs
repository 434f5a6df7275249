//! A real `systemd-journald` (Debian's binary) for one test: a journal namespace of its own,
//! run in a private mount namespace whose `/run`, `/var/log` and `/etc/systemd` are
//! directories of the test, so the host's journal is never touched. Programs under test run
//! through [`Journald::command`], which shows them this journal at the standard
//! `/run/systemd/journal/socket`, as systemd does for a service with `LogNamespace=`.
//!
//! Needs root (for the mount namespace); skipped with a message otherwise, never in CI.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::WAIT;

const JOURNALD: &str = "/lib/systemd/systemd-journald";
const NAMESPACE: &str = "mtlsdtest";

/// A running journald in its own namespace; stopped when dropped.
pub struct Journald {
    child: Child,
    dir: tempfile::TempDir,
}

/// Why journald cannot run here, or `None` when it can.
fn missing() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return Some("not root (a private mount namespace needs it)".into());
    }
    if !Path::new(JOURNALD).exists() {
        return Some(format!("no {JOURNALD} (Debian: systemd)"));
    }
    if which("unshare").is_none() || which("journalctl").is_none() {
        return Some("no unshare or journalctl (Debian: util-linux, systemd)".into());
    }
    None
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

impl Journald {
    /// Starts journald and waits (bounded by [`WAIT`]) for its `READY=1`; `None` (saying
    /// why) where it cannot run, which fails instead when `CI` is set.
    #[allow(clippy::print_stderr)] // a skipped test says why on the test's stderr
    pub fn start() -> Option<Self> {
        if let Some(why) = missing() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but journald cannot run: {why}"
            );
            eprintln!("skipping: journald cannot run: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["run/systemd", "varlog/journal", "etc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // The programs under test find the namespace's sockets at the standard path.
        std::os::unix::fs::symlink(
            format!("journal.{NAMESPACE}"),
            d.join("run/systemd/journal"),
        )
        .unwrap();
        // No rate limit: a test's burst must all be stored.
        std::fs::write(
            d.join(format!("etc/journald@{NAMESPACE}.conf")),
            "[Journal]\nStorage=persistent\nRateLimitIntervalSec=0\n",
        )
        .unwrap();
        let notify = d.join("notify.sock");
        let ready = UnixDatagram::bind(&notify).unwrap();
        ready.set_read_timeout(Some(WAIT)).unwrap();
        let log = std::fs::File::create(d.join("journald.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "set -e; mount --bind \"$1/run\" /run; mount --bind \"$1/varlog\" /var/log; \
                 mount --bind \"$1/etc\" /etc/systemd; exec \"$2\" \"$3\"",
            )
            .args(["sh"])
            .arg(d)
            .args([JOURNALD, NAMESPACE])
            .env("NOTIFY_SOCKET", &notify)
            // Its own messages to the test's file, not to the host's kernel log.
            .env("SYSTEMD_LOG_TARGET", "console")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-journald");
        let mut journald = Self { child, dir };
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            match ready.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => break,
                Ok(_) => {}
                Err(e) => panic!("journald sent no READY=1 ({e}); {}", journald.log()),
            }
            assert!(
                Instant::now() < deadline,
                "journald not ready; {}",
                journald.log()
            );
        }
        if let Ok(Some(status)) = journald.child.try_wait() {
            panic!("journald exited: {status}; {}", journald.log());
        }
        Some(journald)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("journald.log")).unwrap_or_default()
    }

    /// `program args…` run in a private mount namespace that shows it this journal at
    /// `/run/systemd/journal/socket` (its `/run` is the test's).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("set -e; mount --bind \"$1/run\" /run; shift; exec \"$@\"")
            .arg("sh")
            .arg(self.dir.path())
            .arg(program);
        command
    }

    /// Every entry matching the `journalctl` matches (e.g. `MESSAGE_ID=…`), as JSON objects.
    pub fn entries(&self, matches: &[&str]) -> Vec<Value> {
        let journals = self.dir.path().join("varlog/journal");
        let Some(dir) = std::fs::read_dir(&journals)
            .unwrap()
            .map_while(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(&format!(".{NAMESPACE}")))
        else {
            return Vec::new();
        };
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(&dir)
            .args(["-o", "json", "--all", "--no-pager"])
            .args(matches)
            .output()
            .expect("journalctl");
        assert!(
            out.status.success(),
            "journalctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON entry"))
            .collect()
    }

    /// Polls (bounded by [`WAIT`]) until at least `n` entries match; returns them.
    pub fn wait_for_entries(&self, matches: &[&str], n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let entries = self.entries(matches);
            if entries.len() >= n {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} journal entries matching {matches:?} within {WAIT:?}: {entries:?}",
                entries.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        // SIGTERM: journald syncs and exits within milliseconds; the mounts go with it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
