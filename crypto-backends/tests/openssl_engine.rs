//! The OpenSSL ENGINE path against a real engine: Debian's libp11 `pkcs11` engine over SoftHSM2.
//!
//! Its own test binary: the engine loads SoftHSM2 into this process and may
//! finalise it on `ENGINE_finish`, which must not disturb other tests.

mod common;

use std::sync::Arc;

use common::{Identity, TestCa, handshake};
use mtlsd_crypto::openssl::{OpensslBackend, OpensslConfig};
use mtlsd_crypto::pkcs11::EcCurve;
use mtlsd_crypto::test_support::{SoftHsm, USER_PIN};
use mtlsd_crypto::{Error, KeyRef};
use rustls::sign::SigningKey;

const ENGINE_SO: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
];

fn engine_installed() -> bool {
    let have = ENGINE_SO.iter().any(|p| std::path::Path::new(p).exists());
    assert!(
        have || std::env::var_os("CI").is_none(),
        "libengine-pkcs11-openssl is not installed but CI is set"
    );
    have
}

fn pkcs11_engine(hsm: &SoftHsm, extra: &[(&str, &str)]) -> Result<OpensslBackend, Error> {
    let mut engine_ctrl = vec![
        ("MODULE_PATH".to_owned(), hsm.module().display().to_string()),
        ("PIN".to_owned(), USER_PIN.to_owned()),
    ];
    engine_ctrl.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    OpensslBackend::new(OpensslConfig {
        engine: Some("pkcs11".into()),
        engine_ctrl,
        provider: None,
    })
}

#[test]
fn a_token_key_loaded_through_the_pkcs11_engine_signs_handshakes() {
    if !SoftHsm::available() || !engine_installed() {
        return;
    }
    let hsm = SoftHsm::process();
    hsm.token("engine");
    let pkcs11 = hsm.backend(1);
    let ca = TestCa::new();
    for (label, id, curve) in [
        ("ec256", 0x41, EcCurve::P256),
        ("ec384", 0x42, EcCurve::P384),
    ] {
        let key_ref = pkcs11
            .generate_ec_key("engine", label, &[id], curve)
            .unwrap();
        let KeyRef::Pkcs11(uri) = &key_ref else {
            unreachable!()
        };
        let token_key = pkcs11.load_key(uri).unwrap();

        let backend = pkcs11_engine(hsm, &[]).unwrap();
        let engine_key = backend.load_key(&key_ref).unwrap();
        // Same key seen through cryptoki and through the engine.
        assert_eq!(
            engine_key.public_key().unwrap().as_ref(),
            token_key.spki().as_ref()
        );
        let server = Identity {
            cert: ca.issue("server.test", &token_key),
            key: Arc::new(engine_key),
        };
        handshake(&ca, &server, None).unwrap();
    }

    // An RSA key: TLS 1.3 makes the engine produce PSS signatures.
    let key_ref = pkcs11
        .generate_rsa_key("engine", "rsa", &[0x43], 2048)
        .unwrap();
    let KeyRef::Pkcs11(uri) = &key_ref else {
        unreachable!()
    };
    let token_key = pkcs11.load_key(uri).unwrap();
    let engine_key = pkcs11_engine(hsm, &[]).unwrap().load_key(&key_ref).unwrap();
    let server = Identity {
        cert: ca.issue("server.test", &token_key),
        key: Arc::new(engine_key),
    };
    handshake(&ca, &server, None).unwrap();
}

#[test]
fn engine_errors_name_the_engine_and_command_but_not_the_value() {
    if !engine_installed() {
        return;
    }
    let err = OpensslBackend::new(OpensslConfig {
        engine: Some("no-such-engine".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no-such-engine") && err.contains("not found"),
        "{err}"
    );

    let err = OpensslBackend::new(OpensslConfig {
        engine: Some("pkcs11".into()),
        engine_ctrl: vec![("NO_SUCH_COMMAND".into(), "secret-value".into())],
        provider: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("NO_SUCH_COMMAND"), "{err}");
    assert!(!err.contains("secret-value"), "{err}");
}
