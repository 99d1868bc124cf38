//! Chat `tools`, `tool_choice` and `parallel_tool_calls`: the tools go to the model's template
//! (or, for a template without tool support, into the system turn), the model answers in its
//! format (`format`), and its calls become OpenAI's `message.tool_calls` (streamed as
//! `delta.tool_calls`, see `stream`) with `finish_reason: "tool_calls"`.
//!
//! `required` or a named tool constrains the whole reply to calls (their arguments to the
//! tool's `parameters` schema), so a call always parses; `auto` leaves the model free until it
//! starts a call, and from there on the grammar applies (a lazy grammar); `none` reads no calls.
//! Assistant messages carrying `tool_calls` and `tool` messages go to the template as such
//! (`messages`).

mod format;
mod scan;
pub mod stream;

#[cfg(test)]
pub(crate) use format::tests::qwen_template;
pub use format::{Call, Format, Parsed};

use super::error::ApiError;
use super::model::Model;
use llamafile_engine::grammar::Grammar;
use llamafile_engine::tokenizer::chat::ChatMessage;
use serde_json::{json, Value};

/// What a request's `tools` and `tool_choice` settle.
#[derive(Debug)]
pub struct ToolPlan {
    /// The tools as the template takes them (OpenAI's list).
    pub tools: Value,
    names: Vec<String>,
    /// The constraint: the whole reply for `required` or a named tool, lazy for `auto`.
    pub grammar: Option<Grammar>,
    /// Whether calls are read from the reply (not with `none`).
    calls: bool,
    /// At most one call (`parallel_tool_calls: false`).
    single: bool,
    pub format: Format,
}

/// Check `tools`, `tool_choice` and `parallel_tool_calls` for a model whose calls are in
/// `format`; `None` when there are no tools. `trigger_token`: see `Format::grammar`. With `none`
/// the tools still reach the template (earlier calls and results refer to them) but the reply
/// is text.
pub fn plan(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    format: Format,
    trigger_token: Option<u32>,
) -> Result<Option<ToolPlan>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid_field("tools", "'tools' must be an array")),
    };
    let mut names = Vec::with_capacity(list.len());
    let mut params = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}].type"),
                format!("tools[{i}]: only tools of type 'function' are supported"),
            ));
        }
        let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::invalid_field(&format!("tools[{i}].function"), format!("tools[{i}] needs a 'function' object"))
        })?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}].function.name"),
                format!("tools[{i}]: a function name is 1 to 64 of a-z, A-Z, 0-9, '_' and '-', got {name:?}"),
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}].function.name"),
                format!("tools[{i}]: '{name}' is defined twice"),
            ));
        }
        let p = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p) => p.clone(),
        };
        // Checked alone so that the error points at this tool.
        Grammar::json_schema(&p).map_err(|e| {
            ApiError::invalid_field(&format!("tools[{i}].function.parameters"), format!("tools[{i}]: {e:#}"))
        })?;
        names.push(name.to_string());
        params.push(p);
    }
    let mut calls = true;
    let (which, forced): (Vec<usize>, bool) = match choice {
        None | Some(Value::Null) => ((0..names.len()).collect(), false),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ((0..names.len()).collect(), false),
            "none" => {
                calls = false;
                (Vec::new(), false)
            }
            "required" => ((0..names.len()).collect(), true),
            other => {
                return Err(ApiError::invalid_field(
                    "tool_choice",
                    format!("tool_choice '{other}' is not one of none, auto, required"),
                ))
            }
        },
        Some(c) => {
            let name = c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_field("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
            })?;
            let i = names.iter().position(|n| n == name).ok_or_else(|| {
                ApiError::invalid_field(
                    "tool_choice.function.name",
                    format!("tool_choice names '{name}', which is not among the tools"),
                )
            })?;
            (vec![i], true)
        }
    };
    let single = parallel == Some(false);
    let grammar = if which.is_empty() {
        None
    } else {
        let schemas: Vec<Value> = which.iter().map(|&i| format.call_schema(&names[i], &params[i])).collect();
        let call = if schemas.len() == 1 { schemas[0].clone() } else { json!({"anyOf": schemas}) };
        let g = format
            .grammar(&call, !single, forced, trigger_token)
            .map_err(|e| ApiError::invalid_field("tools", format!("{e:#}")))?;
        Some(g)
    };
    Ok(Some(ToolPlan { tools: Value::Array(list.clone()), names, grammar, calls, single, format }))
}

