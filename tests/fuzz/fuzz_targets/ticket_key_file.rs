//! cargo-fuzz entry point for [`mtlsd_fuzz::ticket_key_file`]; the body is shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mtlsd_fuzz::ticket_key_file(data));
