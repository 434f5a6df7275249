//! What one audit record costs the daemon, in CPU of the whole process (the data path that
//! builds and queues it *and* the writer thread that serializes, chains and writes it).
//!
//! Each sample records `iters` decisions shaped like an HTTP request's, then waits until the
//! writer has written them all, and reports the CPU time every thread of this process used
//! meanwhile (`CLOCK_PROCESS_CPUTIME_ID`), not the wall time: the writer works on another
//! thread, so wall time would hide it.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mtlsd::audit::{DecisionRecord, Decisions, Writer};
use mtlsd::config::Config;

/// CPU time used so far by every thread of this process.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A decision as an HTTP listener records one request.
fn request() -> DecisionRecord {
    DecisionRecord {
        src: "127.0.0.1:51234"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .to_string(),
        peer_id: Some("spiffe://example.org/ns/web/sa/frontend".to_owned()),
        peer_serial: Some("3a9f1c0b7d2e4a66".to_owned()),
        outcome: "allow",
        decision: "allow".to_owned(),
        rule: Some("frontend-reads".to_owned()),
        method: Some("GET".to_owned()),
        path: Some("/api/v1/items/42".to_owned()),
        status: Some(200),
        bytes_in: Some(0),
        bytes_out: Some(512),
        duration_ms: Some(0),
        ..DecisionRecord::new("request", "api", "inbound")
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let config = Config::parse(
        &format!(
            "[identity]\ntrust_domain = \"example.org\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n\
             [[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:18443\"\nforward = \"127.0.0.1:18080\"\n\
             allow = [\"spiffe://example.org\"]\n\
             [audit]\nfile = \"{}\"\nfsync = \"interval\"\nkeep = 1\n",
            file.display()
        ),
        "bench.toml",
    )
    .expect("a config");
    let audit = config.audit.expect("[audit]");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("audit");
    group.bench_function("build and drop a request record (no audit file)", |b| {
        let decisions = Decisions::default();
        b.iter_custom(|iters| {
            let start = process_cpu();
            for _ in 0..iters {
                decisions.record(request());
            }
            process_cpu() - start
        });
    });
    group.bench_function("a request record to the audit file (fsync interval)", |b| {
        let decisions = Decisions::default();
        let writer = Writer::start(&audit).expect("the audit writer");
        decisions.set_writer(Some(writer.clone()));
        b.iter_custom(|iters| {
            let start = process_cpu();
            for _ in 1..iters {
                decisions.record(request());
            }
            // The last one comes back once the writer has written everything before it.
            if let Some(written) = writer.submit_synced(request()) {
                let _ = runtime.block_on(written);
            }
            process_cpu() - start
        });
        writer.close();
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
