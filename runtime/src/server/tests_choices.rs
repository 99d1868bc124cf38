//! Several choices (`n`), log-probabilities and fill in the middle over HTTP: the request
//! checks and the choice plumbing on the fake model, the response shapes on the real engine
//! with the shared tiny model (skipped without it).

use super::model::EngineModel;
use super::tests::{assert_error, post, rt, server, user};
use super::AppState;
use llamafile_engine::{Engine, LoadOptions, SamplingParams};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

fn events(r: &super::tests::Resp) -> Vec<Value> {
    r.events().iter().filter(|e| e.as_str() != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[test]
fn n_choices_on_chat_and_completions() {
    rt().block_on(async {
        let s = server().await;
        let r = post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 3, "n": 3, "seed": 4 })).await.json();
        let choices = r["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["finish_reason"], "length");
        }
        // each choice draws with its own seed (the fake model starts at a word chosen by it)
        assert_ne!(choices[0]["message"]["content"], choices[1]["message"]["content"]);
        assert_eq!(r["usage"]["prompt_tokens"], 18, "the prompt counts once");
        assert_eq!(r["usage"]["completion_tokens"], 9, "every choice's tokens count");
        let again = post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 3, "n": 3, "seed": 4 })).await.json();
        assert_eq!(again["choices"], r["choices"], "same seed, same choices");

        let body = json!({ "messages": user("Hi"), "max_tokens": 2, "n": 2, "seed": 4, "stream": true, "stream_options": {"include_usage": true} });
        let ev = events(&post(s.addr, "/v1/chat/completions", body).await);
        let mut text = [String::new(), String::new()];
        let mut finished = [0, 0];
        for e in &ev {
            for c in e["choices"].as_array().unwrap() {
                let i = c["index"].as_u64().unwrap() as usize;
                text[i] += c["delta"]["content"].as_str().unwrap_or("");
                finished[i] += c["finish_reason"].is_string() as usize;
            }
        }
        assert_eq!(finished, [1, 1]);
        assert_eq!(text[0], choices[0]["message"]["content"].as_str().unwrap().split_inclusive(' ').take(2).collect::<String>());
        assert_eq!(ev.last().unwrap()["usage"]["completion_tokens"], 4);

        let r = post(s.addr, "/v1/completions", json!({ "prompt": "x", "max_tokens": 2, "n": 2, "seed": 1 })).await.json();
        assert_eq!(r["choices"].as_array().unwrap().len(), 2);
        assert_eq!(r["choices"][1]["index"], 1);
        let ev = events(&post(s.addr, "/v1/completions", json!({ "prompt": "x", "max_tokens": 2, "n": 2, "seed": 1, "stream": true })).await);
        let indices: Vec<u64> = ev.iter().map(|e| e["choices"][0]["index"].as_u64().unwrap()).collect();
        assert!(indices.contains(&0) && indices.contains(&1), "{indices:?}");
    });
}

#[test]
fn fields_not_honoured_are_refused() {
    rt().block_on(async {
        let s = server().await;
        let a = s.addr;
        let chat = |extra: Value| {
            let mut b = json!({ "messages": user("Hi"), "max_tokens": 2 });
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            b
        };
        assert_error(&post(a, "/v1/chat/completions", chat(json!({ "n": 0 }))).await, 400, "between 1 and 16");
        assert_error(
            &post(a, "/v1/chat/completions", chat(json!({ "logprobs": true, "top_logprobs": 21 }))).await,
            400,
            "top_logprobs",
        );
        assert_error(
            &post(a, "/v1/chat/completions", chat(json!({ "top_logprobs": 2 }))).await,
            400,
            "needs 'logprobs': true",
        );
        assert_error(
            &post(a, "/v1/chat/completions", chat(json!({ "presence_penalty": 1 }))).await,
            400,
            "presence_penalty",
        );
        assert_error(
            &post(a, "/v1/chat/completions", chat(json!({ "logit_bias": {"5": 10} }))).await,
            400,
            "logit_bias",
        );
        assert_eq!(
            post(a, "/v1/chat/completions", chat(json!({ "logprobs": false, "presence_penalty": 0, "user": "u" })))
                .await
                .status,
            200
        );
        assert_error(
            &post(a, "/v1/completions", json!({ "prompt": "x", "logprobs": 6 })).await,
            400,
            "between 0 and 5",
        );
        assert_error(
            &post(a, "/v1/completions", json!({ "prompt": "x", "logprobs": 1, "echo": true })).await,
            400,
            "echo",
        );
        assert_error(&post(a, "/v1/completions", json!({ "prompt": "x", "best_of": 2 })).await, 400, "best_of");
        assert_error(&post(a, "/completion", json!({ "prompt": "x", "n_probs": -1 })).await, 400, "n_probs");
        assert_error(&post(a, "/completion", json!({ "prompt": "x", "mirostat": 2 })).await, 400, "mirostat");
        // a model without fill-in-the-middle tokens says so
        assert_error(
            &post(a, "/infill", json!({ "input_prefix": "def f():\n", "input_suffix": "\n" })).await,
            400,
            "no fill-in-the-middle",
        );
        assert_error(
            &post(a, "/v1/completions", json!({ "prompt": "def f():\n", "suffix": "\nprint(f())" })).await,
            400,
            "no fill-in-the-middle",
        );
        assert_error(&post(a, "/infill", json!({ "input_suffix": "x" })).await, 400, "input_prefix");
        assert_error(
            &post(a, "/infill", json!({ "input_prefix": "", "input_suffix": "", "n_predict": -3 })).await,
            400,
            "n_predict",
        );
        // an empty suffix on such a model is a plain completion
        assert_eq!(
            post(a, "/v1/completions", json!({ "prompt": "x", "suffix": "", "max_tokens": 2 })).await.status,
            200
        );
    });
}

