//! Log-probabilities in the shapes of each API: the request fields that ask for them (checked,
//! never ignored) and the JSON of the tokens the engine reports (`engine::logprobs`).
//!
//! - chat: `logprobs: true` + `top_logprobs` (0 to 20) -> `choices[i].logprobs.content`: one
//!   `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}` per token
//! - completions: `logprobs` (0 to 5) -> `{tokens, token_logprobs, top_logprobs: [{token:
//!   logprob}], text_offset}` (the legacy shape; offsets in characters of the choice's text)
//! - llama.cpp's `/completion`: `n_probs` -> `completion_probabilities`: one `{id, token, bytes,
//!   logprob, top_logprobs: [{id, token, bytes, logprob}]}` per token
//!
//! Streamed, each chunk carries the tokens whose text it begins.

use super::error::ApiError;
use super::model::Model;
use llamafile_engine::logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
use serde_json::{json, Map, Value};

/// Most alternatives per token of the legacy completions API (OpenAI's limit).
pub const MAX_LEGACY_LOGPROBS: usize = 5;

fn count(field: &str, v: i64, max: usize) -> Result<usize, ApiError> {
    usize::try_from(v)
        .ok()
        .filter(|&k| k <= max)
        .ok_or_else(|| ApiError::invalid_field(field, format!("'{field}' must be between 0 and {max}, got {v}")))
}

/// Chat's `logprobs` and `top_logprobs`: how many alternatives each token reports, or `None`
/// for no log-probabilities.
pub fn chat_request(logprobs: Option<bool>, top_logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    let top = top_logprobs.map(|v| count("top_logprobs", v, MAX_TOP_LOGPROBS)).transpose()?;
    match (logprobs, top) {
        (Some(true), top) => Ok(Some(top.unwrap_or(0))),
        (_, Some(_)) => Err(ApiError::invalid_field("top_logprobs", "'top_logprobs' needs 'logprobs': true")),
        _ => Ok(None),
    }
}

/// The completions API's `logprobs` (alternatives per token, 0 to 5).
pub fn completion_request(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    logprobs.map(|v| count("logprobs", v, MAX_LEGACY_LOGPROBS)).transpose()
}

/// llama.cpp's `n_probs` (0 = none).
pub fn llama_request(n_probs: Option<i64>) -> Result<Option<usize>, ApiError> {
    Ok(n_probs.map(|v| count("n_probs", v, MAX_TOP_LOGPROBS)).transpose()?.filter(|&k| k > 0))
}

/// A token's text (not valid UTF-8 on its own: with U+FFFD, the `bytes` are exact) and bytes.
fn text_of(model: &dyn Model, id: u32) -> (String, Vec<u8>) {
    let bytes = model.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// JSON has no infinity: an impossible token gets the lowest finite value (as llama.cpp does).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        f32::MIN
    }
}

/// One entry per token, made by `entry` (id, log-probability), with its alternatives made the
/// same way under `top_logprobs`.
fn with_top(tokens: &[TokenLogprob], entry: impl Fn(u32, f32) -> Value) -> Value {
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                let mut e = entry(t.id, t.logprob);
                e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            })
            .collect(),
    )
}

/// Chat's `logprobs.content`.
pub fn chat_content(model: &dyn Model, tokens: &[TokenLogprob]) -> Value {
    with_top(tokens, |id, lp| {
        let (token, bytes) = text_of(model, id);
        json!({ "token": token, "logprob": finite(lp), "bytes": bytes })
    })
}

/// The completions API's `logprobs` object. `text` is the choice's text (so far, when
/// streaming) and `before` what stands in front of it in the response (an echoed prompt).
pub fn legacy(model: &dyn Model, tokens: &[TokenLogprob], text: &str, before: &str) -> Value {
    let base = before.chars().count();
    let chars_before = |offset: usize| {
        let mut at = offset.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        base + text[..at].chars().count()
    };
    json!({
        "tokens": tokens.iter().map(|t| text_of(model, t.id).0).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| finite(t.logprob)).collect::<Vec<_>>(),
        "top_logprobs": tokens
            .iter()
            .map(|t| {
                let mut m = Map::new();
                for &(id, lp) in &t.top {
                    m.entry(text_of(model, id).0).or_insert(json!(finite(lp)));
                }
                Value::Object(m)
            })
            .collect::<Vec<_>>(),
        "text_offset": tokens.iter().map(|t| chars_before(t.offset)).collect::<Vec<_>>(),
    })
}

/// llama.cpp's `completion_probabilities`.
pub fn llama(model: &dyn Model, tokens: &[TokenLogprob]) -> Value {
    with_top(tokens, |id, lp| {
        let (token, bytes) = text_of(model, id);
        json!({ "id": id, "token": token, "bytes": bytes, "logprob": finite(lp) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testing::FakeModel;

    #[test]
    fn request_fields_are_checked() {
        assert_eq!(chat_request(None, None).unwrap(), None);
        assert_eq!(chat_request(Some(false), None).unwrap(), None);
        assert_eq!(chat_request(Some(true), None).unwrap(), Some(0));
        assert_eq!(chat_request(Some(true), Some(20)).unwrap(), Some(20));
        for (lp, top) in [(Some(true), 21), (Some(true), -1), (None, 3), (Some(false), 3)] {
            assert_eq!(chat_request(lp, Some(top)).unwrap_err().param.as_deref(), Some("top_logprobs"));
        }
        assert_eq!(completion_request(Some(5)).unwrap(), Some(5));
        assert_eq!(completion_request(Some(0)).unwrap(), Some(0));
        assert_eq!(completion_request(Some(6)).unwrap_err().param.as_deref(), Some("logprobs"));
        assert_eq!(llama_request(Some(0)).unwrap(), None);
        assert_eq!(llama_request(Some(3)).unwrap(), Some(3));
        assert_eq!(llama_request(Some(-1)).unwrap_err().param.as_deref(), Some("n_probs"));
    }

    #[test]
    fn shapes() {
        let m = FakeModel::new();
        let [a, b] = [3 + b'a' as u32, 3 + 0xC3];
        let toks = vec![
            TokenLogprob { id: a, logprob: -0.5, top: vec![(a, -0.5), (b, -1.5)], offset: 0 },
            TokenLogprob { id: b, logprob: f32::NEG_INFINITY, top: vec![], offset: 1 },
        ];
        let c = chat_content(&m, &toks);
        assert_eq!(c[0]["token"], "a");
        assert_eq!(c[0]["bytes"], json!([97]));
        assert_eq!(c[0]["top_logprobs"][1]["bytes"], json!([0xC3]));
        assert_eq!(c[1]["logprob"], json!(f32::MIN), "finite in JSON");
        let l = legacy(&m, &toks, "aé", "é>");
        assert_eq!(l["tokens"], json!(["a", "\u{FFFD}"]));
        assert_eq!(l["text_offset"], json!([2, 3]), "characters, after what comes before");
        assert_eq!(l["top_logprobs"][0]["a"], json!(-0.5));
        let p = llama(&m, &toks);
        assert_eq!(p[0]["id"], a);
        assert_eq!(p[0]["top_logprobs"][0]["id"], a);
    }
}
