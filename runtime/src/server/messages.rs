//! `POST /v1/messages`: Anthropic's Messages API. `system`, `messages` (content as a string or
//! `text`, `tool_use` and `tool_result` blocks) and the tools become a chat turn
//! (`server::turn`); the reply comes back as a `message` with `text` and `tool_use` blocks, or
//! as the API's SSE events (`message_start` ... `content_block_delta` ... `message_stop`).
//! Errors on this route are Anthropic's (`{"type": "error", "error": {"type", "message"}}`),
//! which is what its clients read. `POST /v1/messages/count_tokens` counts a request's prompt.

use super::error::{ApiError, ApiJson};
use super::generation::{self, GenEvent, PromptCache};
use super::routes::{blocking, sse_response};
use super::turn::{self, TurnRequest};
use super::types::{random_u64, validate_sampling, OneOrMany, SamplingFields};
use super::AppState;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use llamafile_engine::sampler::SamplingOptions;
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::{GenerationStats, StopReason};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;

/// Whether `path` is answered with Anthropic's errors.
pub fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Anthropic's error `type` for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

fn error_body(e: &ApiError) -> Value {
    json!({ "type": "error", "error": { "type": error_type(e.status), "message": e.message } })
}

/// `e` as Anthropic's error response.
pub fn error_response(e: &ApiError) -> Response {
    (e.status, Json(error_body(e))).into_response()
}

#[derive(Deserialize, Debug)]
#[serde(untagged, expecting = "a string or an array of content blocks")]
pub enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Deserialize, Debug)]
pub struct InMessage {
    pub role: String,
    pub content: Content,
}

#[derive(Deserialize, Debug)]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    pub system: Option<Content>,
    pub max_tokens: Option<i64>,
    pub stop_sequences: Option<Vec<String>>,
    pub stream: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingOptions,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// llama.cpp's: `false` evaluates the whole prompt instead of reusing the slot's cache.
    pub cache_prompt: Option<bool>,
}

/// The text of `text` blocks (or a string); `what` names the field in errors.
fn text_of(content: &Content, what: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(t) => Ok(t.clone()),
        Content::Blocks(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push(t.to_string()),
                    (kind, _) => {
                        return Err(ApiError::invalid_field(
                            &format!("{what}[{j}]"),
                            format!(
                                "{what}[{j}]: only text blocks are supported here, got {}",
                                kind.map_or("no type".into(), |k| format!("'{}'", k.escape_debug()))
                            ),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
    }
}

/// The conversation as chat messages: `text` blocks joined, an assistant's `tool_use` blocks as
/// its calls, a user's `tool_result` blocks as `tool` messages (before the user's text). Earlier
/// `thinking` blocks are dropped: they are the model's own notes, which templates leave out.
pub fn chat_messages(system: Option<&Content>, messages: &[InMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_field("messages", "'messages' must hold at least one message"));
    }
    let mut out = Vec::new();
    if let Some(s) = system {
        let s = text_of(s, "system")?;
        if !s.is_empty() {
            out.push(ChatMessage { role: "system".into(), content: s, ..Default::default() });
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        if m.role != "user" && m.role != "assistant" {
            return Err(ApiError::invalid_field(
                &format!("{at}.role"),
                format!("{at}: role '{}' is not user or assistant", m.role.escape_debug()),
            ));
        }
        let blocks = match &m.content {
            Content::Text(t) => {
                out.push(ChatMessage { role: m.role.clone(), content: t.clone(), ..Default::default() });
                continue;
            }
            Content::Blocks(b) => b,
        };
        let mut text = Vec::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let here = format!("{at}.content[{j}]");
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                "text" => text.push(
                    b.get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| ApiError::invalid_field(&here, format!("{here}: a text block needs 'text'")))?
                        .to_string(),
                ),
                "tool_use" if m.role == "assistant" => {
                    let name = b.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid_field(&here, format!("{here}: a tool_use block needs 'name'"))
                    })?;
                    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                    calls.push(json!({ "id": id, "function": { "name": name, "arguments": b.get("input").cloned().unwrap_or(json!({})) } }));
                }
                "tool_result" if m.role == "user" => {
                    let content = match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => {
                            let c: Content = serde_json::from_value(v.clone()).map_err(|_| {
                                ApiError::invalid_field(
                                    &here,
                                    format!("{here}: 'content' must be a string or text blocks"),
                                )
                            })?;
                            text_of(&c, &format!("{here}.content"))?
                        }
                    };
                    let id = b.get("tool_use_id").and_then(Value::as_str).map(str::to_string);
                    out.push(ChatMessage { role: "tool".into(), content, tool_call_id: id, ..Default::default() });
                }
                "thinking" | "redacted_thinking" if m.role == "assistant" => {}
                other => {
                    return Err(ApiError::invalid_field(
                        &here,
                        format!(
                            "{here}: blocks of type '{}' are not supported in {} messages",
                            other.escape_debug(),
                            m.role
                        ),
                    ))
                }
            }
        }
        let content = text.join("\n");
        let tool_calls =
            if calls.is_empty() { None } else { Some(super::tools::check_calls(&Value::Array(calls), i)?) };
        if !content.is_empty() || m.role == "assistant" || out.last().is_none_or(|l| l.role != "tool") {
            out.push(ChatMessage { role: m.role.clone(), content, tool_calls, ..Default::default() });
        }
    }
    Ok(out)
}

