//! `cargo +nightly fuzz run zip_tail`: see fuzz/harness.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check("zip_tail", data));
