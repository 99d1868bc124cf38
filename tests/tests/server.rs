//! The server end to end: the built `llamafile` binary serving the tiny shared Mistral-layout
//! model over HTTP. Each test starts its own server on a free port.

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::time::{Duration, Instant};

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[test]
fn server_answers_chat_completions_with_the_chat_template() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "-c", "512"]);
    assert_eq!(s.get("/health").json()["status"], "ok");
    let models = s.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"].as_str(), Some(s.name.as_str()));

    let body = json!({ "messages": user("Hi"), "max_tokens": 12, "temperature": 0, "seed": 1 });
    let a = s.post("/v1/chat/completions", &body).json();
    let b = s.post("/v1/chat/completions", &body).json();
    let text = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty(), "{a}");
    assert_eq!(text, b["choices"][0]["message"]["content"].as_str().unwrap(), "greedy is deterministic");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= 12, "{a}");
    // the prompt is exactly Mistral's template applied to the message
    let templated = s.post("/tokenize", &json!({ "content": "<s>[INST] Hi [/INST]" })).json();
    assert_eq!(
        a["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        templated["tokens"].as_array().unwrap().len(),
        "{a}"
    );

    // the same request streamed gives the same text, chunk by chunk, ending in [DONE]
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({ "include_usage": true });
    let r = s.post("/v1/chat/completions", &sb);
    assert!(r.headers.to_ascii_lowercase().contains("text/event-stream"));
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    assert!(chunks.len() >= 3, "several chunks: {}", r.body);
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], a["usage"]["prompt_tokens"]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], a["usage"]["completion_tokens"]);
}

#[test]
fn server_completion_matches_the_command_line() {
    let Some(m) = tiny_model() else { return };
    let prompt = "The quick brown fox";
    let out = std::process::Command::new(e2e::bin("llamafile"))
        .arg("-m")
        .arg(&m)
        .args([
            "--no-conversation",
            "-p",
            prompt,
            "-n",
            "16",
            "--temp",
            "0",
            "--no-display-prompt",
            "-t",
            "1",
            "--log-disable",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli = String::from_utf8(out.stdout).unwrap();
    let s = Server::start(&m, &["--server", "-c", "512"]);
    let j = s.post("/completion", &json!({ "prompt": prompt, "n_predict": 16, "temperature": 0 })).json();
    let server_text = j["content"].as_str().unwrap();
    assert_eq!(cli.trim_end_matches('\n'), server_text.trim_end_matches('\n'), "CLI and server disagree");
    let o = s.post("/v1/completions", &json!({ "prompt": prompt, "max_tokens": 16, "temperature": 0 })).json();
    assert_eq!(o["choices"][0]["text"].as_str().unwrap(), server_text);
    assert_eq!(j["tokens_evaluated"], o["usage"]["prompt_tokens"]);
}

#[test]
fn server_rejects_bad_requests_with_json_errors() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "-c", "256"]);
    s.post_raw("/v1/chat/completions", b"{\"messages\": [}").assert_error(400, "malformed JSON");
    let j = s
        .post("/v1/chat/completions", &json!({ "messages": user("x"), "max_tokens": "many" }))
        .assert_error(400, "max_tokens");
    assert_eq!(j["error"]["param"], "max_tokens");
    let long = "word ".repeat(400);
    let j = s.post("/v1/chat/completions", &json!({ "messages": user(&long) })).assert_error(400, "context");
    assert_eq!(j["error"]["code"], "context_length_exceeded");
    s.post("/v1/completions", &json!({ "prompt": long })).assert_error(400, "context");
    s.post_raw("/v1/chat/completions", &vec![b' '; 5 << 20]).assert_error(413, "limit");
    s.get("/v1/engines").assert_error(404, "/v1/engines");
    s.get("/completion").assert_error(405, "GET");
    s.post("/detokenize", &json!({ "tokens": [1, 32000] })).assert_error(400, "32000");
    // the Mistral template only allows alternating user/assistant turns
    s.post("/v1/chat/completions", &json!({ "messages": [{"role": "assistant", "content": "x"}] }))
        .assert_error(400, "template");
    assert_eq!(s.get("/health").status, 200, "still serving");
}