/// The chat API's `tools`, `tool_choice` and `parallel_tool_calls`.
type ChatTools = (Option<Value>, Option<Value>, Option<bool>);

/// Anthropic's tools (`{"name", "description", "input_schema"}`) and `tool_choice` in the chat
/// API's shape, and whether parallel calls are allowed.
fn chat_tools(tools: Option<&Value>, choice: Option<&Value>) -> Result<ChatTools, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                if let Some(kind) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                    return Err(ApiError::invalid_field(
                        &format!("tools[{i}].type"),
                        format!("tools[{i}]: server tools ('{}') are not supported; give name, description and input_schema", kind.escape_debug()),
                    ));
                }
                let mut f = serde_json::Map::new();
                f.insert("name".into(), t.get("name").cloned().unwrap_or(Value::Null));
                if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                    f.insert("description".into(), d.clone());
                }
                f.insert("parameters".into(), t.get("input_schema").cloned().unwrap_or(json!({ "type": "object" })));
                out.push(json!({ "type": "function", "function": f }));
            }
            Some(Value::Array(out))
        }
        Some(_) => return Err(ApiError::invalid_field("tools", "'tools' must be an array")),
    };
    let Some(c) = choice.filter(|c| !c.is_null()) else { return Ok((tools, None, None)) };
    let parallel = c.get("disable_parallel_tool_use").and_then(Value::as_bool).map(|d| !d);
    let choice = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = c.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_field("tool_choice.name", "tool_choice of type 'tool' needs 'name'")
            })?;
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(ApiError::invalid_field("tool_choice.type", "tool_choice.type must be auto, any, tool or none"))
        }
    };
    Ok((tools, Some(choice), parallel))
}

/// `stop_reason` and `stop_sequence`.
fn stop_of(s: &GenerationStats, stops: &[String], tool_use: bool) -> (&'static str, Value) {
    if tool_use {
        return ("tool_use", Value::Null);
    }
    match s.stop {
        StopReason::MaxTokens | StopReason::ContextFull => ("max_tokens", Value::Null),
        StopReason::StopString => {
            ("stop_sequence", s.stop_index.and_then(|i| stops.get(i)).map_or(Value::Null, |t| json!(t)))
        }
        StopReason::EndToken | StopReason::Cancelled => ("end_turn", Value::Null),
    }
}

/// The reply's content blocks: its text (if any, or if there is no call), then `tool_use` blocks.
fn content_blocks(text: &str, calls: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        out.push(json!({ "type": "text", "text": text }));
    }
    for c in calls {
        let f = &c["function"];
        let input: Value = f["arguments"].as_str().and_then(|a| serde_json::from_str(a).ok()).unwrap_or(json!({}));
        let id = c["id"].as_str().unwrap_or("").trim_start_matches("call_");
        out.push(json!({ "type": "tool_use", "id": format!("toolu_{id}"), "name": f["name"], "input": input }));
    }
    out
}

/// What the request settles before it is queued.
struct Prepared {
    turn: TurnRequest,
    stops: Vec<String>,
    /// Whether the reply may hold tool calls.
    calls: bool,
}

