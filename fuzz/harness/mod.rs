//! The fuzz targets: each takes arbitrary bytes through one of the program's input paths, as the
//! program itself does, and says what came of it. Shared by the `cargo fuzz` targets
//! (`fuzz/fuzz_targets`), the stable mutation fuzzer (`tests/examples/fuzz.rs`) and the corpus
//! replay (`tests/tests/fuzz_replay.rs`), which include this file with `#[path]`.
//!
//! A target returns `Ok(text the program would print)` or `Err(the one-line error it would
//! print)`; both are fine. What is not: a panic, an abort (allocation failure, stack overflow),
//! a hang, and what [`violation`] finds in the outcome (raw control characters or a runaway
//! length in text that came from the input, an internal server error).

#![allow(dead_code)]

pub mod child;
pub mod seeds;

use llamafile_engine::tokenizer::chat::{ChatMessage, ChatTemplate};
use llamafile_engine::{Engine, GenerateRequest, LoadOptions, SamplingParams};
use llamafile_format::bundle;
use llamafile_format::gguf::GgufFile;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const TARGETS: [&str; 5] = ["gguf", "zip_tail", "args", "chat_template", "http"];

/// What an input did: the text printed, or the error printed.
pub type Outcome = Result<String, String>;

/// Longest error line accepted: errors quote names and values from the input, cut to a length.
pub const MAX_ERROR_CHARS: usize = 2048;

/// The context and the tokens generated per input where a target runs the model.
const N_CTX: usize = 128;
const MAX_TOKENS: usize = 4;

/// The arguments the user types after a llamafile's `.args` in the `args` target.
pub const USER_ARGS: [&str; 5] = ["llamafile", "--temp", "0.5", "-p", "hi"];

pub fn run(target: &str, data: &[u8]) -> Outcome {
    match target {
        "gguf" => gguf(data),
        "zip_tail" => zip_tail(data),
        "args" => args(data),
        "chat_template" => chat_template(data),
        "http" => http(data),
        _ => panic!("unknown fuzz target '{target}' (targets: {})", TARGETS.join(", ")),
    }
}

fn msg(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// `data` in a temporary file (removed when the handle drops), for paths that open files.
fn temp_file(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().prefix("llamafile-fuzz-").tempfile().expect("temporary file");
    f.write_all(data).expect("write the temporary file");
    f.flush().expect("flush the temporary file");
    f
}

/// A GGUF as `--info` and the generation path see it: parse, describe, load the model,
/// tokenizer and template, generate a few tokens.
fn gguf(data: &[u8]) -> Outcome {
    let g = GgufFile::from_bytes("fuzz.gguf", data.to_vec()).map_err(msg)?;
    let report = llamafile_format::describe::describe(&g);
    drop(g);
    let f = temp_file(data);
    let opts = LoadOptions {
        model: f.path().to_path_buf(),
        n_ctx: Some(N_CTX),
        n_threads: Some(1),
        gpu: "disable".into(),
        ..Default::default()
    };
    let engine = Engine::load_with_batch(&opts, 8).map_err(msg)?;
    let mut session = engine.try_new_session().map_err(msg)?;
    let messages = [ChatMessage::new("user", "ab c")];
    let rendered = engine.chat_template().render(&messages, true).map_err(msg)?;
    let prompt = llamafile_engine::tokenizer::chat::encode_prompt(engine.tokenizer(), &rendered).map_err(msg)?;
    if prompt.is_empty() || prompt.len() >= engine.n_ctx() {
        return Ok(report);
    }
    let req = GenerateRequest {
        prompt,
        max_tokens: MAX_TOKENS,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    };
    session.generate(&req, &mut |_| true).map_err(msg)?;
    Ok(report)
}

/// A llamafile or zip: its `.args`, its GGUF entry located and mapped, the `--info` report.
fn zip_tail(data: &[u8]) -> Outcome {
    let f = temp_file(data);
    if let Some(text) = bundle::read_args_entry(f.path()).map_err(msg)? {
        bundle::parse_args_file(&text).map_err(msg)?;
    }
    let g = llamafile_format::gguf::GgufFile::open_model(Some(f.path())).map_err(msg)?;
    Ok(llamafile_format::describe::describe(&g))
}

/// `.args` text merged with the user's arguments and parsed as the command line (as `cli::run`
/// does).
fn args(data: &[u8]) -> Outcome {
    let text = std::str::from_utf8(data).map_err(|_| "the .args entry is not UTF-8 text".to_string())?;
    let items = bundle::parse_args_file(text).map_err(msg)?;
    let argv = bundle::merge_args(&items, USER_ARGS.iter().map(Into::into).collect());
    match llamafile::cli::parse(argv) {
        Ok(_) => Ok(String::new()),
        // --help and --version print and exit 0.
        Err(e) if !e.use_stderr() => Ok(String::new()),
        // The error comes first; hints and usage follow after a blank line.
        Err(e) => Err(e.to_string().split("\n\n").next().unwrap_or("").trim_end().to_string()),
    }
}

fn conversations() -> Vec<Vec<ChatMessage>> {
    let m = ChatMessage::new;
    vec![
        vec![m("user", "hello")],
        vec![m("system", "be brief"), m("user", "hi"), m("assistant", "hello"), m("user", "and?")],
        vec![m("user", "a"), m("user", "b")],
        vec![],
    ]
}

/// A chat template from a file (`--chat-template FILE`, or a GGUF's own): compiled, then rendered
/// over a few conversations, with and without tools.
fn chat_template(data: &[u8]) -> Outcome {
    let src = String::from_utf8_lossy(data);
    let t = ChatTemplate::from_source("file", &src, "<s>", "</s>").map_err(msg)?;
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    // Accepted when some conversation renders (templates may refuse some, e.g. an empty one).
    let mut first_error = None;
    let mut rendered = false;
    for conv in conversations() {
        for r in [t.render(&conv, true), t.render_with_tools(&conv, false, Some(&tools))] {
            match r {
                Ok(_) => rendered = true,
                Err(e) => {
                    first_error.get_or_insert(msg(e));
                }
            }
        }
    }
    match first_error {
        Some(e) if !rendered => Err(e),
        _ => Ok(String::new()),
    }
}

/// The server (routes, request types, validation, the tiny model behind it) and a runtime to
/// drive it, made once per process.
fn server() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        use llamafile::server::{model::EngineModel, routes, AppState};
        // The engine maps the file: it can go once loaded.
        let f = temp_file(&seeds::tiny_gguf());
        let opts = LoadOptions {
            model: f.path().to_path_buf(),
            n_ctx: Some(N_CTX),
            n_threads: Some(1),
            gpu: "disable".into(),
            ..Default::default()
        };
        let engine = Engine::load_with_batch(&opts, 8).expect("the tiny model loads");
        let defaults = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        };
        let mut state = AppState::new(Arc::new(EngineModel(Arc::new(engine))), 1, defaults);
        Arc::get_mut(&mut state).expect("not shared yet").log = false;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        (rt, routes::router(state))
    })
}

