//! Recorded skips. libtest has no "skipped" outcome and captures a test's output, so a test that
//! returns early looks like `ok`: each skip is also appended to `$LLAMAFILE_SKIP_LOG`, one line
//! `KIND<TAB>TEST<TAB>WHAT<TAB>HOW`, and `scripts/test` prints the count and the reasons at the
//! end (and fails under CI, which has every fixture and tool, unless LLAMAFILE_ALLOW_SKIP is set).

use crate::paths::{models_dir, shared};
use std::io::Write;
use std::path::PathBuf;

/// The shared fixtures folder, or `None` (the skip recorded) when it is absent. A folder that is
/// there but lacks a file a test reads is a broken fixture set: that test fails, it does not skip.
pub fn require_shared() -> Option<PathBuf> {
    let dir = shared();
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    skip(
        &format!("the shared fixtures ({})", dir.display()),
        "put them at ../shared beside the checkout, or set LLAMAFILE_SHARED to their folder",
    );
    None
}

/// A real model fetched by `scripts/fetch-model` (`FILE` in [`models_dir`]), or `None` (the skip
/// recorded) when it is absent.
pub fn require_model(file: &str) -> Option<PathBuf> {
    let p = models_dir().join(file);
    if p.exists() {
        return Some(p);
    }
    skip(&format!("the real models ({})", models_dir().display()), "scripts/fetch-model all");
    None
}

/// Record that the calling test skips (part of it, or all of it when it then returns) because
/// `what` is not found; `how` says how to get it.
pub fn skip(what: &str, how: &str) {
    record("skip", what, how);
}

/// As [`skip`], for a test that needs a CUDA device (`why`: the backend's answer): expected
/// wherever there is none (CI included), so listed at the end of `scripts/test` but never an error.
pub fn skip_without_gpu(why: &str) {
    eprintln!("no CUDA device: {why}");
    record("no-gpu", "a CUDA device", "a machine with an NVIDIA GPU and driver");
}

fn record(kind: &str, what: &str, how: &str) {
    let test = test_name();
    eprintln!("SKIP {test}: {what} not found; to run it: {how}");
    let Some(log) = std::env::var_os("LLAMAFILE_SKIP_LOG") else { return };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!("{kind}\t{}\t{}\t{}\n", clean(&test), clean(what), clean(how));
    // One short write with O_APPEND: lines from tests running in parallel do not interleave.
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(&log).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", PathBuf::from(log).display());
    }
}

/// `BINARY::TEST`: libtest runs each test on a thread named after it; the binary's file name
/// without cargo's hash says which crate and target.
fn test_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_ref().and_then(|e| e.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let binary = stem.rsplit_once('-').map_or(stem.as_str(), |(b, _)| b).to_string();
    let thread = std::thread::current().name().unwrap_or("?").to_string();
    format!("{binary}::{thread}")
}
