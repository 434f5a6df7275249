//! The OpenSSL provider path with providers that exist on every Debian: `default` and `legacy`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::{Identity, TestCa, handshake};
use mtlsd_crypto::openssl::{OpensslBackend, OpensslConfig};
use mtlsd_crypto::{Backend, Error, KeyRef};

fn key_file(dir: &std::path::Path, name: &str, pem: &[u8]) -> KeyRef {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    KeyRef::File(path)
}

fn provider(name: &str) -> OpensslConfig {
    OpensslConfig {
        provider: Some(name.into()),
        ..Default::default()
    }
}

#[test]
fn file_keys_sign_handshakes_through_a_provider_loaded_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ec = rcgen::KeyPair::generate().unwrap();
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let rsa_pem = openssl::pkey::PKey::from_rsa(rsa)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    let rsa_pair = rcgen::KeyPair::from_pem(std::str::from_utf8(&rsa_pem).unwrap()).unwrap();
    let ec_ref = key_file(dir.path(), "ec.pem", ec.serialize_pem().as_bytes());
    let rsa_ref = key_file(dir.path(), "rsa.pem", &rsa_pem);

    // `legacy` alone could not sign; the backend keeps `default` loaded beside it.
    for name in ["default", "legacy"] {
        let backend = OpensslBackend::new(provider(name)).unwrap();
        assert_eq!(backend.is_device(), name != "default");
        for (key_ref, pair) in [(&ec_ref, &ec), (&rsa_ref, &rsa_pair)] {
            let server = Identity {
                cert: ca.issue("server.test", pair),
                key: backend.load_signing_key(key_ref).unwrap(),
            };
            handshake(&ca, &server, None).unwrap();
        }
    }

    // Mutual TLS with the client key in OpenSSL too.
    let backend = OpensslBackend::new(provider("default")).unwrap();
    let client = Identity {
        cert: ca.issue("client.test", &ec),
        key: Arc::new(backend.load_key(&ec_ref).unwrap()),
    };
    let server = Identity {
        cert: ca.issue("server.test", &rsa_pair),
        key: Arc::new(backend.load_key(&rsa_ref).unwrap()),
    };
    handshake(&ca, &server, Some(&client)).unwrap();
}

#[test]
fn an_unknown_provider_is_a_clear_startup_error() {
    let err = OpensslBackend::new(provider("no-such-provider")).unwrap_err();
    assert!(
        matches!(&err, Error::Openssl { operation, .. } if operation.contains("\"no-such-provider\"")),
        "{err}"
    );
}

#[test]
fn loose_key_files_and_engine_uris_without_an_engine_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let KeyRef::File(path) = key_file(dir.path(), "k.pem", pem.as_bytes()) else {
        unreachable!()
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let backend = OpensslBackend::new(OpensslConfig::default()).unwrap();
    let err = backend.load_key(&KeyRef::File(path)).unwrap_err();
    assert!(matches!(err, Error::LoosePermissions { .. }), "{err}");
    let err = backend
        .load_key(&KeyRef::parse("pkcs11:object=k?pin-value=1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("engine") && !err.contains("pin-value"),
        "{err}"
    );
}
