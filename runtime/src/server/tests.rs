//! The server over real sockets with the fake model (`testing`): routes, errors, streaming,
//! queueing, cancellation on disconnect, prompt-cache affinity, shutdown.
//!
//! The client is the workspace's test client (`test_support::http`, blocking, run off the
//! runtime's worker threads); the tests that read a stream part-way or hang up mid-response
//! drive a `TcpStream` themselves.

use super::listen::Limits;
use super::testing::{FakeModel, WORDS};
use super::AppState;
use llamafile_engine::SamplingParams;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::http::request_bytes;
pub(super) use test_support::http::Resp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn defaults() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
    }
}

pub(super) struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub counters: Arc<super::testing::Counters>,
    pub delay: Arc<std::sync::atomic::AtomicU64>,
}

/// The server as the binary runs it (`listen::serve`, with `limits`) on a free loopback port,
/// over the fake model; `setup` adjusts the state first.
pub(super) async fn server_custom(
    n_ctx: usize,
    parallel: usize,
    limits: Limits,
    setup: impl FnOnce(&mut AppState),
) -> Server {
    let mut m = FakeModel::new();
    m.n_ctx = n_ctx;
    let (counters, delay) = (m.counters.clone(), m.token_delay_us.clone());
    let mut state = AppState::new(Arc::new(m), parallel, defaults());
    let st = Arc::get_mut(&mut state).unwrap();
    st.log = false;
    setup(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = super::routes::router(state.clone());
    tokio::spawn(super::listen::serve(listener, app, limits, std::future::pending()));
    Server { addr, state, counters, delay }
}

async fn server_with(n_ctx: usize, parallel: usize) -> Server {
    server_custom(n_ctx, parallel, Limits::default(), |_| {}).await
}

pub(super) async fn server() -> Server {
    server_with(256, 2).await
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One request on a blocking thread, so the server's worker threads stay free.
async fn send(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    send_raw(addr, &request_bytes(method, path, body)).await
}

/// Send `request` as it is and read the response until the server closes.
pub(super) async fn send_raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let request = request.to_vec();
    tokio::task::spawn_blocking(move || test_support::http::send_raw(&addr.to_string(), &request)).await.unwrap()
}

pub(super) async fn post(addr: SocketAddr, path: &str, body: Value) -> Resp {
    send(addr, "POST", path, body.to_string().as_bytes()).await
}

pub(super) async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, "GET", path, b"").await
}

pub(super) fn assert_error(r: &Resp, status: u16, needle: &str) -> Value {
    r.assert_error(status, needle)
}

pub(super) fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[test]
fn status_routes_and_page() {
    rt().block_on(async {
        let s = server().await;
        let h = get(s.addr, "/health").await.json();
        assert_eq!(h["status"], "ok");
        assert_eq!((h["slots_idle"].as_u64(), h["slots_processing"].as_u64()), (Some(2), Some(0)));
        let m = get(s.addr, "/v1/models").await.json();
        assert_eq!(m["object"], "list");
        assert_eq!(m["data"][0]["id"], "fake-model");
        assert_eq!(get(s.addr, "/v1/models/fake-model").await.json()["id"], "fake-model");
        assert_error(&get(s.addr, "/v1/models/gpt-4").await, 404, "fake-model");
        let p = get(s.addr, "/props").await.json();
        assert_eq!((p["n_ctx"].as_u64(), p["total_slots"].as_u64()), (Some(256), Some(2)));
        let page = get(s.addr, "/").await;
        assert_eq!(page.status, 200);
        assert!(page.headers.to_ascii_lowercase().contains("text/html"));
        assert!(page.headers.to_ascii_lowercase().contains("content-security-policy"));
        assert!(page.body.contains("<textarea id=\"input\""));
    });
}

#[test]
fn chat_completion() {
    rt().block_on(async {
        let s = server().await;
        let r =
            post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 3, "seed": 0 })).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        assert_eq!(j["object"], "chat.completion");
        assert!(j["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(j["model"], "fake-model");
        assert_eq!(j["choices"][0]["message"]["role"], "assistant");
        assert_eq!(j["choices"][0]["message"]["content"], WORDS[..3].concat());
        assert_eq!(j["choices"][0]["finish_reason"], "length");
        // "<s>[INST] Hi [/INST]": BOS + 17 bytes
        assert_eq!(j["usage"]["prompt_tokens"], 18);
        assert_eq!(j["usage"]["completion_tokens"], 3);
        assert_eq!(j["usage"]["total_tokens"], 21);
        assert_eq!(j["timings"]["predicted_n"], 3);
    });
}

