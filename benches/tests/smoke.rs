//! The load harness runs end to end and reports well-formed numbers (no figure is asserted;
//! the HTTP workload's statuses and refusals are).
//!
//! The comparison runs against mtlsd and every peer installed (HAProxy, nginx with the stream
//! module, stunnel); with `CI` set, scripts/test has installed them and a missing one fails.

use std::process::Command;

use mtlsd_e2e::run_ok;
use serde_json::Value;

/// Every figure the smoke run produces for every contender, by JSON name.
const FIGURES: &[&str] = &[
    "server_cpu_us_per_full_handshake",
    "client_cpu_us_per_full_handshake",
    "full_handshakes_per_s",
    "full_fraction",
    "server_cpu_us_per_first_contact_handshake",
    "server_cpu_us_per_resumed_handshake",
    "resumed_handshakes_per_s",
    "resumed_fraction",
    "latency_200_rps_p50_us",
    "latency_200_rps_p99_us",
    "latency_200_rps_p999_us",
    "added_latency_200_rps_p99_us",
    "idle_kib_per_connection",
    "bulk_mib_per_s",
    "server_cpu_s_per_gib",
];

#[test]
fn mtlsd_bench_smoke_comparison_reports_every_figure_as_json_and_charts() {
    let charts = tempfile_dir();
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
            .args(["--smoke", "--compare", "auto", "--json", "--chart"])
            .arg(&charts),
    );
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    let contenders = report["contenders"].as_array().expect("contenders");
    let names: Vec<&str> = contenders
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.starts_with(&["mtlsd", "mtlsd-x25519"]), "{names:?}");
    if std::env::var_os("CI").is_some() {
        assert_eq!(
            names,
            [
                "mtlsd",
                "mtlsd-x25519",
                "haproxy",
                "nginx",
                "stunnel",
                "mtlsd-plain",
                "haproxy-tcp"
            ]
        );
    }
    assert_eq!(report["baseline"], "mtlsd-x25519");
    for key in ["ecdsa_p256", "rsa_2048"] {
        for kind in ["full", "resumed", "early_data"] {
            let k = &report["handshake_kinds"]["keys"][key][kind];
            for figure in ["server_cpu_us", "as_intended", "ttfb_ms"] {
                assert!(
                    k[figure].is_number(),
                    "handshake_kinds.{key}.{kind}.{figure} in {report}"
                );
            }
        }
    }
    for key in ["date", "command"] {
        assert!(report[key].is_string(), "{key} in {report}");
    }
    assert!(report["machine"]["cores"].is_u64());
    let plain = |c: &Value| matches!(c["name"].as_str(), Some("mtlsd-plain" | "haproxy-tcp"));
    assert!(
        contenders.iter().any(plain),
        "the plain-TCP baseline is a row: {names:?}"
    );
    for c in contenders {
        for key in ["software", "negotiated_group", "cipher_suite"] {
            assert!(c[key].is_string(), "{key} in {c}");
        }
        // The baselines without TLS have no resumption, client certificates or latency run.
        let tls_only =
            |f: &str| f.contains("resumed") || f.contains("latency") || f.contains("first_contact");
        if plain(c) {
            assert_eq!(c["negotiated_group"], "plain TCP", "{c}");
            for figure in FIGURES.iter().filter(|f| tls_only(f)) {
                assert!(c["median"][figure].is_null(), "{figure} in {c}");
            }
        }
        for figure in FIGURES.iter().filter(|f| !plain(c) || !tls_only(f)) {
            for stat in ["median", "min", "max"] {
                assert!(c[stat][figure].is_number(), "{stat}.{figure} in {c}");
            }
            assert!(
                c["ratio_vs_baseline"][figure].is_number()
                    || c["ratio_vs_baseline"][figure].is_null(),
                "ratio_vs_baseline.{figure} in {c}"
            );
        }
        assert_eq!(c["rounds"].as_array().map(Vec::len), Some(1), "{c}");
    }
    for figure in [
        "server_cpu_us_per_full_handshake",
        "server_cpu_us_per_resumed_handshake",
        "server_cpu_s_per_gib",
        "idle_kib_per_connection",
    ] {
        let svg = std::fs::read_to_string(charts.join(format!("{figure}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for c in contenders {
            let name = c["name"].as_str().unwrap();
            let drawn = svg.contains(&format!(">{name}<"));
            let expected = !(plain(c) && figure.contains("resumed"));
            assert_eq!(drawn, expected, "{name} in {figure}.svg");
        }
    }

    // The same JSON renders again without running anything.
    let json = charts.join("report.json");
    std::fs::write(&json, &out).unwrap();
    let table = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
            .arg("--render")
            .arg(&json),
    );
    assert!(table.contains("| mtlsd-x25519 |"), "{table}");
    std::fs::remove_dir_all(&charts).unwrap();
}