/// `plan` for `model`: its call format read from its chat template.
pub fn plan_for(
    model: &dyn Model,
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ApiError> {
    let format = Format::of_template(&model.template_source());
    plan(tools, choice, parallel, format, trigger_token(model, format))
}

/// The id of `format`'s trigger when the vocabulary has it as a control token: one token when
/// special tokens are parsed, several when not (text cannot stand for it, so the grammar asks for
/// the token).
pub fn trigger_token(model: &dyn Model, format: Format) -> Option<u32> {
    let t = format.trigger()?;
    match model.tokenize(t, false, true).ok()?.as_slice() {
        [id] if model.tokenize(t, false, false).is_ok_and(|plain| plain.len() > 1) => Some(*id),
        _ => None,
    }
}

impl ToolPlan {
    /// Whether calls are read from the reply (not with `tool_choice: none`).
    pub fn reads_calls(&self) -> bool {
        self.calls
    }

    /// The reply read so far (`done`: it is final); no calls with `tool_choice: none`.
    pub fn read(&self, text: &str, done: bool) -> Parsed {
        if !self.calls {
            return Parsed { content: text.to_string(), calls: Vec::new() };
        }
        let mut p = self.format.parse(text, done, &self.names);
        if self.single {
            p.calls.truncate(1);
        }
        p
    }

    /// The final reply as its text before the calls and the complete calls (OpenAI's
    /// objects); `None` when it holds no complete call.
    pub fn parse(&self, text: &str) -> Option<(String, Vec<Value>)> {
        let p = self.read(text, true);
        let calls: Vec<Value> = p.calls.iter().filter(|c| c.done).map(|c| self.call_object(&c.name, &c.args)).collect();
        if calls.is_empty() {
            return None;
        }
        Some((p.content, calls))
    }

    /// OpenAI's call object.
    fn call_object(&self, name: &str, args: &str) -> Value {
        json!({"id": self.format.call_id(), "type": "function", "function": {"name": name, "arguments": args}})
    }

    /// The messages as this model's template takes them: calls and results in its format, and
    /// for a template without tool support, the tools and the reply format in the system turn.
    pub fn messages(&self, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        prepare_messages(self.format, messages, self.calls.then_some(&self.tools))
    }
}

/// The messages and the tool list to render with `format`'s template: with a plan, its messages
/// (`ToolPlan::messages`) and its tools when the template takes them itself (a template without
/// tool support gets them in the system turn instead); without, `messages_without_tools`.
pub fn for_template(
    format: Format,
    plan: Option<&ToolPlan>,
    messages: Vec<ChatMessage>,
) -> (Vec<ChatMessage>, Option<Value>) {
    match plan {
        Some(p) => (p.messages(messages), p.format.native().then(|| p.tools.clone())),
        None => (messages_without_tools(format, messages), None),
    }
}

/// A request's messages for a template in `format` when the request offers no tools (earlier
/// calls and results in the conversation are still written in the template's way).
pub fn messages_without_tools(format: Format, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    if messages.iter().any(|m| m.tool_calls.is_some() || m.role == "tool") {
        prepare_messages(format, messages, None)
    } else {
        messages
    }
}

/// An assistant message's `tool_calls`, checked, as templates read them: OpenAI's objects with
/// `function.arguments` an object (a JSON string is parsed).
pub fn check_calls(calls: &Value, at: usize) -> Result<Value, ApiError> {
    let field = format!("messages[{at}].tool_calls");
    let list =
        calls.as_array().ok_or_else(|| ApiError::invalid_field(&field, format!("'{field}' must be an array")))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let f = c.get("function");
        let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(ApiError::invalid_field(
                &format!("{field}[{j}].function.name"),
                format!("{field}[{j}] needs function.name"),
            ));
        };
        let args = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            Some(Value::Null) | None => json!({}),
            Some(v) => v.clone(),
        };
        let id = c.get("id").and_then(Value::as_str).unwrap_or("");
        out.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
    }
    Ok(Value::Array(out))
}

