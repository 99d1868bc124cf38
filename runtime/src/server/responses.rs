//! `POST /v1/responses`: OpenAI's Responses API, stateless. The input (a string, or message and
//! function-call items), `instructions`, function tools and `text.format` become a chat turn
//! (`server::turn`); the reply comes back as a `response` object with `message` and
//! `function_call` output items, or as the API's named SSE events (`response.created` ...
//! `response.output_text.delta` ... `response.completed`).
//!
//! Nothing is stored: `previous_response_id`, `store: true`, `conversation` and `background`
//! are refused, since a later request could not find what they refer to.

use super::error::{ApiError, ApiJson};
use super::generation::{finish_reason, GenEvent, PromptCache};
use super::routes::sse_response;
use super::turn::{self, TurnRequest};
use super::types::{random_u64, unix_time, validate_sampling, SamplingFields};
use super::AppState;
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use llamafile_engine::sampler::SamplingOptions;
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::GenerationStats;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Deserialize, Debug)]
#[serde(untagged, expecting = "a string or an array of input items")]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Deserialize, Debug)]
pub struct ResponsesRequest {
    pub input: Input,
    pub instructions: Option<String>,
    pub model: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub stream: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingOptions,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    pub text: Option<Value>,
    pub previous_response_id: Option<Value>,
    pub store: Option<bool>,
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub metadata: Option<Value>,
    /// llama.cpp's: `false` evaluates the whole prompt instead of reusing the slot's cache.
    pub cache_prompt: Option<bool>,
}

fn stateless(field: &str) -> ApiError {
    ApiError::invalid_field(
        field,
        format!("'{field}' is not supported: this server keeps no responses (send the whole conversation as 'input')"),
    )
}

/// Text of a message item's `content`: a string, or `input_text`/`output_text` parts.
fn item_text(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, p.get("text").and_then(Value::as_str)) {
                    ("input_text" | "output_text" | "text", Some(t)) => out.push(t.to_string()),
                    ("input_text" | "output_text" | "text", None) => {
                        return Err(ApiError::invalid_field(
                            &format!("{at}.content[{j}].text"),
                            format!("{at}.content[{j}] needs 'text'"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid_field(
                            &format!("{at}.content[{j}].type"),
                            format!(
                                "content parts of type '{}' are not supported (input_text and output_text are)",
                                kind.escape_debug()
                            ),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(ApiError::invalid_field(
            &format!("{at}.content"),
            format!("{at}.content must be a string or an array of parts"),
        )),
    }
}

/// The input items as chat messages: message items by role, `function_call` items as the
/// assistant's calls (consecutive ones in one message), `function_call_output` items as
/// `tool` messages.
pub fn input_messages(instructions: Option<String>, input: Input) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        out.push(ChatMessage { role: "system".into(), content: i, ..Default::default() });
    }
    let items = match input {
        Input::Text(t) => {
            out.push(ChatMessage { role: "user".into(), content: t, ..Default::default() });
            return Ok(out);
        }
        Input::Items(items) => items,
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field("input", "'input' holds no item"));
    }
    // index in `out` of the assistant message the last function_call went to
    let mut calls_at: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                out.push(message_of(item, &at)?);
                calls_at = None;
            }
            "function_call" => calls_at = Some(add_function_call(&mut out, calls_at, item, i, &at)?),
            "function_call_output" => {
                out.push(function_output_of(item, &at)?);
                calls_at = None;
            }
            other => {
                let what = "are not supported (message, function_call and function_call_output are)";
                let e = format!("{at}: items of type '{}' {what}", other.escape_debug());
                return Err(ApiError::invalid_field(&format!("{at}.type"), e));
            }
        }
    }
    Ok(out)
}

/// A `message` input item (`at` names it in errors).
fn message_of(item: &Value, at: &str) -> Result<ChatMessage, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        other => {
            return Err(ApiError::invalid_field(
                &format!("{at}.role"),
                format!(
                    "{at}: role {} is not one of user, assistant, system, developer",
                    other.map_or("(none)".into(), |r| format!("'{}'", r.escape_debug()))
                ),
            ))
        }
    };
    Ok(ChatMessage { role: role.into(), content: item_text(item.get("content"), at)?, ..Default::default() })
}