/// `mtlsd-bench http` against mtlsd and HAProxy `mode http` (HAProxy when installed; with `CI`
/// set, required): for each case (HTTP/1.1 and h2, with and without a JWT) every proxied request
/// got 200 and reached the upstream, and both refused the same requests the same way.
#[test]
fn mtlsd_bench_http_smoke_gets_200s_and_the_same_refusals_from_mtlsd_and_haproxy() {
    let out =
        run_ok(Command::new(env!("CARGO_BIN_EXE_mtlsd-bench")).args(["http", "--smoke", "--json"]));
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    let contenders = report["contenders"].as_array().expect("contenders");
    let names: Vec<&str> = contenders
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names.first(), Some(&"mtlsd"), "{names:?}");
    if std::env::var_os("CI").is_some() {
        assert_eq!(names, ["mtlsd", "haproxy"]);
    }
    let settings = &report["settings"];
    let sent = settings["connections"].as_f64().unwrap()
        * settings["requests_per_connection"].as_f64().unwrap();
    assert!(sent >= 100.0, "{settings}");
    for c in contenders {
        for case in ["h1", "h1-jwt", "h2", "h2-jwt"] {
            let k = &c["cases"][case];
            let m = &k["median"];
            assert_eq!(m["responses_200"].as_f64(), Some(sent), "{case} in {c}");
            assert_eq!(m["upstream_requests"].as_f64(), Some(sent), "{case} in {c}");
            for figure in [
                "server_cpu_us_per_request",
                "latency_p50_us",
                "latency_p99_us",
                "added_latency_p99_us",
            ] {
                assert!(m[figure].is_number(), "{figure} of {case} in {c}");
            }
            let refusals = &k["refusals"];
            assert_eq!(refusals["admin"], 403, "{case} in {c}");
            assert_eq!(refusals["admin_dotdot"], 403, "{case} in {c}");
            if case.ends_with("-jwt") {
                assert_eq!(refusals["no_token"], 401, "{case} in {c}");
                assert_eq!(refusals["tampered_token"], 401, "{case} in {c}");
            } else {
                assert!(refusals["no_token"].is_null(), "{case} in {c}");
            }
        }
    }
}

#[test]
fn mtlsd_bench_rotation_smoke_loads_a_daemon_fed_by_a_real_spire_in_both_phases() {
    if mtlsd_e2e::spire::spire_bin().is_none() {
        return;
    }
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
            .args(["rotation", "--rounds", "1", "--secs", "2", "--ttl", "4"])
            .args(["--concurrency", "2", "--no-pin"]),
    );
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    for phase in ["steady", "rotating"] {
        let p = &report[phase][0];
        assert!(p["handshakes"].as_u64().is_some_and(|n| n > 0), "{p}");
        assert_eq!(p["failures"], 0, "{p}");
        assert!(
            p["stream_round_trips"].as_u64().is_some_and(|n| n > 0),
            "{p}"
        );
        assert!(p["handshake_p99_ms"].is_number(), "{p}");
        assert!(p["server_cpu_us_per_handshake"].is_number(), "{p}");
    }
    // The steady server SVID lives an hour: its phase sees one certificate and no update.
    assert_eq!(report["steady"][0]["server_serials_seen"], 1);
    assert_eq!(report["steady"][0]["workload_api_updates_applied"], 0);
}

#[test]
fn mtlsd_bench_slowkey_smoke_handshakes_with_and_without_a_slow_key() {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
            .args([
                "slowkey",
                "--rounds",
                "1",
                "--secs",
                "1",
                "--concurrency",
                "4",
            ])
            .arg("--no-pin"),
    );
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    for (phase, latency) in [("no_latency", 0), ("with_latency", 5)] {
        let p = &report[phase][0];
        assert_eq!(p["latency_ms"], latency, "{p}");
        assert!(p["handshakes"].as_u64().is_some_and(|n| n > 0), "{p}");
        assert!(
            p["stream_round_trips"].as_u64().is_some_and(|n| n > 0),
            "{p}"
        );
        assert_eq!(p["failures"], 0, "{p}");
    }
    assert_eq!(report["device_ceiling_per_s"], 12_800.0);
    assert!(report["slow_vs_cpu_ceiling"].is_number());
}

#[test]
fn mtlsd_bench_icount_counts_the_instructions_of_a_full_handshake_under_callgrind() {
    let has_valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    if !has_valgrind {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but valgrind is missing (Debian: valgrind)"
        );
        return;
    }
    let count = || {
        let out = run_ok(Command::new(env!("CARGO_BIN_EXE_mtlsd-bench")).args([
            "icount",
            "--cases",
            "full,repeat",
        ]));
        let report: Value = serde_json::from_str(&out).expect("one JSON object");
        let case = |name: &str| {
            report["instructions"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {name} count in {report}"))
        };
        (case("full"), case("repeat"))
    };
    let ((a, repeat), (b, _)) = (count(), count());
    // A handshake is millions of instructions, and two runs agree to well under 1 %.
    assert!(a > 1_000_000, "{a}");
    assert!(a.abs_diff(b) * 100 < a, "{a} vs {b}");
    // The same peers again: each side remembers the other's two certificate signatures, and
    // four ECDSA verifications are most of a handshake's instructions.
    assert!(repeat * 4 < a * 3, "repeat {repeat} vs first {a}");
}

#[test]
fn mtlsd_bench_icount_tls_forward_case_moves_every_byte_through_the_tls_stream() {
    // What each callgrind run of the case executes, natively: it fails unless the service
    // received all 64 MiB and the copy loop counted them as from the peer.
    run_ok(Command::new(env!("CARGO_BIN_EXE_mtlsd-bench")).args([
        "icount",
        "--inner",
        "tls_forward",
    ]));
}

#[test]
fn mtlsd_bench_uring_copies_every_byte_through_both_loops() {
    // 1 or 2: io_uring is disabled for (some) processes on this kernel.
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() != "0");
    if disabled {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but io_uring is disabled (kernel.io_uring_disabled)"
        );
        return;
    }
    // Each round checks that the sink received every byte; a mismatch fails the command.
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
            .args(["uring", "--rounds", "1", "--mib", "8"]),
    );
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    for key in ["epoll_cpu_s_per_gib", "uring_cpu_s_per_gib"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
}

/// A fresh directory under the system temp dir, unique to this test process.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mtlsd-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
