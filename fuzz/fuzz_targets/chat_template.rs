//! `cargo +nightly fuzz run chat_template`: see fuzz/harness.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check("chat_template", data));
