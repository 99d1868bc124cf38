//! The HTTP routes: the chat page, OpenAI's API, llama.cpp's, and the status endpoints.

use super::choices::{self, ChoiceEvent};
use super::error::{ApiError, ApiJson, BODY_LIMIT};
use super::generation::{finish_reason, stop_type, timings, usage, PromptCache};
use super::types::*;
use super::{assets, AppState};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::{GenerateOptions, GenerateRequest};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/health", get(health))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/models/{*id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/completion", post(llama_completion))
        .route("/infill", post(super::infill::infill))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/embeddings", post(super::embeddings::v1_embeddings))
        .route("/embeddings", post(super::embeddings::llama_embedding))
        .route("/embedding", post(super::embeddings::llama_embedding))
        // Prometheus metrics, API keys, the Responses and Messages APIs (their own files)
        .route("/metrics", get(super::metrics::handler))
        .route("/v1/responses", post(super::responses::create))
        .route("/responses", post(super::responses::create))
        .route("/v1/messages", post(super::messages::create))
        .route("/v1/messages/count_tokens", post(super::messages::count_tokens))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), super::auth::guard))
        .layer(middleware::from_fn_with_state(state.clone(), super::access::guard))
        .layer(middleware::from_fn_with_state(state.clone(), log_requests))
        .with_state(state)
}

async fn log_requests(State(st): St, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    if st.log {
        eprintln!("{method} {path} {} {:.1} ms", resp.status().as_u16(), t0.elapsed().as_secs_f64() * 1e3);
    }
    resp
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Everything the page needs is inline; nothing may be fetched from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
                ),
            ),
        ],
        assets::page(),
    )
        .into_response()
}

async fn health(State(st): St) -> Json<Value> {
    let busy = st.pool.info().iter().filter(|s| s.is_processing).count();
    Json(json!({
        "status": "ok",
        "slots_idle": st.pool.slots() - busy,
        "slots_processing": busy,
        "queued": st.pool.queued(),
    }))
}

async fn props(State(st): St) -> Json<Value> {
    let d = &st.defaults;
    // f32 settings as the decimal the user typed (0.8, not 0.800000011920929)
    let dec = |x: f32| -> Value { x.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null) };
    Json(json!({
        "model": st.model_id,
        "model_name": st.model.name(),
        "n_ctx": st.model.n_ctx(),
        "total_slots": st.pool.slots(),
        "chat_template": st.model.template_name(),
        "system_prompt": st.system_prompt.clone().unwrap_or_default(),
        // what the template uses when a conversation has no system message ("" none, null unknown)
        "template_system_prompt": super::model::template_default_system(|m| st.model.render_chat(m)),
        "default_generation_settings": {
            "temperature": dec(d.temperature),
            "top_k": d.top_k,
            "top_p": dec(d.top_p),
            "min_p": dec(d.min_p),
            "repeat_penalty": dec(d.repeat_penalty),
            "repeat_last_n": d.repeat_last_n,
            "max_tokens": st.default_max_tokens,
        },
    }))
}

async fn slots(State(st): St) -> Json<Value> {
    Json(json!(st.pool.info()))
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_id,
        "object": "model",
        "created": st.started,
        "owned_by": "llamafile",
        "meta": { "n_ctx": st.model.n_ctx(), "n_vocab": st.model.vocab_size() },
    })
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&st)] }))
}

async fn model_by_id(
    State(st): St,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == st.model_id {
        Ok(Json(model_object(&st)))
    } else {
        Err(ApiError::not_found(format!("no model '{}' here; this server has '{}'", id.escape_debug(), st.model_id)))
    }
}

/// A request's `model`: this server has one model and answers every request with it, whatever
/// the request names (OpenAI's SDKs require the field and scripts written for OpenAI name its
/// models); the response's `model` says which answered. Naming another model is reported once
/// on stderr, so that the substitution is visible to whoever runs the server.
pub(super) fn note_requested_model(st: &AppState, requested: Option<&str>) {
    let Some(m) = requested else { return };
    if m.is_empty() || m == st.model_id || st.other_model_noted.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let shown: String = m.chars().take(100).collect();
    eprintln!(
        "note: a request asked for model '{}'; this server has one model, '{}', and answers every request with it",
        shown.escape_debug(),
        st.model_id
    );
}