/// A `function_call` input item (item `i`), added to the assistant message of the calls just
/// before it (`calls_at`), else to the last message when the assistant wrote it (the text the
/// model wrote before its calls), else to a new one. Returns that message's index.
fn add_function_call(
    out: &mut Vec<ChatMessage>,
    calls_at: Option<usize>,
    item: &Value,
    i: usize,
    at: &str,
) -> Result<usize, ApiError> {
    let Some(name) = item.get("name").and_then(Value::as_str) else {
        return Err(ApiError::invalid_field(&format!("{at}.name"), format!("{at}: a function_call needs 'name'")));
    };
    let id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
    let call = json!([{ "id": id, "function": { "name": name, "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")) } }]);
    let call = super::tools::check_calls(&call, i).map_err(|e| ApiError { param: Some(at.to_string()), ..e })?;
    let call = call.as_array().cloned().unwrap_or_default();
    let k = match calls_at {
        Some(k) => k,
        None => {
            if out.last().is_none_or(|m| m.role != "assistant") {
                out.push(ChatMessage { role: "assistant".into(), ..Default::default() });
            }
            out.len() - 1
        }
    };
    match out[k].tool_calls.as_mut() {
        Some(Value::Array(list)) => list.extend(call),
        _ => out[k].tool_calls = Some(Value::Array(call)),
    }
    Ok(k)
}

/// A `function_call_output` input item: a tool message.
fn function_output_of(item: &Value, at: &str) -> Result<ChatMessage, ApiError> {
    let output = match item.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Array(_)) => item_text(Some(v), at)?,
        _ => {
            return Err(ApiError::invalid_field(
                &format!("{at}.output"),
                format!("{at}: a function_call_output needs 'output' (a string)"),
            ))
        }
    };
    let id = item.get("call_id").and_then(Value::as_str).map(str::to_string);
    Ok(ChatMessage { role: "tool".into(), content: output, tool_call_id: id, ..Default::default() })
}

/// The Responses API's function tools (`{"type": "function", "name", "parameters"}`) and
/// `tool_choice` in the chat API's shape, for `server::tools`.
fn chat_tools(tools: Option<&Value>, choice: Option<&Value>) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "function" {
                    return Err(ApiError::invalid_field(
                        &format!("tools[{i}].type"),
                        format!(
                            "tools[{i}]: tools of type '{}' are not supported (only 'function')",
                            kind.escape_debug()
                        ),
                    ));
                }
                let mut f = serde_json::Map::new();
                for k in ["name", "description", "parameters", "strict"] {
                    if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                        f.insert(k.to_string(), v.clone());
                    }
                }
                out.push(json!({ "type": "function", "function": f }));
            }
            Some(Value::Array(out))
        }
        Some(_) => return Err(ApiError::invalid_field("tools", "'tools' must be an array")),
    };
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(json!(s)),
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let name = c.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_field("tool_choice.name", "tool_choice of type 'function' needs 'name'")
            })?;
            Some(json!({ "type": "function", "function": { "name": name } }))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "tool_choice",
                "tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}",
            ))
        }
    };
    Ok((tools, choice))
}

/// `text.format` as the chat API's `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "json_object" }))),
        Some("json_schema") => {
            let mut inner = format.clone();
            if let Some(o) = inner.as_object_mut() {
                o.remove("type");
            }
            Ok(Some(json!({ "type": "json_schema", "json_schema": inner })))
        }
        _ => Err(ApiError::invalid_field(
            "text.format.type",
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

/// The `usage` object.
fn usage(s: &GenerationStats) -> Value {
    json!({
        "input_tokens": s.prompt_tokens,
        "input_tokens_details": { "cached_tokens": s.cached_tokens, "cache_write_tokens": 0 },
        "output_tokens": s.generated_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": s.prompt_tokens + s.generated_tokens,
    })
}

/// What every form of the response object repeats from the request.
struct Shape {
    id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Value,
}

impl Shape {
    /// The response object; `stats` once the generation ended.
    fn object(&self, status: &str, output: &[Value], stats: Option<&GenerationStats>) -> Value {
        let incomplete = status == "incomplete";
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": if status == "completed" { json!(unix_time()) } else { Value::Null },
            "error": null,
            "incomplete_details": if incomplete { json!({ "reason": "max_output_tokens" }) } else { Value::Null },
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "store": false,
            "temperature": self.temperature.map(f64_of),
            "top_p": self.top_p.map(f64_of),
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "truncation": "disabled",
            "metadata": self.metadata,
            "usage": stats.map(usage),
        })
    }
}

