//! PKCS#11 keys in a real SoftHSM2 token signing real rustls handshakes.

mod common;

use std::sync::Arc;

use common::{Identity, TestCa, handshake};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::SessionState;
use mtlsd_crypto::pkcs11::{EcCurve, Pkcs11Backend};
use mtlsd_crypto::test_support::SoftHsm;
use mtlsd_crypto::{Backend, Error, KeyRef};
use rustls::SignatureScheme;

/// A backend over the shared fixture plus a fresh token; `None` when softhsm2 is missing outside CI.
fn setup(token: &str) -> Option<(&'static SoftHsm, Pkcs11Backend)> {
    if !SoftHsm::available() {
        return None;
    }
    let hsm = SoftHsm::process();
    hsm.token(token);
    Some((hsm, hsm.backend(2)))
}

fn identity(ca: &TestCa, backend: &Pkcs11Backend, key: &KeyRef, dns: &str) -> Identity {
    let KeyRef::Pkcs11(uri) = key else {
        panic!("not a pkcs11 key")
    };
    let hsm_key = backend.load_key(uri).unwrap();
    Identity {
        cert: ca.issue(dns, &hsm_key),
        key: backend.load_signing_key(key).unwrap(),
    }
}

#[test]
fn p256_key_generated_in_the_token_signs_a_tls13_handshake() {
    let Some((_, backend)) = setup("p256") else {
        return;
    };
    let key = backend
        .generate_ec_key("p256", "leaf", &[1], EcCurve::P256)
        .unwrap();
    let KeyRef::Pkcs11(uri) = &key else {
        unreachable!()
    };
    // SoftHSM2 offers raw CKM_ECDSA only: the host-hashing path is what runs here.
    assert_eq!(
        backend.load_key(uri).unwrap().schemes(),
        [SignatureScheme::ECDSA_NISTP256_SHA256]
    );
    let ca = TestCa::new();
    let server = identity(&ca, &backend, &key, "server.test");
    handshake(&ca, &server, None).unwrap();
}

#[test]
fn p384_key_generated_in_the_token_signs_a_tls13_handshake() {
    let Some((_, backend)) = setup("p384") else {
        return;
    };
    let key = backend
        .generate_ec_key("p384", "leaf", &[2], EcCurve::P384)
        .unwrap();
    let ca = TestCa::new();
    let server = identity(&ca, &backend, &key, "server.test");
    assert_eq!(server.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
    handshake(&ca, &server, None).unwrap();
}

#[test]
fn rsa_key_in_the_token_signs_a_tls13_handshake_with_pss() {
    let Some((_, backend)) = setup("rsa") else {
        return;
    };
    let key = backend.generate_rsa_key("rsa", "leaf", &[3], 2048).unwrap();
    let KeyRef::Pkcs11(uri) = &key else {
        unreachable!()
    };
    let schemes = backend.load_key(uri).unwrap().schemes();
    assert!(
        schemes.contains(&SignatureScheme::RSA_PSS_SHA256),
        "{schemes:?}"
    );
    let ca = TestCa::new();
    let server = identity(&ca, &backend, &key, "server.test");
    // The client offers only TLS 1.3, where RSA handshake signatures must be PSS.
    handshake(&ca, &server, None).unwrap();
}

#[test]
fn mutual_tls_with_both_keys_in_the_token() {
    let Some((_, backend)) = setup("mtls") else {
        return;
    };
    let server_key = backend
        .generate_ec_key("mtls", "server", &[4], EcCurve::P256)
        .unwrap();
    let client_key = backend
        .generate_ec_key("mtls", "client", &[5], EcCurve::P384)
        .unwrap();
    let ca = TestCa::new();
    let server = identity(&ca, &backend, &server_key, "server.test");
    let client = identity(&ca, &backend, &client_key, "client.test");
    handshake(&ca, &server, Some(&client)).unwrap();
}

#[test]
fn the_pool_logs_in_again_after_the_token_logs_out() {
    let Some((hsm, backend)) = setup("logout") else {
        return;
    };
    let key = backend
        .generate_ec_key("logout", "leaf", &[6], EcCurve::P256)
        .unwrap();
    let ca = TestCa::new();
    let server = identity(&ca, &backend, &key, "server.test");
    handshake(&ca, &server, None).unwrap();

    // A second application-level session (same process, as PKCS#11 login
    // state is per application and token) logs the token out under us.
    let ctx = Pkcs11::new(hsm.module()).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "logout")
        .unwrap();
    let other = ctx.open_ro_session(slot).unwrap();
    other.logout().unwrap();
    assert_eq!(
        other.get_session_info().unwrap().session_state(),
        SessionState::RoPublic
    );

    handshake(&ca, &server, None).expect("handshake after logout");
    // The backend logged the token in again, which every session sees.
    assert_eq!(
        other.get_session_info().unwrap().session_state(),
        SessionState::RoUser
    );
}

