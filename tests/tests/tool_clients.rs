//! Tool calling through real clients on the real Qwen2.5-Coder 0.5B (`tests/tool_clients.py`):
//! the official `openai` client (a streamed call reassembled by its helper and from the raw
//! deltas, a round trip with a `tool` result) and LangChain's `langchain-openai` (`bind_tools`,
//! a `ToolMessage` round trip, `with_structured_output` with each method). Each skips with a
//! clear message when its package is not installed (`.ci/run` installs them).

mod server_support;

use server_support::*;
use std::process::Command;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn run_part(part: &str, import: &str, package: &str, expect: &[&str]) {
    let Some(model) = real_model(QWEN) else { return };
    let have = Command::new("python3")
        .args(["-c", &format!("import {import}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        e2e::skip(&format!("the `{package}` Python package"), &format!("pip install {package}"));
        return;
    }
    let s = Server::start(&model, &["--server", "-c", "4096", "-t", "2"]);
    let out =
        Command::new("python3").arg(e2e::root().join("tests/tool_clients.py")).arg(&s.url).arg(part).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{part} tool checks failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    for e in expect {
        assert!(stdout.contains(&format!("ok - {e}")), "missing check '{e}':\n{stdout}");
    }
}

#[test]
fn openai_client_streamed_tool_call_and_round_trip_on_qwen() {
    run_part(
        "openai",
        "openai",
        "openai",
        &[
            "stream: the call reassembled with its arguments",
            "raw deltas add up to the helper's arguments",
            "round trip: the answer uses the tool's result",
        ],
    );
}

#[test]
fn langchain_tools_and_structured_output_on_qwen() {
    run_part(
        "langchain",
        "langchain_openai",
        "langchain-openai",
        &[
            "bind_tools: parsed args",
            "ToolMessage round trip: the answer uses the result",
            "with_structured_output(default) gives a Weather",
            "with_structured_output(json_schema) gives a Weather",
            "with_structured_output(function_calling) gives a Weather",
        ],
    );
}
