//! The README's install recipes, followed with a real `mtlsd` system user: files owned and
//! moded as the layout says, `mtlsd check` as root, the daemon run as the service user.
//!
//! Needs root, `runuser`, `setpriv` and `systemd-sysusers` (which creates the user from the shipped
//! snippet). Without them the tests say so and pass; with `CI` set they fail instead.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mtlsd_e2e::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const TD: &str = "example.org";

/// The `mtlsd` user's uid and gid, created from systemd/mtlsd.sysusers; `None` (and why)
/// when this machine cannot run the recipe.
#[allow(clippy::print_stderr)] // a skipped test says why on the test's stderr
fn service_user() -> Option<(u32, u32)> {
    let missing = |what: &str| {
        assert!(
            std::env::var_os("CI").is_none(),
            "install recipe test: {what} (CI must run it)"
        );
        eprintln!("install recipe test skipped: {what}");
        None
    };
    let uid = String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout).ok()?;
    if uid.trim() != "0" {
        return missing("not root");
    }
    for tool in ["runuser", "setpriv", "systemd-sysusers"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return missing(&format!("{tool} is not installed"));
        }
    }
    let sysusers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/mtlsd.sysusers");
    run_ok(Command::new("systemd-sysusers").arg(&sysusers));
    let id = |flag: &str| -> u32 {
        run_ok(Command::new("id").args([flag, "mtlsd"]))
            .trim()
            .parse()
            .unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// Sets owner and mode as the README's layout table says.
fn own(path: &Path, uid: u32, gid: u32, mode: u32) {
    chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A root directory the service user can traverse (tempdirs are 0700).
fn root_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Writes the config as the layout says (root:mtlsd 0640), then checks as root exactly the
/// files the service will read.
fn install_config(path: &Path, text: &str, gid: u32) {
    std::fs::write(path, text).unwrap();
    own(path, 0, gid, 0o640);
    run_ok(
        Command::new(mtlsd_bin())
            .args(["check", "--config"])
            .arg(path),
    );
}

/// `mtlsd run` as the service user, with the config in place (not a temp copy).
///
/// `setpriv` executes mtlsd in its own place, where `runuser` would fork and wait: so the
/// harness's kill reaches the daemon itself and no daemon outlives its test.
fn run_as_service_user(config: &Path) -> Daemon {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=mtlsd", "--regid=mtlsd", "--init-groups", "--"])
        .arg(mtlsd_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config);
    // The harness keeps a config file alive with the process; this one lives in `config`.
    let daemon = Daemon::spawn_command(command, write_config(""));
    daemon.wait_for_log("ready", |l| l["message"] == "ready");
    daemon
}

/// The server's SVID: its SPIFFE ID, and `localhost` for the client's host-name check.
fn web_spec(pki: &Pki) -> mtlsd::ca::LeafSpec {
    let mut spec =
        mtlsd::ca::LeafSpec::new(pki.id("/web").parse().unwrap(), Duration::from_secs(3600));
    spec.dns_names.push("localhost".into());
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn the_external_pki_recipe_serves_as_the_service_user_and_follows_a_rotation() {
    let Some((_, gid)) = service_user() else {
        return;
    };
    let pki = Pki::new(TD);
    let upstream = echo_upstream().await;
    let root = root_dir();
    let etc = root.path().join("etc-mtlsd");
    std::fs::create_dir(&etc).unwrap();
    own(&etc, 0, gid, 0o750);
    let issued = pki.ca.issue(&web_spec(&pki));
    let (cert, key, bundle) = (
        etc.join("svid.pem"),
        etc.join("svid.key"),
        etc.join("bundle.pem"),
    );
    issued.unwrap().write(&cert, &key).unwrap();
    std::fs::copy(pki.bundle(), &bundle).unwrap();
    own(&cert, 0, 0, 0o644);
    own(&bundle, 0, 0, 0o644);
    own(&key, 0, gid, 0o640);
    let config = etc.join("mtlsd.toml");
    install_config(
        &config,
        &format!(
            "[identity]\ntrust_domain = \"{TD}\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n{}",
            cert.display(),
            key.display(),
            bundle.display(),
            pki.inbound("web", upstream.addr, "")
        ),
        gid,
    );
    let daemon = run_as_service_user(&config);
    let mut tls = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    assert_eq!(
        echo_round_trip(&mut tls, b"as mtlsd").await.unwrap(),
        b"as mtlsd"
    );

    // Rotation as an operator does it: write beside, then rename over; owner and mode kept.
    let next = pki.ca.issue(&web_spec(&pki)).unwrap();
    let (new_cert, new_key) = (etc.join("svid.pem.new"), etc.join("svid.key.new"));
    next.write(&new_cert, &new_key).unwrap();
    own(&new_cert, 0, 0, 0o644);
    own(&new_key, 0, gid, 0o640);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let reloaded = daemon.wait_for_log("rotation picked up", |l| {
        l["message"] == "configuration reloaded"
    });
    assert_eq!(reloaded["updated"], "[\"web\"]", "{reloaded}");
    // A new client config: a resumed session would show the certificate of its first handshake.
    let fresh = tls_connect(daemon.addr("web"), pki.client("/frontend"))
        .await
        .unwrap();
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    let rotated = CertificateDer::pem_slice_iter(next.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(served, rotated, "the rotated certificate is served");
    assert_eq!(echo_round_trip(&mut tls, b"still").await.unwrap(), b"still");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_built_in_ca_recipe_serves_as_the_service_user() {
    let Some((uid, gid)) = service_user() else {
        return;
    };
    let upstream = echo_upstream().await;
    let root = root_dir();
    let (etc, state) = (
        root.path().join("etc-mtlsd"),
        root.path().join("var-lib-mtlsd"),
    );
    std::fs::create_dir(&etc).unwrap();
    std::fs::create_dir(&state).unwrap();
    own(&etc, 0, gid, 0o750);
    own(&state, uid, gid, 0o700);
    let ca = state.join("ca");
    let as_mtlsd = |args: &[&str]| {
        run_ok(
            Command::new("runuser")
                .args(["-u", "mtlsd", "--"])
                .arg(mtlsd_bin())
                .args(args),
        )
    };
    as_mtlsd(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--trust-domain",
        TD,
    ]);
    let config = etc.join("mtlsd.toml");
    install_config(
        &config,
        &format!(
            "[identity]\ntrust_domain = \"{TD}\"\nca_dir = \"{}\"\nid = \"spiffe://{TD}/web\"\ndns = [\"localhost\"]\n\
             bundle = \"{}\"\n\n[[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             forward = \"{}\"\nallow = [\"spiffe://{TD}\"]\n",
            ca.display(),
            ca.join("bundle.pem").display(),
            upstream.addr
        ),
        gid,
    );

    // A client certificate from the same CA, issued by the service user (it owns the CA).
    let (client_cert, client_key) = (state.join("client.pem"), state.join("client.key"));
    as_mtlsd(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--id",
        &format!("spiffe://{TD}/client"),
        "--cert",
        client_cert.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
    ]);
    let daemon = run_as_service_user(&config);
    let client = client_config(
        &ca.join("bundle.pem"),
        Some(&CertFiles {
            cert: client_cert,
            key: client_key,
        }),
    );
    let mut tls = tls_connect(daemon.addr("web"), client).await.unwrap();
    assert_eq!(echo_round_trip(&mut tls, b"ca").await.unwrap(), b"ca");
    let issued = daemon.wait_for_log("svid issued", |l| {
        l["message"] == "SVID issued by the built-in CA"
    });
    assert_eq!(issued["id"], format!("spiffe://{TD}/web"));
}
