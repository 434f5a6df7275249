//! `mtlsd ca` and the command line as an operator meets them: what `ca issue` writes and
//! refuses, serials as openssl prints them, `ca list --json`, RFC 3339 times in logs,
//! and clap errors that name every alternative.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtlsd_e2e::*;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TD: &str = "example.org";

fn mtlsd(args: &[&str]) -> Output {
    Command::new(mtlsd_bin()).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `mtlsd ca init` into `dir/ca` with `extra` arguments; returns the CA directory.
fn ca_init(dir: &Path, extra: &[&str]) -> PathBuf {
    let ca = dir.join("ca");
    let mut args = vec![
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--trust-domain",
        TD,
    ];
    args.extend(extra);
    let out = mtlsd(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    ca
}

/// `mtlsd --log-format json ca issue` for `spiffe://TD/<path>` writing `<dir>/<path>.pem|.key`.
fn ca_issue(ca: &Path, path: &str, extra: &[&str]) -> (Output, PathBuf) {
    let dir = ca.parent().unwrap();
    let cert = dir.join(format!("{path}.pem"));
    let key = dir.join(format!("{path}.key"));
    let id = format!("spiffe://{TD}/{path}");
    let mut args = vec![
        "--log-format",
        "json",
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--id",
        &id,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend(extra);
    (mtlsd(&args), cert)
}

fn list_json(ca: &Path) -> Vec<Value> {
    run_ok(
        Command::new(mtlsd_bin())
            .args(["ca", "list", "--json", "--dir"])
            .arg(ca),
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| OffsetDateTime::parse(s, &Rfc3339).is_ok())
}

/// `openssl verify` of `cert` against the CA, with extra checks (`-verify_hostname …`).
fn openssl_verify(ca: &Path, cert: &Path, checks: &[&str]) -> Output {
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.join("bundle.pem"))
        .arg("-untrusted")
        .arg(cert)
        .args(checks)
        .arg(cert)
        .output()
        .unwrap()
}

#[test]
fn issue_names_the_workload_in_the_subject_and_dns_and_ip_sans_satisfy_host_checks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), &[]);
    let (out, plain) = ca_issue(&ca, "web", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&plain),
    );
    assert!(
        subject.contains(&format!("CN = spiffe://{TD}/web")),
        "{subject}"
    );
    // The log line's expiry is RFC 3339, like every certificate time mtlsd shows.
    let line: Value = serde_json::from_str(stderr(&out).lines().last().unwrap()).unwrap();
    assert_eq!(line["message"], "SVID issued");
    assert!(is_rfc3339(&line["not_after"]), "{line}");

    // What the help says: without --dns/--ip, clients that check host names refuse the leaf.
    let by_name = openssl_verify(&ca, &plain, &["-verify_hostname", "localhost"]);
    assert!(!by_name.status.success(), "a leaf without SANs passed");

    let (out, named) = ca_issue(
        &ca,
        "api",
        &["--dns", "localhost", "--ip", "127.0.0.1", "--name", "api-1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let by_name = openssl_verify(&ca, &named, &["-verify_hostname", "localhost"]);
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stdout)
    );
    let by_ip = openssl_verify(&ca, &named, &["-verify_ip", "127.0.0.1"]);
    assert!(
        by_ip.status.success(),
        "{}",
        String::from_utf8_lossy(&by_ip.stdout)
    );
    let text = run_ok(
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-ext",
                "subjectAltName",
                "-in",
            ])
            .arg(&named),
    );
    assert!(text.contains("CN = api-1"), "{text}");
    assert!(
        text.contains("IP Address:127.0.0.1") && text.contains("DNS:localhost"),
        "{text}"
    );
    assert!(text.contains(&format!("URI:spiffe://{TD}/api")), "{text}");
}