/// Run a CPU-bound step (template, tokenizer) on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("worker failed: {e}")))
}

/// Check the prompt against the context and settle how many tokens may be generated.
pub(super) fn generate_request(
    st: &AppState,
    prompt: Vec<u32>,
    param: &str,
    max_tokens: Option<usize>,
    s: Sampling,
) -> Result<GenerateRequest, ApiError> {
    let n_ctx = st.model.n_ctx();
    if prompt.is_empty() {
        return Err(ApiError::invalid_field(param, "the prompt is empty"));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::context_exceeded(param, prompt.len(), n_ctx));
    }
    let room = n_ctx - prompt.len();
    let max_tokens = max_tokens.or(st.default_max_tokens).unwrap_or(room).min(room);
    Ok(GenerateRequest {
        prompt,
        max_tokens,
        sampling: s.params,
        stop: s.stop,
        ignore_eos: s.ignore_eos,
        grammar: None,
    })
}

/// OpenAI's `max_tokens`: absent, or at least 1.
fn openai_max_tokens(v: Option<i64>, name: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid_field(name, format!("'{name}' must be at least 1, got {n}"))),
    }
}

/// The request's messages for the template: `tool` messages and assistant `tool_calls` are
/// taken with or without `tools` in the request (a client may send a conversation's calls
/// back without offering tools again).
fn convert_messages(messages: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_field("messages", "'messages' must hold at least one message"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::invalid_field(
                    &format!("messages[{i}].role"),
                    format!("unsupported role '{other}' in messages[{i}] (system, user, assistant and tool are)"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t,
            Some(MessageContent::Parts(parts)) => {
                let mut text = Vec::with_capacity(parts.len());
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push(t),
                        ("text", None) => {
                            return Err(ApiError::invalid_field(
                                &format!("messages[{i}].content[{j}].text"),
                                "a text part needs 'text'",
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError::invalid_field(
                                &format!("messages[{i}].content[{j}].type"),
                                format!("content parts of type '{kind}' are not supported (only 'text')"),
                            ))
                        }
                    }
                }
                text.join("\n")
            }
        };
        let tool_calls = match &m.tool_calls {
            Some(calls) if role == "assistant" && !calls.is_null() => Some(super::tools::check_calls(calls, i)?),
            _ => None,
        };
        let (tool_call_id, name) = if role == "tool" { (m.tool_call_id, m.name) } else { (None, None) };
        out.push(ChatMessage { role: role.to_string(), content, tool_calls, tool_call_id, name });
    }
    Ok(out)
}

fn sse_data(v: &Value) -> Event {
    sse_text(v.to_string())
}

fn sse_text(s: impl AsRef<str>) -> Event {
    Event::default().data(s.as_ref())
}

pub(super) fn sse_response<S>(events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}

/// Turn the generation's events into SSE events with `f` (which returns the events for one).
fn sse_from<E, F>(first: Vec<Event>, rx: tokio::sync::mpsc::Receiver<E>, mut f: F) -> Response
where
    E: Send + 'static,
    F: FnMut(E) -> Vec<Event> + Send + 'static,
{
    let rest = ReceiverStream::new(rx).flat_map(move |ev| stream::iter(f(ev).into_iter().map(Ok)));
    sse_response(stream::iter(first.into_iter().map(Ok)).chain(rest))
}

