//! The generation command line end to end on a tiny shared model: streaming a prompt, seeds,
//! context limits, `--chat` keeping earlier turns in the KV cache, `--eval-tokens`,
//! `--perplexity`, `--bench`, and clear one-line errors for bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn model(ty: &str) -> PathBuf {
    e2e::shared().join(format!("models/tiny-mistral-{ty}.gguf"))
}

fn llamafile(args: &[&str]) -> Output {
    Command::new(e2e::bin("llamafile")).args(args).env_remove("LLAMAFILE_ISA").output().expect("running llamafile")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failure: non-zero exit, the error on one line (the last; logs may come before), no panic.
fn assert_clean_error(o: &Output, wanted: &str) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "the last line is the error: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "one error line: {err}");
    assert!(last.contains(wanted), "error should mention {wanted:?}: {err}");
}

#[test]
fn prompt_streams_the_prompt_then_deterministic_greedy_text_and_timings() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    let args = [
        "-m",
        m.to_str().unwrap(),
        "--no-conversation",
        "-p",
        "The quick brown fox",
        "-n",
        "12",
        "--temp",
        "0",
        "--ignore-eos",
    ];
    let a = llamafile(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let out = text(&a.stdout);
    assert!(out.starts_with("The quick brown fox") && out.len() > "The quick brown fox".len(), "{out:?}");
    let err = text(&a.stderr);
    assert!(err.contains("generation: 12 tokens") && err.contains("tokens/s"), "timings on stderr: {err}");
    let b = llamafile(&args);
    assert_eq!(a.stdout, b.stdout, "greedy is deterministic");
    // --no-display-prompt and --log-disable
    let mut quiet: Vec<&str> = args.to_vec();
    quiet.extend(["--no-display-prompt", "--log-disable"]);
    let c = llamafile(&quiet);
    assert!(c.status.success());
    assert_eq!(text(&c.stdout), out["The quick brown fox".len()..]);
    assert!(c.stderr.is_empty(), "--log-disable: {}", text(&c.stderr));
}

#[test]
fn seeds_reproduce_sampled_text() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q4_0");
    let run = |seed: &str| {
        let o = llamafile(&[
            "-m",
            m.to_str().unwrap(),
            "-p",
            "Once",
            "-n",
            "16",
            "--temp",
            "1.0",
            "-s",
            seed,
            "--ignore-eos",
            "--log-disable",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(run("42"), run("42"));
    assert!((43..47).map(|s| run(&s.to_string())).any(|t| t != run("42")), "other seeds give other text");
}

#[test]
fn context_limits() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    let long = "word ".repeat(100);
    let o = llamafile(&["-m", m.to_str().unwrap(), "-c", "32", "-p", &long, "-n", "4"]);
    assert_clean_error(&o, "longer than the context of 32");
    // reaching the context while generating stops cleanly
    let o = llamafile(&["-m", m.to_str().unwrap(), "-c", "32", "-p", "Hello", "--temp", "0", "--ignore-eos"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("context of 32 tokens is full"), "{}", text(&o.stderr));
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    assert_clean_error(&llamafile(&["-m", "/nonexistent/model.gguf", "-p", "hi"]), "/nonexistent/model.gguf");
    // metadata-only GGUF: the architecture is known, the tensors are missing
    let v = e2e::shared().join("vocab/qwen2.5-coder.vocab.gguf");
    assert_clean_error(&llamafile(&["-m", v.to_str().unwrap(), "-p", "hi"]), "missing tensor token_embd.weight");
    assert_clean_error(&llamafile(&["-m", m.to_str().unwrap(), "--eval-tokens", "1,x"]), "'x' is not a token id");
    assert_clean_error(&llamafile(&["-m", m.to_str().unwrap(), "--eval-tokens", "1,99999"]), "outside the vocabulary");
    assert_clean_error(
        &llamafile(&["-m", m.to_str().unwrap(), "-f", "/nonexistent/prompt.txt"]),
        "/nonexistent/prompt.txt",
    );
    // an architecture nobody implements: a GGUF with one metadata key
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    let mut g = Vec::new();
    g.extend_from_slice(b"GGUF");
    g.extend_from_slice(&3u32.to_le_bytes());
    g.extend_from_slice(&0u64.to_le_bytes());
    g.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    g.extend_from_slice(&(key.len() as u64).to_le_bytes());
    g.extend_from_slice(key);
    g.extend_from_slice(&8u32.to_le_bytes());
    g.extend_from_slice(&5u64.to_le_bytes());
    g.extend_from_slice(b"mamba");
    std::fs::write(&p, &g).unwrap();
    assert_clean_error(&llamafile(&["-m", p.to_str().unwrap(), "-p", "hi"]), "unsupported architecture 'mamba'");
}

#[test]
fn eval_tokens_prints_one_json_object() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    let o = llamafile(&[
        "-m",
        m.to_str().unwrap(),
        "--eval-tokens",
        "1,415,2936,9060",
        "--top",
        "5",
        "-n",
        "3",
        "--log-disable",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], serde_json::json!([1, 415, 2936, 9060]));
    let top = v["top10"].as_array().unwrap();
    assert_eq!(top.len(), 4);
    for pos in top {
        let p = pos.as_array().unwrap();
        assert_eq!(p.len(), 5);
        let l: Vec<f64> = p.iter().map(|e| e[1].as_f64().unwrap()).collect();
        assert!(l.windows(2).all(|w| w[0] >= w[1]), "sorted: {l:?}");
    }
    assert_eq!(v["nll"].as_array().unwrap().len(), 3);
    assert!(v["nll"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() > 0.0));
    let greedy = v["greedy"].as_array().unwrap();
    assert_eq!(greedy.len(), 3);
    assert_eq!(greedy[0], top[3][0][0], "the first greedy token is the last position's top-1");
}

#[test]
fn chat_keeps_earlier_turns_in_the_cache() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    let mut child = Command::new(e2e::bin("llamafile"))
        // Top-1 at temperature 1: a greedy turn would reuse only what was computed in batches of
        // 64 tokens or more (so that its answer never depends on the cache).
        .args(["-m", m.to_str().unwrap(), "--chat", "-n", "6", "--temp", "1", "--top-k", "1", "--verbose"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\nTell me more\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let cached: Vec<usize> =
        err.lines().filter_map(|l| l.split(" tokens (").nth(1)?.split(' ').next()?.parse().ok()).collect();
    assert_eq!(cached.len(), 2, "one timing line per turn: {err}");
    assert_eq!(cached[0], 0);
    assert!(cached[1] >= 10, "the second turn reuses the first from the cache: {err}");
    assert!(text(&o.stdout).lines().any(|l| !l.trim().is_empty()), "replies on stdout");
}

#[test]
fn perplexity_over_a_file() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q8_0");
    let f = e2e::shared().join("reference/long.txt");
    let o = llamafile(&[
        "-m",
        m.to_str().unwrap(),
        "--perplexity",
        "-f",
        f.to_str().unwrap(),
        "-c",
        "128",
        "--log-disable",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let ppl: f64 = out
        .split("PPL = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // random weights: far from a real model, but finite and above 1
    assert!(ppl.is_finite() && ppl > 1.0, "{out}");
}

#[test]
fn bench_reports_rates_and_peak_rss() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("q4_k_m");
    let o = llamafile(&["-m", m.to_str().unwrap(), "--bench", "--bench-pp", "32", "--bench-tg", "8", "-t", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for key in ["pp32: ", "tg8: ", "peak RSS: "] {
        let v: f64 = out
            .split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing: {out}"));
        assert!(v > 0.0, "{key}{v}");
    }
}