#[test]
fn a_leaf_outliving_its_intermediate_is_refused_naming_both_dates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), &["--intermediate-ttl", "30d"]);
    let ledger = std::fs::read(ca.join("ledger.json")).unwrap();
    let (out, cert) = ca_issue(&ca, "web", &["--ttl", "3650d"]);
    assert!(!out.status.success());
    let message = stderr(&out);
    let dates: Vec<&str> = message
        .split([' ', ',', '"'])
        .filter(|w| OffsetDateTime::parse(w, &Rfc3339).is_ok())
        .collect();
    assert_eq!(dates.len(), 2, "both expiries: {message}");
    assert!(message.contains("at most 29d"), "{message}");
    assert!(!cert.exists());
    assert_eq!(std::fs::read(ca.join("ledger.json")).unwrap(), ledger);

    // `check` says the same before the daemon would try to issue such an SVID.
    let config = dir.path().join("mtlsd.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\ntrust_domain = \"{TD}\"\nca_dir = \"{}\"\nid = \"spiffe://{TD}/web\"\nsvid_ttl = \"60d\"\n\
             [[inbound]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\nallow = [\"spiffe://{TD}\"]\n",
            ca.display()
        ),
    )
    .unwrap();
    let out = mtlsd(&["check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("outlive"), "{}", stderr(&out));

    // And an intermediate may not outlive its root.
    let out = mtlsd(&[
        "ca",
        "init",
        "--dir",
        dir.path().join("ca2").to_str().unwrap(),
        "--trust-domain",
        TD,
        "--root-ttl",
        "10d",
        "--intermediate-ttl",
        "20d",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("root CA"), "{}", stderr(&out));
}

#[test]
fn a_failed_issue_leaves_the_ledger_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), &[]);
    let (out, _) = ca_issue(&ca, "first", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ledger = std::fs::read(ca.join("ledger.json")).unwrap();

    let missing = dir.path().join("no-such-dir/web.pem");
    let key = dir.path().join("web.key");
    let out = mtlsd(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--id",
        &format!("spiffe://{TD}/web"),
        "--cert",
        missing.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-such-dir/web.pem"),
        "{}",
        stderr(&out)
    );
    // The cause once, not once per layer of the error chain.
    assert_eq!(
        stderr(&out).matches("No such file or directory").count(),
        1,
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(ca.join("ledger.json")).unwrap(), ledger);
    assert!(!key.exists(), "the key of a failed issue was written");
    assert_eq!(list_json(&ca).len(), 1);
}

#[test]
fn revoke_takes_serials_as_openssl_prints_them_and_list_json_says_status_and_dates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), &[]);
    let (_, a) = ca_issue(&ca, "a", &[]);
    let (_, b) = ca_issue(&ca, "b", &[]);
    let (_, _c) = ca_issue(&ca, "c", &[]);
    // `openssl x509 -serial`: serial=4A0B…; `-text`: 4a:0b:… (lowercase, colons).
    let serial = |cert: &Path| {
        run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(cert),
        )
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
    };
    let upper = serial(&a);
    let colons = serial(&b)
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    for given in [&upper, &colons] {
        run_ok(
            Command::new(mtlsd_bin())
                .args(["ca", "revoke", "--serial", given, "--dir"])
                .arg(&ca),
        );
    }

    let listed = list_json(&ca);
    assert_eq!(listed.len(), 3);
    for (line, status) in listed.iter().zip(["revoked", "revoked", "valid"]) {
        assert_eq!(line["status"], status, "{line}");
        assert!(is_rfc3339(&line["not_after"]), "{line}");
        assert_eq!(line["revoked_at"].is_null(), status == "valid", "{line}");
        if status == "revoked" {
            assert!(is_rfc3339(&line["revoked_at"]), "{line}");
        }
    }
    assert_eq!(listed[0]["serial"], upper.to_lowercase());
    // The table and the JSON agree.
    let table = run_ok(
        Command::new(mtlsd_bin())
            .args(["ca", "list", "--dir"])
            .arg(&ca),
    );
    let not_after = listed[2]["not_after"].as_str().unwrap();
    assert!(table.contains(not_after), "{table}");
}

#[test]
fn the_daemon_logs_its_issued_svid_expiry_in_rfc3339() {
    let pki = Pki::new(TD);
    let daemon = Daemon::start(&format!(
        "[identity]\ntrust_domain = \"{TD}\"\nca_dir = \"{}\"\nid = \"spiffe://{TD}/web\"\n{}",
        pki.dir.path().join("ca").display(),
        pki.inbound("web", "127.0.0.1:1", "")
    ));
    let issued = daemon.wait_for_log("svid issued", |l| {
        l["message"] == "SVID issued by the built-in CA"
    });
    assert!(is_rfc3339(&issued["not_after"]), "{issued}");
}

#[test]
fn clap_errors_name_every_alternative_and_refuse_ignored_options() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let id = format!("spiffe://{TD}/x");
    let cases: [(&[&str], &[&str]); 5] = [
        (&["ca", "revoke", "--dir", d], &["--serial", "--id"]),
        (
            &["ca", "issue", "--dir", d, "--id", &id, "--cert", "c"],
            &["--key", "--csr"],
        ),
        (
            &[
                "ca",
                "init",
                "--dir",
                d,
                "--trust-domain",
                TD,
                "--pin-env",
                "PIN",
            ],
            &["--root-key"],
        ),
        (
            &["run", "--config", "mtlsd.toml", "--state-dir", d],
            &["--state-dir", "--config"],
        ),
        (
            &["ca", "revoke", "--dir", d, "--serial", "4A:0G"],
            &["not hexadecimal"],
        ),
    ];
    for (args, mentions) in cases {
        let out = mtlsd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        for m in mentions {
            assert!(
                stderr(&out).contains(m),
                "{args:?} should mention {m}: {}",
                stderr(&out)
            );
        }
    }
    // No software CA was made behind the operator's back.
    assert!(!dir.path().join("root.pem").exists());
}
