//! Signatures per second for each backend, what the offload wrapper costs, and full TLS 1.3
//! handshakes per second (in memory, server key in each backend).
//!
//! `cargo bench -p mtlsd-crypto --all-features --bench signing`; results in
//! `crypto-backends/BENCHMARKS.md`. The PKCS#11 rows need softhsm2 installed.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mtlsd_crypto::offload::{Limits, Offloaded};
use mtlsd_crypto::pkcs11::EcCurve;
use mtlsd_crypto::test_support::{SoftHsm, handshake_in_memory};
use mtlsd_crypto::{Backend, KeyRef};
use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::PrivatePkcs8KeyDer;

/// A TLS 1.3 CertificateVerify input is ~130 bytes; the size barely matters.
const MESSAGE: &[u8] = &[0x20; 130];

/// `pair` as a key file (mode 0600) loaded through the OpenSSL backend's `default` provider.
#[cfg(feature = "openssl")]
fn openssl_key(pair: &rcgen::KeyPair) -> (tempfile::TempDir, Arc<dyn SigningKey>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let backend = mtlsd_crypto::openssl::OpensslBackend::new(Default::default()).unwrap();
    let key = backend.load_signing_key(&KeyRef::File(path)).unwrap();
    (dir, key)
}

fn bench_key(c: &mut Criterion, name: &str, key: &dyn SigningKey) {
    let signer = key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .expect("P-256 scheme");
    let mut group = c.benchmark_group("sign_p256");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| b.iter(|| signer.sign(MESSAGE).unwrap()));
    group.finish();
}

fn signing(c: &mut Criterion) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let software = rustls::crypto::aws_lc_rs::sign::any_supported_type(
        &PrivatePkcs8KeyDer::from(pair.serialize_der()).into(),
    )
    .unwrap();
    bench_key(c, "software", &*software);
    bench_key(
        c,
        "software+offloaded",
        &Offloaded::new(software.clone(), Limits::default()),
    );

    #[cfg(feature = "openssl")]
    {
        let (_dir, key) = openssl_key(&pair);
        bench_key(c, "openssl", &*key);
    }

    if SoftHsm::available() {
        let hsm = SoftHsm::process();
        hsm.token("bench");
        let backend = hsm.backend(4);
        let key_ref = backend
            .generate_ec_key("bench", "p256", &[1], EcCurve::P256)
            .unwrap();
        let key = backend.load_signing_key(&key_ref).unwrap();
        bench_key(c, "pkcs11_softhsm", &*key);
        bench_key(
            c,
            "pkcs11_softhsm+offloaded",
            &Offloaded::new(key.clone(), Limits::default()),
        );

        // The real offload path: signing from a tokio worker, where
        // block_in_place hands the worker's duties to another thread each time.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let offloaded = Arc::new(Offloaded::new(key, Limits::default()));
        let mut group = c.benchmark_group("sign_p256");
        group.throughput(Throughput::Elements(1));
        group.bench_function("pkcs11_softhsm+offloaded_on_tokio_worker", |b| {
            b.iter_custom(|iters| {
                let key = offloaded.clone();
                let task = rt.spawn(async move {
                    let signer = key
                        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                        .unwrap();
                    let start = Instant::now();
                    for _ in 0..iters {
                        signer.sign(MESSAGE).unwrap();
                    }
                    start.elapsed()
                });
                rt.block_on(task).unwrap()
            })
        });
        group.finish();
    }
}

/// One in-memory TLS 1.3 handshake; the server signs with the key under test.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    std::hint::black_box(handshake_in_memory(server, client));
}

/// Server and client configs for a certificate (`localhost`) whose key is `key`.
fn configs(
    cert: rustls_pki_types::CertificateDer<'static>,
    key: Arc<dyn SigningKey>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(mtlsd_crypto::software::provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert], key);
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn handshakes(c: &mut Criterion) {
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let pair = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&pair).unwrap().der().clone();
    let software = rustls::crypto::aws_lc_rs::sign::any_supported_type(
        &PrivatePkcs8KeyDer::from(pair.serialize_der()).into(),
    )
    .unwrap();
    let mut group = c.benchmark_group("full_handshake_p256");
    group.throughput(Throughput::Elements(1));
    let (server, client) = configs(cert.clone(), software);
    group.bench_function("software", |b| b.iter(|| handshake(&server, &client)));

    #[cfg(feature = "openssl")]
    {
        let (_dir, key) = openssl_key(&pair);
        let (server, client) = configs(cert.clone(), key);
        group.bench_function("openssl", |b| b.iter(|| handshake(&server, &client)));
    }

    if SoftHsm::available() {
        let hsm = SoftHsm::process();
        hsm.token("bench-handshake");
        let backend = hsm.backend(4);
        let key_ref = backend
            .generate_ec_key("bench-handshake", "p256", &[2], EcCurve::P256)
            .unwrap();
        let KeyRef::Pkcs11(uri) = &key_ref else {
            unreachable!("a token key")
        };
        let token_key = backend.load_key(uri).unwrap();
        let cert = params.self_signed(&token_key).unwrap().der().clone();
        let key = backend.load_signing_key(&key_ref).unwrap();
        let (server, client) = configs(cert.clone(), key.clone());
        group.bench_function("pkcs11_softhsm", |b| b.iter(|| handshake(&server, &client)));
        let (server, client) = configs(cert, Arc::new(Offloaded::new(key, Limits::default())));
        group.bench_function("pkcs11_softhsm+offloaded", |b| {
            b.iter(|| handshake(&server, &client))
        });
    }
    group.finish();
}

criterion_group!(benches, signing, handshakes);
criterion_main!(benches);