async fn chat_completions(State(st): St, ApiJson(req): ApiJson<ChatRequest>) -> Result<Response, ApiError> {
    req.check_unsupported()?;
    let stream = req.stream.unwrap_or(false);
    let format = super::tools::Format::of_template(&st.model.template_source());
    let trigger = super::tools::trigger_token(&*st.model, format);
    let tools =
        super::tools::plan(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls, format, trigger)?;
    let grammar = chat_grammar(tools.as_ref(), req.response_format.as_ref())?;
    let logprobs = super::logprobs::chat_request(req.logprobs, req.top_logprobs)?;
    let sampling = validate_sampling(req.sampling_fields(), req.n, &st.defaults)?;
    let n = sampling.n;
    let max_tokens = match req.max_completion_tokens {
        Some(v) => openai_max_tokens(Some(v), "max_completion_tokens")?,
        None => openai_max_tokens(req.max_tokens, "max_tokens")?,
    };
    let (messages, tool_list) = super::tools::for_template(format, tools.as_ref(), convert_messages(req.messages)?);
    let model = st.model.clone();
    let prompt = blocking(move || super::model::chat_prompt_with_tools(&*model, &messages, tool_list.as_ref()))
        .await?
        .map_err(|e| {
            ApiError::invalid_field("messages", format!("the chat template could not render these messages: {e:#}"))
        })?;
    let gen = GenerateRequest { grammar, ..generate_request(&st, prompt, "messages", max_tokens, sampling)? };
    let rx = choices::start(&st, gen, PromptCache::from_request(req.cache_prompt), GenerateOptions { n, logprobs });
    note_requested_model(&st, req.model.as_deref());
    let reply = ChatReply {
        id: format!("chatcmpl-{:016x}", random_u64()),
        created: unix_time(),
        model_name: st.model_id.clone(),
        model: st.model.clone(),
        logprobs,
    };
    if !stream {
        let (choices, total) = choices::collect(rx, n).await?;
        return Ok(Json(reply.completion(&choices, &total, tools.as_ref())).into_response());
    }
    let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let first = (0..n)
        .map(|i| sse_data(&reply.chunk(i, json!({"role": "assistant", "content": ""}), Value::Null, None)))
        .collect();
    let mut chunks = ChatStream {
        reply,
        n,
        include_usage,
        pending: vec![Vec::new(); n],
        calls: tools.filter(|t| t.reads_calls()).map(|t| (t, (0..n).map(|_| Default::default()).collect())),
    };
    Ok(sse_from(first, rx, move |ev| chunks.event(ev)))
}

/// The grammar a chat reply is held to: the tool calls' or the `response_format`'s, not both.
fn chat_grammar(
    tools: Option<&super::tools::ToolPlan>,
    response_format: Option<&Value>,
) -> Result<Option<llamafile_engine::grammar::Grammar>, ApiError> {
    let format_grammar = super::structured::response_format(response_format)?;
    match (tools.and_then(|t| t.grammar.clone()), format_grammar) {
        (Some(_), Some(_)) => Err(ApiError::invalid_field(
            "response_format",
            "'response_format' cannot be combined with tools the model may call; send tool_choice 'none' for a structured text answer",
        )),
        (calls, text) => Ok(calls.or(text)),
    }
}

/// What every object of one chat completion shares: its id, time and model, and whether (with
/// how many alternatives) its tokens' log-probabilities are asked for.
struct ChatReply {
    id: String,
    created: u64,
    model_name: String,
    model: Arc<dyn super::Model>,
    logprobs: Option<usize>,
}

impl ChatReply {
    /// A choice's `logprobs` field: its tokens' when asked for, else null.
    fn logprobs_json(&self, tokens: &[llamafile_engine::logprobs::TokenLogprob]) -> Value {
        match self.logprobs {
            Some(_) => json!({ "content": super::logprobs::chat_content(&*self.model, tokens) }),
            None => Value::Null,
        }
    }

