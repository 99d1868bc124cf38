//! Chat `tools` and `tool_choice` in the Hermes/Qwen2.5 format: the tools go to the model's
//! template (which describes them in the system turn), the model answers with
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks, and those become
//! OpenAI's `message.tool_calls` with `finish_reason: "tool_calls"`.
//!
//! `required` or a named tool constrains the reply to such blocks (the arguments to the tool's
//! `parameters` schema), so the call always parses; `auto` leaves the model free and reads calls
//! from its text; `none` renders no tools. Assistant messages carrying `tool_calls` are written
//! back as the same blocks, and `tool` messages go to the template as that role.

use super::error::ApiError;
use crate::grammar::Grammar;
use serde_json::{json, Value};

/// What a request's `tools` and `tool_choice` settle.
#[derive(Debug)]
pub struct ToolPlan {
    /// The tools as the template takes them (OpenAI's list).
    pub tools: Value,
    names: Vec<String>,
    /// The constraint for `required` or a named tool.
    pub grammar: Option<Grammar>,
    /// Whether calls are read from the reply (not with `none`).
    calls: bool,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Check `tools`, `tool_choice` and `parallel_tool_calls`; `None` when there are no tools.
/// With `none` the tools still reach the template (earlier calls and results refer to them) but
/// the reply is text.
pub fn plan(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<bool>, stream: bool) -> Result<Option<ToolPlan>, ApiError> {
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
            return Err(ApiError::invalid_field(&format!("tools[{i}].type"), format!("tools[{i}]: only tools of type 'function' are supported")));
        }
        let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::invalid_field(&format!("tools[{i}].function"), format!("tools[{i}] needs a 'function' object"))
        })?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}].function.name"),
                format!("tools[{i}]: a function name is 1 to 64 of a-z, A-Z, 0-9, '_' and '-', got {name:?}"),
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(ApiError::invalid_field(&format!("tools[{i}].function.name"), format!("tools[{i}]: '{name}' is defined twice")));
        }
        let p = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
        // Checked alone so that the error points at this tool.
        Grammar::json_schema(&p).map_err(|e| ApiError::invalid_field(&format!("tools[{i}].function.parameters"), format!("tools[{i}]: {e:#}")))?;
        names.push(name.to_string());
        params.push(p);
    }
    let mut calls = true;
    let forced: Option<Vec<usize>> = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => None,
            "none" => {
                calls = false;
                None
            }
            "required" => Some((0..names.len()).collect()),
            other => {
                return Err(ApiError::invalid_field("tool_choice", format!("tool_choice '{other}' is not one of none, auto, required")))
            }
        },
        Some(c) => {
            let name = c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_field("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
            })?;
            let i = names.iter().position(|n| n == name).ok_or_else(|| {
                ApiError::invalid_field("tool_choice.function.name", format!("tool_choice names '{name}', which is not among the tools"))
            })?;
            Some(vec![i])
        }
    };
    if stream && calls {
        return Err(ApiError::invalid_field("stream", "streaming with 'tools' is not supported yet; send stream: false"));
    }
    let grammar = match forced {
        None => None,
        Some(which) => {
            let calls: Vec<Value> = which
                .iter()
                .map(|&i| {
                    json!({"type": "object", "properties": {"name": {"const": names[i]}, "arguments": params[i]}, "required": ["name", "arguments"], "additionalProperties": false})
                })
                .collect();
            let schema = if calls.len() == 1 { calls[0].clone() } else { json!({"anyOf": calls}) };
            let g = Grammar::tool_calls(&schema, OPEN, CLOSE, parallel.unwrap_or(true))
                .map_err(|e| ApiError::invalid_field("tools", format!("{e:#}")))?;
            Some(g)
        }
    };
    Ok(Some(ToolPlan { tools: Value::Array(list.clone()), names, grammar, calls }))
}

