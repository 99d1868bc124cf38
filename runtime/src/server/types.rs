//! Request bodies of the OpenAI API (`/v1/chat/completions`, `/v1/completions`) and of
//! llama.cpp's (`/completion`, `/tokenize`, `/detokenize`), and their validation into the
//! engine's `SamplingParams`. Unknown fields are ignored (clients send many we do not use);
//! known fields with the wrong type are an error naming the field.

use super::error::ApiError;
use llamafile_engine::sampler::{fresh_seed, SamplingOptions};
use llamafile_engine::SamplingParams;
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
    /// A `tool` message's call id and tool name.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The fields every generation request shares (OpenAI names, plus llama.cpp's extensions):
/// the sampling settings the command line takes too, stop strings and `ignore_eos`.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct SamplingFields {
    #[serde(flatten)]
    pub sampling: SamplingOptions,
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
    /// The model to answer: this server's one model answers whatever is named (see
    /// `routes::note_requested_model`); a non-string is refused like any mistyped field.
    pub model: Option<String>,
    /// llama.cpp's: `false` evaluates the whole prompt instead of reusing the slot's cache.
    pub cache_prompt: Option<bool>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub n: Option<i64>,
    /// Function tools, `tool_choice` and `parallel_tool_calls` (`server::tools`).
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `text`, `json_object` or `json_schema` (`server::structured`).
    pub response_format: Option<serde_json::Value>,
    /// Log-probabilities of the answer's tokens (`server::logprobs`).
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub unhonoured: super::refused::Unhonoured,
}

impl ChatRequest {
    /// Refuse what the server cannot honour, instead of answering as if it had.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        self.unhonoured.check()
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
    /// The model to answer: this server's one model answers whatever is named (see
    /// `routes::note_requested_model`); a non-string is refused like any mistyped field.
    pub model: Option<String>,
    /// llama.cpp's: `false` evaluates the whole prompt instead of reusing the slot's cache.
    pub cache_prompt: Option<bool>,
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    /// `text`, `json_object` or `json_schema` (`server::structured`).
    pub response_format: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub n: Option<i64>,
    /// Log-probabilities of the answer's tokens, with this many alternatives (`server::logprobs`).
    pub logprobs: Option<i64>,
    /// Text after the completion: the prompt is then a fill-in-the-middle one (`server::infill`).
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub unhonoured: super::refused::Unhonoured,
}

/// llama.cpp's `POST /completion`.
#[derive(Deserialize, Debug, Clone)]
pub struct LlamaCompletionRequest {
    pub prompt: Prompt,
    /// The model to answer: this server's one model answers whatever is named (see
    /// `routes::note_requested_model`); a non-string is refused like any mistyped field.
    pub model: Option<String>,
    /// -1 = until an end token or the context is full.
    pub n_predict: Option<i64>,
    pub stream: Option<bool>,
    /// `false` evaluates the whole prompt instead of reusing the slot's cache.
    pub cache_prompt: Option<bool>,
    /// A GBNF grammar the output must match (`server::structured`).
    pub grammar: Option<serde_json::Value>,
    /// A JSON Schema the output must match.
    pub json_schema: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Log-probabilities of the answer's tokens, with this many alternatives (`server::logprobs`).
    pub n_probs: Option<i64>,
    #[serde(flatten)]
    pub unhonoured: super::refused::Unhonoured,
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

/// The top-level field of a request body that `SamplingFields` cannot take, if any.
/// `#[serde(flatten)]` deserializes those fields from a buffer, out of sight of the path
/// tracking of `error::parse_json`, which asks here when an error has no path.
pub fn flattened_field_error(body: &[u8]) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    map.into_iter().map(|(k, v)| (k.clone(), serde_json::Map::from_iter([(k, v)]))).find_map(|(k, one)| {
        serde_json::from_value::<SamplingFields>(serde_json::Value::Object(one)).is_err().then_some(k)
    })
}

impl ChatRequest {
    pub fn sampling_fields(&self) -> SamplingFields {
        self.sampling.clone()
    }
}
impl CompletionRequest {
    pub fn sampling_fields(&self) -> SamplingFields {
        self.sampling.clone()
    }
}
impl LlamaCompletionRequest {
    pub fn sampling_fields(&self) -> SamplingFields {
        self.sampling.clone()
    }
}

/// Most stop strings one request may give.
pub const MAX_STOP: usize = 16;

/// What a request asked for, checked and completed with the server's defaults.
pub struct Sampling {
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// How many choices (OpenAI's `n`).
    pub n: usize,
}

/// Check ranges (the same checks as the command line's) and fill unset fields from `defaults`
/// (the command line's sampling flags). `n` (OpenAI's number of choices) is 1 to
/// `choices::MAX_CHOICES`. A seed of -1, or none when the command line gave none, means a fresh
/// random one.
pub fn validate_sampling(f: SamplingFields, n: Option<i64>, defaults: &SamplingParams) -> Result<Sampling, ApiError> {
    let max = super::choices::MAX_CHOICES;
    let n = match n {
        None => 1,
        Some(n) if n >= 1 && n as u64 <= max as u64 => n as usize,
        Some(n) => return Err(ApiError::invalid_field("n", format!("'n' must be between 1 and {max}, got {n}"))),
    };
    let mut params = f
        .sampling
        .resolve(defaults)
        .map_err(|e| ApiError::invalid_field(e.field, format!("'{}' {}", e.field, e.message)))?;
    params.seed = fresh_seed(params.seed);
    let stop: Vec<String> =
        f.stop.map(OneOrMany::into_vec).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect();
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_field("stop", format!("at most {MAX_STOP} stop strings, got {}", stop.len())));
    }
    Ok(Sampling { params, stop, ignore_eos: f.ignore_eos.unwrap_or(false), n })
}

