//! Embeddings through the server: agreement with the reference engine's `llama-embedding` on the
//! real Qwen2.5-Coder 0.5B (tests/data/reference, cosine >= 0.999 per text and pooling), base64
//! against floats and a batch against single inputs on that model, LangChain's
//! `LlamafileEmbeddings` client, and `--embedding` accepted with a note.

mod server_support;

use llamafile_engine::embed::cosine;
use serde_json::{json, Value};
use server_support::*;
use std::process::Command;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The vectors of `/v1/embeddings` for `input`.
fn v1(s: &Server, body: Value) -> Vec<Vec<f32>> {
    let v = ok(&s.post("/v1/embeddings", &body));
    v["data"].as_array().unwrap().iter().map(|d| floats(&d["embedding"])).collect()
}

#[test]
fn server_embeddings_agree_with_the_reference_on_qwen() {
    let Some(m) = real_model(QWEN) else { return };
    let path = e2e::root().join("tests/data/reference/embeddings-qwen2.5-coder-0.5b-instruct-q4_k_m.json");
    let r: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let texts = r["texts"].clone();
    let n = texts.as_array().unwrap().len();
    for pooling in ["mean", "cls", "last"] {
        let s = Server::start(&m, &["--server", "-c", "512", "-t", "2", "--pooling", pooling]);
        let got = v1(&s, json!({ "input": texts, "model": "text-embedding-3-small" }));
        assert_eq!(got.len(), n);
        for (i, g) in got.iter().enumerate() {
            let want = floats(&r["embeddings"][pooling][i]);
            assert_eq!(g.len(), want.len(), "width");
            let c = cosine(g, &want);
            eprintln!("{pooling} text {i}: cosine {c:.6}");
            assert!(c >= 0.999, "{pooling} text {i}: cosine {c} with llama-embedding");
        }
        if pooling == "mean" {
            // every input alone gives what it gives in the batch, and not another's: the matrix
            // kernels differ with the batch size (one or two tokens take the matrix-vector path),
            // which on this Q4_K model moves a two-token text's vector as far as the reference's
            // does (cosine ~0.9998), so the bound is the agreement bound
            let alone: Vec<Vec<f32>> =
                texts.as_array().unwrap().iter().map(|t| v1(&s, json!({ "input": t })).remove(0)).collect();
            for (i, g) in got.iter().enumerate() {
                let c = cosine(&alone[i], g);
                eprintln!("text {i}: alone vs batched, cosine {c:.6}");
                assert!(c >= 0.999, "text {i}: alone vs batched, cosine {c}");
                for (j, a) in alone.iter().enumerate().filter(|(j, _)| *j != i) {
                    assert!(cosine(a, g) < c, "batched text {i} is closer to text {j} alone than to itself alone");
                }
            }
            // base64: the same floats as little-endian bytes
            let b = ok(&s.post("/v1/embeddings", &json!({ "input": texts, "encoding_format": "base64" })));
            for (i, d) in b["data"].as_array().unwrap().iter().enumerate() {
                let bytes = base64::decode(d["embedding"].as_str().unwrap()).unwrap();
                let decoded: Vec<f32> =
                    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                assert_eq!(decoded, got[i], "text {i}: base64 vs float");
            }
        }
    }
}

#[test]
fn server_embeddings_langchain_client() {
    let Some(m) = tiny_model() else { return };
    let have = Command::new("python3")
        .args(["-c", "import langchain_community.embeddings"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        e2e::skip("the `langchain-community` Python package", "pip install langchain-community");
        return;
    }
    // No --pooling: a chat model's embeddings work out of the box (mean pooling).
    let s = Server::start(&m, &["--server", "-c", "512", "--embedding"]);
    let script = e2e::root().join("tests/langchain_embeddings.py");
    let out = Command::new("python3").arg(&script).arg(&s.url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "LangChain client failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // what the client got is what the OpenAI endpoint gives for the same texts
    let want = v1(&s, json!({ "input": v["texts"] }));
    let docs: Vec<Vec<f32>> = v["documents"].as_array().unwrap().iter().map(floats).collect();
    assert_eq!(docs.len(), 2);
    for (i, d) in docs.iter().enumerate() {
        assert!(cosine(d, &want[i]) > 0.9999, "document {i}");
    }
    assert!(cosine(&floats(&v["query"]), &want[2]) > 0.9999, "query");
    assert!(cosine(&docs[0], &docs[1]) < 0.99999, "different texts, different vectors");
    // --embedding is accepted and said once to have no effect
    let err = s.stderr();
    assert_eq!(
        err.matches("--embedding is accepted for llama.cpp compatibility and has no effect").count(),
        1,
        "{err}"
    );
}

#[test]
fn embedding_flags_are_checked_and_noted() {
    let Some(m) = tiny_model() else { return };
    let run = |args: &[&str]| Command::new(e2e::bin("llamafile")).arg("-m").arg(&m).args(args).output().unwrap();
    for (value, wanted) in [("avg", "unknown pooling 'avg'"), ("rank", "pooling 'rank' (reranking) is not supported")] {
        let o = run(&["--pooling", value, "-p", "x", "-n", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--pooling {value}: {err}");
        assert!(err.contains("--pooling") && err.contains(wanted), "--pooling {value}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "one line: {err}");
    }
    let o = run(&["--embeddings", "-p", "x", "-n", "1", "-c", "64"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("--embedding is accepted for llama.cpp compatibility and has no effect").count(),
        1,
        "{err}"
    );
}
