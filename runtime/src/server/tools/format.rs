//! The tool-call formats of the chat templates in use, picked from the template's text:
//!
//! - Hermes / Qwen2.5: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block
//!   per call (small models sometimes drop the tags: a reply that is one such object is a call
//!   too);
//! - Mistral (v0.3-style templates, with `[TOOL_CALLS]`): `[TOOL_CALLS][{"name": ...,
//!   "arguments": {...}}, ...]`, call ids of 9 letters and digits;
//! - Llama 3.1+ (Llama 3 templates that render `tool_calls`): a reply that is `{"name": ...,
//!   "parameters": {...}}`, possibly after `<|python_tag|>`; one call per reply;
//! - Generic, for templates without tool support: the tools are described in the system turn
//!   and the whole reply is JSON, `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or
//!   `{"response": "..."}`, constrained from the start.
//!
//! Each format gives the grammar of its calls (whole, for `required` or a named tool; lazy,
//! from the format's trigger on, for `auto`) and reads calls from a reply, also from one still
//! being written (`parse` with `done: false`), for streaming.

use super::scan::{self, NotJson};
use anyhow::Result;
use llamafile_engine::grammar::Grammar;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hermes,
    Mistral,
    Llama3,
    Generic,
}

/// A reply read so far: the text for the user, and the calls.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Text before the calls (what is certain of it so far: the beginning of a trigger, or
    /// white space that may precede one, is held back until the reply is final).
    pub content: String,
    pub calls: Vec<Call>,
}

#[derive(Debug, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments' JSON text so far; a prefix of the final text.
    pub args: String,
    /// Whether the call is complete.
    pub done: bool,
}

impl Format {
    /// The format a chat template's model writes calls in.
    pub fn of_template(source: &str) -> Format {
        if source.contains("<tool_call>") {
            Format::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            Format::Mistral
        } else if source.contains("<|start_header_id|>") && source.contains("tool_calls") {
            Format::Llama3
        } else {
            Format::Generic
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Hermes => "hermes",
            Format::Mistral => "mistral",
            Format::Llama3 => "llama3",
            Format::Generic => "generic",
        }
    }

    /// Whether the template itself describes the tools and renders calls and results.
    pub fn native(self) -> bool {
        self != Format::Generic
    }