fn prepare(st: &AppState, req: MessagesRequest) -> Result<Prepared, ApiError> {
    let max_tokens = match req.max_tokens {
        None => return Err(ApiError::invalid_field("max_tokens", "'max_tokens' is required")),
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_field("max_tokens", format!("'max_tokens' must be at least 1, got {n}")))
        }
    };
    let (tools, choice, parallel) = chat_tools(req.tools.as_ref(), req.tool_choice.as_ref())?;
    let no_calls = choice.as_ref().and_then(Value::as_str) == Some("none");
    // calls are read from the whole reply; a stream that may hold them is sent once it is read
    let plan = super::tools::plan_for(&*st.model, tools.as_ref(), choice.as_ref(), parallel).map_err(|e| {
        // errors name the fields as this API spells them (`tools[0].input_schema`)
        let param =
            e.param.as_deref().map(|p| p.replace(".function.parameters", ".input_schema").replace(".function.", "."));
        ApiError { param, ..e }
    })?;
    let calls = plan.is_some() && !no_calls;
    let fields =
        SamplingFields { sampling: req.sampling, stop: req.stop_sequences.map(OneOrMany::Many), ignore_eos: None };
    let sampling = validate_sampling(fields, None, &st.defaults)?;
    // the list the engine got (empty strings dropped): `stop_index` counts in it
    let stops = sampling.stop.clone();
    let messages = chat_messages(req.system.as_ref(), &req.messages)?;
    let cache = PromptCache::from_request(req.cache_prompt);
    Ok(Prepared {
        turn: TurnRequest {
            messages,
            tools: plan,
            grammar: None,
            max_tokens: Some(max_tokens),
            sampling,
            model: req.model,
            param: "messages",
            cache,
        },
        stops,
        calls,
    })
}

/// The body, parsed with every failure as Anthropic's error.
async fn body<T: serde::de::DeserializeOwned>(st: &Arc<AppState>, req: Request) -> Result<T, Response> {
    ApiJson::<T>::from_request(req, st).await.map(|j| j.0).map_err(|e| error_response(&e))
}

pub async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let req: MessagesRequest = match body(&st, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match run(st, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn run(st: Arc<AppState>, req: MessagesRequest) -> Result<Response, ApiError> {
    let stream = req.stream.unwrap_or(false);
    let Prepared { turn: tr, stops, calls } = prepare(&st, req)?;
    let t = turn::start(&st, tr).await?;
    let id = format!("msg_{:016x}{:016x}", random_u64(), random_u64());
    let model = st.model_id.clone();
    let message = move |content: Vec<Value>, stop: Option<(&str, Value)>, input: usize, output: usize| {
        let (reason, seq) = stop.map_or((Value::Null, Value::Null), |(r, s)| (json!(r), s));
        json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": seq,
            "usage": { "input_tokens": input, "output_tokens": output },
        })
    };

    if !stream {
        let (text, stats) = generation::collect(t.rx).await?;
        let (text, calls) = turn::split_calls(t.tools.as_ref(), text);
        let stop = stop_of(&stats, &stops, !calls.is_empty());
        return Ok(Json(message(
            content_blocks(&text, &calls),
            Some(stop),
            stats.prompt_tokens,
            stats.generated_tokens,
        ))
        .into_response());
    }

    let first = vec![
        event("message_start", json!({ "message": message(vec![], None, t.prompt_tokens, 0) })),
        event("ping", json!({})),
    ];
    let end = move |stats: &GenerationStats, tool_use: bool| {
        let (reason, seq) = stop_of(stats, &stops, tool_use);
        vec![
            event(
                "message_delta",
                json!({ "delta": { "stop_reason": reason, "stop_sequence": seq }, "usage": { "input_tokens": stats.prompt_tokens, "output_tokens": stats.generated_tokens } }),
            ),
            event("message_stop", json!({})),
        ]
    };
    if calls {
        let tools = t.tools;
        let rest = stream::once(async move {
            let events = match generation::collect(t.rx).await {
                Ok((text, stats)) => {
                    let (text, calls) = turn::split_calls(tools.as_ref(), text);
                    let mut out = Vec::new();
                    for (i, block) in content_blocks(&text, &calls).into_iter().enumerate() {
                        out.extend(block_events(i, block));
                    }
                    out.extend(end(&stats, !calls.is_empty()));
                    out
                }
                Err(e) => vec![event("error", error_body(&e))],
            };
            stream::iter(events.into_iter().map(Ok))
        })
        .flatten();
        return Ok(sse_response(stream::iter(first.into_iter().map(Ok)).chain(rest)));
    }
    let mut first = first;
    first.push(event("content_block_start", json!({ "index": 0, "content_block": { "type": "text", "text": "" } })));
    let rest = ReceiverStream::new(t.rx).flat_map(move |e| {
        let out = match e {
            GenEvent::Text(piece) => vec![event(
                "content_block_delta",
                json!({ "index": 0, "delta": { "type": "text_delta", "text": piece } }),
            )],
            GenEvent::Done(stats) => {
                let mut out = vec![event("content_block_stop", json!({ "index": 0 }))];
                out.extend(end(&stats, false));
                out
            }
            GenEvent::Failed(e) => vec![event("error", error_body(&e))],
        };
        stream::iter(out.into_iter().map(Ok))
    });
    Ok(sse_response(stream::iter(first.into_iter().map(Ok)).chain(rest)))
}