impl ToolPlan {
    /// The reply split into its text before the first call and the calls (OpenAI's objects);
    /// `None` when it holds no call to one of the tools. A reply that is nothing but one call's
    /// JSON (small models drop the tags) is a call too.
    pub fn parse(&self, text: &str) -> Option<(String, Vec<Value>)> {
        if !self.calls {
            return None;
        }
        let Some(start) = text.find(OPEN) else {
            let v: Value = serde_json::from_str(text.trim()).ok()?;
            let keys_ok = v.as_object().is_some_and(|o| o.len() == 2 && o.contains_key("arguments"));
            return if keys_ok { Some((String::new(), vec![self.call(&v)?])) } else { None };
        };
        let mut calls = Vec::new();
        let mut rest = &text[start..];
        while let Some(open) = rest.find(OPEN) {
            let body = &rest[open + OPEN.len()..];
            let (inner, after) = match body.find(CLOSE) {
                Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
                None => (body, ""),
            };
            let v: Value = serde_json::from_str(inner.trim()).ok()?;
            calls.push(self.call(&v)?);
            rest = after;
        }
        Some((text[..start].trim_end().to_string(), calls))
    }

    /// `{"name", "arguments"}` as OpenAI's call object, if it names one of the tools.
    fn call(&self, v: &Value) -> Option<Value> {
        let name = v.get("name").and_then(Value::as_str)?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let args = v.get("arguments").cloned().unwrap_or_else(|| json!({}));
        let args = if let Value::String(s) = args { s } else { args.to_string() };
        Some(json!({
            "id": format!("call_{:016x}", super::types::random_u64()),
            "type": "function",
            "function": {"name": name, "arguments": args},
        }))
    }
}

/// An assistant message's `tool_calls`, written back as the blocks the model produces.
pub fn calls_as_text(calls: &Value, at: usize) -> Result<String, ApiError> {
    let field = format!("messages[{at}].tool_calls");
    let list = calls.as_array().ok_or_else(|| ApiError::invalid_field(&field, format!("'{field}' must be an array")))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let f = c.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name else {
            return Err(ApiError::invalid_field(&format!("{field}[{j}].function.name"), format!("{field}[{j}] needs function.name")));
        };
        let args = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        out.push(format!("{OPEN}\n{}\n{CLOSE}", json!({"name": name, "arguments": args})));
    }
    Ok(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn choices_and_bad_tools() {
        let t = weather();
        let none = plan(Some(&t), Some(&json!("none")), None, true).unwrap().unwrap();
        assert!(none.grammar.is_none() && none.parse("{\"name\": \"get_weather\", \"arguments\": {}}").is_none());
        assert!(plan(Some(&t), None, None, false).unwrap().unwrap().grammar.is_none());
        assert!(plan(Some(&t), Some(&json!("required")), None, false).unwrap().unwrap().grammar.is_some());
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert!(plan(Some(&t), Some(&named), Some(false), false).unwrap().unwrap().grammar.is_some());
        let e = plan(Some(&t), Some(&json!({"type": "function", "function": {"name": "nope"}})), None, false).unwrap_err();
        assert!(e.message.contains("'nope'"), "{}", e.message);
        let e = plan(Some(&json!([{"type": "function", "function": {"name": "a b"}}])), None, None, false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].function.name"));
        let e = plan(Some(&json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": true}}}])), None, None, false)
            .unwrap_err();
        assert!(e.message.contains("uniqueItems"), "{}", e.message);
        assert!(plan(Some(&t), None, None, true).is_err(), "streaming is refused, not ignored");
    }

    #[test]
    fn calls_are_read_from_the_reply() {
        let p = plan(Some(&weather()), None, None, false).unwrap().unwrap();
        let (text, calls) =
            p.parse("Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>").unwrap();
        assert_eq!(text, "Let me look.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert!(p.parse("no call here").is_none());
        let (bare_text, bare) = p.parse(" {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}").unwrap();
        assert_eq!((bare_text.as_str(), bare.len()), ("", 1));
        assert!(p.parse("{\"name\": \"get_weather\", \"city\": \"Oslo\"}").is_none(), "not a call's shape");
        assert!(p.parse("<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>").is_none());
        let back = calls_as_text(&json!(calls), 1).unwrap();
        assert_eq!(back, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>");
    }
}
