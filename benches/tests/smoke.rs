//! The load harness runs end to end and reports well-formed numbers (no value is asserted).
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
            ["mtlsd", "mtlsd-x25519", "haproxy", "nginx", "stunnel"]
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
    for c in contenders {
        for key in ["software", "negotiated_group", "cipher_suite"] {
            assert!(c[key].is_string(), "{key} in {c}");
        }
        for figure in FIGURES {
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
        for name in &names {
            assert!(svg.contains(&format!(">{name}<")), "{name} in {figure}.svg");
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

/// A fresh directory under the system temp dir, unique to this test process.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mtlsd-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