#[test]
fn chat_stream() {
    rt().block_on(async {
        let s = server().await;
        let r = post(
            s.addr,
            "/v1/chat/completions",
            json!({ "messages": user("Hi"), "max_tokens": 4, "seed": 1, "stream": true, "stream_options": {"include_usage": true} }),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.headers.to_ascii_lowercase().contains("text/event-stream"), "{}", r.headers);
        let ev = r.events();
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, WORDS[1..5].concat());
        let ids: std::collections::HashSet<&str> = chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1, "one id for the whole stream");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
        let fin = &chunks[chunks.len() - 2];
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert_eq!(fin["timings"]["predicted_n"], 4);
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 4);
        // without include_usage: no usage chunk
        let r = post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 2, "stream": true })).await;
        assert!(!r.body.contains("\"usage\""));
    });
}

#[test]
fn stop_strings_and_system_prompt() {
    rt().block_on(async {
        let s = server().await;
        let msgs = json!([{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }]);
        let r = post(
            s.addr,
            "/v1/chat/completions",
            json!({ "messages": msgs, "seed": 0, "stop": ["dolor"], "max_tokens": 10 }),
        )
        .await;
        let j = r.json();
        assert_eq!(j["choices"][0]["message"]["content"], "lorem ipsum ");
        assert_eq!(j["choices"][0]["finish_reason"], "stop");
        // the system message was folded into the user's (the fake's template refuses it)
        let plain =
            post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 1 })).await.json();
        assert_eq!(
            j["usage"]["prompt_tokens"].as_u64().unwrap(),
            plain["usage"]["prompt_tokens"].as_u64().unwrap() + "Be brief.\n\n".len() as u64
        );
    });
}

#[test]
fn bad_requests() {
    rt().block_on(async {
        let s = server().await;
        let a = s.addr;
        let j =
            assert_error(&send(a, "POST", "/v1/chat/completions", b"{\"messages\": [").await, 400, "malformed JSON");
        assert_eq!(j["error"]["code"], "invalid_json");
        assert_error(&send(a, "POST", "/v1/chat/completions", b"").await, 400, "empty");
        let j = assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": user("x"), "temperature": "hot" })).await,
            400,
            "temperature",
        );
        assert_eq!(j["error"]["param"], "temperature");
        let j = assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": [{"role": "user", "content": 5}] })).await,
            400,
            "messages[0].content",
        );
        assert_eq!(j["error"]["param"], "messages[0].content");
        assert_error(&post(a, "/v1/chat/completions", json!({ "messages": "hello" })).await, 400, "messages");
        assert_error(&post(a, "/v1/chat/completions", json!({ "model": "x" })).await, 400, "messages");
        assert_error(&post(a, "/v1/chat/completions", json!({ "messages": [] })).await, 400, "at least one message");
        assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": user("x"), "temperature": 3 })).await,
            400,
            "between 0 and 2",
        );
        assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": user("x"), "max_tokens": 0 })).await,
            400,
            "max_tokens",
        );
        assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": user("x"), "n": 17 })).await,
            400,
            "between 1 and 16",
        );
        assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": [{"role": "robot", "content": "x"}] })).await,
            400,
            "role 'robot'",
        );
        let img = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]);
        assert_error(&post(a, "/v1/chat/completions", json!({ "messages": img })).await, 400, "image_url");
        assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": user("x"), "tools": [{"type": "function"}] })).await,
            400,
            "tools",
        );
        let j = assert_error(
            &post(a, "/v1/chat/completions", json!({ "messages": [{"role": "assistant", "content": "x"}] })).await,
            400,
            "alternate",
        );
        assert_eq!(j["error"]["param"], "messages");
        // over the context
        let long = "x".repeat(300);
        let j =
            assert_error(&post(a, "/v1/chat/completions", json!({ "messages": user(&long) })).await, 400, "context");
        assert_eq!(j["error"]["code"], "context_length_exceeded");
        assert_error(&post(a, "/completion", json!({ "prompt": long })).await, 400, "context");
        // body over the limit
        let big = vec![b'x'; super::error::BODY_LIMIT + 1];
        let j = assert_error(&send(a, "POST", "/v1/chat/completions", &big).await, 413, "limit");
        assert_eq!(j["error"]["code"], "request_too_large");
        // routes and methods
        let j = assert_error(&get(a, "/v1/nothing").await, 404, "/v1/nothing");
        assert_eq!(j["error"]["code"], "not_found");
        assert_error(&get(a, "/v1/chat/completions").await, 405, "GET");
        assert_error(&post(a, "/completion", json!({ "prompt": [1, 99999] })).await, 400, "99999");
        assert_error(&post(a, "/completion", json!({ "prompt": "x", "n_predict": -5 })).await, 400, "n_predict");
        assert_error(&post(a, "/v1/completions", json!({ "prompt": ["a", "b"] })).await, 400, "one prompt");
        // the server is still fine
        assert_eq!(get(a, "/health").await.status, 200);
    });
}