/// An f32 setting as the decimal the client sent (0.7, not 0.699999988079071).
fn f64_of(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn status_of(s: &GenerationStats) -> &'static str {
    if finish_reason(s.stop) == "length" {
        "incomplete"
    } else {
        "completed"
    }
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{ "type": "output_text", "text": t, "annotations": [], "logprobs": [] }]),
        None => json!([]),
    };
    json!({ "type": "message", "id": id, "status": status, "role": "assistant", "content": content })
}

fn call_item(call: &Value, status: &str, with_arguments: bool) -> Value {
    let f = &call["function"];
    let call_id = call["id"].as_str().unwrap_or("");
    json!({
        "type": "function_call",
        "id": format!("fc_{}", call_id.trim_start_matches("call_")),
        "call_id": call_id,
        "name": f["name"],
        "arguments": if with_arguments { f["arguments"].clone() } else { json!("") },
        "status": status,
    })
}

/// The output items of a finished reply: the text (if any, or if there is no call), then the calls.
fn output_items(msg_id: &str, text: &str, calls: &[Value], status: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        out.push(message_item(msg_id, status, Some(text)));
    }
    out.extend(calls.iter().map(|c| call_item(c, "completed", true)));
    out
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    refuse_stored_state(&req)?;
    let stream = req.stream.unwrap_or(false);
    let (tools, choice) = chat_tools(req.tools.as_ref(), req.tool_choice.as_ref())?;
    let no_calls = choice.as_ref().and_then(Value::as_str) == Some("none");
    // A reply that may hold calls is read whole before it is streamed (tools::plan is asked as
    // for a non-streaming request).
    let plan = super::tools::plan_for(&*st.model, tools.as_ref(), choice.as_ref(), req.parallel_tool_calls)
        // errors name the fields as this API spells them (`tools[0].name`)
        .map_err(|e| ApiError { param: e.param.as_deref().map(|p| p.replace(".function.", ".")), ..e })?;
    let buffered = stream && plan.is_some() && !no_calls;
    let format = response_format(req.text.as_ref())?;
    let grammar = if plan.as_ref().is_some_and(|p| p.grammar.is_some()) {
        None
    } else {
        super::structured::response_format(format.as_ref())?
    };
    let sampling =
        validate_sampling(SamplingFields { sampling: req.sampling.clone(), ..Default::default() }, None, &st.defaults)?;
    let max_tokens = match req.max_output_tokens {
        None => None,
        Some(n) if n >= 1 => Some(n as usize),
        Some(n) => {
            let e = format!("'max_output_tokens' must be at least 1, got {n}");
            return Err(ApiError::invalid_field("max_output_tokens", e));
        }
    };
    let messages = input_messages(req.instructions.clone(), req.input)?;
    let t = turn::start(
        &st,
        TurnRequest {
            messages,
            tools: plan,
            grammar,
            max_tokens,
            sampling,
            model: req.model.clone(),
            param: "input",
            cache: PromptCache::from_request(req.cache_prompt),
        },
    )
    .await?;
    let shape = Shape {
        id: format!("resp_{:016x}{:016x}", random_u64(), random_u64()),
        created_at: unix_time(),
        model: st.model_id.clone(),
        instructions: req.instructions,
        max_output_tokens: req.max_output_tokens,
        temperature: req.sampling.temperature,
        top_p: req.sampling.top_p,
        tools: req.tools.filter(|t| !t.is_null()).unwrap_or(json!([])),
        tool_choice: req.tool_choice.filter(|t| !t.is_null()).unwrap_or(json!("auto")),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        text: req.text.filter(|t| !t.is_null()).unwrap_or(json!({ "format": { "type": "text" } })),
        metadata: req.metadata.filter(|t| !t.is_null()).unwrap_or(json!({})),
    };
    let msg_id = format!("msg_{:016x}{:016x}", random_u64(), random_u64());

    if !stream {
        let (text, stats) = super::generation::collect(t.rx).await?;
        let (text, calls) = turn::split_calls(t.tools.as_ref(), text);
        let status = status_of(&stats);
        let output = output_items(&msg_id, &text, &calls, status);
        return Ok(Json(shape.object(status, &output, Some(&stats))).into_response());
    }

    let mut ev = Events { seq: 0 };
    let first = vec![
        ev.event("response.created", json!({ "response": shape.object("in_progress", &[], None) })),
        ev.event("response.in_progress", json!({ "response": shape.object("in_progress", &[], None) })),
    ];
    if buffered {
        Ok(buffered_events(first, t, ev, shape, msg_id))
    } else {
        Ok(text_events(first, t, ev, shape, msg_id))
    }
}

