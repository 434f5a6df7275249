use super::*;

const IDENTITY: &str = r#"
[identity]
trust_domain = "example.org"
cert = "/etc/mtlsd/svid.pem"
key = "/etc/mtlsd/svid.key"
bundle = "/etc/mtlsd/bundle.pem"
"#;

/// The smallest listener table, for tests about other sections (a config needs one).
const ONE_LISTENER: &str = r#"
[[outbound]]
name = "out"
listen = "127.0.0.1:15001"
connect = "10.0.0.5:15443"
server_id = "spiffe://example.org/web"
"#;

fn parse(body: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{IDENTITY}{body}"), "mtlsd.toml")
}

fn problems(body: &str) -> Vec<String> {
    match parse(body) {
        Ok(_) => panic!("config was accepted"),
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

/// The line number in the combined file of the first line of `body` that contains `needle`.
fn line_of(body: &str, needle: &str) -> usize {
    IDENTITY.lines().count() + body.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn complete_example_parses_into_typed_values() {
    let c = parse(
        r#"
[limits]
max_connections = 100
handshake_timeout = "3s"

[shutdown]
grace = "5s"

[[inbound]]
name = "web"
listen = "0.0.0.0:15443"
forward = "unix:/run/web.sock"
mode = "permissive"
allow = ["spiffe://example.org/ns/default/sa/frontend", "spiffe://example.org/ns/batch/*", "unauthenticated"]
deny = ["spiffe://example.org/ns/batch/sa/untrusted"]
proxy_protocol = true
limits = { idle_timeout = "90s" }

[[outbound]]
name = "to-web"
listen = "127.0.0.1:15001"
connect = "10.0.0.5:15443"
server_id = "spiffe://example.org/ns/default/sa/web"
"#,
    )
    .unwrap();
    assert_eq!(c.identity.trust_domain, "example.org");
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    let web = &c.inbound[0];
    assert_eq!(web.forward, Upstream::Unix("/run/web.sock".into()));
    assert_eq!(web.mode, Mode::Permissive);
    assert_eq!(web.policy.allow.len(), 3);
    assert!(web.proxy_protocol);
    // Listener limits inherit [limits] and override field by field.
    assert_eq!(web.limits.max_connections, 100);
    assert_eq!(web.limits.handshake_timeout, Duration::from_secs(3));
    assert_eq!(web.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(web.limits.max_handshakes, Limits::default().max_handshakes);
    assert_eq!(c.outbound[0].server_id.path(), "/ns/default/sa/web");
    assert_eq!(c.outbound[0].limits.max_connections, 100);
}

#[test]
fn bad_values_name_file_line_and_key() {
    let body = r#"
[[inbound]]
name = "web"
listen = "0.0.0.0:15443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org/a", "spiffe://Example.org/b"]
"#;
    let p = problems(body);
    let line = line_of(body, "allow =");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!(
            "mtlsd.toml:{line}:36: inbound[0].allow[1]: trust domain has 'E'"
        )),
        "{}",
        p[0]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let body = r#"
[[inbound]]
name = "web"
listen = "localhost:15443"
forward = "unix:relative.sock"
mode = "strict"
allow = ["unauthenticated"]
limits = { handshake_timeout = "10 seconds" }

[[outbound]]
name = "web"
listen = "127.0.0.1:15001"
connect = "10.0.0.5"
server_id = "spiffe://example.org/x/"
"#;
    let p = problems(body).join("\n");
    for want in [
        format!("{}:", line_of(body, "listen = \"localhost")),
        "inbound[0].listen: \"localhost:15443\" is not an IP:port address".into(),
        "inbound[0].forward: \"unix:relative.sock\": a Unix socket path must be absolute".into(),
        "inbound[0].allow[0]: \"unauthenticated\" only applies to mode = \"permissive\"".into(),
        "inbound[0].limits.handshake_timeout: \"10 seconds\" has unit \" seconds\"".into(),
        "outbound[0].name: listener name \"web\" is used twice".into(),
        "outbound[0].connect: \"10.0.0.5\" is not host:port".into(),
        "outbound[0].server_id: path segments must be non-empty".into(),
    ] {
        assert!(p.contains(&want), "missing {want:?} in:\n{p}");
    }
}

#[test]
fn unknown_keys_and_missing_sections_are_located() {
    let body = "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\nalow = [\"spiffe://example.org\"]\n";
    let p = problems(body);
    assert!(
        p[0].starts_with(&format!(
            "mtlsd.toml:{}:1: inbound[0].alow: unknown field `alow`",
            line_of(body, "alow")
        )),
        "{}",
        p[0]
    );

    let e = Config::parse("[[inbound]]\nname = \"x\"\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("f.toml:"), "{e}");
    assert!(e.contains("missing field"), "{e}");
}

#[test]
fn a_listener_that_allows_nobody_is_a_mistake() {
    let p = problems(
        "[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\n",
    );
    assert!(
        p[0].contains("inbound[0].allow: allow is empty"),
        "{}",
        p[0]
    );
}

#[test]
fn no_listeners_is_an_error() {
    let p = problems("");
    assert!(p[0].contains("no listeners"), "{}", p[0]);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("-5s").is_err());
}

#[test]
fn type_errors_name_their_key() {
    let body = "\n[[inbound]]\nname = 5\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\n";
    let p = problems(body);
    assert_eq!(
        p[0],
        format!(
            "mtlsd.toml:{}:8: inbound[0].name: expected a string, found the number 5",
            line_of(body, "name = 5")
        )
    );
}

#[test]
fn the_admin_endpoint_only_listens_on_loopback() {
    let listener = "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\nallow = [\"spiffe://example.org\"]\n";
    let ok = parse(&format!("[admin]\nlisten = \"[::1]:9901\"\n{listener}")).unwrap();
    assert_eq!(ok.admin.unwrap().listen, "[::1]:9901".parse().unwrap());
    let body = format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{listener}");
    let p = problems(&body);
    assert!(
        p[0].starts_with(&format!(
            "mtlsd.toml:{}:10: admin.listen: 0.0.0.0:9901 is not a loopback address",
            line_of(&body, "0.0.0.0:9901")
        )),
        "{}",
        p[0]
    );
}

#[test]
fn the_config_in_effect_serializes_with_defaults_and_without_key_queries() {
    let mut config = parse(
        "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"unix:/run/api.sock\"\nallow = [\"spiffe://example.org/a/*\"]\n",
    )
    .unwrap();
    config.identity.source = IdentitySource::Files {
        cert: "/etc/mtlsd/svid.pem".into(),
        key: KeyRef::parse("pkcs11:token=t;object=k?pin-value=1234"),
    };
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["identity"]["source"]["key"], "pkcs11:token=t;object=k");
    assert_eq!(json["inbound"][0]["forward"], "unix:/run/api.sock");
    assert_eq!(
        json["inbound"][0]["policy"]["allow"][0],
        "spiffe://example.org/a/*"
    );
    assert_eq!(json["inbound"][0]["limits"]["idle_timeout"], "1h");
    assert_eq!(json["shutdown_grace"], "30s");
    assert!(!json.to_string().contains("1234"));
}

#[test]
fn identity_comes_from_files_or_from_the_built_in_ca_never_both() {
    let listener = "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\nallow = [\"spiffe://example.org\"]\n";
    let ca = Config::parse(
        &format!(
            "[identity]\ntrust_domain = \"example.org\"\nca_dir = \"/var/lib/mtlsd/ca\"\n\
             id = \"spiffe://example.org/host/a\"\nsvid_ttl = \"1h\"\n{listener}"
        ),
        "ca.toml",
    )
    .unwrap();
    assert_eq!(
        ca.identity.source,
        IdentitySource::Ca {
            dir: "/var/lib/mtlsd/ca".into(),
            id: "spiffe://example.org/host/a".parse().unwrap(),
            ttl: Duration::from_secs(3600),
            dns: vec![],
        }
    );
    // The CA's bundle and CRL are used unless given.
    assert_eq!(
        ca.identity.bundle,
        Some(PathBuf::from("/var/lib/mtlsd/ca/bundle.pem"))
    );
    assert_eq!(
        ca.identity.crl,
        Some(PathBuf::from("/var/lib/mtlsd/ca/crl.pem"))
    );

    let mixed = Config::parse(
        &format!(
            "[identity]\ntrust_domain = \"example.org\"\nca_dir = \"/ca\"\ncert = \"/c.pem\"\n{listener}"
        ),
        "mixed.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        mixed.contains("mixed.toml:2:16: identity: set either cert, key and bundle"),
        "{mixed}"
    );
}

#[test]
fn counts_and_durations_beyond_any_sane_size_are_refused_before_anything_allocates() {
    let body = r#"
[resumption]
session_cache_size = 9223372036854775807

[crypto]
max_in_flight = 1000000000

[limits]
max_connections = 0
max_handshakes = 100000000000
idle_timeout = "99999999d"
"#
    .to_owned()
        + ONE_LISTENER;
    let body = body.as_str();
    let got = problems(body);
    let expect = [
        (
            "session_cache_size",
            "resumption.session_cache_size: must be a whole number from 1 to 1000000",
        ),
        (
            "max_in_flight",
            "crypto.max_in_flight: must be a whole number from 1 to 65536",
        ),
        (
            "max_connections",
            "limits.max_connections: must be a whole number from 1 to 10000000",
        ),
        (
            "max_handshakes",
            "limits.max_handshakes: must be a whole number from 1 to 10000000",
        ),
        (
            "idle_timeout",
            "limits.idle_timeout: \"99999999d\" is too long; at most 36500d",
        ),
    ];
    for (needle, message) in expect {
        let line = line_of(body, needle);
        assert!(
            got.iter()
                .any(|p| p.contains(&format!(":{line}:")) && p.ends_with(message)),
            "no problem `{message}` on line {line} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn a_session_cache_of_the_largest_allowed_size_is_accepted() {
    let c = parse(&format!(
        "[resumption]\nsession_cache_size = 1000000\n{ONE_LISTENER}"
    ))
    .unwrap();
    assert_eq!(c.resumption.session_cache_size, MAX_SESSION_CACHE);
}

#[cfg(not(feature = "openssl"))]
#[test]
fn the_openssl_backend_is_refused_where_it_is_not_built_in() {
    let body = r#"
[crypto]
backend = "openssl"
"#
    .to_owned()
        + ONE_LISTENER;
    let body = body.as_str();
    let p = problems(body);
    assert_eq!(
        p,
        [format!(
            "mtlsd.toml:{}:11: crypto.backend: this mtlsd was built without the openssl feature; \
             rebuild with --features openssl",
            line_of(body, "backend =")
        )]
    );
}

#[test]
fn host_port_is_split_once_for_validation_and_for_the_server_name() {
    assert_eq!(host_port("[::1]:8080"), Some(("::1", 8080)));
    assert_eq!(host_port("web.internal:443"), Some(("web.internal", 443)));
    for bad in [
        "web.internal",
        "web:0",
        ":80",
        "a/b:80",
        "[::1]]:80",
        "web:65536",
    ] {
        assert_eq!(host_port(bad), None, "{bad}");
    }
}

/// `mtlsd.toml:LINE:COLUMN` of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    at_nth(text, needle, 0)
}

/// `mtlsd.toml:LINE:COLUMN` of occurrence `nth` (from 0) of `needle` in `text`.
fn at_nth(text: &str, needle: &str, nth: usize) -> String {
    let (offset, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in text {nth} times"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("mtlsd.toml:{line}:{column}")
}

/// The problems of a whole config text, with file checks.
fn checked_problems(text: &str) -> Vec<String> {
    match Config::parse_checked(text, "mtlsd.toml") {
        Ok(_) => panic!("config was accepted"),
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn unknown_keys_and_type_errors_are_all_reported_in_file_order() {
    let body = r#"
[limits]
max_connections = "100"
idle_timout = "5s"

[[inbound]]
name = "a"
listen = "0.0.0.0:1"
forward = "127.0.0.1:2"
allow = ["spiffe://example.org", 5]
colour = "blue"

[[inbound]]
name = "b"
listen = "0.0.0.0:2"
forward = "127.0.0.1:3"
allow = ["spiffe://example.org"]
proxy_protocol = "yes"
"#;
    let text = format!("{IDENTITY}{body}");
    let colour = "unknown field `colour`; expected one of `name`, `listen`, `forward`, `mode`, \
                  `allow`, `deny`, `proxy_protocol`, `resumption`, `early_data`, `limits`, `protocol`, `http`";
    assert_eq!(
        problems(body),
        [
            format!(
                "{}: limits.max_connections: expected a number, found the string \"100\"; \
                 write it without quotes",
                at(&text, "\"100\"")
            ),
            format!(
                "{}: limits.idle_timout: unknown field `idle_timout`; did you mean `idle_timeout`?",
                at(&text, "idle_timout")
            ),
            format!(
                "{}: inbound[0].allow[1]: expected a string, found the number 5",
                at(&text, "5]")
            ),
            format!("{}: inbound[0].colour: {colour}", at(&text, "colour")),
            format!(
                "{}: inbound[1].proxy_protocol: expected true or false, found the string \"yes\"",
                at(&text, "\"yes\"")
            ),
        ]
    );
}

#[test]
fn a_missing_key_is_named_and_the_rest_of_the_file_still_checked() {
    let body = r#"
[[inbound]]
name = "web"
forward = "127.0.0.1:2"
allow = ["spiffe://example.org"]

[[outbound]]
name = "out"
listen = "127.0.0.1:15001"
connect = "10.0.0.5"
server_id = "spiffe://example.org/web"
"#;
    let text = format!("{IDENTITY}{body}");
    assert_eq!(
        problems(body),
        [
            format!(
                "{}: inbound[0].listen: missing field `listen`",
                at(&text, "[[inbound]]")
            ),
            format!(
                "{}: outbound[0].connect: \"10.0.0.5\" is not host:port (e.g. \"127.0.0.1:8080\", \
                 \"[::1]:8080\" or \"web.internal:8080\")",
                at(&text, "\"10.0.0.5\"")
            ),
        ]
    );
    let e = Config::parse(ONE_LISTENER, "f.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "f.toml:1:1: identity: missing [identity] table");
}

#[test]
fn a_key_written_twice_is_named_and_other_problems_still_reported() {
    let body = r#"
[[inbound]]
name = "web"
listen = "0.0.0.0:1"
forward = "127.0.0.1"
allow = ["spiffe://example.org"]
allow = ["spiffe://example.org/a"]
"#;
    let text = format!("{IDENTITY}{body}");
    assert_eq!(
        problems(body),
        [
            format!(
                "{}: inbound[0].forward: \"127.0.0.1\" is not host:port (e.g. \"127.0.0.1:8080\", \
                 \"[::1]:8080\" or \"web.internal:8080\")",
                at(&text, "\"127.0.0.1\"")
            ),
            format!(
                "{}: duplicate key `allow`; each key may be set once per table",
                at_nth(&text, "allow =", 1)
            ),
        ]
    );
    let twice = format!("{IDENTITY}\n[identity]\ntrust_domain = \"example.org\"\n{ONE_LISTENER}");
    let p = checked_problems(&twice);
    assert!(
        p.iter()
            .any(|p| p.ends_with("table [identity] is defined twice")),
        "{p:?}"
    );
}

#[test]
fn a_syntax_error_is_reported_alone_and_precisely() {
    // An unclosed array makes every later line look wrong to the parser; only the first
    // error is real, and nothing after it is trusted.
    let body = "\n[[inbound]]\nname = \"web\"\nallow = [\"spiffe://example.org\"\nlisten = 5\n";
    let p = problems(body);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!("mtlsd.toml:{}:", line_of(body, "listen = 5"))),
        "{p:?}"
    );
}

#[test]
fn a_duration_without_a_unit_says_which_unit_to_add() {
    let body = format!("[shutdown]\ngrace = \"30\"\n{ONE_LISTENER}");
    assert_eq!(
        problems(&body),
        [format!(
            "mtlsd.toml:{}:9: shutdown.grace: \"30\" has no unit: add one, e.g. \"30s\"",
            line_of(&body, "grace")
        )]
    );
    assert_eq!(
        parse_duration("10 seconds").unwrap_err(),
        "\"10 seconds\" has unit \" seconds\"; use ms, s, m, h or d, e.g. \"10s\""
    );
}

#[test]
fn unauthenticated_in_a_deny_list_is_reported_at_that_rule() {
    let body = "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\n\
                allow = [\"spiffe://example.org\"]\ndeny = [\"spiffe://example.org/x\", \"unauthenticated\"]\n";
    let text = format!("{IDENTITY}{body}");
    assert_eq!(
        problems(body),
        [format!(
            "{}: inbound[0].deny[1]: \"unauthenticated\" only applies to mode = \"permissive\"",
            at(&text, "\"unauthenticated\"")
        )]
    );
}

/// Writes `text` to `dir/name` with permission bits `mode`.
fn write_file(dir: &Path, name: &str, mode: u32, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn file_checks_report_every_unreadable_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    write_file(dir.path(), "svid.key", 0o644, "key");
    write_file(dir.path(), "crl.pem", 0o644, "crl");
    std::fs::create_dir(dir.path().join("bundle.pem")).unwrap();
    let text = format!(
        r#"[identity]
trust_domain = "example.org"
cert = "{d}/svid.pem"
key = "{d}/svid.key"
bundle = "{d}/bundle.pem"
crl = "{d}/crl.pem"

[crypto]
backend = "pkcs11"

[crypto.pkcs11]
module = "{d}/libsofthsm2.so"
pin_file = "{d}/pin"

[resumption]
ticket_key_file = "{d}/tickets"
{ONE_LISTENER}"#
    );
    // Starting or reloading reads these files anyway, so only `check` opens them first.
    assert!(Config::parse(&text, "mtlsd.toml").is_ok());
    let enoent = "No such file or directory (os error 2)";
    assert_eq!(
        checked_problems(&text),
        [
            format!(
                "{}: identity.cert: cannot read {d}/svid.pem: {enoent}",
                at(&text, &format!("\"{d}/svid.pem"))
            ),
            format!(
                "{}: identity.key: key file {d}/svid.key has mode 0644: refusing a private key \
                 that other users can read or the group can write (chmod 600, or 640 for a \
                 dedicated group)",
                at(&text, &format!("\"{d}/svid.key"))
            ),
            format!(
                "{}: identity.bundle: {d}/bundle.pem is a directory, not a file",
                at(&text, &format!("\"{d}/bundle.pem"))
            ),
            format!(
                "{}: crypto.pkcs11.module: cannot read {d}/libsofthsm2.so: {enoent}",
                at(&text, &format!("\"{d}/libsofthsm2.so"))
            ),
            format!(
                "{}: crypto.pkcs11.pin_file: cannot read key file {d}/pin: {enoent}",
                at(&text, &format!("\"{d}/pin"))
            ),
            format!(
                "{}: resumption.ticket_key_file: cannot read key file {d}/tickets: {enoent}",
                at(&text, &format!("\"{d}/tickets"))
            ),
        ]
    );
}

#[test]
fn a_directory_that_is_not_a_ca_says_to_run_ca_init() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        "[identity]\ntrust_domain = \"example.org\"\nca_dir = \"{d}\"\n\
         id = \"spiffe://example.org/host/a\"\n{ONE_LISTENER}"
    );
    assert_eq!(
        checked_problems(&text),
        [format!(
            "mtlsd.toml:3:10: identity.ca_dir: {d} is not a CA directory; run \
             `mtlsd ca init --dir {d}` first"
        )]
    );
}

/// The acceptance test of issue 15: six different mistakes in different sections, all
/// reported by one run, in file order, each with its line and key.
#[test]
fn six_mistakes_come_back_in_one_run_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    write_file(dir.path(), "svid.pem", 0o644, "cert");
    write_file(dir.path(), "svid.key", 0o600, "key");
    let text = format!(
        r#"[identity]
trust_domain = "example.org"
cert = "{d}/svid.pem"
key = "{d}/svid.key"
bundle = "{d}/bundle.pem"

[limits]
max_connections = "many"

[shutdown]
grace = "30"

[[inbound]]
name = "web"
listen = "0.0.0.0:15443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org/frontend"]
proxy = true

[[outbound]]
name = "web"
listen = "127.0.0.1:15001"
connect = "10.0.0.5:15443"
server_id = "spiffe://Example.org/web"
"#
    );
    let p = checked_problems(&text);
    let expected = [
        (
            at(&text, &format!("\"{d}/bundle.pem")),
            "identity.bundle",
            "cannot read",
        ),
        (
            at(&text, "\"many\""),
            "limits.max_connections",
            "expected a number, found the string \"many\"",
        ),
        (
            at(&text, "\"30\""),
            "shutdown.grace",
            "\"30\" has no unit: add one, e.g. \"30s\"",
        ),
        (
            at(&text, "proxy ="),
            "inbound[0].proxy",
            "unknown field `proxy`",
        ),
        (
            at_nth(&text, "\"web\"", 1),
            "outbound[0].name",
            "listener name \"web\" is used twice",
        ),
        (
            at(&text, "\"spiffe://Example.org/web\""),
            "outbound[0].server_id",
            "trust domain has 'E'",
        ),
    ];
    assert_eq!(p.len(), expected.len(), "{p:#?}");
    for (got, (position, key, message)) in p.iter().zip(&expected) {
        assert!(
            got.starts_with(&format!("{position}: {key}: {message}")),
            "expected {position}: {key}: {message}…, got {got}"
        );
    }
}