#[test]
fn completions_openai_and_llama_cpp() {
    rt().block_on(async {
        let s = server().await;
        let j = post(s.addr, "/v1/completions", json!({ "prompt": "Once", "max_tokens": 2, "seed": 2, "echo": true }))
            .await
            .json();
        assert_eq!(j["object"], "text_completion");
        assert_eq!(j["choices"][0]["text"], format!("Once{}", WORDS[2..4].concat()));
        assert_eq!(j["usage"]["prompt_tokens"], 5, "BOS + 4 bytes");
        let r = post(
            s.addr,
            "/v1/completions",
            json!({ "prompt": [1, 70, 71], "max_tokens": 3, "seed": 0, "stream": true }),
        )
        .await;
        let ev = r.events();
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let text: String = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, WORDS[..3].concat());

        let j = post(s.addr, "/completion", json!({ "prompt": "Once", "n_predict": 3, "seed": 0 })).await.json();
        assert_eq!(j["content"], WORDS[..3].concat());
        assert_eq!(j["stop"], true);
        assert_eq!(j["stop_type"], "limit");
        assert_eq!(j["tokens_predicted"], 3);
        assert_eq!(j["tokens_evaluated"], 5);
        let r =
            post(s.addr, "/completion", json!({ "prompt": "Once", "n_predict": 3, "seed": 0, "stream": true })).await;
        let ev: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert!(ev[..ev.len() - 1].iter().all(|e| e["stop"] == false));
        assert_eq!(ev.last().unwrap()["stop"], true);
        assert_eq!(ev.iter().filter_map(|e| e["content"].as_str()).collect::<String>(), WORDS[..3].concat());
        assert!(!r.body.contains("[DONE]"), "llama.cpp's /completion stream has no [DONE]");
        // n_predict 0: the prompt is processed (cached), nothing generated
        let j = post(s.addr, "/completion", json!({ "prompt": "Once", "n_predict": 0 })).await.json();
        assert_eq!((j["content"].as_str(), j["tokens_predicted"].as_u64()), (Some(""), Some(0)));
    });
}

