//! mtlsd's fuzz targets: one function per parser of outside input.
//!
//! The bodies live in `src/targets.rs` (a plain module with no libFuzzer in it), so
//! the binaries in `fuzz_targets/` are one-liners and the e2e crate's
//! `fuzz_corpus` test replays `corpus/<target>/` through the same code on
//! stable Rust.

mod targets;

pub use targets::*;