#[test]
fn a_missing_key_file_names_the_file_and_the_os_error_once() {
    use crate::identity::IdentityError;
    use crate::runtime::StartError;
    let missing = Path::new("/nonexistent/mtlsd/svid.key");
    let e = mtlsd_crypto::read_secret_file(missing).unwrap_err();
    // As the binary prints it: anyhow's `{:#}` walks `source()` too.
    let e = anyhow::Error::new(StartError::Identity(IdentityError::Key(e)));
    let shown = format!("{e:#}");
    assert_eq!(
        shown,
        "identity: cannot read key file /nonexistent/mtlsd/svid.key: No such file or directory \
         (os error 2)"
    );
    let config = anyhow::Error::new(Config::load(missing).unwrap_err());
    let shown = format!("{config:#}");
    assert_eq!(shown.matches("svid.key").count(), 1, "{shown}");
    assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
}

#[test]
fn a_misspelt_key_is_one_problem_not_two() {
    // `nme` for `name`: the unknown key is reported; that `name` is missing is not.
    let body = "\n[[inbound]]\nnme = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\n\
                alow = [\"spiffe://example.org\"]\n";
    let text = format!("{IDENTITY}{body}");
    assert_eq!(
        problems(body),
        [
            format!(
                "{}: inbound[0].nme: unknown field `nme`; did you mean `name`?",
                at(&text, "nme")
            ),
            format!(
                "{}: inbound[0].alow: unknown field `alow`; did you mean `allow`?",
                at(&text, "alow")
            ),
        ]
    );
    // When the key it resembles is there too, that key's own problems still count.
    let body = "\n[[inbound]]\nname = \"web\"\nlisten = \"0.0.0.0:1\"\nforward = \"127.0.0.1:2\"\n\
                allow = [\"spiffe://Example.org\"]\nalow = [\"spiffe://example.org\"]\n";
    let p = problems(body);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].contains("inbound[0].allow[0]: trust domain has 'E'"),
        "{p:#?}"
    );
}