    /// The `chat.completion` object of finished choices (each a message, or tool calls when
    /// the reply is read as calls).
    fn completion(
        &self,
        choices: &[choices::Choice],
        total: &llamafile_engine::GenerationStats,
        tools: Option<&super::tools::ToolPlan>,
    ) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let stop = c.stats.as_ref().map_or(total.stop, |s| s.stop);
                let (message, finish) = match tools.and_then(|t| t.parse(&c.text)) {
                    Some((before, calls)) => (
                        json!({ "role": "assistant", "content": if before.is_empty() { Value::Null } else { json!(before) }, "tool_calls": calls }),
                        "tool_calls",
                    ),
                    None => (json!({ "role": "assistant", "content": c.text }), finish_reason(stop)),
                };
                json!({ "index": i, "message": message, "logprobs": self.logprobs_json(&c.tokens), "finish_reason": finish })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage(total),
            "timings": timings(total),
        })
    }

    /// One `chat.completion.chunk` of choice `index`.
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": null,
            "choices": [{ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

/// A streamed chat completion: the generation's events as chunks.
struct ChatStream {
    reply: ChatReply,
    n: usize,
    include_usage: bool,
    /// Each choice's tokens not yet sent: they go with the text they begin.
    pending: Vec<Vec<llamafile_engine::logprobs::TokenLogprob>>,
    /// With tools, each choice's text goes through a reader of the model's call format.
    calls: Option<(super::tools::ToolPlan, Vec<super::tools::stream::ToolStream>)>,
}

impl ChatStream {
    fn event(&mut self, ev: ChoiceEvent) -> Vec<Event> {
        match ev {
            ChoiceEvent::Token(i, t) => {
                if let Some(p) = self.pending.get_mut(i) {
                    p.push(t);
                }
                vec![]
            }
            ChoiceEvent::Text(i, t) => self.text(i.min(self.n - 1), &t),
            // the last choice ends with the generation (below), with its timings
            ChoiceEvent::ChoiceDone(i, s) if i + 1 < self.n => {
                let (mut out, last) = self.end(i, &s);
                out.push(sse_data(&last));
                out
            }
            ChoiceEvent::ChoiceDone(..) => vec![],
            ChoiceEvent::Done(stats) => {
                let (mut out, mut last) = self.end(self.n - 1, &stats);
                last["timings"] = timings(&stats);
                out.push(sse_text(last.to_string()));
                if self.include_usage {
                    let mut u = last.clone();
                    u["choices"] = json!([]);
                    u["usage"] = usage(&stats);
                    u.as_object_mut().map(|o| o.remove("timings"));
                    out.push(sse_text(u.to_string()));
                }
                out.push(sse_text("[DONE]"));
                out
            }
            ChoiceEvent::Failed(e) => vec![sse_text(e.body().to_string())],
        }
    }

    /// Choice `i`'s next text: one chunk, or what the tool-call reader lets out of it; the
    /// pending tokens go with the first piece let out.
    fn text(&mut self, i: usize, t: &str) -> Vec<Event> {
        let deltas = match self.calls.as_mut() {
            Some((plan, readers)) => readers[i].push(plan, t),
            None => vec![json!({ "content": t })],
        };
        let mut out = Vec::with_capacity(deltas.len());
        for d in deltas {
            let lp = if out.is_empty() {
                self.reply.logprobs_json(&std::mem::take(&mut self.pending[i]))
            } else {
                Value::Null
            };
            out.push(sse_data(&self.reply.chunk(i, d, lp, None)));
        }
        out
    }

    /// A choice's end: what its reader still holds, then its chunk with the finish reason.
    fn end(&mut self, i: usize, stats: &llamafile_engine::GenerationStats) -> (Vec<Event>, Value) {
        let mut out = Vec::new();
        let mut finish = finish_reason(stats.stop);
        if let Some((plan, readers)) = self.calls.as_mut() {
            out.extend(
                readers[i].finish(plan).into_iter().map(|d| sse_data(&self.reply.chunk(i, d, Value::Null, None))),
            );
            if readers[i].has_calls() && finish == "stop" {
                finish = "tool_calls";
            }
        }
        let last = self.reply.chunk(
            i,
            json!({}),
            self.reply.logprobs_json(&std::mem::take(&mut self.pending[i])),
            Some(finish),
        );
        (out, last)
    }
}

/// Tokenize a completion prompt: text gets BOS as the model wants and special tokens parsed
/// (as llama.cpp does); token ids are checked against the vocabulary.
pub(super) async fn completion_prompt(st: &AppState, prompt: Prompt) -> Result<(Vec<u32>, Option<String>), ApiError> {
    match prompt.single()? {
        PromptInput::Text(text) => {
            let model = st.model.clone();
            let t = text.clone();
            let ids = blocking(move || model.tokenize(&t, true, true))
                .await?
                .map_err(|e| ApiError::invalid_field("prompt", format!("could not tokenize the prompt: {e:#}")))?;
            Ok((ids, Some(text)))
        }
        PromptInput::Tokens(ids) => {
            check_ids(st, ids.iter().map(|&i| i as i64), "prompt")?;
            Ok((ids, None))
        }
    }
}

fn check_ids(st: &AppState, ids: impl Iterator<Item = i64>, param: &str) -> Result<(), ApiError> {
    let n_vocab = st.model.vocab_size() as i64;
    for (i, id) in ids.enumerate() {
        if id < 0 || id >= n_vocab {
            return Err(ApiError::invalid_field(
                param,
                format!("token id {id} at position {i} is outside the vocabulary (0..{n_vocab})"),
            ));
        }
    }
    Ok(())
}

async fn completions(State(st): St, ApiJson(req): ApiJson<CompletionRequest>) -> Result<Response, ApiError> {
    req.unhonoured.check()?;
    let grammar = super::structured::response_format(req.response_format.as_ref())?;
    let logprobs = super::logprobs::completion_request(req.logprobs)?;
    let echo = req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid_field(
            "echo",
            "'echo' with 'logprobs' (the prompt's log-probabilities) is not supported",
        ));
    }
    let sampling = validate_sampling(req.sampling_fields(), req.n, &st.defaults)?;
    let n = sampling.n;
    let max_tokens = openai_max_tokens(req.max_tokens, "max_tokens")?;
    let (prompt, prompt_text) = match req.suffix.as_deref() {
        Some(suffix) => super::infill::completion_prompt(&st, req.prompt, suffix, max_tokens).await?,
        None => completion_prompt(&st, req.prompt).await?,
    };
    let echo = if echo { prompt_text.unwrap_or_else(|| st.model.detokenize(&prompt)) } else { String::new() };
    let gen = GenerateRequest { grammar, ..generate_request(&st, prompt, "prompt", max_tokens, sampling)? };
    let rx = choices::start(&st, gen, PromptCache::from_request(req.cache_prompt), GenerateOptions { n, logprobs });
    note_requested_model(&st, req.model.as_deref());
    let reply = CompletionReply {
        id: format!("cmpl-{:016x}", random_u64()),
        created: unix_time(),
        model_name: st.model_id.clone(),
        model: st.model.clone(),
        logprobs,
        echo,
    };
    if !req.stream.unwrap_or(false) {
        let (choices, total) = choices::collect(rx, n).await?;
        return Ok(Json(reply.completion(&choices, &total)).into_response());
    }
    let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let first = if reply.echo.is_empty() {
        vec![]
    } else {
        (0..n).map(|i| sse_text(reply.chunk(i, &reply.echo, Value::Null, None).to_string())).collect()
    };
    let mut chunks =
        CompletionStream { reply, n, include_usage, text: vec![String::new(); n], pending: vec![Vec::new(); n] };
    Ok(sse_from(first, rx, move |ev| chunks.event(ev)))
}

