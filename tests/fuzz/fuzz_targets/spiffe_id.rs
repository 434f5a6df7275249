//! cargo-fuzz entry point for [`mtlsd_fuzz::spiffe_id`]; the body is shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mtlsd_fuzz::spiffe_id(data));