const HTTP_LISTENER: &str = r#"
[[inbound]]
name = "api"
listen = "0.0.0.0:8443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org"]
protocol = "http"
"#;

#[test]
fn an_http_listener_reads_its_rules_and_issuers() {
    let body = format!(
        r#"{HTTP_LISTENER}
[inbound.http]
upstream = "h2c"
dry_run = true

[[inbound.http.jwt]]
issuer = "https://idp.example.org"
audiences = ["api"]
jwks_uri = "https://idp.example.org/jwks"
from_params = ["access_token"]
output_claim_to_headers = [{{ header = "x-team", claim = "org.team" }}]

[[inbound.http.rules]]
name = "no-admin"
action = "DENY"
from = [{{ not_principals = ["spiffe://example.org/ops/*"] }}]
to = [{{ paths = ["/admin/*"], methods = ["POST"] }}]
when = [{{ key = "request.auth.claims[org][team]", values = ["payments"] }}]
"#
    );
    let config = parse(&body).unwrap();
    let inbound = &config.inbound[0];
    assert_eq!(inbound.protocol, Protocol::Http);
    let http = inbound.http.as_ref().unwrap();
    assert_eq!(http.upstream, UpstreamProtocol::H2c);
    assert!(http.dry_run);
    assert_eq!(http.rules[0].action, crate::http::rules::Action::Deny);
    assert_eq!(
        http.rules[0].when[0].key.to_string(),
        "request.auth.claims[org][team]"
    );
    let jwt = &http.jwt[0];
    assert_eq!(
        jwt.from,
        [TokenSource::Param {
            name: "access_token".into()
        }]
    );
    assert_eq!(jwt.clock_skew, Duration::from_secs(60));
    assert_eq!(jwt.claim_headers[0].header.as_str(), "x-team");
    // Without `protocol`, a listener stays a byte-for-byte forward.
    let tcp = parse(&HTTP_LISTENER.replace("protocol = \"http\"", "")).unwrap();
    assert_eq!(tcp.inbound[0].protocol, Protocol::Tcp);
    assert!(tcp.inbound[0].http.is_none());
}

