//! Request bodies of the OpenAI API (`/v1/chat/completions`, `/v1/completions`) and of
//! llama.cpp's (`/completion`, `/tokenize`, `/detokenize`), and their validation into the
//! engine's `SamplingParams`. Unknown fields are ignored (clients send many we do not use);
//! known fields with the wrong type are an error naming the field.

use super::error::ApiError;
use crate::engine::SamplingParams;
use serde::Deserialize;

/// A string, or a list of strings (`stop`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A message's content: a string, or OpenAI's array of parts (only `text` parts are supported).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An assistant's earlier calls (`server::tools`).
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
}

/// The fields every generation request shares (OpenAI names, plus llama.cpp's extensions).
#[derive(Deserialize, Debug, Clone, Default)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub ignore_eos: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<InMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // Not `#[serde(flatten)]`: flattening loses the field path in error messages.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub ignore_eos: Option<bool>,
    pub n: Option<i64>,
    /// Function tools, `tool_choice` and `parallel_tool_calls` (`server::tools`).
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `text`, `json_object` or `json_schema` (`server::structured`).
    pub response_format: Option<serde_json::Value>,
}

impl ChatRequest {
    /// Refuse what the server cannot honour, instead of answering as if it had.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// A completion prompt: text, or token ids (a batch of one is accepted too).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "a string, an array of token ids, or an array holding one string")]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl Prompt {
    pub fn single(self) -> Result<PromptInput, ApiError> {
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid_field("prompt", format!("one prompt per request is supported, got {n}")))
            }
        };
        Ok(match self {
            Prompt::Text(s) => PromptInput::Text(s),
            Prompt::Tokens(t) => PromptInput::Tokens(t),
            Prompt::Texts(mut v) => {
                one(v.len())?;
                PromptInput::Text(v.pop().unwrap_or_default())
            }
            Prompt::TokenLists(mut v) => {
                one(v.len())?;
                PromptInput::Tokens(v.pop().unwrap_or_default())
            }
        })
    }
}

/// `POST /v1/completions`.
#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    /// `text`, `json_object` or `json_schema` (`server::structured`).
    pub response_format: Option<serde_json::Value>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub ignore_eos: Option<bool>,
    pub n: Option<i64>,
}

/// llama.cpp's `POST /completion`.
#[derive(Deserialize, Debug, Clone)]
pub struct LlamaCompletionRequest {
    pub prompt: Prompt,
    /// -1 = until an end token or the context is full.
    pub n_predict: Option<i64>,
    pub stream: Option<bool>,
    /// Always on here; accepted for compatibility.
    pub cache_prompt: Option<bool>,
    /// A GBNF grammar the output must match (`server::structured`).
    pub grammar: Option<serde_json::Value>,
    /// A JSON Schema the output must match.
    pub json_schema: Option<serde_json::Value>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub ignore_eos: Option<bool>,
}

