//! Embeddings: OpenAI's `POST /v1/embeddings` and llama.cpp's `POST /embedding`.
//!
//! - One session, apart from the chat slots, serves every embedding request (made on the first
//!   one); requests take turns on it, so chat generation goes on undisturbed beside them. All
//!   the inputs of a request go through it together (batched by the engine).
//! - Pooling: `--pooling`, else the model's (`<arch>.pooling_type`), else `mean`. The chat
//!   models declare none; the reference's `llama-embedding` then gives one vector per token,
//!   which the clients of these endpoints (OpenAI's SDK, LangChain) cannot use, so a server
//!   started without flags answers them with the mean. With `none` (asked for, or declared as 0)
//!   `/v1/embeddings` answers 400 and `/embedding` gives one vector per token.
//! - Normalization: the request's `embd_normalize` (llama.cpp's field), else `--embd-normalize`
//!   (default 2, euclidean); per-token vectors are not normalized (as llama.cpp's server).
//! - Inputs: a string, an array of strings, an array of token ids, or an array of those. Text
//!   is tokenized as the reference does (special tokens added and parsed).
//! - `/embedding` with one string answers `{"embedding": [...]}`, the shape llamafile's server
//!   gave and LangChain's `LlamafileEmbeddings` reads; with an array, llama.cpp's list of
//!   `{"index", "embedding": [[...]]}`.

use super::error::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use llamafile_engine::embed::{Pooling, DEFAULT_NORMALIZE};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// What computes embeddings (the engine's `Session`; a fake one in the unit tests).
pub trait Embedder: Send {
    /// For each input, one vector (pooled) or one per token (`Pooling::None`), normalized.
    fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: i32) -> anyhow::Result<Vec<Vec<Vec<f32>>>>;
}

impl Embedder for llamafile_engine::Session {
    fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: i32) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
        llamafile_engine::Session::embed(self, inputs, pooling, normalize)
    }
}

/// The server's embedding settings and its session.
pub struct Embeddings {
    /// The pooling every request gets, or why there is none (a model that declares `rank`).
    pub pooling: Result<Pooling, String>,
    /// `--embd-normalize`.
    pub normalize: i32,
    session: Arc<Mutex<Option<Box<dyn Embedder>>>>,
}

impl Embeddings {
    /// `pooling`: `--pooling`; `normalize`: `--embd-normalize`.
    pub fn new(model: &dyn super::model::Model, pooling: Option<Pooling>, normalize: Option<i32>) -> Embeddings {
        let pooling = match pooling {
            Some(p) => Ok(p),
            None => model.declared_pooling().map(|p| p.unwrap_or(Pooling::Mean)).map_err(|e| format!("{e:#}")),
        };
        Embeddings { pooling, normalize: normalize.unwrap_or(DEFAULT_NORMALIZE), session: Arc::default() }
    }
}

#[derive(Deserialize, Debug, Default)]
pub struct EmbeddingsRequest {
    /// OpenAI's field.
    #[serde(default)]
    input: Option<Value>,
    /// llama.cpp's field.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    model: Option<String>,
    /// OpenAI's: a shorter vector; only the model's own width can be given.
    #[serde(default)]
    dimensions: Option<i64>,
    /// llama.cpp's: normalization for this request (as `--embd-normalize`).
    #[serde(default)]
    embd_normalize: Option<i32>,
}

/// One input as the request gives it.
enum Input {
    Text(String),
    Tokens(Vec<u32>),
}

/// `input`/`content` in any of its shapes; `field` names it in errors.
fn parse_inputs(v: &Value, field: &str, n_vocab: usize) -> Result<(Vec<Input>, bool), ApiError> {
    let tokens = |a: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(j, t)| match t.as_u64() {
                Some(id) if (id as usize) < n_vocab => Ok(id as u32),
                Some(id) => Err(ApiError::invalid_field(
                    &format!("{at}[{j}]"),
                    format!("token id {id} in '{at}' is outside the vocabulary ({n_vocab} tokens)"),
                )),
                None => Err(ApiError::invalid_field(
                    &format!("{at}[{j}]"),
                    format!("'{at}[{j}]' must be a token id (an integer from 0), got {t}"),
                )),
            })
            .collect()
    };
    let shape = || {
        format!(
            "'{field}' must be a string, an array of strings, an array of token ids, or an array of token-id arrays"
        )
    };
    match v {
        Value::String(s) => Ok((vec![Input::Text(s.clone())], true)),
        Value::Array(a) if a.is_empty() => {
            Err(ApiError::invalid_field(field, format!("'{field}' is empty: nothing to embed")))
        }
        Value::Array(a) if a.iter().all(Value::is_number) => Ok((vec![Input::Tokens(tokens(a, field)?)], true)),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, item) in a.iter().enumerate() {
                let at = format!("{field}[{i}]");
                out.push(match item {
                    Value::String(s) => Input::Text(s.clone()),
                    Value::Array(t) => Input::Tokens(tokens(t, &at)?),
                    _ => return Err(ApiError::invalid_field(&at, format!("{} (at {at})", shape()))),
                });
            }
            Ok((out, false))
        }
        _ => Err(ApiError::invalid_field(field, shape())),
    }
}