    /// The text that opens the calls, which may be a control token of the vocabulary.
    pub fn trigger(self) -> Option<&'static str> {
        match self {
            Format::Hermes => Some("<tool_call>"),
            Format::Mistral => Some("[TOOL_CALLS]"),
            Format::Llama3 => Some("<|python_tag|>"),
            Format::Generic => None,
        }
    }

    /// The field holding a call's arguments.
    fn args_key(self) -> &'static str {
        if self == Format::Llama3 {
            "parameters"
        } else {
            "arguments"
        }
    }

    /// A new call id. Mistral's templates refuse ids other than 9 letters and digits.
    pub fn call_id(self) -> String {
        let r = super::super::types::random_u64();
        match self {
            Format::Mistral => mistral_id(r),
            _ => format!("call_{r:016x}"),
        }
    }

    /// The schema of one call to a tool: its name, then its arguments.
    pub fn call_schema(self, name: &str, parameters: &Value) -> Value {
        let key = self.args_key();
        json!({"type": "object", "properties": {"name": {"const": name}, key: parameters}, "required": ["name", key], "additionalProperties": false})
    }

    /// The grammar of a reply holding calls matching `call` (a schema): with `forced`, the
    /// whole reply is calls; else the grammar is lazy, on from the format's trigger (the reply
    /// is free text until then). `trigger_token` is the trigger's id when the vocabulary has
    /// it as a control token (the grammar then asks for that token, as the model writes it).
    pub fn grammar(self, call: &Value, parallel: bool, forced: bool, trigger_token: Option<u32>) -> Result<Grammar> {
        let lit = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let trig = |t: &str| match (forced, trigger_token) {
            (true, Some(id)) => format!("<[{id}]>"),
            _ => lit(t),
        };
        let json = Grammar::lark_json(call, !forced);
        // A reply that starts as a call object, maybe in a code fence (what small models write
        // when they do not use the format's tags).
        let bare = r#"^(```(json)?\s*)?\{\s*"name""#.to_string();
        let (src, triggers) = match self {
            Format::Hermes => {
                let more = if parallel { "(\"\\n<tool_call>\\n\" call \"\\n</tool_call>\")*" } else { "" };
                let tagged = format!("tagged: {} \"\\n\" call \"\\n</tool_call>\" {more}\n", trig("<tool_call>"));
                let start = if forced {
                    "start: tagged\n"
                } else {
                    "start: tagged | call | fenced\nfenced: \"```\" \"json\"? WS? call WS? \"```\"\nWS: /[ \\t\\n]+/\n"
                };
                (format!("{start}{tagged}call: {json}\n"), vec!["<tool_call>".to_string(), bare])
            }
            Format::Mistral => {
                let more = if parallel { "(\", \" call)*" } else { "" };
                (
                    format!("start: {} \" \"? \"[\" call {more} \"]\"\ncall: {json}\n", trig("[TOOL_CALLS]")),
                    vec!["[TOOL_CALLS]".to_string()],
                )
            }
            Format::Llama3 => {
                let start = if forced {
                    "start: call\n".to_string()
                } else {
                    format!(
                        "start: {}? call | fenced\nfenced: \"```\" \"json\"? WS? call WS? \"```\"\nWS: /[ \\t\\n]+/\n",
                        lit("<|python_tag|>")
                    )
                };
                (format!("{start}call: {json}\n"), vec![bare, "<|python_tag|>".to_string()])
            }
            Format::Generic => {
                let mut list = json!({"type": "array", "items": call, "minItems": 1});
                if !parallel {
                    list["maxItems"] = json!(1);
                }
                let calls = json!({"type": "object", "properties": {"tool_calls": list}, "required": ["tool_calls"], "additionalProperties": false});
                let schema = if forced {
                    calls
                } else {
                    let text = json!({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": false});
                    json!({"anyOf": [calls, text]})
                };
                return Grammar::json_schema(&schema);
            }
        };
        if forced {
            if let Some(id) = trigger_token {
                // Checked with the trigger as text: the check's vocabulary has no such token.
                Grammar::lark(src.replace(&format!("<[{id}]>"), &lit(self.trigger().unwrap_or(""))), "tools")?;
                return Ok(Grammar::lark_with_tokens(src, "tools"));
            }
            return Grammar::lark(src, "tools");
        }
        Ok(Grammar::lark(src, "tools")?.lazy(triggers))
    }

    /// Read `text` (the whole reply so far; `done` once it is final) into content and calls.
    /// Calls stop at the first that names no tool in `names`; if that is the first, the reply is
    /// text.
    pub fn parse(self, text: &str, done: bool, names: &[String]) -> Parsed {
        let keys: &[&str] = if self == Format::Llama3 { &["parameters", "arguments"] } else { &["arguments"] };
        let reader = Reader { keys, done, names };
        let as_text = || Parsed { content: held(text, self.trigger(), done), calls: Vec::new() };
        if self == Format::Generic {
            return reader.generic(text).unwrap_or_else(|| Parsed {
                content: if done { text.to_string() } else { String::new() },
                calls: vec![],
            });
        }
        // A reply that is a call object from its start (Llama's plain form; Hermes without tags),
        // maybe in a code fence.
        let bare = scan::ws(text);
        let fence = ["```json", "```"].into_iter().find(|f| bare.starts_with(f));
        let bare_calls = matches!(self, Format::Hermes | Format::Llama3);
        if bare_calls && !done && "```json".starts_with(bare) {
            return Parsed::default();
        }
        let bare = scan::ws(fence.map_or(bare, |f| &bare[f.len()..]));
        if bare_calls && bare.is_empty() && !done && fence.is_some() {
            return Parsed::default();
        }
        if bare_calls && bare.starts_with('{') {
            let mut calls = Vec::new();
            return match reader.list(bare, &mut calls, Sep::Llama) {
                Ok(()) if !calls.is_empty() || (!done && !calls_ruled_out(bare)) => {
                    Parsed { content: String::new(), calls }
                }
                _ => as_text(),
            };
        }
        let Some(trigger) = self.trigger() else { return as_text() };
        let Some(at) = text.find(trigger) else { return as_text() };
        let content = text[..at].trim_end().to_string();
        let rest = &text[at..];
        let mut calls = Vec::new();
        let read = match self {
            Format::Hermes => reader.hermes(rest, &mut calls),
            Format::Mistral => {
                let r = scan::ws(&rest[trigger.len()..]);
                match r.as_bytes().first() {
                    None => Ok(()),
                    Some(b'[') => reader.list(&r[1..], &mut calls, Sep::Array),
                    Some(_) => Err(NotJson),
                }
            }
            _ => reader.list(scan::ws(&rest[trigger.len()..]), &mut calls, Sep::Llama),
        };
        if read.is_err() && calls.is_empty() {
            return Parsed { content: text.to_string(), calls };
        }
        Parsed { content, calls }
    }
}

/// Whether text that starts like JSON cannot be a call: an object whose first field is complete
/// and is neither the name nor the arguments.
fn calls_ruled_out(s: &str) -> bool {
    scan::call(s, &["arguments", "parameters"], false).is_err()
}

/// `text`, less a trailing beginning of `trigger` and (until `done`) trailing white space: what
/// is certain to be text.
fn held(text: &str, trigger: Option<&str>, done: bool) -> String {
    if done {
        return text.to_string();
    }
    let mut end = text.len();
    if let Some(t) = trigger {
        if let Some(n) = (1..t.len()).rev().find(|&n| text.ends_with(&t[..n])) {
            end -= n;
        }
    }
    text[..end].trim_end().to_string()
}

/// How the calls of a list are separated.
#[derive(Clone, Copy)]
enum Sep {
    /// `[a, b]` (after the opening bracket).
    Array,
    /// White space or `;` (Llama's calls, a bare Hermes call).
    Llama,
}

struct Reader<'a> {
    keys: &'a [&'a str],
    done: bool,
    names: &'a [String],
}

