//! `mtlsd-bench soak-upstream` and `soak-load` (the halves of scripts/soak) against a real mtlsd
//! for two seconds: every kind of load gets through, and an upstream killed while the down flag
//! is up yields expected errors, not errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use mtlsd_e2e::{Pki, run_ok};

const BENCH: &str = env!("CARGO_BIN_EXE_mtlsd-bench");

/// A `soak-upstream` process (killed on drop) and its echo and sink addresses.
struct SoakUpstream {
    child: Child,
    echo: String,
    sink: String,
}

impl SoakUpstream {
    fn start() -> Self {
        let mut child = Command::new(BENCH)
            .args(["soak-upstream", "--secs", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (echo, sink) = line.trim().split_once(' ').expect("echo=ADDR sink=ADDR");
        Self {
            echo: echo.strip_prefix("echo=").unwrap().to_owned(),
            sink: sink.strip_prefix("sink=").unwrap().to_owned(),
            child,
        }
    }
}

impl Drop for SoakUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// Starts a daemon in front of `up` and runs `soak-load` against it with `extra` arguments.
fn soak_load(pki: &Pki, up: &SoakUpstream, extra: &[&str]) -> String {
    let client = pki.issue(&pki.id("/load"));
    let inbound = pki.inbound("in-echo", &up.echo, "") + &pki.inbound("in-bulk", &up.sink, "");
    let daemon = pki.start_daemon(&inbound);
    let echo = daemon.addr("in-echo");
    let outbound = format!(
        "\n[[outbound]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{echo}\"\n\
         server_id = \"{}\"\n",
        pki.id("/web")
    );
    // The outbound route needs the inbound's port: add it by reload.
    let config = std::fs::read_to_string(daemon.config_path()).unwrap() + &outbound;
    std::fs::write(daemon.config_path(), config).unwrap();
    assert_eq!(daemon.reload(1)["message"], "configuration reloaded");
    run_ok(
        Command::new(BENCH)
            .args([
                "soak-load",
                "--secs",
                "2",
                "--bulk-mib",
                "1",
                "--concurrency",
                "1",
            ])
            .args(["--inbound", &echo.to_string()])
            .args(["--bulk", &daemon.addr("in-bulk").to_string()])
            .args(["--outbound", &daemon.addr("out").to_string()])
            .arg("--bundle")
            .arg(pki.bundle())
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key)
            .args(extra),
    )
}

#[test]
fn soak_load_drives_every_kind_through_mtlsd_without_errors() {
    let pki = Pki::new("soak.example");
    let up = SoakUpstream::start();
    let out = soak_load(&pki, &up, &[]);
    assert_eq!(value(&out, "errors"), 0, "{out}");
    assert_eq!(value(&out, "expected_errors"), 0, "{out}");
    for kind in ["full", "resumed", "outbound", "bulk"] {
        assert!(value(&out, &format!("{kind}_connections")) > 0, "{out}");
    }
    assert!(value(&out, "resumed_resumed_handshakes") > 0, "{out}");
}

#[test]
fn errors_while_the_down_flag_is_up_are_counted_as_expected() {
    let pki = Pki::new("soak.example");
    let mut up = SoakUpstream::start();
    // The upstream is gone before the load starts, and the flag says so.
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    let flag = pki.dir.path().join("upstream-down");
    std::fs::write(&flag, "").unwrap();
    let out = soak_load(&pki, &up, &["--down-flag", flag.to_str().unwrap()]);
    assert_eq!(value(&out, "errors"), 0, "{out}");
    assert!(value(&out, "expected_errors") > 0, "{out}");
}
