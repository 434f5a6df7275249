//! criterion benchmarks: the in-memory mTLS handshake with mtlsd's own TLS configs, and policy evaluation.
//!
//! The in-memory handshake is the floor the daemon's per-handshake CPU is
//! compared with: same provider, same certificates, same verifiers, no sockets.
//! Full and resumed (TLS 1.3 ticket) handshakes are measured with ECDSA P-256
//! certificates; resumption skips the certificate signature and chain
//! verification but still does a key exchange.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mtlsd::ca::Authority;
use mtlsd::identity::SpiffeId;
use mtlsd::policy::{Peer, Policy};
use mtlsd::proxy::policy_verifier::PolicyVerifier;
use mtlsd::tls::tickets::{KeySource, Ticketer};
use mtlsd::tls::{ServerResumption, TlsIdentity};
use mtlsd_crypto::software::Software;
use mtlsd_crypto::test_support::handshake_in_memory;
use mtlsd_e2e::in_memory::tls_identity;

/// Runs one handshake between in-memory client and server connections; returns its kind.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    black_box(handshake_in_memory(server, client))
}

fn benches(c: &mut Criterion) {
    let dir = tempfile_dir();
    let year = Duration::from_secs(365 * 86_400);
    let ca = Authority::init(&dir.join("ca"), "bench.example", year, year).unwrap();
    let backend = Software::new();
    let server_id = tls_identity(&ca, &dir, "spiffe://bench.example/server", &backend);
    let client_id = tls_identity(&ca, &dir, "spiffe://bench.example/client", &backend);
    let server = server_id.server_config(&ServerResumption::Off).unwrap();
    let client = client_id
        .client_config(&server_id.svid.id, false, false)
        .unwrap();

    c.bench_function(
        "full mTLS handshake, in memory (X25519MLKEM768, P-256)",
        |b| b.iter(|| handshake(&server, &client)),
    );

    let mut provider = (*client_id.provider).clone();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let classic = TlsIdentity {
        provider: Arc::new(provider),
        ..client_id.clone()
    }
    .client_config(&server_id.svid.id, false, false)
    .unwrap();
    c.bench_function("full mTLS handshake, in memory (X25519, P-256)", |b| {
        b.iter(|| handshake(&server, &classic))
    });

    let ticketer = Arc::new(
        Ticketer::new(
            KeySource::Generated {
                rotation: Duration::from_secs(3600),
            },
            server_id.trust_context(),
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    let resuming_server = server_id
        .server_config(&ServerResumption::Tickets(ticketer))
        .unwrap();
    let resuming_client = client_id
        .client_config(&server_id.svid.id, true, false)
        .unwrap();
    handshake(&resuming_server, &resuming_client);
    assert_eq!(
        handshake(&resuming_server, &resuming_client),
        Some(rustls::HandshakeKind::Resumed),
        "the resumed bench must measure resumption"
    );
    c.bench_function(
        "resumed mTLS handshake (ticket), in memory (X25519MLKEM768, P-256)",
        |b| b.iter(|| handshake(&resuming_server, &resuming_client)),
    );

    let policy = Policy {
        allow: (0..50)
            .map(|i| {
                format!("spiffe://bench.example/ns/app{i}/*")
                    .parse()
                    .unwrap()
            })
            .chain(["spiffe://bench.example/ns/web/sa/frontend".parse().unwrap()])
            .collect(),
        deny: vec!["spiffe://bench.example/ns/quarantine/*".parse().unwrap()],
    };
    let peer: SpiffeId = "spiffe://bench.example/ns/web/sa/frontend".parse().unwrap();
    c.bench_function("policy: 52 rules, last one matches", |b| {
        b.iter(|| black_box(policy.authorize(Peer::Spiffe(black_box(&peer)))))
    });

    // What an inbound connection pays for its own config: the policy inside the handshake.
    let verifier = server_id.client_verifier().unwrap();
    let policy = Arc::new(policy);
    c.bench_function(
        "per-connection server config with the policy verifier",
        |b| {
            b.iter(|| {
                let verifier = Arc::new(PolicyVerifier::new(
                    verifier.clone(),
                    policy.clone(),
                    Arc::new(std::sync::OnceLock::new()),
                ));
                black_box(server_id.server_config_with(&ServerResumption::Off, verifier))
            })
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mtlsd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

criterion_group! {
    name = handshake_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(handshake_benches);