#[test]
fn mistakes_in_http_rules_and_issuers_are_located() {
    let body = format!(
        r#"{HTTP_LISTENER}
[[inbound.http.jwt]]
issuer = "https://idp.example.org"
jwks_uri = "ftp://idp.example.org/jwks"
clock_skew = "1h"

[[inbound.http.jwt]]
issuer = "https://other.example.org"

[[inbound.http.rules]]
action = "permit"
to = [{{ paths = ["admin/*"], methods = ["GET /"] }}]
when = [{{ key = "request.auth.claim[groups]", values = ["x"] }}]

[[inbound.http.rules]]
action = "allow"
from = [{{ ip_blocks = ["10.0.0.0/33"], principals = ["spiffe://example.org/a*"] }}]
when = [{{ key = "request.headers[x-env]" }}]
"#
    );
    let text = format!("{IDENTITY}{body}");
    let found = problems(&body);
    let want = [
        format!(
            "{}: inbound[0].http.jwt[0].jwks_uri: \"ftp://idp.example.org/jwks\": jwks_uri must be an http:// or https:// URL with a host",
            at(&text, "\"ftp:")
        ),
        format!(
            "{}: inbound[0].http.jwt[0].clock_skew: must be at most 10m: a larger skew lets expired tokens in",
            at(&text, "\"1h\"")
        ),
        format!(
            "{}: inbound[0].http.jwt[1].jwks_uri: an issuer needs its keys: jwks_uri (fetched and cached), jwks (a local file), or issuer = \"spiffe://<trust domain>\" for JWT-SVIDs from the Workload API",
            at(&text, "\"https://other")
        ),
        format!(
            "{}: inbound[0].http.rules[0].action: unknown action \"permit\": expected \"allow\", \"deny\" or \"audit\"",
            at(&text, "\"permit\"")
        ),
        format!(
            "{}: inbound[0].http.rules[0].to[0].paths[0]: \"admin/*\": a path starts with '/' (or '*' for a suffix match)",
            at(&text, "\"admin/*\"")
        ),
        format!(
            "{}: inbound[0].http.rules[0].to[0].methods[0]: \"GET /\" is not an HTTP method",
            at(&text, "\"GET /\"")
        ),
        format!(
            "{}: inbound[0].http.rules[0].when[0].key: unknown condition key \"request.auth.claim[groups]\": expected request.auth.claims[…], request.headers[…], request.auth.principal, request.auth.audiences, source.ip or source.principal",
            at(&text, "\"request.auth.claim[")
        ),
        format!(
            "{}: inbound[0].http.rules[1].from[0].ip_blocks[0]: \"10.0.0.0/33\": the prefix length must be 0 to 32",
            at(&text, "\"10.0.0.0/33\"")
        ),
        format!(
            "{}: inbound[0].http.rules[1].from[0].principals[0]: '*' is only allowed as the whole last path segment, as in spiffe://td/ns/*",
            at(&text, "\"spiffe://example.org/a*\"")
        ),
        format!(
            "{}: inbound[0].http.rules[1].when[0].values: a condition needs values or not_values",
            at(&text, "\"request.headers[x-env]\"")
        ),
    ];
    assert_eq!(found, want);
}