/// `messages` for a template in `format`; `tools` (when calls are wanted) are described in the
/// system turn for the generic format.
fn prepare_messages(format: Format, messages: Vec<ChatMessage>, tools: Option<&Value>) -> Vec<ChatMessage> {
    match format {
        Format::Generic => generic_messages(messages, tools),
        Format::Mistral => messages
            .into_iter()
            .map(|mut m| {
                if let Some(id) = m.tool_call_id.as_mut() {
                    *id = format::mistral_call_id(id);
                }
                if let Some(Value::Array(calls)) = m.tool_calls.as_mut() {
                    for c in calls {
                        let id = c["id"].as_str().unwrap_or("").to_string();
                        c["id"] = json!(format::mistral_call_id(&id));
                    }
                }
                m
            })
            .collect(),
        Format::Hermes | Format::Llama3 => messages,
    }
}

/// The generic format: calls written back as the JSON the model answers with, results as user
/// messages (templates without tool support know no `tool` role; consecutive results share one
/// message, so that the roles still alternate), and the tools described in the system turn.
fn generic_messages(messages: Vec<ChatMessage>, tools: Option<&Value>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut results_open = false;
    for m in messages {
        if m.role == "tool" {
            let result =
                json!({"tool_response": {"tool_call_id": m.tool_call_id, "name": m.name, "content": m.content}})
                    .to_string();
            match out.last_mut() {
                Some(last) if results_open => last.content = format!("{}\n{result}", last.content),
                _ => out.push(ChatMessage::new("user", &result)),
            }
            results_open = true;
            continue;
        }
        results_open = false;
        match m.tool_calls {
            Some(Value::Array(calls)) if m.role == "assistant" => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                    .collect();
                out.push(ChatMessage::new("assistant", &json!({"tool_calls": calls}).to_string()));
            }
            _ => out.push(ChatMessage { tool_calls: None, ..m }),
        }
    }
    if let Some(tools) = tools {
        let list: Vec<String> =
            tools.as_array().into_iter().flatten().map(|t| t.get("function").unwrap_or(t).to_string()).collect();
        let text = format!(
            "You can call these tools (JSON Schema for each):\n{}\n\nAnswer in JSON: either {{\"tool_calls\": [{{\"name\": <tool name>, \"arguments\": <arguments object>}}]}} to call tools, or {{\"response\": <your answer as a string>}} to answer the user.",
            list.join("\n")
        );
        match out.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{}\n\n{text}", first.content),
            _ => out.insert(0, ChatMessage::new("system", &text)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    fn hermes(t: &Value, choice: Option<Value>, parallel: Option<bool>) -> Result<Option<ToolPlan>, ApiError> {
        plan(Some(t), choice.as_ref(), parallel, Format::Hermes, None)
    }

    #[test]
    fn choices_and_bad_tools() {
        let t = weather();
        let none = hermes(&t, Some(json!("none")), None).unwrap().unwrap();
        assert!(none.grammar.is_none() && none.parse("{\"name\": \"get_weather\", \"arguments\": {}}").is_none());
        let auto = hermes(&t, None, None).unwrap().unwrap();
        assert!(auto.grammar.is_some(), "auto has a lazy grammar");
        assert!(hermes(&t, Some(json!("required")), None).unwrap().unwrap().grammar.is_some());
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert!(hermes(&t, Some(named), Some(false)).unwrap().unwrap().grammar.is_some());
        let e = hermes(&t, Some(json!({"type": "function", "function": {"name": "nope"}})), None).unwrap_err();
        assert!(e.message.contains("'nope'"), "{}", e.message);
        let e = hermes(&t, Some(json!("sometimes")), None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = hermes(&json!([{"type": "function", "function": {"name": "a b"}}]), None, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].function.name"));
        let bad = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": true}}}]);
        let e = hermes(&bad, None, None).unwrap_err();
        assert!(e.message.contains("uniqueItems"), "{}", e.message);
        // a keyword no draft defines is refused in a tool's parameters too, never ignored
        let bad = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}}}]);
        let e = hermes(&bad, None, None).unwrap_err();
        assert!(e.message.contains("'nullable' at /properties/a"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("tools[0].function.parameters"));
        assert!(hermes(&json!([]), None, None).unwrap().is_none());
        assert!(hermes(&json!({"a": 1}), None, None).is_err());
    }

    #[test]
    fn calls_are_read_from_the_reply() {
        let p = hermes(&weather(), None, None).unwrap().unwrap();
        let (text, calls) =
            p.parse("Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>").unwrap();
        assert_eq!(text, "Let me look.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["type"], "function");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
        assert!(p.parse("no call here").is_none());
        let (bare_text, bare) = p.parse(" {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}").unwrap();
        assert_eq!((bare_text.as_str(), bare.len()), ("", 1));
        assert!(p
            .parse("{\"name\": \"get_weather\", \"city\": \"Oslo\"}")
            .is_some_and(|(_, c)| c[0]["function"]["arguments"] == "{}"));
        assert!(p.parse("{\"city\": \"Oslo\"}").is_none(), "not a call's shape");
        assert!(p.parse("<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>").is_none());
        assert!(
            p.parse("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci").is_none(),
            "cut short: no complete call"
        );
    }

    #[test]
    fn parallel_false_keeps_one_call() {
        let two = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"B\"}}\n</tool_call>";
        assert_eq!(hermes(&weather(), None, None).unwrap().unwrap().parse(two).unwrap().1.len(), 2);
        assert_eq!(hermes(&weather(), None, Some(false)).unwrap().unwrap().parse(two).unwrap().1.len(), 1);
    }

    #[test]
    fn assistant_calls_are_checked_and_arguments_become_objects() {
        let calls = json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]);
        let v = check_calls(&calls, 2).unwrap();
        assert_eq!(v[0]["function"]["arguments"], json!({"a": 1}));
        assert_eq!(v[0]["id"], "call_1");
        let e = check_calls(&json!([{"function": {}}]), 2).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[2].tool_calls[0].function.name"));
        assert!(check_calls(&json!("x"), 1).is_err());
    }

    fn with_calls(id: &str) -> Vec<ChatMessage> {
        let calls = json!([{"id": id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]);
        vec![
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage { tool_calls: Some(calls), ..ChatMessage::new("assistant", "") },
            ChatMessage { tool_call_id: Some(id.into()), ..ChatMessage::new("tool", "18 C") },
            ChatMessage { tool_call_id: Some(id.into()), ..ChatMessage::new("tool", "sunny") },
        ]
    }

    #[test]
    fn generic_messages_describe_tools_and_alternate() {
        let p = plan(Some(&weather()), None, None, Format::Generic, None).unwrap().unwrap();
        let m = p.messages(with_calls("call_1"));
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(m[0].content.contains("\"get_weather\"") && m[0].content.contains("\"response\""), "{}", m[0].content);
        assert_eq!(m[2].content, r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#);
        assert!(m[2].tool_calls.is_none());
        assert!(
            m[3].content.contains("18 C") && m[3].content.contains("sunny") && m[3].content.contains("call_1"),
            "{}",
            m[3].content
        );
        let none = plan(Some(&weather()), Some(&json!("none")), None, Format::Generic, None).unwrap().unwrap();
        assert_eq!(none.messages(vec![ChatMessage::new("user", "hi")]).len(), 1, "no tools described with none");
    }

    #[test]
    fn mistral_ids_are_nine_letters_and_digits() {
        let p = plan(Some(&weather()), None, None, Format::Mistral, None).unwrap().unwrap();
        let m = p.messages(with_calls("call_0123456789abcdef"));
        let id = m[1].tool_calls.as_ref().unwrap()[0]["id"].as_str().unwrap().to_string();
        assert!(id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        assert_eq!(m[2].tool_call_id.as_deref(), Some(id.as_str()), "the result keeps matching its call");
        assert_eq!(format::mistral_call_id("abcDEF123"), "abcDEF123");
        let new = Format::Mistral.call_id();
        assert!(new.len() == 9 && new.bytes().all(|b| b.is_ascii_alphanumeric()), "{new}");
    }
}
