//! Replays the fuzz corpus (`tests/fuzz/corpus/<target>/`) through the fuzz target bodies.
//!
//! The bodies are `tests/fuzz/src/targets.rs`, the very code the cargo-fuzz
//! binaries run, so a stable `cargo test` keeps every input a campaign found
//! interesting (and every crash it kept) passing, without nightly or libFuzzer.
//! Run a campaign with `scripts/fuzz`.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Runs every file of `corpus/<name>/` through `target`; fails naming the first input that panics.
fn replay(name: &str, target: targets::Target) {
    let dir = corpus_dir().join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{}: {message}", file.display());
        }
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), targets::$target);
            }
        )*

        /// Every target has a test above and a corpus, and every corpus a target.
        #[test]
        fn every_target_has_a_corpus_and_a_replay() {
            let tested = [$(stringify!($target)),*];
            let mut known: Vec<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
            known.sort_unstable();
            let mut listed = tested.to_vec();
            listed.sort_unstable();
            assert_eq!(listed, known, "replay_tests! and targets::TARGETS disagree");
            let mut dirs: Vec<String> = std::fs::read_dir(corpus_dir())
                .expect("corpus directory")
                .map(|e| e.expect("corpus entry").file_name().to_string_lossy().into_owned())
                .collect();
            dirs.sort_unstable();
            assert_eq!(dirs, known, "corpus directories and targets disagree");
        }
    };
}

replay_tests!(
    config,
    pkcs11_uri,
    spiffe_id,
    policy_principal,
    ticket_key_file,
    key_pem,
    cert_pem,
    crl,
    client_hello,
    proxy_v2,
    early_tls,
);