impl Reader<'_> {
    /// One call at the start of `s`: the call read so far and the object's length when complete.
    /// `Err` when it is not a call object or names no tool.
    fn call(&self, s: &str) -> Result<(Option<Call>, Option<usize>), NotJson> {
        let c = scan::call(s, self.keys, self.done)?;
        let Some(name) = c.name else {
            return if c.len.is_some() { Err(NotJson) } else { Ok((None, None)) };
        };
        if !self.names.contains(&name) {
            return Err(NotJson);
        }
        let done = c.len.is_some();
        let args = match c.args {
            // Arguments given as a JSON string holding the object: its text, once complete.
            Some(a) if a.starts_with('"') => {
                if c.args_done {
                    serde_json::from_str::<String>(a).unwrap_or_default()
                } else {
                    String::new()
                }
            }
            Some(a) => a.to_string(),
            None if done => "{}".to_string(),
            None => String::new(),
        };
        Ok((Some(Call { name, args, done }), c.len))
    }

    /// Calls one after another from the start of `s`.
    fn list(&self, mut s: &str, out: &mut Vec<Call>, sep: Sep) -> Result<(), NotJson> {
        loop {
            s = scan::ws(s);
            if s.is_empty() || (matches!(sep, Sep::Array) && s.starts_with(']')) {
                return Ok(());
            }
            let (call, len) = self.call(s)?;
            out.extend(call);
            let Some(len) = len else { return Ok(()) };
            s = scan::ws(&s[len..]);
            match (sep, s.as_bytes().first()) {
                (_, None) => return Ok(()),
                (Sep::Array, Some(b',')) | (Sep::Llama, Some(b';')) => s = &s[1..],
                (Sep::Llama, Some(b'{')) => {}
                // Whatever follows the calls is not read.
                _ => return Ok(()),
            }
        }
    }

    /// `<tool_call>` blocks from the start of `s`.
    fn hermes(&self, mut s: &str, out: &mut Vec<Call>) -> Result<(), NotJson> {
        const OPEN: &str = "<tool_call>";
        const CLOSE: &str = "</tool_call>";
        loop {
            let Some(body) = s.strip_prefix(OPEN) else { return Ok(()) };
            let body = scan::ws(body);
            if body.is_empty() {
                return Ok(());
            }
            let (call, len) = self.call(body)?;
            out.extend(call);
            let Some(len) = len else { return Ok(()) };
            let after = scan::ws(&body[len..]);
            s = scan::ws(after.strip_prefix(CLOSE).unwrap_or(after));
        }
    }

    /// The generic format's JSON reply.
    fn generic(&self, text: &str) -> Option<Parsed> {
        let s = scan::ws(text).strip_prefix('{')?;
        let s = scan::ws(s);
        let klen = scan::value_len(s, self.done).ok()??;
        let key: String = serde_json::from_str(&s[..klen]).ok()?;
        let v = scan::ws(scan::ws(&s[klen..]).strip_prefix(':')?);
        match key.as_str() {
            "tool_calls" => {
                let mut calls = Vec::new();
                let read = self.list(v.strip_prefix('[')?, &mut calls, Sep::Array);
                (read.is_ok() || !calls.is_empty()).then_some(Parsed { content: String::new(), calls })
            }
            "response" if v.starts_with('"') => Some(Parsed { content: scan::partial_string(v), calls: Vec::new() }),
            _ => None,
        }
    }
}

/// Nine letters and digits from a random number.
fn mistral_id(mut r: u64) -> String {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..9)
        .map(|_| {
            let c = ABC[(r % ABC.len() as u64) as usize] as char;
            r /= ABC.len() as u64;
            c
        })
        .collect()
}

/// A call id as Mistral's templates take it: kept when it is 9 letters and digits, else made
/// from it (the same id always gives the same one, so a call and its result still match).
pub fn mistral_call_id(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_string();
    }
    // FNV-1a: stable across runs and platforms.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    mistral_id(h)
}

#[cfg(test)]
#[path = "format_tests.rs"]
pub(crate) mod tests;