#[test]
fn server_tokenizes_like_the_command_line() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server"]);
    let text = "Hello world! <s> [INST]";
    let out = std::process::Command::new(e2e::bin("llamafile"))
        .arg("-m")
        .arg(&m)
        .args(["--tokenize", "-p", text])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = s.post("/tokenize", &json!({ "content": text, "add_special": true })).json();
    assert_eq!(j["tokens"], cli);
    let back = s.post("/detokenize", &json!({ "tokens": j["tokens"] })).json();
    assert!(back["content"].as_str().unwrap().contains("Hello world!"), "{back}");
    let pieces = s.post("/tokenize", &json!({ "content": "Hello", "with_pieces": true })).json();
    assert_eq!(pieces["tokens"][0]["piece"], " Hello", "SentencePiece's ▁ is a space");
}

#[test]
fn server_cancels_a_generation_when_the_client_hangs_up() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "--parallel", "1", "-c", "4096"]);
    let n = 4000;
    let body = json!({ "prompt": "Once upon a time", "n_predict": n, "ignore_eos": true, "stream": true });
    let t0 = Instant::now();
    stream_then_hang_up(&s.addr, "/completion", &body, 3);
    s.wait_until("the slot is idle", Duration::from_secs(20), |s| s.get("/health").json()["slots_processing"] == 0);
    let slot = &s.get("/slots").json()[0];
    assert_eq!(slot["last_stop"], "cancelled", "{slot}");
    let generated = slot["last_generated_tokens"].as_u64().unwrap();
    assert!(generated < n, "generated {generated} of {n} tokens after the client left");
    eprintln!("cancelled after {generated} tokens, slot free {:?} after the request started", t0.elapsed());
    // the freed slot serves the next request
    let j = s.post("/completion", &json!({ "prompt": "Hi", "n_predict": 4 })).json();
    assert_eq!(j["stop"], true);
}

#[test]
fn server_reuses_the_kv_cache_of_a_conversation() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "--parallel", "2", "-c", "1024"]);
    let q = "Tell me a long story about a cat who learns to fly.";
    let r1 = s.post("/v1/chat/completions", &json!({ "messages": user(q), "max_tokens": 16, "temperature": 0 })).json();
    let reply = r1["choices"][0]["message"]["content"].as_str().unwrap();
    let p1 = r1["usage"]["prompt_tokens"].as_u64().unwrap();
    // another conversation meanwhile
    s.post("/v1/chat/completions", &json!({ "messages": user("Unrelated question"), "max_tokens": 4 }));
    let turn2 = json!([
        { "role": "user", "content": q },
        { "role": "assistant", "content": reply },
        { "role": "user", "content": "What happened next?" },
    ]);
    let r2 = s.post("/v1/chat/completions", &json!({ "messages": turn2, "max_tokens": 4 })).json();
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let p2 = r2["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached >= p1, "second turn reused {cached} of {p2} prompt tokens; the first turn's prompt was {p1}");
    assert_eq!(r2["timings"]["prompt_n"].as_u64().unwrap(), p2 - cached, "only the new tokens were processed");
}

