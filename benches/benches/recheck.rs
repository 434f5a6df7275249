//! The live re-check after a policy change (issue #13): 10,000 open connections judged against
//! a new policy and the CRLs in force, as `runtime::recheck` does after every reload, and
//! the lifetime sweep that runs once a second. No sockets: the registry and the judgement
//! are the whole cost the event loop pays.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mtlsd::identity::{Revocations, SpiffeId};
use mtlsd::metrics::Direction;
use mtlsd::policy::{Decision, Peer, Policy};
use mtlsd::proxy::live::{Anchor, LiveConnections, PeerFacts, RecheckMode};
use mtlsd::proxy::outcome::CloseReason;
use tokio_util::sync::CancellationToken;

const OPEN: usize = 10_000;

fn registry(
    stop: &CancellationToken,
) -> (Arc<LiveConnections>, Vec<mtlsd::proxy::live::Registration>) {
    let live = Arc::new(LiveConnections::default());
    let listener: Arc<str> = Arc::from("web");
    let regs = (0..OPEN)
        .map(|i| {
            let id: SpiffeId = format!("spiffe://example.org/ns/team{}/sa/svc{i}", i % 50)
                .parse()
                .unwrap();
            let facts = PeerFacts {
                id,
                serials: vec![
                    (
                        b"CN=intermediate".to_vec(),
                        (i as u64).to_be_bytes().to_vec(),
                    ),
                    (b"CN=root".to_vec(), vec![1]),
                ],
                anchor: Anchor {
                    name: b"CN=root".to_vec(),
                    key_id: Some(vec![7; 20]),
                },
            };
            live.register(&listener, Direction::Inbound, facts, None, stop)
        })
        .collect();
    (live, regs)
}

fn bench(c: &mut Criterion) {
    let stop = CancellationToken::new();
    let (live, _regs) = registry(&stop);
    // The new policy admits 49 of the 50 teams: 200 connections would be closed.
    let policy = Policy {
        allow: vec!["spiffe://example.org".parse().unwrap()],
        deny: vec!["spiffe://example.org/ns/team7/*".parse().unwrap()],
    };
    let revocations = Revocations::default();
    let root = Anchor {
        name: b"CN=root".to_vec(),
        key_id: Some(vec![7; 20]),
    };
    let judge = |_: &str, _: Direction, p: &PeerFacts| {
        if p.serials.iter().any(|(i, s)| revocations.revokes(i, s)) {
            return Some((CloseReason::RevokedWhileOpen, String::new()));
        }
        if !p.anchor.is(&root) {
            return Some((CloseReason::UntrustedWhileOpen, String::new()));
        }
        match policy.authorize(Peer::Spiffe(&p.id)) {
            Decision::Allow(_) => None,
            _ => Some((CloseReason::DeauthorizedWhileOpen, String::new())),
        }
    };
    // A dry run judges everything and closes nothing, so every iteration does the same work.
    c.bench_function(
        "recheck 10,000 open connections after a policy change",
        |b| b.iter(|| black_box(live.recheck(RecheckMode::DryRun, judge).len())),
    );
    c.bench_function("lifetime sweep over 10,000 open connections", |b| {
        b.iter(|| black_box(live.expire(tokio::time::Instant::now()).len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
