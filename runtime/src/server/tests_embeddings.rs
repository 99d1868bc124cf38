//! `/v1/embeddings` and `/embedding` over real sockets with the fake model: the shapes of the
//! inputs and answers, base64, errors naming the input, and embeddings beside a busy chat slot.
//! (The engine's numbers are checked against the reference in `engine::embed` and the e2e tests.)

use super::embeddings::{Embedder, Embeddings};
use super::tests::{post, rt, server, server_custom, Resp};
use llamafile_engine::embed::{normalize, Pooling};
use serde_json::{json, Value};
use std::time::Duration;

pub const FAKE_N_EMBD: usize = 3;

/// Token `id` at index `j` of its input is the vector [1, id, j + 1]; pooled and normalized as
/// the engine does.
pub struct FakeEmbedder;

impl Embedder for FakeEmbedder {
    fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, norm: i32) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
        Ok(inputs.iter().map(|input| fake_vectors(input, pooling, norm)).collect())
    }
}

fn fake_vectors(input: &[u32], pooling: Pooling, norm: i32) -> Vec<Vec<f32>> {
    let rows: Vec<Vec<f32>> = input.iter().enumerate().map(|(j, &id)| vec![1.0, id as f32, (j + 1) as f32]).collect();
    let mut out = match pooling {
        Pooling::None => rows,
        Pooling::Cls => vec![rows[0].clone()],
        Pooling::Last => vec![rows[rows.len() - 1].clone()],
        Pooling::Mean => {
            let n = rows.len() as f32;
            vec![(0..FAKE_N_EMBD).map(|k| rows.iter().map(|r| r[k]).sum::<f32>() / n).collect()]
        }
    };
    out.iter_mut().for_each(|v| normalize(v, norm));
    out
}

/// What the fake model's tokenizer gives for `text` (BOS, then one token per byte).
fn ids(text: &str) -> Vec<u32> {
    std::iter::once(super::testing::BOS).chain(text.bytes().map(|b| 3 + b as u32)).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn unbase64(s: &str) -> Vec<f32> {
    base64::decode(s).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn v1_embeddings_answers_openai_shapes() {
    rt().block_on(async {
        let s = server().await;
        let v = ok(&post(
            s.addr,
            "/v1/embeddings",
            json!({"input": "ab", "model": "anything", "user": "u", "options": {"x": 1}}),
        )
        .await);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "fake-model");
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        let d = &v["data"][0];
        assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(0)));
        assert_eq!(floats(&d["embedding"]), fake_vectors(&ids("ab"), Pooling::Mean, 2)[0]);

        // an array of strings, token ids, arrays of token ids: one vector each, in order
        let texts = ["one", "two words", "x"];
        let many = ok(&post(s.addr, "/v1/embeddings", json!({"input": texts})).await);
        for (i, t) in texts.iter().enumerate() {
            let single = ok(&post(s.addr, "/v1/embeddings", json!({"input": t})).await);
            assert_eq!(many["data"][i]["index"], i);
            assert_eq!(many["data"][i]["embedding"], single["data"][0]["embedding"], "batch of N = N singles ({t})");
        }
        let n: u64 = texts.iter().map(|t| ids(t).len() as u64).sum();
        assert_eq!(many["usage"]["prompt_tokens"], n);
        let toks = ok(&post(s.addr, "/v1/embeddings", json!({"input": [5, 6, 7]})).await);
        assert_eq!(floats(&toks["data"][0]["embedding"]), fake_vectors(&[5, 6, 7], Pooling::Mean, 2)[0]);
        let arrays = ok(&post(s.addr, "/v1/embeddings", json!({"input": [[5, 6, 7], [9]]})).await);
        assert_eq!(arrays["data"][0]["embedding"], toks["data"][0]["embedding"]);
        assert_eq!(floats(&arrays["data"][1]["embedding"]), fake_vectors(&[9], Pooling::Mean, 2)[0]);
        assert_eq!(arrays["usage"]["total_tokens"], 4);

        // base64: the same floats, little-endian
        let b = ok(&post(s.addr, "/v1/embeddings", json!({"input": texts, "encoding_format": "base64"})).await);
        for i in 0..texts.len() {
            assert_eq!(unbase64(b["data"][i]["embedding"].as_str().unwrap()), floats(&many["data"][i]["embedding"]));
        }
        // llama.cpp's normalization field
        let raw = ok(&post(s.addr, "/v1/embeddings", json!({"input": "ab", "embd_normalize": -1})).await);
        assert_eq!(floats(&raw["data"][0]["embedding"]), fake_vectors(&ids("ab"), Pooling::Mean, -1)[0]);
    });
}