#[test]
fn pin_source_in_the_uri_overrides_the_backend_pin() {
    let Some((hsm, _)) = setup("pinsrc") else {
        return;
    };
    let mut config = mtlsd_crypto::pkcs11::Pkcs11Config::new(
        hsm.module(),
        mtlsd_crypto::pkcs11::Pin::new("wrong-pin"),
    );
    config.pool_size = 1;
    let backend = Pkcs11Backend::new(config).unwrap();
    let wrong = backend
        .generate_ec_key("pinsrc", "k", &[7], EcCurve::P256)
        .unwrap_err();
    assert!(
        matches!(&wrong, Error::Pkcs11 { operation, token, .. } if operation == "C_Login" && token == "pinsrc"),
        "{wrong}"
    );
    assert!(!wrong.to_string().contains("wrong-pin"), "{wrong}");

    let pin_file = hsm.pin_file();
    let right = Pkcs11Backend::new(mtlsd_crypto::pkcs11::Pkcs11Config::new(
        hsm.module(),
        mtlsd_crypto::pkcs11::Pin::new("wrong-pin"),
    ))
    .unwrap();
    let key = right
        .load_key(&format!(
            "pkcs11:token=pinsrc;object=absent?pin-source=file:{}",
            pin_file.display()
        ))
        .unwrap_err();
    // Logged in with the file's PIN, so the search ran and found nothing.
    assert!(matches!(key, Error::Pkcs11KeyNotFound { .. }), "{key}");
}

#[test]
fn errors_name_the_missing_token_or_key() {
    let Some((_, backend)) = setup("errors") else {
        return;
    };
    let err = backend
        .load_signing_key(&KeyRef::parse("pkcs11:token=nope;object=k"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::TokenNotFound { token, .. } if token == "nope"),
        "{err}"
    );
    let err = backend
        .load_signing_key(&KeyRef::parse("pkcs11:token=errors;object=missing"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("object=missing") && msg.contains("errors"),
        "{msg}"
    );
    let err = backend
        .load_signing_key(&KeyRef::parse("/etc/key.pem"))
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedKeyRef { .. }), "{err}");
}

#[test]
fn keys_are_shared_across_threads_beyond_the_pool_size() {
    let Some((_, backend)) = setup("threads") else {
        return;
    };
    let key = backend
        .generate_ec_key("threads", "leaf", &[8], EcCurve::P256)
        .unwrap();
    let ca = Arc::new(TestCa::new());
    let server = Arc::new(identity(&ca, &backend, &key, "server.test"));
    // Eight concurrent handshakes over a two-session pool: callers queue for sessions.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| handshake(&ca, &server, None)))
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
}

#[test]
fn child_process_fixture_creates_tokens_other_processes_see() {
    if !SoftHsm::available() {
        return;
    }
    let hsm = SoftHsm::new();
    hsm.token("for-children");
    let out = std::process::Command::new("softhsm2-util")
        .envs(hsm.env())
        .arg("--show-slots")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("for-children"), "{text}");
}

#[test]
fn a_root_key_in_the_token_issues_certificates_that_openssl_verify_accepts() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let Some((_, backend)) = setup("ca") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let roots = [
        backend.generate_ec_key("ca", "root-p256", &[0xc1], EcCurve::P256),
        backend.generate_ec_key("ca", "root-p384", &[0xc2], EcCurve::P384),
        backend.generate_rsa_key("ca", "root-rsa", &[0xc3], 2048),
    ];
    for (i, root_ref) in roots.into_iter().enumerate() {
        let KeyRef::Pkcs11(uri) = root_ref.unwrap() else {
            unreachable!()
        };
        let root_key = backend.load_key(&uri).unwrap();

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mtlsd HSM root {i}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(params, root_key);

        // An intermediate (software key) signed in the token, and a leaf under it.
        let mid_key = KeyPair::generate().unwrap();
        let mut mid_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        mid_params
            .distinguished_name
            .push(DnType::CommonName, "mtlsd intermediate");
        mid_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        mid_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let mid = mid_params.signed_by(&mid_key, &issuer).unwrap();
        let mid_issuer = Issuer::new(mid_params, mid_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["svc.mesh.test".into()])
            .unwrap()
            .signed_by(&leaf_key, &mid_issuer)
            .unwrap();
        // And a leaf signed by the root directly.
        let direct = CertificateParams::new(vec!["direct.mesh.test".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();

        let write = |name: &str, pem: String| {
            let path = dir.path().join(format!("{i}-{name}"));
            std::fs::write(&path, pem).unwrap();
            path
        };
        let root_pem = write("root.pem", root.pem());
        let mid_pem = write("mid.pem", mid.pem());
        let leaf_pem = write("leaf.pem", leaf.pem());
        let direct_pem = write("direct.pem", direct.pem());
        for (untrusted, cert) in [(Some(&mid_pem), &leaf_pem), (None, &direct_pem)] {
            let mut cmd = std::process::Command::new("openssl");
            cmd.arg("verify").arg("-CAfile").arg(&root_pem);
            if let Some(u) = untrusted {
                cmd.arg("-untrusted").arg(u);
            }
            let out = cmd.arg(cert).output().expect("run openssl verify");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.trim_end().ends_with(": OK"),
                "root {uri}: openssl verify {}: {stdout}{}",
                cert.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
