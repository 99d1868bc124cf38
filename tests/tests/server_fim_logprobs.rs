//! Log-probabilities against the teacher-forced evaluation of `--eval-tokens`, and fill in the
//! middle with the real Qwen2.5-Coder model (skipped when it is not fetched).

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// `--eval-tokens` over `tokens`: its JSON (`nll`: -log p of each next token).
fn eval_tokens(model: &std::path::Path, tokens: &[u64], batch: &str) -> Value {
    let list = tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let out = Command::new(e2e::bin("llamafile"))
        .arg("-m")
        .arg(model)
        .args(["-t", "2", "-c", "256", "-b", batch, "--log-disable", "-n", "0", "--eval-tokens", &list])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn logprobs_of_a_greedy_completion_equal_eval_tokens() {
    let Some(m) = tiny_model() else { return };
    let s = Server::start(&m, &["--server", "-c", "256", "-t", "2"]);
    let prompt = [1u64, 415, 2936, 9060, 285, 1142];
    let body = json!({ "prompt": prompt, "n_predict": 8, "temperature": 0, "n_probs": 3, "ignore_eos": true, "cache_prompt": false });
    let r = s.post("/completion", &body).json();
    let probs = r["completion_probabilities"].as_array().unwrap().clone();
    assert_eq!(probs.len(), 8, "{r}");
    let ids: Vec<u64> = probs.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    let all: Vec<u64> = prompt.iter().copied().chain(ids.iter().copied()).collect();
    // Evaluated one token at a time, as generation evaluates them (`-b 1`), and all in one batch
    // (the default): the matrix kernels of a batch add in another order, rounding differs.
    for (batch, tolerance) in [("1", 1e-5), ("512", 5e-3)] {
        let ev = eval_tokens(&m, &all, batch);
        let nll: Vec<f64> = ev["nll"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, p) in probs.iter().enumerate() {
            let ours = p["logprob"].as_f64().unwrap();
            let theirs = -nll[prompt.len() - 1 + i];
            assert!(
                (ours - theirs).abs() < tolerance,
                "-b {batch}, token {i}: logprob {ours} vs --eval-tokens {theirs}"
            );
            // greedy: the chosen token is the likeliest, first of its list, which is sorted
            let top: Vec<f64> =
                p["top_logprobs"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert_eq!(p["top_logprobs"][0]["id"], p["id"]);
            assert!(top.windows(2).all(|w| w[0] >= w[1]) && top.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-6);
        }
        // and the greedy tokens are the ones --eval-tokens ranks first
        let top10 = ev["top10"].as_array().unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(top10[prompt.len() - 1 + i][0][0].as_u64(), Some(*id), "-b {batch}: token {i}");
        }
    }
}

/// Whether `code` compiles as Python (`compile()`); `None` without python3.
fn python_compiles(code: &str) -> Option<Result<(), String>> {
    let mut child = Command::new("python3")
        .args(["-c", "import sys; compile(sys.stdin.read(), 'infill.py', 'exec')"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(code.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some(if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) })
}

#[test]
fn infill_with_qwen_coder_compiles() {
    let Some(m) = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    if python_compiles("pass").is_none() {
        e2e::skip("python3", "apt-get install python3");
        return;
    }
    let s = Server::start(&m, &["--server", "-c", "2048", "-t", "2"]);
    let (prefix, suffix) = ("def is_even(n):\n    ", "\n\nprint(is_even(4))\n");
    let r = s
        .post("/infill", &json!({ "input_prefix": prefix, "input_suffix": suffix, "n_predict": 48, "temperature": 0 }))
        .json();
    let middle = r["content"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(!middle.trim().is_empty(), "{r}");
    let code = format!("{prefix}{middle}{suffix}");
    python_compiles(&code).unwrap().unwrap_or_else(|e| panic!("/infill gave code that does not compile:\n{code}\n{e}"));
    // the same through the completions API's `suffix`
    let r = s
        .post("/v1/completions", &json!({ "prompt": prefix, "suffix": suffix, "max_tokens": 48, "temperature": 0 }))
        .json();
    let middle = r["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("{r}"));
    let code = format!("{prefix}{middle}{suffix}");
    python_compiles(&code).unwrap().unwrap_or_else(|e| panic!("suffix gave code that does not compile:\n{code}\n{e}"));
    // extra files in the repository-level layout are accepted
    let extra = json!([{ "filename": "util.py", "text": "def half(n):\n    return n // 2\n" }]);
    let r = s.post("/infill", &json!({ "input_prefix": prefix, "input_suffix": suffix, "input_extra": extra, "n_predict": 8, "temperature": 0 }));
    assert_eq!(r.status, 200, "{}", r.body);
}