/// The request's inputs as token ids, checked (not empty, within the context); whether the
/// request gave one input rather than an array.
async fn tokenized(
    st: &Arc<AppState>,
    req: &EmbeddingsRequest,
) -> Result<(Vec<Vec<u32>>, bool, &'static str), ApiError> {
    let (value, field) = match (&req.input, &req.content) {
        (Some(v), _) => (v, "input"),
        (None, Some(v)) => (v, "content"),
        (None, None) => {
            return Err(ApiError::invalid_field(
                "input",
                "'input' is required: the text (or texts, or token ids) to embed",
            ))
        }
    };
    let (inputs, single) = parse_inputs(value, field, st.model.vocab_size())?;
    let model = st.model.clone();
    let ids = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| match input {
                Input::Tokens(t) => Ok(t),
                Input::Text(s) if s.is_empty() => Ok(Vec::new()),
                Input::Text(s) => model.tokenize(&s, true, true).map_err(|e| (i, e)),
            })
            .collect::<Result<Vec<Vec<u32>>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?;
    let ids = ids.map_err(|(i, e)| {
        ApiError::invalid_field(&at(field, i, single), format!("could not tokenize {}: {e:#}", at(field, i, single)))
    })?;
    let n_ctx = st.model.n_ctx();
    for (i, t) in ids.iter().enumerate() {
        let name = at(field, i, single);
        if t.is_empty() {
            return Err(ApiError::invalid_field(&name, format!("'{name}' is empty: nothing to embed")));
        }
        if t.len() > n_ctx {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid_field(
                    &name,
                    format!("'{name}' is {} tokens, longer than the context of {n_ctx} tokens", t.len()),
                )
            });
        }
    }
    Ok((ids, single, field))
}

/// `input` for a single input, `input[i]` in an array.
fn at(field: &str, i: usize, single: bool) -> String {
    if single {
        field.to_string()
    } else {
        format!("{field}[{i}]")
    }
}

/// Run the inputs through the embedding session (made on first use), on a blocking thread.
async fn embed(
    st: &Arc<AppState>,
    ids: Vec<Vec<u32>>,
    pooling: Pooling,
    normalize: i32,
) -> Result<Vec<Vec<Vec<f32>>>, ApiError> {
    let session = st.embeddings.session.clone();
    let model = st.model.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = session.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard =
                Some(model.embedder().map_err(|e| ApiError::unavailable(format!("cannot compute embeddings: {e:#}")))?);
        }
        let s = guard.as_mut().expect("made above");
        // The inputs were checked above: what fails here is the server's fault.
        s.embed(&ids, pooling, normalize).map_err(|e| ApiError::internal(format!("computing embeddings: {e:#}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// The pooling and normalization this request gets.
fn settings(st: &AppState, req: &EmbeddingsRequest) -> Result<(Pooling, i32), ApiError> {
    let pooling = st
        .embeddings
        .pooling
        .clone()
        .map_err(|e| ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "invalid_request_error", e))?;
    let normalize = req.embd_normalize.unwrap_or(st.embeddings.normalize);
    Ok((pooling, if pooling == Pooling::None { -1 } else { normalize }))
}

/// `POST /v1/embeddings` (OpenAI).
pub async fn v1_embeddings(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let (pooling, normalize) = settings(&st, &req)?;
    if pooling == Pooling::None {
        return Err(ApiError::bad_request(
            "the pooling is 'none' (one vector per token), which /v1/embeddings cannot return: \
             start the server with --pooling mean, cls or last, or use /embedding for the per-token vectors",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "encoding_format",
                format!("'encoding_format' must be float or base64, got '{}'", other.escape_debug()),
            ))
        }
    };
    let n_embd = st.model.n_embd();
    if let Some(d) = req.dimensions.filter(|d| *d != n_embd as i64) {
        return Err(ApiError::invalid_field(
            "dimensions",
            format!("'dimensions' can only be this model's width, {n_embd}, got {d}"),
        ));
    }
    let (ids, _, _) = tokenized(&st, &req).await?;
    let n_tokens: usize = ids.iter().map(Vec::len).sum();
    let vectors = embed(&st, ids, pooling, normalize).await?;
    super::routes::note_requested_model(&st, req.model.as_deref());
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            let v = v.swap_remove(0);
            let embedding = if base64 { json!(base64_f32(&v)) } else { json!(v) };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": st.model_id,
        "usage": { "prompt_tokens": n_tokens, "total_tokens": n_tokens },
    }))
    .into_response())
}

/// `POST /embedding` (llama.cpp's, and llamafile's before it).
pub async fn llama_embedding(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let (pooling, normalize) = settings(&st, &req)?;
    let (ids, single, _) = tokenized(&st, &req).await?;
    let vectors = embed(&st, ids, pooling, normalize).await?;
    super::routes::note_requested_model(&st, req.model.as_deref());
    if single {
        let mut rows = vectors.into_iter().next().expect("one input");
        let embedding = if pooling == Pooling::None { json!(rows) } else { json!(rows.swap_remove(0)) };
        return Ok(Json(json!({ "embedding": embedding })).into_response());
    }
    let list: Vec<Value> =
        vectors.into_iter().enumerate().map(|(i, rows)| json!({ "index": i, "embedding": rows })).collect();
    Ok(Json(Value::Array(list)).into_response())
}

/// The vector's little-endian f32 bytes in base64 (what OpenAI's `encoding_format: base64` gives).
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::encode(bytes)
}