/// The server over the real engine with the shared tiny model.
async fn engine_server() -> Option<SocketAddr> {
    let p = test_support::require_shared()?.join("models/tiny-mistral-q8_0.gguf");
    let engine =
        Engine::load(&LoadOptions { model: p, n_ctx: Some(256), n_threads: Some(2), ..Default::default() }).unwrap();
    let mut state = AppState::new(Arc::new(EngineModel(Arc::new(engine))), 1, SamplingParams::default());
    Arc::get_mut(&mut state).unwrap().log = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = super::routes::router(state);
    tokio::spawn(super::listen::serve(listener, app, super::listen::Limits::default(), std::future::pending()));
    Some(addr)
}

fn check_top(top: &Value, n: usize) {
    let top = top.as_array().unwrap();
    assert_eq!(top.len(), n);
    let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    assert!(lps.windows(2).all(|w| w[0] >= w[1]), "sorted: {lps:?}");
    assert!(lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-5);
}

#[test]
fn logprobs_in_every_shape_on_the_engine() {
    rt().block_on(async {
        let Some(a) = engine_server().await else { return };
        // chat: greedy, so the chosen token is the likeliest
        // `cache_prompt: false`: every request evaluates its prompt the same way, so the values
        // compared between requests are the same to the bit
        let body = json!({ "messages": user("Hi"), "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3, "cache_prompt": false });
        let r = post(a, "/v1/chat/completions", body.clone()).await.json();
        let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len() as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
        for t in content {
            check_top(&t["top_logprobs"], 3);
            assert_eq!(t["top_logprobs"][0]["token"], t["token"]);
            assert_eq!(t["top_logprobs"][0]["logprob"], t["logprob"]);
            assert!(t["logprob"].as_f64().unwrap() <= 0.0);
            assert!(t["bytes"].is_array());
        }
        // streamed: the same tokens, each chunk with its own
        let mut s = body.clone();
        s["stream"] = json!(true);
        let ev = events(&post(a, "/v1/chat/completions", s).await);
        let streamed: Vec<Value> = ev.iter().flat_map(|e| e["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default()).collect();
        assert_eq!(&streamed, content);
        for e in &ev {
            let c = &e["choices"][0];
            if let Some(text) = c["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                assert!(c["logprobs"]["content"].as_array().is_some_and(|l| !l.is_empty()), "a chunk of text carries its tokens: {text:?}");
            }
        }
        // without logprobs: null
        let r = post(a, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 2 })).await.json();
        assert!(r["choices"][0]["logprobs"].is_null());

        // completions: the legacy shape
        let r = post(a, "/v1/completions", json!({ "prompt": "The quick brown", "max_tokens": 5, "temperature": 0, "logprobs": 2, "cache_prompt": false })).await.json();
        let lp = &r["choices"][0]["logprobs"];
        let text = r["choices"][0]["text"].as_str().unwrap();
        let n = lp["tokens"].as_array().unwrap().len();
        assert_eq!(n, 5);
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), n);
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && *offsets.last().unwrap() as usize <= text.chars().count(), "{offsets:?}");
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
        let streamed = events(&post(a, "/v1/completions", json!({ "prompt": "The quick brown", "max_tokens": 5, "temperature": 0, "logprobs": 2, "stream": true, "cache_prompt": false })).await);
        let offs: Vec<u64> = streamed.iter().flat_map(|e| e["choices"][0]["logprobs"]["text_offset"].as_array().cloned().unwrap_or_default()).map(|o| o.as_u64().unwrap()).collect();
        assert_eq!(offs, offsets, "streamed offsets count from the start of the text");

        // llama.cpp's /completion
        let r = post(a, "/completion", json!({ "prompt": "The quick brown", "n_predict": 4, "temperature": 0, "n_probs": 2, "cache_prompt": false })).await.json();
        let probs = r["completion_probabilities"].as_array().unwrap();
        assert_eq!(probs.len(), 4);
        for p in probs {
            for key in ["id", "token", "bytes", "logprob"] {
                assert!(!p[key].is_null(), "{key} in {p}");
            }
            check_top(&p["top_logprobs"], 2);
            assert_eq!(p["top_logprobs"][0]["id"], p["id"]);
        }
        let streamed = events(&post(a, "/completion", json!({ "prompt": "The quick brown", "n_predict": 4, "temperature": 0, "n_probs": 2, "stream": true, "cache_prompt": false })).await);
        let ids: Vec<Value> = streamed.iter().flat_map(|e| e["completion_probabilities"].as_array().cloned().unwrap_or_default()).map(|p| p["id"].clone()).collect();
        assert_eq!(ids, probs.iter().map(|p| p["id"].clone()).collect::<Vec<_>>());

        // n = 2 at temperature 0: two identical choices
        let r = post(a, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 5, "temperature": 0, "n": 2 })).await.json();
        assert_eq!(r["choices"][0]["message"], r["choices"][1]["message"]);
        // n = 3 at temperature 1 with a seed: the same three again for the same seed
        let warm = json!({ "messages": user("Hi"), "max_tokens": 8, "temperature": 1, "top_k": 0, "top_p": 1, "min_p": 0, "n": 3, "seed": 11, "cache_prompt": false });
        let r = post(a, "/v1/chat/completions", warm.clone()).await.json();
        assert_eq!(r["choices"].as_array().unwrap().len(), 3);
        assert_eq!(post(a, "/v1/chat/completions", warm).await.json()["choices"], r["choices"]);
    });
}