/// A request: `METHOD PATH` on the first line, the body after it.
fn http(data: &[u8]) -> Outcome {
    use tower::ServiceExt;
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut parts = head.splitn(2, ' ');
    let method = parts.next().unwrap_or("POST");
    let path = parts.next().unwrap_or("/");
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .map_err(|e| format!("not a request the HTTP parser would pass on: {e}"))?;
    let (rt, app) = server();
    rt.block_on(async {
        let limit = Duration::from_secs(10);
        let resp = tokio::time::timeout(limit, app.clone().oneshot(req))
            .await
            .map_err(|_| "timeout: no response".to_string())?
            .unwrap_or_else(|e| match e {});
        let status = resp.status();
        let body = tokio::time::timeout(limit, axum::body::to_bytes(resp.into_body(), 64 << 20))
            .await
            .map_err(|_| "timeout: the body never ended".to_string())?
            .map_err(|e| format!("HTTP {status}: unreadable body: {e}"))?;
        let body = String::from_utf8_lossy(&body);
        if status.is_success() {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("HTTP {status}: {}", body.chars().take(300).collect::<String>()))
        }
    })
}

/// Run one input and panic on a violation of the output rules (for libFuzzer, which treats a
/// panic as a crash and keeps the input).
pub fn check(target: &str, data: &[u8]) {
    if let Some((kind, detail)) = violation(target, &run(target, data)) {
        panic!("{target}: {kind}: {detail}");
    }
}

/// What is wrong with an outcome beyond panics and aborts: a kind (one per class of finding,
/// for deduplication) and the detail.
pub fn violation(target: &str, outcome: &Outcome) -> Option<(&'static str, String)> {
    let shown = |s: &str| s.chars().take(200).collect::<String>().escape_debug().to_string();
    match (target, outcome) {
        ("http", Err(e)) if e.starts_with("timeout") => Some(("http: request never finished", e.clone())),
        ("http", Err(e)) if e.starts_with("HTTP 5") && !e.starts_with("HTTP 503") => {
            Some(("http: server error", shown(e)))
        }
        ("gguf" | "zip_tail" | "args", Err(e)) => {
            // A tab prints as blank space: harmless, unlike escapes, returns, new lines and NULs.
            if let Some(c) = e.chars().find(|&c| c.is_control() && c != '\t') {
                Some(("raw control character in an error", format!("{c:?} in: {}", shown(e))))
            } else if e.chars().count() > MAX_ERROR_CHARS {
                Some(("error line too long", format!("{} characters: {}...", e.chars().count(), shown(e))))
            } else {
                None
            }
        }
        ("gguf" | "zip_tail", Ok(report)) => report
            .lines()
            .find(|l| l.chars().any(|c| c.is_control() && c != '\t'))
            .map(|l| ("raw control character in --info", shown(l))),
        _ => None,
    }
}

/// What a corpus file's name says its input must do: `NAME.reject` must be refused with an
/// error, `NAME.accept` must succeed, anything else may do either.
pub fn expectation(file_name: &str) -> Option<bool> {
    if file_name.ends_with(".reject") {
        Some(false)
    } else if file_name.ends_with(".accept") {
        Some(true)
    } else {
        None
    }
}