#[test]
fn server_serves_parallel_clients_and_queues_the_rest() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "--parallel", "2", "-c", "512"]);
    let addr = s.addr.clone();
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({ "messages": user(&format!("Question number {i}")), "max_tokens": 24, "stream": i % 2 == 0 });
                send(&addr, "POST", "/v1/chat/completions", body.to_string().as_bytes())
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let slots = s.get("/slots").json();
    let total: u64 = slots.as_array().unwrap().iter().map(|s| s["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 5);
    assert_eq!(slots.as_array().unwrap().len(), 2);
}

#[test]
fn server_starts_without_a_prompt_and_stops_on_ctrl_c() {
    let Some(m) = tiny_model() else { return };
    // no -p, no --server: a double-click serves
    let mut s = Server::start(&m, &["--nobrowser"]);
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>") && page.body.contains("llamafileChat"), "the chat page");
    // a stream in flight when Ctrl-C comes ends properly
    let addr = s.addr.clone();
    let stream = std::thread::spawn(move || {
        send(
            &addr,
            "POST",
            "/completion",
            json!({ "prompt": "Hi", "n_predict": 3000, "ignore_eos": true, "stream": true }).to_string().as_bytes(),
        )
    });
    s.wait_until("generating", Duration::from_secs(20), |s| s.get("/health").json()["slots_processing"] == 1);
    let status = s.interrupt(Duration::from_secs(10)).expect("exits within 10 s of Ctrl-C");
    assert!(status.success(), "exit status {status}: {}", s.stderr());
    let r = stream.join().unwrap();
    let last: Value = serde_json::from_str(r.events().last().unwrap()).unwrap();
    assert_eq!(last["stop"], true, "the stream ended with its final event");
    assert!(s.stderr().contains("stopped"), "{}", s.stderr());
}

#[test]
fn server_takes_the_next_port_and_warns_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let m = writer_model(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let s = Server::start(&m, &["--server", "--nobrowser", "--port", &port.to_string()]);
    let used: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(used > port && used <= port.saturating_add(100), "port {port} taken, server on {used}");
    assert!(s.stderr().contains(&format!("port {port} is taken")), "{}", s.stderr());
    assert!(!s.stderr().contains("warning"), "loopback needs no warning: {}", s.stderr());
    drop(s);

    let s = Server::start(&m, &["--server", "--nobrowser", "--host", "0.0.0.0"]);
    assert!(s.stderr().contains("warning: listening on 0.0.0.0"), "{}", s.stderr());
    assert!(s.url.starts_with("http://127.0.0.1:"), "the printed URL is one a local browser can open: {}", s.url);
    assert_eq!(s.get("/health").status, 200);
    // Not on loopback: whatever name reaches it is answered (other machines use theirs).
    let r = send_raw(&s.addr, b"GET /health HTTP/1.1\r\nHost: box.lan:8080\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `METHOD PATH` with these header lines and body, on a connection that closes after it.
fn raw_request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

#[test]
fn server_model_id_is_the_file_stem_or_the_alias() {
    let dir = tempfile::tempdir().unwrap();
    let m = writer_model(dir.path());
    let stem = m.file_stem().unwrap().to_str().unwrap().to_string();
    let s = Server::start(&m, &["--server"]);
    assert_eq!(s.name, stem, "the URL line names the model id");
    assert_eq!(s.get("/v1/models").json()["data"][0]["id"].as_str(), Some(stem.as_str()));
    drop(s);

    let s = Server::start(&m, &["--server", "--alias", "my-model"]);
    assert_eq!(s.name, "my-model");
    assert_eq!(s.get("/v1/models").json()["data"][0]["id"], "my-model");
    let body = json!({ "model": "gpt-4o-mini", "messages": user("Hi"), "max_tokens": 2 });
    let r = s.post("/v1/chat/completions", &body).json();
    assert_eq!(r["model"], "my-model", "{r}");
    assert!(s.stderr().contains("asked for model 'gpt-4o-mini'"), "{}", s.stderr());
}

#[test]
fn server_refuses_other_hosts_and_origins() {
    let dir = tempfile::tempdir().unwrap();
    let m = writer_model(dir.path());
    let s = Server::start(&m, &["--server", "--cors-origin", "http://app.example:3000"]);
    let own = format!("Host: {}", s.addr);
    let chat = json!({ "messages": user("Hi"), "max_tokens": 2 }).to_string();
    // DNS rebinding: the page's own name reaches the loopback server.
    send_raw(&s.addr, &raw_request("POST", "/v1/chat/completions", &["Host: rebind.example:8080"], &chat))
        .assert_error(403, "Host");
    // A cross-origin "simple" request (no preflight): text/plain POST.
    let r = send_raw(
        &s.addr,
        &raw_request(
            "POST",
            "/v1/chat/completions",
            &[&own, "Origin: http://evil.example", "Content-Type: text/plain"],
            &chat,
        ),
    );
    r.assert_error(403, "cross-origin");
    // The page the server serves posts with its own origin.
    let r = send_raw(
        &s.addr,
        &raw_request("POST", "/v1/chat/completions", &[&own, &format!("Origin: http://{}", s.addr)], &chat),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // An origin allowed by --cors-origin: the preflight, then the request.
    let pre = send_raw(
        &s.addr,
        &raw_request(
            "OPTIONS",
            "/v1/chat/completions",
            &[
                &own,
                "Origin: http://app.example:3000",
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: content-type",
            ],
            "",
        ),
    );
    assert_eq!(pre.status, 204, "{}", pre.headers);
    let h = pre.headers.to_ascii_lowercase();
    assert!(
        h.contains("access-control-allow-origin: http://app.example:3000")
            && h.contains("access-control-allow-headers: content-type"),
        "{h}"
    );
    let r = send_raw(
        &s.addr,
        &raw_request(
            "POST",
            "/v1/chat/completions",
            &[&own, "Origin: http://app.example:3000", "Content-Type: application/json"],
            &chat,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("access-control-allow-origin: http://app.example:3000"),
        "{}",
        r.headers
    );
}

#[test]
fn server_closes_idle_connections_and_caps_them() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let m = writer_model(dir.path());
    let s = Server::start(&m, &["--server", "--header-timeout", "1", "--max-connections", "2"]);
    let t0 = Instant::now();
    let mut idle = std::net::TcpStream::connect(&s.addr).unwrap();
    let _held = std::net::TcpStream::connect(&s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Both slots taken by silent sockets: the next client is told so.
    s.get("/health").assert_error(503, "maximum of 2 connections");
    // A silent socket is closed after the header timeout, which makes room again.
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(5), "closed after {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.get("/health").status, 200);
    // --max-connections 0 is refused on the command line.
    let out = std::process::Command::new(e2e::bin("llamafile"))
        .args(["--server", "--max-connections", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn server_opens_the_browser_only_with_a_display() {
    let Some(m) = tiny_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("opened.txt");
    // a stand-in xdg-open that records what it was asked to open
    let fake = dir.path().join("xdg-open");
    e2e::write_executable(&fake, format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()).as_bytes());
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());

    let s = Server::start_with(&m, &[], |c| {
        c.env("PATH", &path).env("DISPLAY", ":99").env_remove("WAYLAND_DISPLAY");
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default().trim(), s.url, "xdg-open got the URL");
    drop(s);
    std::fs::remove_file(&log).unwrap();

    for (display, extra) in [(false, vec![]), (true, vec!["--nobrowser"])] {
        let s = Server::start_with(&m, &extra, |c| {
            c.env("PATH", &path).env_remove("WAYLAND_DISPLAY");
            if display {
                c.env("DISPLAY", ":99");
            } else {
                c.env_remove("DISPLAY");
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!log.exists(), "no browser with display={display} {extra:?}");
        if !display {
            assert!(s.stderr().contains("no display"), "{}", s.stderr());
        }
    }
}

/// The real Qwen2.5-Coder 0.5B (ChatML template, byte-level BPE) answers through the server, and
/// its second turn reuses the first turn's KV cache (top-1 sampling: a greedy request reuses only
/// what was computed in batches of 64 tokens or more, so that its answer never depends on the
/// cache; checked last).
#[test]
fn server_real_model_answers_and_caches_the_conversation() {
    let Some(m) = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let s = Server::start(&m, &["--server", "-c", "1024", "-t", "2"]);
    let q = "What is the capital of France? Answer in one word.";
    let r1 = s
        .post("/v1/chat/completions", &json!({ "messages": user(q), "max_tokens": 8, "temperature": 1, "top_k": 1 }))
        .json();
    let answer = r1["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("Paris"), "{r1}");
    assert_eq!(r1["choices"][0]["finish_reason"], "stop", "ended at <|im_end|>: {r1}");
    let turn2 = json!([
        { "role": "user", "content": q },
        { "role": "assistant", "content": answer },
        { "role": "user", "content": "And of Italy?" },
    ]);
    let r2 = s
        .post("/v1/chat/completions", &json!({ "messages": turn2, "max_tokens": 8, "temperature": 1, "top_k": 1 }))
        .json();
    assert!(r2["choices"][0]["message"]["content"].as_str().unwrap().contains("Rome"), "{r2}");
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= r1["usage"]["prompt_tokens"].as_u64().unwrap(), "turn 2 reused only {cached} tokens: {r2}");
    // Greedy, after the cache holds the conversation, and fresh: the same answer.
    let greedy = |cache: bool| {
        s.post(
            "/v1/chat/completions",
            &json!({ "messages": turn2, "max_tokens": 16, "temperature": 0, "cache_prompt": cache }),
        )
        .json()
    };
    let (cached_answer, fresh_answer) = (greedy(true), greedy(false));
    assert_eq!(cached_answer["choices"][0]["message"]["content"], fresh_answer["choices"][0]["message"]["content"]);
}