/// State kept between requests, which this server does not keep: refused, naming the field.
fn refuse_stored_state(req: &ResponsesRequest) -> Result<(), ApiError> {
    if req.previous_response_id.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(stateless("previous_response_id"));
    }
    if req.store == Some(true) {
        return Err(stateless("store"));
    }
    if req.conversation.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(stateless("conversation"));
    }
    if req.background == Some(true) {
        return Err(stateless("background"));
    }
    Ok(())
}

/// A streamed reply that may hold calls: read whole, then its items' events after `first`.
fn buffered_events(first: Vec<Event>, t: turn::Turn, mut ev: Events, shape: Shape, msg_id: String) -> Response {
    let tools = t.tools;
    let rest = stream::once(async move {
        let events = match super::generation::collect(t.rx).await {
            Ok((text, stats)) => {
                let (text, calls) = turn::split_calls(tools.as_ref(), text);
                let status = status_of(&stats);
                let output = output_items(&msg_id, &text, &calls, status);
                let mut out = Vec::new();
                for (i, item) in output.iter().enumerate() {
                    out.extend(ev.item_events(i, item));
                }
                out.push(ev.end(&shape, status, &output, &stats));
                out
            }
            Err(e) => vec![ev.error(&e)],
        };
        stream::iter(events.into_iter().map(Ok))
    })
    .flatten();
    sse_response(stream::iter(first.into_iter().map(Ok)).chain(rest))
}

/// A streamed text reply: after `first`, the message item opens at once and its text follows
/// as it comes.
fn text_events(mut first: Vec<Event>, t: turn::Turn, mut ev: Events, shape: Shape, msg_id: String) -> Response {
    let open = message_item(&msg_id, "in_progress", None);
    first.push(ev.event("response.output_item.added", json!({ "output_index": 0, "item": open })));
    first.push(ev.event(
        "response.content_part.added",
        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "part": text_part("") }),
    ));
    let mut text = String::new();
    let rest = ReceiverStream::new(t.rx).flat_map(move |e| {
        let out = match e {
            GenEvent::Text(piece) => {
                text.push_str(&piece);
                vec![ev.event(
                    "response.output_text.delta",
                    json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": [] }),
                )]
            }
            GenEvent::Done(stats) => {
                let status = status_of(&stats);
                let item = message_item(&msg_id, status, Some(&text));
                let mut out = ev.close_message(0, &item, &text);
                out.push(ev.end(&shape, status, &[item], &stats));
                out
            }
            GenEvent::Failed(e) => vec![ev.error(&e)],
        };
        stream::iter(out.into_iter().map(Ok))
    });
    sse_response(stream::iter(first.into_iter().map(Ok)).chain(rest))
}

fn text_part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// Numbers the events of one stream (`sequence_number`).
struct Events {
    seq: u64,
}

impl Events {
    fn event(&mut self, kind: &str, mut payload: Value) -> Event {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Event::default().event(kind).data(payload.to_string())
    }