/// What every object of one text completion shares: its id, time and model, whether its
/// tokens' log-probabilities are asked for, and the prompt it echoes (empty when none).
struct CompletionReply {
    id: String,
    created: u64,
    model_name: String,
    model: Arc<dyn super::Model>,
    logprobs: Option<usize>,
    echo: String,
}

impl CompletionReply {
    /// A choice's `logprobs` field for `tokens` ending its `text` so far: the legacy object when
    /// asked for, else null.
    fn logprobs_json(&self, tokens: &[llamafile_engine::logprobs::TokenLogprob], text: &str) -> Value {
        match self.logprobs {
            Some(_) => super::logprobs::legacy(&*self.model, tokens, text, &self.echo),
            None => Value::Null,
        }
    }

    /// The `text_completion` object of finished choices.
    fn completion(&self, choices: &[choices::Choice], total: &llamafile_engine::GenerationStats) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let stop = c.stats.as_ref().map_or(total.stop, |s| s.stop);
                json!({ "index": i, "text": self.echo.clone() + &c.text, "logprobs": self.logprobs_json(&c.tokens, &c.text), "finish_reason": finish_reason(stop) })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage(total),
            "timings": timings(total),
        })
    }

    /// One streamed `text_completion` object of choice `index`.
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": null,
            "choices": [{ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

/// A streamed text completion: the generation's events as chunks.
struct CompletionStream {
    reply: CompletionReply,
    n: usize,
    include_usage: bool,
    /// Each choice's text so far (the log-probabilities' offsets count from its start).
    text: Vec<String>,
    /// Each choice's tokens not yet sent: they go with the text they begin.
    pending: Vec<Vec<llamafile_engine::logprobs::TokenLogprob>>,
}

impl CompletionStream {
    fn event(&mut self, ev: ChoiceEvent) -> Vec<Event> {
        let n = self.n;
        match ev {
            ChoiceEvent::Token(i, t) => {
                if let Some(p) = self.pending.get_mut(i) {
                    p.push(t);
                }
                vec![]
            }
            ChoiceEvent::Text(i, t) => {
                let k = i.min(n - 1);
                self.text[k].push_str(&t);
                let lp = self.take_logprobs(k);
                vec![sse_text(self.reply.chunk(i, &t, lp, None).to_string())]
            }
            ChoiceEvent::ChoiceDone(i, s) if i + 1 < n => {
                let lp = self.take_logprobs(i);
                vec![sse_text(self.reply.chunk(i, "", lp, Some(finish_reason(s.stop))).to_string())]
            }
            ChoiceEvent::ChoiceDone(..) => vec![],
            ChoiceEvent::Done(stats) => {
                let lp = self.take_logprobs(n - 1);
                let mut last = self.reply.chunk(n - 1, "", lp, Some(finish_reason(stats.stop)));
                last["timings"] = timings(&stats);
                let mut out = vec![sse_text(last.to_string())];
                if self.include_usage {
                    let mut u = self.reply.chunk(0, "", Value::Null, None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&stats);
                    out.push(sse_text(u.to_string()));
                }
                out.push(sse_text("[DONE]"));
                out
            }
            ChoiceEvent::Failed(e) => vec![sse_text(e.body().to_string())],
        }
    }

    /// Choice `i`'s pending tokens' log-probabilities (sent: no longer pending).
    fn take_logprobs(&mut self, i: usize) -> Value {
        self.reply.logprobs_json(&std::mem::take(&mut self.pending[i]), &self.text[i])
    }
}

/// llama.cpp's `/completion`: `n_predict` (-1 = no limit), `content`/`stop` fields, and a
/// stream of `data: {"content": ..., "stop": false}` events ending with `"stop": true`.
async fn llama_completion(State(st): St, ApiJson(req): ApiJson<LlamaCompletionRequest>) -> Result<Response, ApiError> {
    let (prompt, _) = completion_prompt(&st, req.prompt.clone()).await?;
    llama_completion_of(st, req, prompt).await
}

/// llama.cpp's `n_predict`: -1 (or absent) = no limit.
pub(super) fn n_predict(v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as usize)),
        Some(n) => {
            Err(ApiError::invalid_field("n_predict", format!("'n_predict' must be -1 (no limit) or more, got {n}")))
        }
    }
}

