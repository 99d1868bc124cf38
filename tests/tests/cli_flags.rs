//! The command line as llama.cpp and llamafile users type it, through the real binary on a tiny
//! shared model (Mistral's chat template; the runtime's own tiny model where neither the
//! vocabulary nor the text matters): `-p` as one conversation turn (the exact token ids
//! sent), `--no-conversation`, llama.cpp's one-dash spellings, range errors, `.args` defaults a
//! user overrides, `--help`, `--version`, and Ctrl-C in a conversation on a pseudo-terminal.

use std::path::PathBuf;
use std::process::{Command, Output};

const MODEL: &str = "models/tiny-mistral-q8_0.gguf";

/// The tiny shared model, or `None` (the skip recorded) without the shared fixtures.
fn model() -> Option<PathBuf> {
    e2e::require_shared().map(|s| s.join(MODEL))
}

fn run(args: &[&str]) -> Output {
    Command::new(e2e::bin("llamafile")).args(args).env_remove("LLAMAFILE_ISA").output().expect("running llamafile")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--tokenize` of `text` (BOS added, special tokens parsed): what the model must be sent.
fn tokenize(text: &str) -> String {
    let m = e2e::shared().join(MODEL);
    let o = run(&["-m", m.to_str().unwrap(), "--tokenize", "-p", text]);
    assert!(o.status.success(), "{}", self::text(&o.stderr));
    self::text(&o.stdout).trim().to_string()
}

/// The runtime's own tiny model (`gguf::writer::tiny_model`) written into `dir`: for the tests
/// whose point is the flags, not the Mistral vocabulary or template, so they run without fixtures.
fn tiny(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    p
}

/// The ids `--verbose` says were sent to the model.
fn sent_ids(o: &Output) -> String {
    let err = text(&o.stderr);
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("prompt tokens: "))
        .unwrap_or_else(|| panic!("no prompt tokens line: {err}"));
    line.trim().to_string()
}

#[test]
fn a_prompt_is_one_user_turn_through_the_chat_template() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let o = run(&["-m", m, "-p", "Hi", "-n", "4", "--temp", "0", "--ignore-eos", "--verbose"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sent_ids(&o), tokenize("[INST] Hi [/INST]"), "the Mistral template's rendering of one user turn");
    let out = text(&o.stdout);
    assert!(!out.starts_with("Hi"), "the prompt is not echoed in a conversation: {out:?}");
    assert!(out.trim_end().len() > 1 && out.ends_with('\n'), "the answer, then the end of the line: {out:?}");
    assert!(text(&o.stderr).contains("generation: 4 tokens"), "{}", text(&o.stderr));

    // -sys is the system prompt (the built-in Mistral template puts it before the first turn)
    let o = run(&[
        "-m",
        m,
        "--chat-template",
        "mistral",
        "-sys",
        "Be brief.",
        "-p",
        "Hi",
        "-n",
        "2",
        "--temp",
        "0",
        "--verbose",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sent_ids(&o), tokenize("[INST] Be brief.\n\nHi [/INST]"));

    // --no-conversation, -no-cnv and --raw: raw completion of the prompt, echoed
    for flag in ["--no-conversation", "-no-cnv", "--raw"] {
        let o = run(&["-m", m, flag, "-p", "Hi", "-n", "2", "--temp", "0", "--ignore-eos", "--verbose"]);
        assert!(o.status.success(), "{flag}: {}", text(&o.stderr));
        assert_eq!(sent_ids(&o), tokenize("Hi"), "{flag}");
        assert!(text(&o.stdout).starts_with("Hi"), "{flag}: {}", text(&o.stdout));
    }

    // -cnv -st: the same single turn, explicitly
    let o = run(&["-m", m, "-cnv", "-st", "-p", "Hi", "-n", "2", "--temp", "0", "--verbose"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sent_ids(&o), tokenize("[INST] Hi [/INST]"));
}

#[test]
fn llama_cpp_flags_are_taken_and_flags_without_effect_say_so_once() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let o = run(&[
        "-m",
        m,
        "-co",
        "-tb",
        "2",
        "-fa",
        "--mlock",
        "--no-mmap",
        "--no-warmup",
        "-mg",
        "0",
        "-ngl",
        "0",
        "--jinja",
        "--ctx_size",
        "256",
        "--top_k",
        "1",
        "-p",
        "Hi",
        "-n",
        "2",
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    for flag in ["--color", "--threads-batch", "--flash-attn", "--mlock", "--no-mmap", "--no-warmup", "--main-gpu"] {
        let notes = err.lines().filter(|l| l.starts_with("note: ") && l.contains(&format!("{flag} "))).count();
        assert_eq!(notes, 1, "one note for {flag}: {err}");
    }
    assert!(!err.contains("--jinja"), "--jinja has its effect (templates are Jinja): {err}");
    assert!(err.contains("context 256"), "--ctx_size: {err}");

    // -r stops the text at a reverse prompt: the greedy text of -no-cnv cut before its third word
    let greedy = run(&["-m", m, "-no-cnv", "-p", "Hi", "-n", "12", "--temp", "0", "--ignore-eos", "--log-disable"]);
    let full = text(&greedy.stdout);
    let stop = full["Hi".len()..].split_whitespace().nth(2).expect("a few words");
    let o =
        run(&["-m", m, "-no-cnv", "-p", "Hi", "-n", "12", "--temp", "0", "--ignore-eos", "--log-disable", "-r", stop]);
    assert!(o.status.success());
    let cut = text(&o.stdout);
    assert!(cut.len() < full.len() && full.starts_with(cut.trim_end_matches('\n')), "{cut:?} is a prefix of {full:?}");
}

/// Refused before loading anything: exit 2, clap's message naming the flag, no panic.
fn assert_usage_error(args: &[&str], wanted: &[&str]) {
    let o = run(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("unexpected argument"), "{args:?}: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{args:?}: {err}");
    for w in wanted {
        assert!(err.contains(w), "{args:?}: {err} should mention {w:?}");
    }
}

#[test]
fn bad_values_and_unknown_spellings_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let m = m.to_str().unwrap();
    assert_usage_error(&["-m", m, "-p", "x", "--temp", "nan"], &["--temp", "finite"]);
    assert_usage_error(&["-m", m, "-p", "x", "--temp", "-1"], &["--temp", "between 0 and 2"]);
    assert_usage_error(&["-m", m, "-p", "x", "--top-p", "nan"], &["--top-p"]);
    assert_usage_error(&["-m", m, "-p", "x", "--min-p", "2"], &["--min-p"]);
    assert_usage_error(&["-m", m, "-p", "x", "--repeat-penalty", "0"], &["--repeat-penalty", "above 0"]);
    assert_usage_error(&["-m", m, "-p", "x", "-c", "-5"], &["--ctx-size", "0 or more"]);
    assert_usage_error(&["-m", m, "-p", "x", "-ctk", "q8_0"], &["-ctk", "not supported"]);
    assert_usage_error(&["-m", m, "-p", "x", "-xyz"], &["unknown option '-xyz'"]);
    // negative values that mean something run
    let o = run(&["-m", m, "-p", "x", "-n", "-1", "-s", "-1", "-c", "16", "--log-disable"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn help_and_version() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let help = text(&o.stdout);
    for needle in [
        "Model:",
        "Sampling:",
        "Generation:",
        "GPU:",
        "Server:",
        "-ngl",
        "-cnv",
        "-sys",
        "--temp",
        "opens the page in the browser",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}: {help}");
    }
    let o = run(&["--version"]);
    assert!(o.status.success());
    let v = text(&o.stdout);
    let commit =
        v.trim().strip_prefix("llamafile ").and_then(|r| r.split("(commit ").nth(1)).and_then(|r| r.strip_suffix(')'));
    let commit = commit.unwrap_or_else(|| panic!("--version: {v:?}"));
    // In a git checkout, a commit of it (the binary may lag HEAD by a commit not yet built).
    let git = |args: &[&str]| {
        Command::new("git").arg("-C").arg(e2e::root()).args(args).output().ok().filter(|o| o.status.success())
    };
    if git(&["rev-parse", "HEAD"]).is_some() {
        let kind = git(&["cat-file", "-t", commit]).map(|o| text(&o.stdout));
        assert_eq!(kind.as_deref().map(str::trim), Some("commit"), "{commit} is no commit of this checkout");
    } else {
        assert_eq!(commit, "unknown");
    }
}

#[test]
fn bundle_args_are_defaults_the_user_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let out = dir.path().join("x.llamafile");
    // README's example
    let p = Command::new(e2e::bin("pack"))
        .arg("--runtime")
        .arg(e2e::bin("llamafile"))
        .arg("--gguf")
        .arg(&model)
        .arg("-o")
        .arg(&out)
        .args(["--args", "--temp 0\n...\n-n 30"])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", text(&p.stderr));
    let o = Command::new(&out).args(["--temp", "0.5", "-p", "hi", "--ignore-eos"]).output().unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("generation: 30 tokens"), "-n 30 from .args: {err}");
    let o = Command::new(&out).args(["--temp", "nan", "-p", "hi"]).output().unwrap();
    assert!(text(&o.stderr).contains("--temp"), "the user's --temp is the one checked: {}", text(&o.stderr));
}

/// Drives a conversation on a pseudo-terminal: a reply is stopped by Ctrl-C and the prompt comes
/// back; Ctrl-C with text on the line clears it; Ctrl-C at the empty prompt ends with exit 0.
const PTY_CHAT: &str = r#"
import os, pty, select, sys, time
exe, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(exe, [exe, "-m", model, "--chat", "--temp", "0", "--ignore-eos", "-c", "4096"])
buf = b""
def read_until(pred, timeout=60):
    global buf
    end = time.time() + timeout
    while time.time() < end:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                d = os.read(fd, 65536)
            except OSError:
                return False
            if not d:
                return False
            buf += d
            if pred(buf):
                return True
    return False
def fail(what):
    print(what, repr(buf[-800:]))
    sys.exit(1)
if not read_until(lambda b: b"> " in b):
    fail("no prompt")
os.write(fd, b"Hello\r")
start = len(buf)
if not read_until(lambda b: len(b) > start + 200):
    fail("no reply")
os.write(fd, b"\x03")
if not read_until(lambda b: b"(stopped)" in b[start:] and b"> " in b[b.rfind(b"(stopped)"):]):
    fail("Ctrl-C did not stop the reply and show the prompt")
os.write(fd, b"some text\x03")
time.sleep(1)
if os.waitpid(pid, os.WNOHANG)[0] != 0:
    fail("Ctrl-C with text on the line ended the program")
os.write(fd, b"\x03")
end = time.time() + 30
while time.time() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            fail(f"exit {code}")
        print("ok")
        sys.exit(0)
    read_until(lambda b: False, 0.2)
fail("Ctrl-C at the empty prompt did not end the program")
"#;

#[test]
fn ctrl_c_stops_a_reply_and_a_second_one_at_the_empty_prompt_exits() {
    let Some(model) = model() else { return };
    let py = match Command::new("python3").arg("-c").arg(PTY_CHAT).arg(e2e::bin("llamafile")).arg(model).output() {
        Ok(o) => o,
        Err(e) => {
            e2e::skip(&format!("python3 ({e})"), "install python3");
            return;
        }
    };
    assert!(py.status.success(), "{}{}", text(&py.stdout), text(&py.stderr));
    assert_eq!(text(&py.stdout).trim(), "ok");
}

/// The real Qwen2.5-Coder 0.5B Instruct (ChatML template) answers `-p` as an assistant and stops
/// at its end-of-turn token (it used to complete the raw text: "Hellonodiscardnodiscard...").
#[test]
fn real_instruct_model_answers_a_prompt() {
    let Some(m) = e2e::require_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let q = "What is the capital of France? Answer in one word.";
    let o = run(&["-m", m.to_str().unwrap(), "-p", q, "-n", "16", "--temp", "0", "-c", "256"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(out.contains("Paris") && !out.contains(q), "{out:?}");
    assert!(err.contains("stop: EndToken"), "ended at <|im_end|>: {err}");
}
