//! `cargo +nightly fuzz run gguf`: see fuzz/harness.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check("gguf", data));