/// `POST /tokenize`.
#[derive(Deserialize, Debug, Clone)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default = "yes")]
    pub parse_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize`.
#[derive(Deserialize, Debug, Clone)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

macro_rules! sampling_fields {
    ($t:ty) => {
        impl $t {
            pub fn sampling_fields(&self) -> SamplingFields {
                SamplingFields {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repeat_penalty: self.repeat_penalty,
                    repeat_last_n: self.repeat_last_n,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}
sampling_fields!(ChatRequest);
sampling_fields!(CompletionRequest);
sampling_fields!(LlamaCompletionRequest);

/// Most stop strings one request may give.
pub const MAX_STOP: usize = 16;

/// What a request asked for, checked and completed with the server's defaults.
pub struct Sampling {
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

/// Check ranges and fill unset fields from `defaults` (the command line's sampling flags).
/// `n` (OpenAI's number of choices) must be 1 if given. A missing seed (or -1) means a fresh random one.
pub fn validate_sampling(f: SamplingFields, n: Option<i64>, defaults: &SamplingParams) -> Result<Sampling, ApiError> {
    if let Some(n) = n {
        if n != 1 {
            return Err(ApiError::invalid_field("n", format!("only n = 1 is supported, got {n}")));
        }
    }
    let finite = |name: &str, v: f32| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(ApiError::invalid_field(name, format!("'{name}' must be a finite number")))
        }
    };
    let temperature = match f.temperature {
        None => defaults.temperature,
        Some(t) => {
            let t = finite("temperature", t)?;
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid_field("temperature", format!("'temperature' must be between 0 and 2, got {t}")));
            }
            t
        }
    };
    let top_p = match f.top_p {
        None => defaults.top_p,
        Some(p) => {
            let p = finite("top_p", p)?;
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid_field("top_p", format!("'top_p' must be in (0, 1], got {p}")));
            }
            p
        }
    };
    let min_p = match f.min_p {
        None => defaults.min_p,
        Some(p) => {
            let p = finite("min_p", p)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid_field("min_p", format!("'min_p' must be in [0, 1], got {p}")));
            }
            p
        }
    };
    let top_k = match f.top_k {
        None => defaults.top_k,
        Some(k) if k < 0 => return Err(ApiError::invalid_field("top_k", format!("'top_k' must be 0 (off) or more, got {k}"))),
        Some(k) => k as usize,
    };
    let repeat_penalty = match f.repeat_penalty {
        None => defaults.repeat_penalty,
        Some(r) => {
            let r = finite("repeat_penalty", r)?;
            if r <= 0.0 {
                return Err(ApiError::invalid_field("repeat_penalty", format!("'repeat_penalty' must be above 0, got {r}")));
            }
            r
        }
    };
    let repeat_last_n = match f.repeat_last_n {
        None => defaults.repeat_last_n,
        Some(n) if n < 0 => {
            return Err(ApiError::invalid_field("repeat_last_n", format!("'repeat_last_n' must be 0 or more, got {n}")))
        }
        Some(n) => n as usize,
    };
    let seed = match f.seed {
        None | Some(-1) => random_u64(),
        Some(s) => s as u64,
    };
    let stop: Vec<String> = f.stop.map(OneOrMany::into_vec).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect();
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_field("stop", format!("at most {MAX_STOP} stop strings, got {}", stop.len())));
    }
    Ok(Sampling {
        params: SamplingParams { temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed },
        stop,
        ignore_eos: f.ignore_eos.unwrap_or(false),
    })
}

/// A random 64-bit number for seeds and response ids. `std`'s `RandomState` is seeded from the
/// OS once per process and perturbed per instance: enough here, without a `rand` dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::error::parse_json;
    use super::*;

    fn defaults() -> SamplingParams {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }

    #[test]
    fn chat_request_shapes() {
        let r: ChatRequest = parse_json(
            br#"{"model":"x","messages":[{"role":"system","content":"s"},
                 {"role":"user","content":[{"type":"text","text":"hi"}]},
                 {"role":"assistant","content":null}],
                 "stop":"END","temperature":0,"stream":true,"stream_options":{"include_usage":true},
                 "logprobs":false,"presence_penalty":0}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 3);
        assert!(matches!(r.messages[1].content, Some(MessageContent::Parts(ref p)) if p[0].text.as_deref() == Some("hi")));
        assert!(r.messages[2].content.is_none());
        assert!(matches!(r.stop, Some(OneOrMany::One(ref s)) if s == "END"));
        assert_eq!(r.stream_options.unwrap().include_usage, Some(true));
    }

    #[test]
    fn unsupported_features_are_refused() {
        let ok: ChatRequest = parse_json(br#"{"messages":[],"tools":[],"response_format":{"type":"text"}}"#).unwrap();
        assert!(ok.check_unsupported().is_ok());
        // response_format is structured output now (server::structured), not refused here
        let r: ChatRequest = parse_json(br#"{"messages":[],"response_format":{"type":"json_object"}}"#).unwrap();
        assert!(r.check_unsupported().is_ok());
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse_json::<ChatRequest>(br#"{"messages":[{"role":"user","content":7}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(e.message.contains("a string or an array of content parts"), "{}", e.message);
        let e = parse_json::<ChatRequest>(br#"{"messages":[],"stop":[1]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        let e = parse_json::<ChatRequest>(br#"{"messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_json::<ChatRequest>(br#"{"temperature":1}"#).unwrap_err();
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn prompts() {
        let r: CompletionRequest = parse_json(br#"{"prompt":[1,2,3]}"#).unwrap();
        assert!(matches!(r.prompt.single(), Ok(PromptInput::Tokens(ref t)) if t == &[1, 2, 3]));
        let r: CompletionRequest = parse_json(br#"{"prompt":["a"]}"#).unwrap();
        assert!(matches!(r.prompt.single(), Ok(PromptInput::Text(ref t)) if t == "a"));
        let r: CompletionRequest = parse_json(br#"{"prompt":["a","b"]}"#).unwrap();
        assert_eq!(r.prompt.single().err().unwrap().param.as_deref(), Some("prompt"));
        assert!(parse_json::<CompletionRequest>(br#"{"prompt":{"a":1}}"#).is_err());
    }

    #[test]
    fn sampling_defaults_and_ranges() {
        let s = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap();
        assert_eq!(s.params.temperature, 0.8);
        assert_eq!(s.params.top_k, 40);
        assert!(s.stop.is_empty());
        let f = SamplingFields { temperature: Some(0.0), seed: Some(42), stop: Some(OneOrMany::Many(vec!["".into(), "x".into()])), ..Default::default() };
        let s = validate_sampling(f, Some(1), &defaults()).unwrap();
        assert_eq!((s.params.temperature, s.params.seed), (0.0, 42));
        assert_eq!(s.stop, vec!["x".to_string()]);
        for (f, param) in [
            (SamplingFields { temperature: Some(-1.0), ..Default::default() }, "temperature"),
            (SamplingFields { temperature: Some(f32::NAN), ..Default::default() }, "temperature"),
            (SamplingFields { top_p: Some(0.0), ..Default::default() }, "top_p"),
            (SamplingFields { top_k: Some(-2), ..Default::default() }, "top_k"),
            (SamplingFields { min_p: Some(2.0), ..Default::default() }, "min_p"),
            (SamplingFields { repeat_penalty: Some(0.0), ..Default::default() }, "repeat_penalty"),
        ] {
            let e = validate_sampling(f, None, &defaults()).err().unwrap();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        assert_eq!(validate_sampling(SamplingFields::default(), Some(3), &defaults()).err().unwrap().param.as_deref(), Some("n"));
        // no seed: two requests get different random seeds
        let a = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap().params.seed;
        let b = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap().params.seed;
        assert_ne!(a, b);
    }
}
