//! The admin endpoint's `/ui` page in Debian's headless Chromium (driven by puppeteer-core,
//! `tests/ui/ui-check.mjs`) against a running daemon: it goes live, shows our identity and
//! listeners, and a deny made while it is open appears in its table and its chart. The
//! screenshot is kept as a test artifact in `target/test-artifacts/ui.png`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use mtlsd_e2e::idp::npm_ready_in;
use mtlsd_e2e::{Daemon, Pki, echo_round_trip, echo_upstream, identity_toml, tls_connect};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::print_stderr)] // a skipped test says why on its stderr
async fn the_ui_page_shows_a_deny_made_while_it_is_open() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the UI test: apt-get install chromium"
        );
        eprintln!("UI test skipped: install Debian's chromium package");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    npm_ready_in(&dir, "puppeteer-core");
    let pki = Pki::new("ui.test");
    let upstream = echo_upstream().await;
    let daemon = Daemon::start(
        &(identity_toml(&pki, &pki.issue(&pki.id("/web")))
            + "[admin]\nlisten = \"127.0.0.1:0\"\n"
            + &pki.inbound("web", upstream.addr, "").replace(
                "allow = [\"spiffe://ui.test\"]",
                &format!("allow = [\"{}\"]", pki.id("/ok")),
            )),
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("ui.png");
    let mut browser = Command::new("node")
        .arg(dir.join("ui-check.mjs"))
        .arg(format!("http://{}", daemon.admin_addr()))
        .arg(&screenshot)
        .arg("20000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    // The page is live (its decision stream open) before the deny happens.
    let live: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(live["live"], true);
    let stranger = pki.client("/stranger");
    if let Ok(mut tls) = tls_connect(daemon.addr("web"), stranger).await {
        assert!(echo_round_trip(&mut tls, b"x").await.is_err());
    }
    let seen = lines.next().expect("the page showed the deny").unwrap();
    assert!(browser.wait().unwrap().success());
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert!(
        seen["identity"]
            .as_str()
            .unwrap()
            .starts_with(&format!("identity {}", pki.id("/web"))),
        "{seen}"
    );
    assert_eq!(seen["listeners"], serde_json::json!(["web"]));
    let deny: Vec<&str> = seen["deny"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        deny[1..6],
        [
            "DENY",
            "web",
            "refused",
            pki.id("/stranger").as_str(),
            "not_allowed"
        ]
    );
    assert_eq!(seen["chart"], serde_json::json!(["not_allowed", "1"]));
    assert_eq!(seen["errors"], serde_json::json!([]));
    assert!(screenshot.metadata().unwrap().len() > 0);
}