pub use llamafile_engine::sampler::random_u64;

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::error::parse_json;
    use super::*;

    fn defaults() -> SamplingParams {
        SamplingParams { seed: llamafile_engine::sampler::RANDOM_SEED, ..SamplingParams::default() }
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
        assert!(
            matches!(r.messages[1].content, Some(MessageContent::Parts(ref p)) if p[0].text.as_deref() == Some("hi"))
        );
        assert!(r.messages[2].content.is_none());
        assert!(matches!(r.sampling.stop, Some(OneOrMany::One(ref s)) if s == "END"));
        assert_eq!(r.sampling.sampling.temperature, Some(0.0));
        assert_eq!(r.stream_options.unwrap().include_usage, Some(true));
    }

    #[test]
    fn unsupported_features_are_refused() {
        let ok: ChatRequest = parse_json(br#"{"messages":[],"tools":[],"response_format":{"type":"text"}}"#).unwrap();
        assert!(ok.check_unsupported().is_ok());
        // penalties this server does not implement are refused, their neutral values pass
        let r: ChatRequest = parse_json(br#"{"messages":[],"presence_penalty":0,"frequency_penalty":0}"#).unwrap();
        assert!(r.check_unsupported().is_ok());
        let r: ChatRequest = parse_json(br#"{"messages":[],"frequency_penalty":0.5}"#).unwrap();
        assert_eq!(r.check_unsupported().unwrap_err().param.as_deref(), Some("frequency_penalty"));
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

    fn opts(sampling: SamplingOptions) -> SamplingFields {
        SamplingFields { sampling, ..Default::default() }
    }

    #[test]
    fn sampling_defaults_and_ranges() {
        let s = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap();
        assert_eq!(s.params.temperature, 0.8);
        assert_eq!(s.params.top_k, 40);
        assert!(s.stop.is_empty());
        let f = SamplingFields {
            sampling: SamplingOptions { temperature: Some(0.0), seed: Some(42), ..Default::default() },
            stop: Some(OneOrMany::Many(vec!["".into(), "x".into()])),
            ..Default::default()
        };
        let s = validate_sampling(f, Some(1), &defaults()).unwrap();
        assert_eq!((s.params.temperature, s.params.seed), (0.0, 42));
        assert_eq!(s.stop, vec!["x".to_string()]);
        for (f, param) in [
            (opts(SamplingOptions { temperature: Some(-1.0), ..Default::default() }), "temperature"),
            (opts(SamplingOptions { temperature: Some(f32::NAN), ..Default::default() }), "temperature"),
            (opts(SamplingOptions { top_p: Some(0.0), ..Default::default() }), "top_p"),
            (opts(SamplingOptions { top_k: Some(-2), ..Default::default() }), "top_k"),
            (opts(SamplingOptions { min_p: Some(2.0), ..Default::default() }), "min_p"),
            (opts(SamplingOptions { repeat_penalty: Some(0.0), ..Default::default() }), "repeat_penalty"),
        ] {
            let e = validate_sampling(f, None, &defaults()).err().unwrap();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        assert_eq!(validate_sampling(SamplingFields::default(), Some(3), &defaults()).unwrap().n, 3);
        assert_eq!(validate_sampling(SamplingFields::default(), None, &defaults()).unwrap().n, 1);
        for n in [0, -1, 17] {
            assert_eq!(
                validate_sampling(SamplingFields::default(), Some(n), &defaults()).err().unwrap().param.as_deref(),
                Some("n")
            );
        }
        // no seed: two requests get different random seeds
        let a = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap().params.seed;
        let b = validate_sampling(SamplingFields::default(), None, &defaults()).unwrap().params.seed;
        assert_ne!(a, b);
        // -1 asks for a random seed too; other negative seeds are out of range
        let f = opts(SamplingOptions { seed: Some(-1), ..Default::default() });
        assert_ne!(
            validate_sampling(f.clone(), None, &defaults()).unwrap().params.seed,
            validate_sampling(f, None, &defaults()).unwrap().params.seed
        );
        let e = validate_sampling(opts(SamplingOptions { seed: Some(-5), ..Default::default() }), None, &defaults())
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("seed"));
        // the command line's -s is the default seed of requests without one
        let fixed = SamplingParams { seed: 7, ..defaults() };
        assert_eq!(validate_sampling(SamplingFields::default(), None, &fixed).unwrap().params.seed, 7);
    }

    #[test]
    fn sampling_fields_of_the_wrong_type_are_named() {
        for body in [
            &br#"{"messages":[],"temperature":"hot"}"#[..],
            br#"{"messages":[],"seed":1.5}"#,
            br#"{"messages":[],"ignore_eos":3}"#,
        ] {
            let e = parse_json::<ChatRequest>(body).unwrap_err();
            let field = ["temperature", "seed", "ignore_eos"]
                .into_iter()
                .find(|f| std::str::from_utf8(body).unwrap().contains(f))
                .unwrap();
            assert_eq!(e.param.as_deref(), Some(field), "{}", e.message);
        }
        let r: LlamaCompletionRequest = parse_json(br#"{"prompt":"x","top_k":5,"stop":["a"]}"#).unwrap();
        assert_eq!(r.sampling.sampling.top_k, Some(5));
    }
}