/// `/completion` for a prompt already made into tokens (`req.prompt` is not read; `/infill`
/// builds its own).
pub(super) async fn llama_completion_of(
    st: Arc<AppState>,
    req: LlamaCompletionRequest,
    prompt: Vec<u32>,
) -> Result<Response, ApiError> {
    req.unhonoured.check()?;
    let grammar = super::structured::llama_fields(req.grammar.as_ref(), req.json_schema.as_ref())?;
    let logprobs = super::logprobs::llama_request(req.n_probs)?;
    let sampling = validate_sampling(req.sampling_fields(), None, &st.defaults)?;
    let max_tokens = n_predict(req.n_predict)?;
    let gen = GenerateRequest { grammar, ..generate_request(&st, prompt, "prompt", max_tokens, sampling)? };
    let rx = choices::start(&st, gen, PromptCache::from_request(req.cache_prompt), GenerateOptions { n: 1, logprobs });
    note_requested_model(&st, req.model.as_deref());
    let model_name = st.model_id.clone();
    let model = st.model.clone();
    let with_probs = move |mut v: Value, tokens: &[llamafile_engine::logprobs::TokenLogprob]| {
        if logprobs.is_some() {
            v["completion_probabilities"] = super::logprobs::llama(&*model, tokens);
        }
        v
    };
    let final_fields = move |content: String, s: &llamafile_engine::GenerationStats| {
        json!({
            "content": content,
            "stop": true,
            "model": model_name,
            "tokens_predicted": s.generated_tokens,
            "tokens_evaluated": s.prompt_tokens,
            "tokens_cached": s.cached_tokens,
            "stop_type": stop_type(s.stop),
            "stopped_eos": s.stop == llamafile_engine::StopReason::EndToken,
            "stopped_limit": matches!(s.stop, llamafile_engine::StopReason::MaxTokens | llamafile_engine::StopReason::ContextFull),
            "stopped_word": s.stop == llamafile_engine::StopReason::StopString,
            "truncated": false,
            "timings": timings(s),
        })
    };
    if !req.stream.unwrap_or(false) {
        let (mut choices, stats) = choices::collect(rx, 1).await?;
        let c = choices.pop().unwrap_or_default();
        return Ok(Json(with_probs(final_fields(c.text, &stats), &c.tokens)).into_response());
    }
    let mut pending = Vec::new();
    Ok(sse_from(vec![], rx, move |ev| match ev {
        ChoiceEvent::Token(_, t) => {
            pending.push(t);
            vec![]
        }
        ChoiceEvent::Text(_, t) => {
            let v = with_probs(json!({ "content": t, "stop": false }), &std::mem::take(&mut pending));
            vec![sse_text(v.to_string())]
        }
        ChoiceEvent::ChoiceDone(..) => vec![],
        ChoiceEvent::Done(stats) => {
            let v = final_fields(String::new(), &stats);
            let v = if pending.is_empty() { v } else { with_probs(v, &std::mem::take(&mut pending)) };
            vec![sse_text(v.to_string())]
        }
        ChoiceEvent::Failed(e) => vec![sse_text(e.body().to_string())],
    }))
}