#[test]
fn an_http_table_on_a_tcp_listener_is_refused() {
    let body = r#"
[[inbound]]
name = "raw"
listen = "0.0.0.0:8443"
forward = "127.0.0.1:8080"
allow = ["spiffe://example.org"]

[inbound.http]
dry_run = true
"#;
    let text = format!("{IDENTITY}{body}");
    assert_eq!(
        problems(body),
        [format!(
            "{}: inbound[0].http: [inbound.http] only applies to protocol = \"http\"",
            at(&text, "[inbound.http]")
        )]
    );
}

#[test]
fn the_workload_api_source_takes_a_socket_and_no_files() {
    let body = r#"
[identity]
trust_domain = "example.org"
source = "workload_api"
socket = "unix:/run/spire/agent.sock"
id = "spiffe://example.org/web"
startup_timeout = "10s"

[[identity.federated]]
trust_domain = "partner.org"
bundle = "/etc/mtlsd/partner.pem"
"#;
    let config = Config::parse(&format!("{body}{ONE_LISTENER}"), "mtlsd.toml").unwrap();
    assert_eq!(
        config.identity.source,
        IdentitySource::WorkloadApi {
            socket: "unix:/run/spire/agent.sock".into(),
            id: Some("spiffe://example.org/web".parse().unwrap()),
            startup_timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(config.identity.bundle, None);
    assert_eq!(config.identity.federated[0].trust_domain, "partner.org");

    let mixed = body.replace("startup_timeout", "cert = \"/a.pem\"\nstartup_timeout");
    let text = format!("{mixed}{ONE_LISTENER}");
    let problems: Vec<String> = match Config::parse(&text, "mtlsd.toml") {
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems,
        [format!(
            "{}: identity: source = \"workload_api\" takes the SVID and bundles from the SPIRE \
             agent: remove cert, key, bundle and ca_dir",
            at(&text, "\"example.org\"")
        )]
    );
    let bad = body
        .replace("unix:/run/spire/agent.sock", "agent.sock")
        .replace("partner.org\"", "example.org\"");
    let text = format!("{bad}{ONE_LISTENER}");
    let problems: Vec<String> = match Config::parse(&text, "mtlsd.toml") {
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems,
        [
            format!(
                "{}: identity.socket: \"agent.sock\" is not a Workload API address; write \
                 \"unix:/run/spire/agent.sock\" or \"tcp://127.0.0.1:8081\"",
                at(&text, "\"agent.sock\"")
            ),
            format!(
                "{}: identity.federated[0].trust_domain: this is our own trust domain; its bundle \
                 is identity.bundle",
                at_nth(&text, "\"example.org\"", 1)
            ),
        ]
    );
}
