//! Real clients against the server: the official `openai` Python package, a real browser
//! (Debian's Chromium driven by playwright-core), and a short load run. Each skips with a clear
//! message when its tool is not installed (`.ci/run` installs them for CI).

mod server_support;

use server_support::*;
use std::path::Path;
use std::process::Command;

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn server_openai_python_client() {
    let Some(m) = tiny_model() else { return };
    if !have("python3", &["-c", "import openai"]) {
        e2e::skip("the `openai` Python package", "pip install openai");
        return;
    }
    let s = Server::start(&m, &["--server", "-c", "1024"]);
    let script = e2e::root().join("tests/openai_client.py");
    let out = Command::new("python3").arg(&script).arg(&s.url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai client checks failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    assert!(stdout.contains("chat.completions (streaming)") && stdout.contains("completions (streaming)"));
}

#[test]
fn server_chat_page_in_chromium() {
    let Some(m) = tiny_model() else { return };
    let dir = e2e::root().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        e2e::skip(&chromium, "apt-get install chromium, or set CHROMIUM to a Chromium binary");
        return;
    }
    if !have("node", &["--version"]) || !dir.join("node_modules/playwright-core").exists() {
        e2e::skip("node or playwright-core", "install node, then: cd tests/browser && npm ci");
        return;
    }
    // -c 4096 so that a long reply is still streaming when the test presses stop.
    let s = Server::start(
        &m,
        &["--server", "--nobrowser", "-c", "4096", "--parallel", "1", "--system", "You are a terse assistant."],
    );
    let artifacts = e2e::root().join("tests/artifacts/browser");
    // the screenshots checked below are this run's
    let _ = std::fs::remove_dir_all(&artifacts);
    let out = Command::new("node").arg(dir.join("chat.mjs")).arg(&s.url).arg(&artifacts).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    for shot in [
        "chat-desktop.png",
        "chat-two-conversations.png",
        "chat-long-code.png",
        "chat-phone.png",
        "chat-phone-list.png",
    ] {
        assert!(artifacts.join(shot).exists(), "screenshot {shot} kept in {}", artifacts.display());
    }
}

/// A short version of `tests/server_load.py` (the full one runs a minute): 16 streaming clients,
/// a quarter hanging up early, for a few seconds. No request may fail, the server must end idle,
/// and its memory must not grow by more than a few MiB.
#[test]
fn server_short_load_run() {
    let Some(m) = tiny_model() else { return };
    if !have("python3", &["--version"]) {
        e2e::skip("python3", "install python3");
        return;
    }
    let script = e2e::root().join("tests/server_load.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--llamafile")
        .arg(e2e::bin("llamafile"))
        .arg("--model")
        .arg(&m)
        .args(["--clients", "16", "--seconds", "6", "--parallel", "4", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "load run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["errors"], 0);
    assert!(summary["completed"].as_u64().unwrap() > 0 && summary["hung_up_early"].as_u64().unwrap() > 0, "{summary}");
    let (before, after) = (summary["rss_before_mib"].as_f64().unwrap(), summary["rss_after_mib"].as_f64().unwrap());
    assert!(after - before < 16.0, "memory grew from {before} to {after} MiB");
}