#[test]
fn tokenize_and_detokenize() {
    rt().block_on(async {
        let s = server().await;
        let j = post(s.addr, "/tokenize", json!({ "content": "<s>hé" })).await.json();
        let ids: Vec<u64> = j["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(ids, vec![1, 3 + b'h' as u64, 3 + 0xc3, 3 + 0xa9]);
        let j = post(s.addr, "/tokenize", json!({ "content": "<s>", "parse_special": false, "add_special": true }))
            .await
            .json();
        assert_eq!(j["tokens"].as_array().unwrap().len(), 4, "BOS + 3 bytes");
        let j = post(s.addr, "/tokenize", json!({ "content": "é", "with_pieces": true })).await.json();
        // each half of 'é' alone is not UTF-8: given as bytes
        assert_eq!(j["tokens"][0]["piece"], json!([0xc3]));
        let j = post(s.addr, "/tokenize", json!({ "content": "a", "with_pieces": true })).await.json();
        assert_eq!(j["tokens"][0]["piece"], "a");
        let j = post(s.addr, "/detokenize", json!({ "tokens": ids })).await.json();
        assert_eq!(j["content"], "<s>hé");
        assert_error(&post(s.addr, "/detokenize", json!({ "tokens": [-1] })).await, 400, "outside the vocabulary");
        assert_error(&post(s.addr, "/tokenize", json!({ "content": 3 })).await, 400, "content");
    });
}

/// Read a streaming response until `n` SSE events have arrived, then hang up.
async fn stream_then_hang_up(addr: SocketAddr, path: &str, body: Value, n: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request_bytes("POST", path, body.to_string().as_bytes())).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while String::from_utf8_lossy(&got).matches("data: ").count() < n {
        assert!(Instant::now() < deadline, "stream too slow: {}", String::from_utf8_lossy(&got));
        let k = s.read(&mut buf).await.unwrap();
        assert!(k > 0, "stream ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    drop(s);
    String::from_utf8_lossy(&got).into_owned()
}

pub(super) async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn disconnect_cancels_the_generation_and_frees_the_slot() {
    rt().block_on(async {
        let s = server_with(100_000, 1).await;
        s.delay.store(2_000, Ordering::Relaxed); // 2 ms a token: 20 s for the whole request
        for (path, body) in [
            ("/v1/chat/completions", json!({ "messages": user("Hi"), "stream": true, "max_tokens": 10_000 })),
            ("/completion", json!({ "prompt": "Hi", "stream": true, "n_predict": 10_000 })),
        ] {
            let before = s.counters.cancelled.load(Ordering::SeqCst);
            let t0 = Instant::now();
            stream_then_hang_up(s.addr, path, body, 3).await;
            let pool = s.state.pool.clone();
            wait_until("the slot is free", || !pool.info()[0].is_processing).await;
            assert!(t0.elapsed() < Duration::from_secs(5), "{path}: not cancelled promptly");
            assert_eq!(s.counters.cancelled.load(Ordering::SeqCst), before + 1);
            let info = &s.state.pool.info()[0];
            assert_eq!(info.last_stop.as_deref(), Some("cancelled"));
            assert!(info.last_generated_tokens < 10_000);
        }
        // non-streaming: the client gives up before the answer
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let body = json!({ "messages": user("Hi"), "max_tokens": 10_000 }).to_string();
        c.write_all(&request_bytes("POST", "/v1/chat/completions", body.as_bytes())).await.unwrap();
        let pool = s.state.pool.clone();
        wait_until("generation started", || pool.info()[0].is_processing).await;
        let before = s.counters.cancelled.load(Ordering::SeqCst);
        drop(c);
        wait_until("the slot is free", || !pool.info()[0].is_processing).await;
        assert_eq!(s.counters.cancelled.load(Ordering::SeqCst), before + 1);
        // and the slot serves the next request
        s.delay.store(0, Ordering::Relaxed);
        let r = post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 2 })).await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn queued_client_that_leaves_does_not_hold_a_slot() {
    rt().block_on(async {
        let s = server_with(100_000, 1).await;
        s.delay.store(1_000, Ordering::Relaxed);
        // occupy the only slot
        let busy = tokio::spawn(post(s.addr, "/completion", json!({ "prompt": "a", "n_predict": 300 })));
        let pool = s.state.pool.clone();
        wait_until("busy", || pool.info()[0].is_processing).await;
        // a second client queues, then leaves
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(&request_bytes(
            "POST",
            "/completion",
            json!({ "prompt": "b", "n_predict": 5, "stream": true }).to_string().as_bytes(),
        ))
        .await
        .unwrap();
        wait_until("queued", || pool.queued() == 1).await;
        drop(c);
        wait_until("left the queue", || pool.queued() == 0).await;
        assert_eq!(busy.await.unwrap().json()["tokens_predicted"], 300);
        // the slot was not handed to the departed client
        let r = post(s.addr, "/completion", json!({ "prompt": "c", "n_predict": 1 })).await;
        assert_eq!(r.status, 200);
        assert_eq!(s.state.pool.info()[0].requests, 2, "the departed client never ran");
    });
}

#[test]
fn slots_limit_concurrency_and_queue_the_rest() {
    rt().block_on(async {
        for parallel in [1, 3] {
            let s = server_with(4096, parallel).await;
            s.delay.store(1_000, Ordering::Relaxed);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..6 {
                let body =
                    json!({ "messages": user(&format!("question {i}")), "max_tokens": 20, "stream": i % 2 == 0 });
                tasks.push(tokio::spawn(post(s.addr, "/v1/chat/completions", body)));
            }
            for t in tasks {
                let r = t.await.unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
            }
            assert_eq!(
                s.counters.peak.load(Ordering::SeqCst),
                parallel,
                "generations at once with --parallel {parallel}"
            );
            assert!(t0.elapsed() < Duration::from_secs(10));
            assert_eq!(s.state.pool.queued(), 0);
        }
    });
}

#[test]
fn next_turn_reuses_the_conversation_prefix() {
    rt().block_on(async {
        let s = server_with(4096, 2).await;
        let turn1 = json!([{ "role": "user", "content": "Tell me a story about a cat." }]);
        let r1 =
            post(s.addr, "/v1/chat/completions", json!({ "messages": turn1, "max_tokens": 8, "seed": 0 })).await.json();
        let reply = r1["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let p1 = r1["usage"]["prompt_tokens"].as_u64().unwrap();
        // another conversation in between takes the other slot
        post(s.addr, "/v1/chat/completions", json!({ "messages": user("Something else entirely"), "max_tokens": 4 }))
            .await;
        let turn2 = json!([
            { "role": "user", "content": "Tell me a story about a cat." },
            { "role": "assistant", "content": reply },
            { "role": "user", "content": "And then?" },
        ]);
        let r2 = post(s.addr, "/v1/chat/completions", json!({ "messages": turn2, "max_tokens": 4 })).await.json();
        let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
        assert!(cached >= p1, "turn 2 reused {cached} tokens, turn 1's prompt was {p1}");
        assert_eq!(r2["timings"]["cache_n"].as_u64().unwrap(), cached);
    });
}

#[test]
fn shutdown_cancels_running_and_queued_generations() {
    rt().block_on(async {
        let s = server_with(100_000, 1).await;
        s.delay.store(2_000, Ordering::Relaxed);
        let running = tokio::spawn(post(
            s.addr,
            "/v1/chat/completions",
            json!({ "messages": user("a"), "max_tokens": 10_000, "stream": true }),
        ));
        let pool = s.state.pool.clone();
        wait_until("running", || pool.info()[0].is_processing).await;
        let queued =
            tokio::spawn(post(s.addr, "/v1/chat/completions", json!({ "messages": user("b"), "max_tokens": 10 })));
        wait_until("queued", || pool.queued() == 1).await;
        s.state.begin_shutdown();
        let r = tokio::time::timeout(Duration::from_secs(5), running).await.expect("stream ended").unwrap();
        assert_eq!(r.events().last().unwrap(), "[DONE]");
        let q = tokio::time::timeout(Duration::from_secs(5), queued).await.expect("answered").unwrap();
        assert_error(&q, 503, "shutting down");
    });
}

#[test]
fn cache_prompt_false_evaluates_the_whole_prompt() {
    rt().block_on(async {
        let s = server_with(256, 1).await;
        let body = json!({ "messages": user("Hello there"), "max_tokens": 2 });
        let first = post(s.addr, "/v1/chat/completions", body.clone()).await.json();
        assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let again = post(s.addr, "/v1/chat/completions", body.clone()).await.json();
        assert!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{again}");
        let mut fresh = body.clone();
        fresh["cache_prompt"] = json!(false);
        let r = post(s.addr, "/v1/chat/completions", fresh).await.json();
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{r}");
        assert!(!r["choices"][0]["message"]["content"].as_str().unwrap_or_default().is_empty(), "{r}");
        for path in ["/v1/completions", "/completion"] {
            let b = json!({ "prompt": "Hello there", "max_tokens": 2, "n_predict": 2 });
            post(s.addr, path, b.clone()).await;
            let mut f = b.clone();
            f["cache_prompt"] = json!(false);
            let r = post(s.addr, path, f).await.json();
            assert_eq!(r["timings"]["cache_n"], 0, "{path}: {r}");
            assert!(
                post(s.addr, path, b).await.json()["timings"]["cache_n"].as_u64().unwrap() > 0,
                "{path}: reused by default"
            );
        }
        let r = post(s.addr, "/v1/chat/completions", json!({ "messages": user("x"), "cache_prompt": "no" })).await;
        assert_eq!(assert_error(&r, 400, "cache_prompt")["error"]["param"], "cache_prompt");
    });
}