async fn tokenize(State(st): St, ApiJson(req): ApiJson<TokenizeRequest>) -> Result<Json<Value>, ApiError> {
    let model = st.model.clone();
    let (add, parse) = (req.add_special, req.parse_special);
    let content = req.content;
    let ids = blocking(move || model.tokenize(&content, add, parse))
        .await?
        .map_err(|e| ApiError::invalid_field("content", format!("could not tokenize: {e:#}")))?;
    if !req.with_pieces {
        return Ok(Json(json!({ "tokens": ids })));
    }
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = st.model.token_bytes(id);
            // A piece that is not valid UTF-8 on its own (part of a character) is given as bytes.
            match String::from_utf8(bytes) {
                Ok(s) => json!({ "id": id, "piece": s }),
                Err(e) => json!({ "id": id, "piece": e.into_bytes() }),
            }
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

async fn detokenize(State(st): St, ApiJson(req): ApiJson<DetokenizeRequest>) -> Result<Json<Value>, ApiError> {
    check_ids(&st, req.tokens.iter().copied(), "tokens")?;
    let ids: Vec<u32> = req.tokens.iter().map(|&i| i as u32).collect();
    let model = st.model.clone();
    let content = blocking(move || model.detokenize(&ids)).await?;
    Ok(Json(json!({ "content": content })))
}
