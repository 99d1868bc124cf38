//! The server's `/metrics`, API keys and names, and the Responses and Messages APIs over HTTP:
//! response shapes, errors, the order of streamed events; then the official clients (`openai`'s
//! Responses API, `anthropic`, `prometheus-client`'s parser) and the chat page asking for a key,
//! each skipping with a clear message when its tool is not installed (`.ci/run` installs them).

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::process::Command;

/// One request with extra headers (`Authorization`, `x-api-key`, `Origin`...).
fn send_with(s: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let base = request_bytes(method, path, body);
    let cut = base.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut req = base[..cut].to_vec();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(&base[cut..]);
    send_raw(&s.addr, &req)
}

fn post_key(s: &Server, path: &str, key: &str, body: &Value) -> Resp {
    send_with(s, "POST", path, &[("Authorization", &format!("Bearer {key}"))], body.to_string().as_bytes())
}

/// The `(event, data)` pairs of an SSE body with named events.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|ev| {
            let name = ev.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((
                name.to_string(),
                serde_json::from_str(data).unwrap_or_else(|e| panic!("event data not JSON ({e}): {data}")),
            ))
        })
        .collect()
}

/// Consecutive repeats of `kind` counted once, so the order of the kinds can be compared.
fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for (k, _) in events {
        if out.last() != Some(&k.as_str()) {
            out.push(k);
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn server_api_keys_alias_and_metrics() {
    let Some(m) = tiny_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys.txt");
    std::fs::write(&key_file, "file-key\n\n").unwrap();
    let kf = key_file.to_str().unwrap();
    let s = Server::start(
        &m,
        &[
            "--server",
            "-c",
            "512",
            "--metrics",
            "--api-key",
            "k1,k2",
            "--api-key-file",
            kf,
            "--alias",
            "my-model",
            "--cors-origin",
            "http://example.com",
        ],
    );
    assert_eq!(s.name, "my-model");
    // open: the page and /health
    assert_eq!(s.get("/health").status, 200);
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("llamafile.apikey.v1"), "the page handles keys");
    // everything else needs a key
    let r = s.get("/v1/models");
    let e = r.assert_error(401, "API key");
    assert_eq!(e["error"]["code"], "invalid_api_key");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    post_key(&s, "/v1/chat/completions", "k3", &json!({"messages": [{"role": "user", "content": "hi"}]}))
        .assert_error(401, "invalid API key");
    assert_eq!(s.get("/metrics").status, 401);
    for (h, v) in [
        ("Authorization", "Bearer k1"),
        ("Authorization", "bearer k2"),
        ("Authorization", "Bearer file-key"),
        ("x-api-key", "k2"),
    ] {
        let r = send_with(&s, "GET", "/v1/models", &[(h, v)], b"");
        assert_eq!(r.status, 200, "{h}: {v}: {}", r.body);
        assert_eq!(r.json()["data"][0]["id"], "my-model", "--alias is the model's id");
    }
    // Anthropic's error shape on its route
    let r = s.post("/v1/messages", &json!({"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": r.json()["error"]["message"].clone()}})
    );
    // a CORS preflight is answered without a key (browsers never send one there)
    let pre = send_with(
        &s,
        "OPTIONS",
        "/v1/chat/completions",
        &[("Origin", "http://example.com"), ("Access-Control-Request-Method", "POST")],
        b"",
    );
    assert_eq!(pre.status, 204, "{}", pre.body);

    // the counters follow the usage the responses report; every response names the alias
    let before = send_with(&s, "GET", "/metrics", &[("Authorization", "Bearer k1")], b"");
    assert_eq!(before.status, 200);
    assert!(before.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"), "{}", before.headers);
    for name in [
        "prompt_tokens_total",
        "tokens_predicted_total",
        "requests_processing",
        "requests_deferred",
        "kv_cache_usage_ratio",
    ] {
        assert!(before.body.contains(&format!("# TYPE llamacpp:{name} ")), "{name} in {}", before.body);
    }
    let (mut prompt, mut generated) = (0.0, 0.0);
    for n in [5, 9] {
        let body = json!({"messages": [{"role": "user", "content": format!("count to {n}")}], "max_tokens": n, "cache_prompt": false});
        let r = post_key(&s, "/v1/chat/completions", "k2", &body).json();
        assert_eq!(r["model"], "my-model");
        prompt += r["usage"]["prompt_tokens"].as_f64().unwrap();
        generated += r["usage"]["completion_tokens"].as_f64().unwrap();
    }
    let after = send_with(&s, "GET", "/metrics", &[("x-api-key", "k1")], b"").body;
    let d = |name: &str| metric(&after, name) - metric(&before.body, name);
    assert_eq!(d("llamacpp:prompt_tokens_total"), prompt);
    assert_eq!(d("llamacpp:tokens_predicted_total"), generated);
    assert!(d("llamacpp:n_decode_total") >= generated, "{after}");
    assert_eq!(metric(&after, "llamacpp:requests_processing"), 0.0);
}

#[test]
fn server_metrics_off_and_bad_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = writer_model(dir.path());
    let s = Server::start(&m, &["--server", "-c", "256"]);
    let e = s.get("/metrics").assert_error(404, "--metrics");
    assert_eq!(e["error"]["code"], "not_found");
    assert_eq!(s.get("/v1/models").status, 200, "no key set: no key needed");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n \n").unwrap();
    for (args, needle) in [
        (vec!["--api-key-file", dir.path().to_str().unwrap()], "not a regular file"),
        (vec!["--api-key-file", empty.to_str().unwrap()], "no key in it"),
        (vec!["--api-key-file", "/nonexistent/keys"], "cannot open"),
        (vec!["--api-key", "a,,b"], "empty key"),
    ] {
        let out = Command::new(e2e::bin("llamafile"))
            .arg("-m")
            .arg(&m)
            .args(["--server", "--nobrowser", "--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn server_responses_api() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "-c", "1024"]);
    let body = json!({"model": "gpt-4.1", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 6, "temperature": 0, "cache_prompt": false,
                      "options": {"num_ctx": 4096}, "reasoning": {"effort": "low"}, "user": "u1"});
    let r = s.post("/v1/responses", &body);
    assert_eq!(r.status, 200, "unknown fields are ignored: {}", r.body);
    let j = r.json();
    assert!(j["id"].as_str().unwrap().starts_with("resp_"), "{j}");
    assert_eq!((j["object"].as_str(), j["model"].as_str()), (Some("response"), Some(s.name.as_str())));
    let item = &j["output"][0];
    assert_eq!((item["type"].as_str(), item["role"].as_str()), (Some("message"), Some("assistant")), "{j}");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["annotations"], json!([]));
    let text = item["content"][0]["text"].as_str().unwrap().to_string();
    let u = &j["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
    );
    // the tiny model rarely ends by itself: 6 tokens is the limit, so the response is incomplete
    if u["output_tokens"] == 6 {
        assert_eq!(
            (j["status"].as_str(), j["incomplete_details"]["reason"].as_str()),
            (Some("incomplete"), Some("max_output_tokens")),
            "{j}"
        );
    }

    // streamed: the same text, in the API's order of events
    let r = s.post("/v1/responses", &json!({"input": [{"role": "system", "content": "Be brief."}, {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Hello"}]}], "max_output_tokens": 6, "temperature": 0, "cache_prompt": false, "stream": true}));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = named_events(&r.body);
    let last = if j["status"] == "completed" { "response.completed" } else { "response.incomplete" };
    assert_eq!(
        kinds(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            last,
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(
            (data["type"].as_str(), data["sequence_number"].as_u64()),
            (Some(name.as_str()), Some(i as u64)),
            "{data}"
        );
    }
    let streamed: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text, "input items give the same prompt as input + instructions");
    let (_, end) = events.last().unwrap();
    assert_eq!(end["response"]["output"][0]["content"][0]["text"], text.as_str());
    assert_eq!(end["response"]["usage"]["output_tokens"], j["usage"]["output_tokens"]);

    // refused: what needs stored state, and input the server cannot read
    for (body, param) in [
        (json!({"input": "x", "previous_response_id": "resp_1"}), "previous_response_id"),
        (json!({"input": "x", "store": true}), "store"),
        (json!({"input": "x", "background": true}), "background"),
        (json!({"input": "x", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"input": [{"type": "input_image", "image_url": "x"}]}), "input[0].type"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[0].type",
        ),
        (json!({"input": "x", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"input": "x", "tools": [{"type": "function", "name": "a b"}]}), "tools[0].name"),
        (
            json!({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}),
            "tool_choice.name",
        ),
        (json!({"input": 5}), "input"),
        (json!({"input": "x", "temperature": 9}), "temperature"),
    ] {
        let r = s.post("/v1/responses", &body);
        let e = r.assert_error(400, "");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    s.post("/v1/responses", &json!({"instructions": "x"})).assert_error(400, "input");
}

#[test]
fn server_messages_api() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "-c", "1024"]);
    let body = json!({"model": "claude-x", "max_tokens": 8, "temperature": 0, "cache_prompt": false, "system": [{"type": "text", "text": "Be brief."}],
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}], "metadata": {"user_id": "u"}, "options": {}});
    let r = s.post("/v1/messages", &body);
    assert_eq!(r.status, 200, "unknown fields are ignored: {}", r.body);
    let j = r.json();
    assert!(j["id"].as_str().unwrap().starts_with("msg_"), "{j}");
    assert_eq!(
        (j["type"].as_str(), j["role"].as_str(), j["model"].as_str()),
        (Some("message"), Some("assistant"), Some(s.name.as_str()))
    );
    assert_eq!(j["content"][0]["type"], "text");
    let text = j["content"][0]["text"].as_str().unwrap().to_string();
    let out = j["usage"]["output_tokens"].as_u64().unwrap();
    assert!(j["usage"]["input_tokens"].as_u64().unwrap() > 0 && out <= 8, "{j}");
    assert_eq!(j["stop_reason"], if out == 8 { "max_tokens" } else { "end_turn" }, "{j}");
    assert!(j["stop_sequence"].is_null());

    // a stop sequence: which one, and the text before it
    if text.chars().count() >= 4 {
        let stop: String = text.chars().skip(2).take(2).collect();
        let mut b = body.clone();
        b["stop_sequences"] = json!(["", "\u{2603}never", stop]);
        let c = s.post("/v1/messages", &b).json();
        assert_eq!(
            (c["stop_reason"].as_str(), c["stop_sequence"].as_str()),
            (Some("stop_sequence"), Some(stop.as_str())),
            "{c}"
        );
        assert_eq!(c["content"][0]["text"].as_str().unwrap(), &text[..text.find(&stop).unwrap()]);
    }

    // streamed: Anthropic's events in order, the same text and usage
    let mut b = body.clone();
    b["stream"] = json!(true);
    let r = s.post("/v1/messages", &b);
    let events = named_events(&r.body);
    assert_eq!(
        kinds(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{}",
        r.body
    );
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
    }
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], j["usage"]["input_tokens"]);
    let streamed: String = events
        .iter()
        .filter(|(k, _)| k == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        (delta["delta"]["stop_reason"].clone(), delta["usage"]["output_tokens"].clone()),
        (j["stop_reason"].clone(), j["usage"]["output_tokens"].clone())
    );

    let n = s
        .post(
            "/v1/messages/count_tokens",
            &json!({"system": "Be brief.", "messages": [{"role": "user", "content": "Hello"}]}),
        )
        .json();
    assert_eq!(n["input_tokens"], j["usage"]["input_tokens"], "{n}");

    // Anthropic's errors on this route, the malformed body included
    for (raw, needle) in [
        (json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(), "'max_tokens' is required"),
        (json!({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}).to_string(), "at least 1"),
        (json!({"max_tokens": 4, "messages": []}).to_string(), "at least one message"),
        (json!({"max_tokens": 4, "messages": [{"role": "system", "content": "hi"}]}).to_string(), "role 'system'"),
        (
            json!({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]})
                .to_string(),
            "'image'",
        ),
        (json!({"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}).to_string(), "top_p"),
        ("{\"max_tokens\": 4, \"messages\": [".to_string(), "malformed JSON"),
    ] {
        let r = s.post_raw("/v1/messages", raw.as_bytes());
        assert_eq!(r.status, 400, "{raw}: {}", r.body);
        let e = r.json();
        assert_eq!(
            (e["type"].as_str(), e["error"]["type"].as_str()),
            (Some("error"), Some("invalid_request_error")),
            "{e}"
        );
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{raw}: {e}");
    }
}

fn have_python_module(m: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {m}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The official clients against the real Qwen2.5-Coder model (its template describes tools).
#[test]
fn server_responses_messages_metrics_python_clients() {
    let Some(m) = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let s = Server::start(&m, &["--server", "-c", "2048", "-t", "2", "--metrics", "--api-key", "client-key"]);
    let mut ran = Vec::new();
    for (module, package, script, last) in [
        ("openai", "openai", "tests/openai_responses_client.py", "a wrong key: AuthenticationError"),
        ("anthropic", "anthropic", "tests/anthropic_client.py", "a wrong key: AuthenticationError"),
        ("prometheus_client", "prometheus-client", "tests/metrics_client.py", "counted, as their usage said"),
    ] {
        if !have_python_module(module) {
            e2e::skip(&format!("the `{package}` Python package"), &format!("pip install {package}"));
            continue;
        }
        let out = Command::new("python3").arg(e2e::root().join(script)).arg(&s.url).arg("client-key").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}");
        assert!(
            out.status.success() && stdout.contains(last),
            "{script} failed:\n{stdout}\n{}\nserver:\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.stderr()
        );
        ran.push(script);
    }
    eprintln!("ran: {ran:?}");
}

#[test]
fn server_chat_page_asks_for_the_api_key() {
    let Some(m) = tiny_model() else { return };
    let dir = e2e::root().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        e2e::skip(&chromium, "apt-get install chromium, or set CHROMIUM to a Chromium binary");
        return;
    }
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !node_ok || !dir.join("node_modules/playwright-core").exists() {
        e2e::skip("node or playwright-core", "install node, then: cd tests/browser && npm ci");
        return;
    }
    let s = Server::start(&m, &["--server", "-c", "1024", "-n", "8", "--api-key", "page-key"]);
    let out = Command::new("node").arg(dir.join("apikey.mjs")).arg(&s.url).arg("page-key").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    assert!(stdout.contains("a wrong kept key is asked for again"), "{stdout}");
}
