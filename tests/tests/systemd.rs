//! systemd's side of `Type=notify`: a datagram socket standing where systemd's would.

use mtlsd_e2e::*;
use tokio::net::UnixDatagram;

async fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("a notification within the wait")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Starts a daemon serving one inbound listener, with `env` telling it where systemd listens.
async fn start_notified(env: &[(&str, &str)]) -> (Pki, Daemon) {
    let pki = Pki::new("example.org");
    let upstream = echo_upstream().await;
    let config = write_config(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + &pki.inbound("web", upstream.addr, "")),
    );
    let config_path = config.path().to_str().unwrap().to_owned();
    let daemon = Daemon::spawn_with_env(&["run", "--config", &config_path], env, config);
    (pki, daemon)
}

#[tokio::test(flavor = "multi_thread")]
async fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();

    let (pki, mut daemon) = start_notified(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ])
    .await;

    // READY comes first, and only once the listener accepts.
    let ready = next_message(&socket).await;
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving 1 listeners"),
        "{ready:?}"
    );
    let client = pki.client("/frontend");
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"up").await.unwrap(), b"up");

    // The event loop keeps the watchdog fed (every WATCHDOG_USEC / 2).
    for _ in 0..3 {
        assert_eq!(next_message(&socket).await, "WATCHDOG=1");
    }

    drop(tls);
    daemon.terminate();
    // Watchdog pings may still interleave; STOPPING must arrive within the wait.
    let mut stopping = None;
    for _ in 0..50 {
        let msg = next_message(&socket).await;
        if msg.starts_with("STOPPING=1") {
            stopping = Some(msg);
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
    }
    let stopping = stopping.expect("STOPPING=1 after SIGTERM");
    assert!(
        stopping.contains("STATUS=SIGTERM: draining connections"),
        "{stopping:?}"
    );
    assert!(daemon.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn abstract_notify_sockets_work_and_a_foreign_watchdog_pid_is_ignored() {
    let name = format!("mtlsd-test-{}", std::process::id());
    let socket = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let std_socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        std_socket.set_nonblocking(true).unwrap();
        UnixDatagram::from_std(std_socket).unwrap()
    };
    // WATCHDOG_PID names another process (pid 1): the watchdog is not ours to feed.
    let (_pki, mut daemon) = start_notified(&[
        ("NOTIFY_SOCKET", &format!("@{name}")),
        ("WATCHDOG_USEC", "100000"),
        ("WATCHDOG_PID", "1"),
    ])
    .await;
    assert!(next_message(&socket).await.starts_with("READY=1\n"));
    daemon.terminate();
    // With no watchdog pings, the very next message is STOPPING.
    assert!(next_message(&socket).await.starts_with("STOPPING=1\n"));
    assert!(daemon.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_framed_by_reloading_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let (_pki, daemon) = start_notified(&[("NOTIFY_SOCKET", path.to_str().unwrap())]).await;
    assert!(next_message(&socket).await.starts_with("READY=1\n"));

    daemon.signal("HUP");
    assert_eq!(
        next_message(&socket).await,
        "RELOADING=1\nSTATUS=reloading configuration"
    );
    let ready = next_message(&socket).await;
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving 1 listeners as spiffe://example.org/web"),
        "{ready:?}"
    );

    // A broken config still ends the reload with READY=1, and the status says it failed.
    std::fs::write(daemon.config_path(), "not = [valid").unwrap();
    daemon.signal("HUP");
    assert!(next_message(&socket).await.starts_with("RELOADING=1\n"));
    let ready = next_message(&socket).await;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("last reload failed"), "{ready:?}");
}

#[test]
fn systemd_analyze_accepts_the_units() {
    // verify insists that ExecStart= binaries exist, so point the copies at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    for unit in ["mtlsd.service", "mtlsd.socket"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        let text = text.replace("/usr/bin/mtlsd", mtlsd_bin().to_str().unwrap());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(["mtlsd.service", "mtlsd.socket"])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify exits 0 on some warnings; any line about our units is a finding.
    let findings: Vec<&str> = stderr.lines().filter(|l| l.contains("mtlsd")).collect();
    assert!(findings.is_empty(), "{findings:#?}");
}
