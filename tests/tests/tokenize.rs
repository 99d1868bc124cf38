//! `llamafile --tokenize`: ids as the reference gives them (a sample of every reference file's
//! `tokenize` entries, both parse_special modes; the library tests check all of them), prompt
//! files and escapes, and bad input as one clear line.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llamafile() -> PathBuf {
    e2e::bin("llamafile")
}

fn run(args: &[&str]) -> Output {
    Command::new(llamafile()).args(args).output().expect("running llamafile")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tokenize(model: &Path, text: &str, parse_special: bool) -> Vec<u32> {
    let m = model.to_str().unwrap();
    let mut args = vec!["-m", m, "--tokenize", "-p", text];
    if !parse_special {
        args.push("--no-parse-special");
    }
    let o = run(&args);
    assert!(o.status.success(), "{text:?}: {}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one line expected: {out:?}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?} is not a JSON array of ids: {e}"))
}

/// Entries worth a process each (every entry is checked by the library's tests): those whose
/// ids depend on parse_special, and one of byte-fallback / byte-level text.
fn sample(entries: &[Value]) -> Vec<&Value> {
    let wanted =
        |t: &str| t == "</s>" || t.starts_with("<start_of_turn>") || t.starts_with("<0x0A>") || t.starts_with("🦙");
    entries.iter().filter(|e| wanted(e["text"].as_str().unwrap())).collect()
}

#[test]
fn tokenize_matches_reference_samples() {
    let Some(_) = e2e::require_shared() else { return };
    let shared = e2e::shared();
    for (model, json) in [
        ("models/tiny-mistral-q4_0.gguf", "tiny-mistral-q4_0.json"),
        ("vocab/gemma-3-270m.vocab.gguf", "gemma-3-270m-q4_k_m.json"),
        ("vocab/qwen2.5-coder.vocab.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.json"),
    ] {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(shared.join("reference").join(json)).unwrap()).unwrap();
        let entries = r["tokenize"].as_array().unwrap();
        let picked = sample(entries);
        assert_eq!(picked.len(), 8, "{json}: the sampled entries are missing");
        for e in picked {
            let text = e["text"].as_str().unwrap();
            let parse = e["parse_special"].as_bool().unwrap();
            let want: Vec<u32> = serde_json::from_value(e["ids"].clone()).unwrap();
            assert_eq!(tokenize(&shared.join(model), text, parse), want, "{model}: {text:?} parse_special={parse}");
        }
    }
}

#[test]
fn tokenize_prompt_file_and_escapes() {
    let Some(_) = e2e::require_shared() else { return };
    let model = e2e::shared().join("models/tiny-mistral-q4_0.gguf");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prompt.txt");
    std::fs::write(&f, "Hello world").unwrap();
    let o = run(&["-m", m, "--tokenize", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "[1, 22557, 1526]\n");
    // -e turns "\n" into a newline: the same ids as a real newline.
    let o = run(&["-m", m, "--tokenize", "-e", "-p", r"Hello\nworld"]);
    assert_eq!(stdout(&o).trim(), format!("{:?}", tokenize(&model, "Hello\nworld", true)));
}

/// A minimal GGUF v3 with only tokenizer metadata.
fn vocab_gguf(path: &Path, model: &str, pre: &str, tokens: &[&str]) {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(4u64.to_le_bytes()); // key-value pairs
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "tokenizer.ggml.model");
    b.extend(8u32.to_le_bytes());
    s(&mut b, model);
    s(&mut b, "tokenizer.ggml.pre");
    b.extend(8u32.to_le_bytes());
    s(&mut b, pre);
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        s(&mut b, t);
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    std::fs::write(path, b).unwrap();
}

fn expect_one_line_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got {}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err:?}");
    assert!(err.contains(want), "{want:?} not in {err:?}");
}

#[test]
fn tokenize_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    // The runtime's own tiny model: these errors come before its vocabulary matters.
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    let m = model.to_str().unwrap();
    expect_one_line_error(&run(&["-m", m, "--tokenize"]), "needs a prompt");
    let missing = dir.path().join("missing.txt");
    expect_one_line_error(&run(&["-m", m, "--tokenize", "-f", missing.to_str().unwrap()]), "missing.txt");
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    expect_one_line_error(&run(&["-m", m, "--tokenize", "-f", latin1.to_str().unwrap()]), "not valid UTF-8");

    let bad_pre = dir.path().join("bad-pre.gguf");
    vocab_gguf(&bad_pre, "gpt2", "klingon", &["a", "b"]);
    let o = run(&["-m", bad_pre.to_str().unwrap(), "--tokenize", "-p", "ab"]);
    expect_one_line_error(&o, "klingon");
    assert!(stderr(&o).contains("bad-pre.gguf"), "{}", stderr(&o));

    let bert = dir.path().join("bert.gguf");
    vocab_gguf(&bert, "bert", "default", &["a"]);
    expect_one_line_error(
        &run(&["-m", bert.to_str().unwrap(), "--tokenize", "-p", "a"]),
        "unsupported tokenizer.ggml.model 'bert'",
    );

    // A well-formed tiny byte-level vocabulary works end to end.
    let ok = dir.path().join("ok.gguf");
    vocab_gguf(&ok, "gpt2", "qwen2", &["a", "b", "Ġ"]);
    let o = run(&["-m", ok.to_str().unwrap(), "--tokenize", "-p", "ab a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "[0, 1, 2, 0]\n");
}