    /// The events that close a message item whose text was streamed.
    fn close_message(&mut self, index: usize, item: &Value, text: &str) -> Vec<Event> {
        let id = &item["id"];
        vec![
            self.event(
                "response.output_text.done",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [] }),
            ),
            self.event(
                "response.content_part.done",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "part": text_part(text) }),
            ),
            self.event("response.output_item.done", json!({ "output_index": index, "item": item })),
        ]
    }

    /// Every event of one finished output item.
    fn item_events(&mut self, index: usize, item: &Value) -> Vec<Event> {
        let id = &item["id"];
        if item["type"] == "message" {
            let text = item["content"][0]["text"].as_str().unwrap_or("").to_string();
            let open = message_item(id.as_str().unwrap_or(""), "in_progress", None);
            let mut out = vec![
                self.event("response.output_item.added", json!({ "output_index": index, "item": open })),
                self.event(
                    "response.content_part.added",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "part": text_part("") }),
                ),
            ];
            if !text.is_empty() {
                out.push(self.event(
                    "response.output_text.delta",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": [] }),
                ));
            }
            out.extend(self.close_message(index, item, &text));
            return out;
        }
        let mut open = item.clone();
        open["arguments"] = json!("");
        open["status"] = json!("in_progress");
        vec![
            self.event("response.output_item.added", json!({ "output_index": index, "item": open })),
            self.event(
                "response.function_call_arguments.delta",
                json!({ "item_id": id, "output_index": index, "delta": item["arguments"] }),
            ),
            self.event(
                "response.function_call_arguments.done",
                json!({ "item_id": id, "output_index": index, "name": item["name"], "arguments": item["arguments"] }),
            ),
            self.event("response.output_item.done", json!({ "output_index": index, "item": item })),
        ]
    }

    /// `response.completed` (or `response.incomplete` when the reply was cut at the limit).
    fn end(&mut self, shape: &Shape, status: &str, output: &[Value], stats: &GenerationStats) -> Event {
        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
        self.event(kind, json!({ "response": shape.object(status, output, Some(stats)) }))
    }

    fn error(&mut self, e: &ApiError) -> Event {
        self.event("error", json!({ "code": e.code.unwrap_or(e.kind), "message": e.message, "param": e.param }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: Value) -> Input {
        Input::Items(v.as_array().unwrap().clone())
    }

    #[test]
    fn input_items_become_messages() {
        let m = input_messages(Some("Be brief.".into()), Input::Text("Hi".into())).unwrap();
        assert_eq!(
            m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect::<Vec<_>>(),
            [("system", "Be brief."), ("user", "Hi")]
        );
        let m = input_messages(
            None,
            items(json!([
                {"role": "developer", "content": "Sys"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
            ])),
        )
        .unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
        assert_eq!(m[1].content, "a\nb");
        // consecutive calls: one assistant message with both, as the chat route's `tool_calls`
        let calls = m[2].tool_calls.as_ref().unwrap().as_array().unwrap().clone();
        assert_eq!(calls.iter().map(|c| c["function"]["name"].as_str().unwrap()).collect::<Vec<_>>(), ["f", "g"]);
        assert_eq!(calls[0]["id"], "c1");
        assert_eq!(calls[0]["function"]["arguments"], json!({"x": 1}));
        assert_eq!(m[3].content, "42");
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        for (bad, param) in [
            (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
                "input[0].content[0].type",
            ),
            (json!([{"type": "reasoning", "summary": []}]), "input[0].type"),
            (json!([{"type": "function_call_output", "call_id": "c"}]), "input[0].output"),
            (json!([]), "input"),
        ] {
            let e = input_messages(None, items(bad.clone())).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn tools_and_formats_in_the_chat_shape() {
        let (tools, choice) = chat_tools(
            Some(&json!([{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": null}])),
            Some(&json!({"type": "function", "name": "f"})),
        )
        .unwrap();
        assert_eq!(
            tools.unwrap(),
            json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}])
        );
        assert_eq!(choice.unwrap(), json!({"type": "function", "function": {"name": "f"}}));
        let e = chat_tools(Some(&json!([{"type": "web_search"}])), None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let f = response_format(Some(
            &json!({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}),
        ))
        .unwrap();
        assert_eq!(
            f.unwrap(),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
        );
        assert!(response_format(Some(&json!({"format": {"type": "text"}}))).unwrap().is_none());
        assert!(response_format(Some(&json!({"format": {"type": "yaml"}}))).is_err());
    }
}
