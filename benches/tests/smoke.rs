//! The load harness runs end to end and reports well-formed numbers (no value is asserted).

use std::process::Command;

#[test]
fn mtlsd_bench_smoke_run_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_mtlsd-bench"))
        .args([
            "--handshakes",
            "40",
            "--concurrency",
            "2",
            "--bulk-mb",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for field in [
        "server_cpu_us_per_full_handshake",
        "handshakes_per_s",
        "bulk_mb_per_s",
        "server_cpu_s_per_gb",
    ] {
        assert!(
            report[field].as_f64().is_some_and(f64::is_finite),
            "{field} in {report}"
        );
    }
    assert_eq!(report["bulk_bytes"], 4 * 1024 * 1024);
    assert!(report["handshakes"].as_u64().unwrap() >= 40);
}
