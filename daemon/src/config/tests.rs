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
        "inbound[0].allow: \"unauthenticated\" only applies to mode = \"permissive\"".into(),
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
            "mtlsd.toml:{}:8: inbound[0].name: invalid type: integer `5`, expected a string",
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
        PathBuf::from("/var/lib/mtlsd/ca/bundle.pem")
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