fn event(kind: &str, mut payload: Value) -> Event {
    payload["type"] = json!(kind);
    Event::default().event(kind).data(payload.to_string())
}

/// The events of one finished content block.
fn block_events(index: usize, block: Value) -> Vec<Event> {
    let (start, delta) = if block["type"] == "text" {
        (json!({ "type": "text", "text": "" }), json!({ "type": "text_delta", "text": block["text"] }))
    } else {
        let mut start = block.clone();
        start["input"] = json!({});
        (start, json!({ "type": "input_json_delta", "partial_json": block["input"].to_string() }))
    };
    vec![
        event("content_block_start", json!({ "index": index, "content_block": start })),
        event("content_block_delta", json!({ "index": index, "delta": delta })),
        event("content_block_stop", json!({ "index": index })),
    ]
}

#[derive(Deserialize, Debug)]
struct CountRequest {
    messages: Vec<InMessage>,
    system: Option<Content>,
    tools: Option<Value>,
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` for the prompt the request would make.
pub async fn count_tokens(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let req: CountRequest = match body(&st, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let counted = async {
        let (tools, _, _) = chat_tools(req.tools.as_ref(), None)?;
        let plan = super::tools::plan_for(&*st.model, tools.as_ref(), None, None)?;
        let messages = chat_messages(req.system.as_ref(), &req.messages)?;
        let model = st.model.clone();
        let list = plan.map(|p| p.tools);
        blocking(move || super::model::chat_prompt_with_tools(&*model, &messages, list.as_ref())).await?.map_err(|e| {
            ApiError::invalid_field("messages", format!("the chat template could not render this conversation: {e:#}"))
        })
    };
    match counted.await {
        Ok(ids) => Json(json!({ "input_tokens": ids.len() })).into_response(),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::parse_json;
    use super::*;

    fn msgs(v: Value) -> Vec<InMessage> {
        let r: MessagesRequest = parse_json(json!({ "messages": v, "max_tokens": 1 }).to_string().as_bytes()).unwrap();
        r.messages
    }

    #[test]
    fn blocks_become_chat_messages() {
        let system =
            Content::Blocks(vec![json!({"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}})]);
        let m = chat_messages(
            Some(&system),
            &msgs(json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}]},
                {"role": "assistant", "content": "It is sunny."},
            ])),
        )
        .unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
        // the calls go to the template as the chat route's `tool_calls` (the template writes them)
        assert_eq!(m[2].content, "Let me look.");
        let calls = m[2].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0]["id"], "toolu_1");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(m[3].content, "sunny");
        assert_eq!(m[3].tool_call_id.as_deref(), Some("toolu_1"));
        for (bad, param) in [
            (json!([{"role": "system", "content": "x"}]), "messages[0].role"),
            (json!([{"role": "user", "content": [{"type": "image", "source": {}}]}]), "messages[0].content[0]"),
            (json!([{"role": "user", "content": [{"type": "tool_use", "name": "f"}]}]), "messages[0].content[0]"),
            (json!([]), "messages"),
        ] {
            let e = chat_messages(None, &msgs(bad.clone())).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn tools_choices_and_stop_reasons() {
        let (tools, choice, parallel) = chat_tools(
            Some(&json!([{"name": "f", "description": "d", "input_schema": {"type": "object"}}])),
            Some(&json!({"type": "any", "disable_parallel_tool_use": true})),
        )
        .unwrap();
        assert_eq!(
            tools.unwrap(),
            json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}])
        );
        assert_eq!((choice.unwrap(), parallel), (json!("required"), Some(false)));
        assert!(chat_tools(Some(&json!([{"type": "web_search_20250305", "name": "web_search"}])), None).is_err());
        let s = |stop, stop_index| GenerationStats {
            prompt_tokens: 1,
            cached_tokens: 0,
            generated_tokens: 1,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            stop,
            decode_calls: 1,
            stop_index,
        };
        let stops = vec!["A".to_string(), "B".to_string()];
        assert_eq!(stop_of(&s(StopReason::StopString, Some(1)), &stops, false), ("stop_sequence", json!("B")));
        assert_eq!(stop_of(&s(StopReason::MaxTokens, None), &stops, false).0, "max_tokens");
        assert_eq!(stop_of(&s(StopReason::EndToken, None), &stops, false).0, "end_turn");
        assert_eq!(stop_of(&s(StopReason::EndToken, None), &stops, true).0, "tool_use");
        let body = error_body(&ApiError::invalid_field("max_tokens", "'max_tokens' is required"));
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"}})
        );
    }
}
