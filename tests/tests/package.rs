//! The Debian package, installed on this machine: `scripts/package` builds it, `dpkg -i`
//! installs it, the installed units pass `systemd-analyze verify`, the installed binary
//! checks the installed example config, man and the shells find their files, nothing is
//! started, and `dpkg --purge` leaves nothing behind.
//!
//! Needs root and dpkg (it installs a package system-wide, as scripts/test installs the
//! tools it drives). Without them it says so and passes; with `CI` set it fails instead.
//! Its cost is one release build, inside `scripts/package`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mtlsd_e2e::run_ok;

/// Files the package puts outside /etc; all must go with `dpkg --purge`.
const INSTALLED: &[&str] = &[
    "/usr/bin/mtlsd",
    "/usr/lib/systemd/system/mtlsd.service",
    "/usr/lib/systemd/system/mtlsd.socket",
    "/usr/lib/sysusers.d/mtlsd.conf",
    "/usr/lib/tmpfiles.d/mtlsd.conf",
    "/usr/share/man/man1/mtlsd.1.gz",
    "/usr/share/man/man1/mtlsd-ca-issue.1.gz",
    "/usr/share/bash-completion/completions/mtlsd",
    "/usr/share/zsh/vendor-completions/_mtlsd",
    "/usr/share/fish/vendor_completions.d/mtlsd.fish",
];
const EXAMPLE: &str = "/etc/mtlsd/mtlsd.toml.example";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why this machine cannot run the test, if it cannot.
#[allow(clippy::print_stderr)] // a skipped test says why on the test's stderr
fn skipped() -> bool {
    let uid = run_ok(Command::new("id").arg("-u"));
    let why = if uid.trim() != "0" {
        "not root"
    } else if !has("dpkg") {
        "dpkg is not installed"
    } else if !has("systemd-analyze") {
        "systemd-analyze is not installed"
    } else {
        return false;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "package test: {why} (CI must run it)"
    );
    eprintln!("package test skipped: {why}");
    true
}

/// Purges the package when dropped, so a failed assertion leaves no install behind.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "mtlsd"]).output();
    }
}

#[test]
fn the_debian_package_installs_verifies_checks_and_purges_cleanly() {
    if skipped() {
        return;
    }
    let out = run_ok(&mut Command::new(repo().join("scripts/package")));
    let deb = PathBuf::from(
        out.lines()
            .last()
            .expect("scripts/package printed the .deb"),
    );
    assert!(
        deb.extension().is_some_and(|e| e == "deb"),
        "{}",
        deb.display()
    );

    // The state directory is the operator's once it holds something; an empty one goes with a purge.
    let state = Path::new("/var/lib/mtlsd");
    let state_existed = state.exists();
    let installed = Installed;
    run_ok(
        Command::new("dpkg")
            .arg("-i")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    for file in INSTALLED.iter().chain([&EXAMPLE]) {
        assert!(Path::new(file).is_file(), "{file} not installed");
    }
    assert_eq!(
        std::fs::read_to_string(EXAMPLE).unwrap(),
        std::fs::read_to_string(repo().join("examples/mtlsd.toml")).unwrap()
    );

    // postinst made the service user and its directories, and started nothing.
    run_ok(Command::new("id").arg("mtlsd"));
    let stat = run_ok(Command::new("stat").args(["-c", "%U:%G %a", "/etc/mtlsd"]));
    assert_eq!(stat.trim(), "root:mtlsd 750");
    let stat = run_ok(Command::new("stat").args(["-c", "%U:%G %a", "/var/lib/mtlsd"]));
    assert_eq!(stat.trim(), "mtlsd:mtlsd 700");
    for wants in [
        "/etc/systemd/system/multi-user.target.wants/mtlsd.service",
        "/etc/systemd/system/sockets.target.wants/mtlsd.socket",
    ] {
        assert!(!Path::new(wants).exists(), "{wants}: enabled on install");
    }

    // The units as installed, ExecStart=/usr/bin/mtlsd included.
    let verify = Command::new("systemd-analyze")
        .args(["verify"])
        .args(&INSTALLED[1..3])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    let findings: Vec<&str> = stderr.lines().filter(|l| l.contains("mtlsd")).collect();
    assert!(findings.is_empty(), "{findings:#?}");

    // The example config, once the CA it names exists: here in a temp dir, not /var/lib.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    run_ok(
        Command::new("/usr/bin/mtlsd")
            .args(["ca", "init", "--trust-domain", "example.org", "--dir"])
            .arg(&ca),
    );
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(example.contains("\"/var/lib/mtlsd/ca\""), "{example}");
    let config = dir.path().join("mtlsd.toml");
    std::fs::write(
        &config,
        example.replace("/var/lib/mtlsd/ca", ca.to_str().unwrap()),
    )
    .unwrap();
    run_ok(
        Command::new("/usr/bin/mtlsd")
            .args(["check", "--config"])
            .arg(&config),
    );

    if has("man") {
        let page = run_ok(Command::new("man").args(["-w", "mtlsd"]));
        assert_eq!(page.trim(), "/usr/share/man/man1/mtlsd.1.gz");
    }

    // Remove: every file outside /etc gone; the conffile stays until the purge, as dpkg does.
    run_ok(Command::new("dpkg").args(["-r", "mtlsd"]));
    for file in INSTALLED {
        assert!(!Path::new(file).exists(), "{file} left after dpkg -r");
    }
    assert!(Path::new(EXAMPLE).exists(), "dpkg -r removed the conffile");

    // Purge: the package and every file of it gone (the mtlsd user stays, as Debian
    // keeps system users).
    run_ok(Command::new("dpkg").args(["--purge", "mtlsd"]));
    drop(installed);
    let query = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", "mtlsd"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&query.stdout);
    assert!(
        !query.status.success() || status.trim() == "not-installed",
        "after purge: {status}"
    );
    for file in INSTALLED.iter().chain([&EXAMPLE]) {
        assert!(!Path::new(file).exists(), "{file} left after purge");
    }
    // Nor a mask or enablement link that dpkg -r leaves until the purge.
    if Path::new("/etc/systemd/system").is_dir() {
        let links = run_ok(Command::new("find").args(["/etc/systemd/system", "-name", "mtlsd.*"]));
        assert!(links.trim().is_empty(), "left after purge: {links}");
    }
    if !state_existed {
        assert!(
            !state.exists(),
            "an empty {} left after purge",
            state.display()
        );
    }
}