#[test]
fn bad_embedding_requests_are_400s_naming_the_input() {
    rt().block_on(async {
        let s = server_custom(16, 1, Default::default(), |_| {}).await;
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({}), "input", "'input' is required"),
            (json!({"input": ""}), "input", "'input' is empty"),
            (json!({"input": []}), "input", "'input' is empty"),
            (json!({"input": ["a", ""]}), "input[1]", "'input[1]' is empty"),
            (json!({"input": [[1], []]}), "input[1]", "'input[1]' is empty"),
            (
                json!({"input": ["short", "this one is far too long"]}),
                "input[1]",
                "'input[1]' is 25 tokens, longer than the context of 16 tokens",
            ),
            (
                json!({"input": "this one is far too long"}),
                "input",
                "'input' is 25 tokens, longer than the context of 16",
            ),
            (json!({"input": 5}), "input", "'input' must be a string, an array of strings"),
            (json!({"input": ["a", {"x": 1}]}), "input[1]", "must be a string"),
            (json!({"input": [1, -2]}), "input[1]", "must be a token id"),
            (json!({"input": [[1, 99999]]}), "input[0][1]", "token id 99999 in 'input[0]' is outside the vocabulary"),
            (json!({"input": "a", "encoding_format": "hex"}), "encoding_format", "must be float or base64, got 'hex'"),
            (json!({"input": "a", "dimensions": 2}), "dimensions", "can only be this model's width, 3, got 2"),
        ];
        for (body, param, msg) in cases {
            let r = post(s.addr, "/v1/embeddings", body.clone()).await;
            let e = r.assert_error(400, msg);
            assert_eq!(e["error"]["param"], param, "{body}");
        }
        let r = post(s.addr, "/v1/embeddings", json!({"input": ["short", "this one is far too long"]})).await;
        assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
        // malformed JSON is the usual OpenAI-style error, not a plain-text one
        let r = super::tests::send_raw(
            s.addr,
            &test_support::http::request_bytes("POST", "/v1/embeddings", b"{\"input\": "),
        )
        .await;
        r.assert_error(400, "malformed JSON");
    });
}

#[test]
fn llama_embedding_answers_langchain_and_llama_cpp_shapes() {
    rt().block_on(async {
        let s = server().await;
        // one string: llamafile's {"embedding": [...]}, what LangChain's LlamafileEmbeddings reads
        let v = ok(&post(s.addr, "/embedding", json!({"content": "ab"})).await);
        assert_eq!(floats(&v["embedding"]), fake_vectors(&ids("ab"), Pooling::Mean, 2)[0]);
        assert_eq!(ok(&post(s.addr, "/embeddings", json!({"content": "ab"})).await), v);
        assert_eq!(ok(&post(s.addr, "/embedding", json!({"input": "ab"})).await), v);
        // several: llama.cpp's list of {index, embedding: [[...]]}
        let l = ok(&post(s.addr, "/embedding", json!({"content": ["ab", "c"]})).await);
        assert_eq!(l[1]["index"], 1);
        assert_eq!(floats(&l[1]["embedding"][0]), fake_vectors(&ids("c"), Pooling::Mean, 2)[0]);
        post(s.addr, "/embedding", json!({"content": ""})).await.assert_error(400, "'content' is empty");
    });
}

#[test]
fn pooling_none_gives_tokens_on_embedding_and_a_400_on_v1() {
    rt().block_on(async {
        let s = server_custom(256, 1, Default::default(), |st| {
            st.embeddings = Embeddings::new(&*st.model, Some(Pooling::None), Some(2));
        })
        .await;
        post(s.addr, "/v1/embeddings", json!({"input": "ab"}))
            .await
            .assert_error(400, "start the server with --pooling mean, cls or last");
        let v = ok(&post(s.addr, "/embedding", json!({"content": "ab"})).await);
        let rows: Vec<Vec<f32>> = v["embedding"].as_array().unwrap().iter().map(floats).collect();
        assert_eq!(rows, fake_vectors(&ids("ab"), Pooling::None, -1), "one raw vector per token");
        // --pooling last and --embd-normalize 1 are what requests get
        let s = server_custom(256, 1, Default::default(), |st| {
            st.embeddings = Embeddings::new(&*st.model, Some(Pooling::Last), Some(1));
        })
        .await;
        let v = ok(&post(s.addr, "/v1/embeddings", json!({"input": "ab"})).await);
        assert_eq!(floats(&v["data"][0]["embedding"]), fake_vectors(&ids("ab"), Pooling::Last, 1)[0]);
    });
}

#[test]
fn a_model_that_declares_rank_is_refused_on_request() {
    rt().block_on(async {
        let s = server_custom(256, 1, Default::default(), |st| {
            st.embeddings.pooling = Err("qwen2.pooling_type is 4 (rank): reranking models are not supported".into());
        })
        .await;
        post(s.addr, "/v1/embeddings", json!({"input": "ab"}))
            .await
            .assert_error(501, "reranking models are not supported");
        // chat is unaffected
        let r = post(s.addr, "/v1/completions", json!({"prompt": "hi", "max_tokens": 2})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    });
}

#[test]
fn embeddings_do_not_wait_for_a_busy_chat_slot() {
    rt().block_on(async {
        let s = server_custom(256, 1, Default::default(), |_| {}).await;
        let held = s.state.pool.acquire(&[]).await; // the only chat slot is busy
        let r =
            tokio::time::timeout(Duration::from_secs(10), post(s.addr, "/v1/embeddings", json!({"input": "ab"}))).await;
        let r = r.expect("embeddings waited for the chat slot");
        assert_eq!(r.status, 200, "{}", r.body);
        drop(held);
    });
}
