//! The crypto floor a server pays per full mTLS handshake and per byte, and the copy loop's cost.
//!
//! Per full TLS 1.3 mTLS handshake the server does one key exchange (as the
//! server: generate and derive in one step), one ECDSA P-256 signature
//! (CertificateVerify) and three ECDSA P-256 verifications (the client's
//! CertificateVerify, its leaf under the intermediate, the intermediate under
//! the root). Per byte it seals or opens AES-256-GCM records of up to 16 KiB.
//! `mtlsd-bench` figures are compared with these in `benches/RESULTS.md`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtlsd::metrics::{Direction, Metrics};
use mtlsd_e2e::in_memory::forward;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};

const RECORD: usize = 16 * 1024;

fn key_exchange(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor_key_exchange_server_side");
    for (name, kx) in [
        ("X25519MLKEM768", X25519MLKEM768 as &dyn SupportedKxGroup),
        ("X25519", X25519),
    ] {
        let client = kx.start().unwrap();
        let share = client.pub_key().to_vec();
        group.bench_function(name, |b| {
            b.iter(|| black_box(kx.start_and_complete(black_box(&share)).unwrap()))
        });
    }
    group.finish();
}

fn signatures(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let message = [0x20u8; 130];
    let signature = key.sign(&rng, &message).unwrap();
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let mut group = c.benchmark_group("floor_ecdsa_p256");
    group.bench_function("sign", |b| {
        b.iter(|| black_box(key.sign(&rng, black_box(&message)).unwrap()))
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            public
                .verify(black_box(&message), signature.as_ref())
                .unwrap()
        })
    });
    group.finish();
}

fn aead(c: &mut Criterion) {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut group = c.benchmark_group("floor_aes_256_gcm");
    group.throughput(Throughput::Bytes(RECORD as u64));
    let mut record = vec![0u8; RECORD];
    group.bench_function("seal_16k_record", |b| {
        b.iter(|| {
            let nonce = Nonce::assume_unique_for_key([1u8; 12]);
            let tag = key
                .seal_in_place_separate_tag(nonce, Aad::empty(), &mut record)
                .unwrap();
            let _ = black_box(tag);
        })
    });
    group.finish();
}

fn copy_loop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new().listener("bench", Direction::Inbound);
    let total: usize = 64 * 1024 * 1024;
    let mut group = c.benchmark_group("forward_copy_loop");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    group.bench_function("splice_64MiB_in_memory", |b| {
        b.iter(|| black_box(rt.block_on(forward(total, &metrics))))
    });
    group.finish();
}

criterion_group! {
    name = floor;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = key_exchange, signatures, aead, copy_loop
}
criterion_main!(floor);
