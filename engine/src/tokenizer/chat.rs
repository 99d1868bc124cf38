//! Chat templates: `tokenizer.chat_template` rendered with minijinja (Python-compatible string
//! methods), or a built-in one chosen by architecture/model name.
//!
//! The environment mirrors what Hugging Face `transformers` gives chat templates: `trim_blocks`
//! and `lstrip_blocks` on, Python string/dict/list methods (`strip`, `startswith`, `split`,
//! `items`...) through minijinja-contrib's `pycompat`, `raise_exception(msg)`, a `tojson` that
//! writes what Python's `json.dumps(ensure_ascii=False)` writes (`", "` and `": "` separators, no
//! HTML escaping, `indent=` supported), `strftime_now(fmt)`, and the variables `messages`,
//! `bos_token`, `eos_token`, `add_generation_prompt` and `tools`.
//!
//! # Tokenizing a rendered prompt
//! Templates write special tokens as text (`<|im_start|>`, `[INST]`, and often the BOS itself via
//! `{{ bos_token }}`), so a rendered prompt must be tokenized with `parse_special = true`. For the
//! BOS, use [`encode_prompt`]: when the model adds a BOS (`Tokenizer::adds_bos`) and the rendered
//! text already starts with the BOS text, the text's own BOS is the one kept
//! (`encode(text, add_special = false, parse_special = true)`); otherwise the BOS is added
//! (`encode(text, add_special = true, parse_special = true)`). Either way the prompt starts with
//! exactly one BOS, as the reference does (it strips a template's leading BOS text and lets the
//! tokenizer add it; for SentencePiece the space-prefix rule makes both ways give the same ids).
//! For a later turn appended to a conversation already in the KV cache, render the whole
//! conversation and tokenize it the same way, then reuse the common prefix of ids.

use super::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use llamafile_format::gguf::GgufFile;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, Value};
use std::path::Path;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's tool calls as templates read them (OpenAI's objects, `function.arguments`
    /// an object); absent from the template's view when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's call id and tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string(), ..Default::default() }
    }
}

/// Names of the built-in templates (for `--chat-template NAME`).
/// Work one render may do, in minijinja fuel: one unit per instruction, and one per 64 bytes
/// of strings made or written. Templates come from files and must end: a runaway loop or a
/// string doubled in a loop runs out after a million instructions or 64 MB of data (a
/// fraction of a second), while real templates render conversations as large as the largest
/// request body (4 MiB, as 256 long messages or 20,000 short ones) within it (see the tests;
/// a third of this budget is not enough for them).
const FUEL: u64 = 1_000_000;

/// Longest template line accepted, plus one (see `ChatTemplate::from_source`).
const MAX_LINE_CHARS: usize = 65535;

pub const BUILTIN_NAMES: &[&str] = &["mistral", "chatml", "vicuna", "gemma", "llama3"];

const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// Mistral Instruct: `<s>[INST] {user} [/INST]{answer}</s>[INST] ...` (the same output as the
/// template in Mistral's own GGUFs; a system message is put before the first user message).
const MISTRAL: &str = r#"
{%- if messages and messages[0].role == 'system' -%}
    {%- set system = messages[0].content -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for m in loop_messages -%}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... (after an optional system message)') -}}
    {%- endif -%}
    {%- if m.role == 'user' -%}
        {%- if loop.first and system -%}
            {{- '[INST] ' + system + '\n\n' + m.content + ' [/INST]' -}}
        {%- else -%}
            {{- '[INST] ' + m.content + ' [/INST]' -}}
        {%- endif -%}
    {%- else -%}
        {{- m.content + eos_token -}}
    {%- endif -%}
{%- endfor -%}
"#;

/// ChatML (OpenOrca, Hermes, Qwen...): `<|im_start|>{role}\n{content}<|im_end|>\n`.
const CHATML: &str = r#"
{%- for m in messages -%}
    {%- if m.role not in ['system', 'user', 'assistant', 'tool'] -%}
        {{- raise_exception('Unknown role: ' + m.role) -}}
    {%- endif -%}
    {%- if m.role == 'system' and not loop.first -%}
        {{- raise_exception('A system message must come first') -}}
    {%- endif -%}
    {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"#;

/// Vicuna v1.1 (and models trained on it, e.g. Claude-chat fine-tunes):
/// `{system} USER: {user} ASSISTANT: {answer}</s>USER: ... ASSISTANT:`.
const VICUNA: &str = r#"
{%- if messages and messages[0].role == 'system' -%}
    {%- set system = messages[0].content -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system = default_system -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if system -%}
    {{- system + ' ' -}}
{%- endif -%}
{%- for m in loop_messages -%}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... (after an optional system message)') -}}
    {%- endif -%}
    {%- if m.role == 'user' -%}
        {{- 'USER: ' + m.content + ' ' -}}
    {%- else -%}
        {{- 'ASSISTANT: ' + m.content + eos_token -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"#;

/// Gemma: `<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n`; no system
/// role (a system message is put before the first user message, as Gemma 3's own template does).
const GEMMA: &str = r#"
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
    {%- set first_user_prefix = messages[0].content + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for m in loop_messages -%}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... (after an optional system message)') -}}
    {%- endif -%}
    {%- set role = 'model' if m.role == 'assistant' else m.role -%}
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + m.content | trim + '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"#;

/// Llama 3: `<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`.
const LLAMA3: &str = r#"
{{- bos_token -}}
{%- for m in messages -%}
    {%- if m.role not in ['system', 'user', 'assistant', 'ipython', 'tool'] -%}
        {{- raise_exception('Unknown role: ' + m.role) -}}
    {%- endif -%}
    {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"#;

/// The Jinja source of a built-in template (`None` for an unknown name).
pub fn builtin_source(name: &str) -> Option<&'static str> {
    Some(match name {
        "mistral" | "llama2" | "mistral-instruct" => MISTRAL,
        "chatml" => CHATML,
        "vicuna" => VICUNA,
        "gemma" => GEMMA,
        "llama3" => LLAMA3,
        _ => return None,
    })
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The Jinja text (what tool-call format the model uses is read from it).
    source: String,
    name: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("name", &self.name).finish()
    }
}

impl ChatTemplate {
    /// The model's template, or a built-in chosen by architecture/name, or `override_`
    /// (a built-in name such as "chatml", "mistral", "vicuna", "gemma", "llama3", or a file path).
    pub fn from_gguf(g: &GgufFile, override_: Option<&str>) -> anyhow::Result<ChatTemplate> {
        let tokens = g.get_array("tokenizer.ggml.tokens");
        let token_text = |key: &str| -> String {
            let id = g.get_u64(key);
            match (id, tokens) {
                (Some(id), Some(t)) => t.get(id as usize).and_then(|v| v.as_str()).unwrap_or("").to_string(),
                _ => String::new(),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        if let Some(o) = override_ {
            return ChatTemplate::from_override(o, &bos, &eos);
        }
        if let Some(src) = g.get_str("tokenizer.chat_template") {
            return ChatTemplate::from_source("gguf", src, &bos, &eos).with_context(|| {
                format!("the chat template in {} (use --chat-template NAME to override)", g.path().display())
            });
        }
        let has_token = |t: &str| tokens.is_some_and(|arr| arr.iter().any(|v| v.as_str() == Some(t)));
        let name = [g.get_str("general.name"), g.get_str("general.basename"), g.get_str("general.finetune")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let builtin = choose_builtin(g.architecture().unwrap_or(""), &name, has_token);
        ChatTemplate::builtin(builtin, &bos, &eos)
    }

    /// `--chat-template` value: a built-in name, a file holding a Jinja template, or a template.
    pub fn from_override(o: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        if builtin_source(o).is_some() {
            return ChatTemplate::builtin(o, bos, eos);
        }
        let path = Path::new(o);
        if path.is_file() {
            let src =
                std::fs::read_to_string(path).with_context(|| format!("reading chat template {}", path.display()))?;
            return ChatTemplate::from_source("file", &src, bos, eos)
                .with_context(|| format!("chat template {}", path.display()));
        }
        if o.contains("{{") || o.contains("{%") {
            return ChatTemplate::from_source("inline", o, bos, eos).context("the --chat-template text");
        }
        bail!("unknown chat template '{o}': not a built-in ({}) and no such file", BUILTIN_NAMES.join(", "))
    }

    /// A built-in template by name.
    pub fn builtin(name: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let src = builtin_source(name).ok_or_else(|| {
            anyhow!("unknown built-in chat template '{name}' (built-ins: {})", BUILTIN_NAMES.join(", "))
        })?;
        ChatTemplate::from_source(name, src, bos, eos)
    }

    /// Compile a Jinja template (syntax errors are reported here, not at the first render).
    pub fn from_source(name: &str, source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        // minijinja counts columns in 16 bits, and a syntax error past column 65,535 overflows
        // that count (a panic where overflow checks are on): such lines are refused first.
        if let Some(n) = source.split('\n').position(|l| l.chars().count() >= MAX_LINE_CHARS) {
            bail!("invalid chat template ({name}): line {} is longer than {} characters", n + 1, MAX_LINE_CHARS - 1);
        }
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("chat template syntax configuration: {e}"))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> { Ok(Value::from(strftime_now(&fmt))) });
        env.add_filter("tojson", tojson);
        env.add_global("default_system", VICUNA_SYSTEM);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("invalid chat template ({name}): {e}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            name: name.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Render the conversation (with the generation prompt for the assistant if asked).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> anyhow::Result<String> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// As `render`, with OpenAI-style tool definitions (`tools` in the template; none = undefined).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| anyhow!("chat template ({}): {e}", self.name))?;
        let tools = match tools {
            Some(t) => Value::from(Serde(t)),
            None => Value::UNDEFINED,
        };
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            add_generation_prompt => add_generation_prompt,
            tools => tools,
        };
        tmpl.render(ctx).map_err(|e| {
            // `raise_exception` messages are the template author's words: show them as such.
            match e.kind() {
                ErrorKind::InvalidOperation => {
                    anyhow!("chat template ({}): {}", self.name, e.detail().unwrap_or("invalid operation"))
                }
                _ => anyhow!("chat template ({}) failed: {e}", self.name),
            }
        })
    }

    /// A short name for logs ("gguf", "mistral", "chatml", ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS / EOS texts the template sees.
    pub fn bos_token(&self) -> &str {
        &self.bos
    }
    pub fn eos_token(&self) -> &str {
        &self.eos
    }
}

/// Which built-in fits a model without a template: its special tokens first, then its name, then
/// its architecture.
fn choose_builtin(arch: &str, name: &str, has_token: impl Fn(&str) -> bool) -> &'static str {
    let name = name.to_lowercase();
    if arch.starts_with("gemma") || has_token("<start_of_turn>") {
        return "gemma";
    }
    if has_token("<|start_header_id|>")
        || name.contains("llama-3")
        || name.contains("llama 3")
        || name.contains("llama3")
    {
        return "llama3";
    }
    if has_token("<|im_start|>") || ["openorca", "hermes", "dolphin", "chatml", "qwen"].iter().any(|n| name.contains(n))
    {
        return "chatml";
    }
    if name.contains("vicuna") || name.contains("claude") {
        return "vicuna";
    }
    if name.contains("mistral") || name.contains("mixtral") || arch == "llama" {
        return "mistral";
    }
    "chatml"
}

/// Tokenize a rendered prompt so that it starts with exactly one BOS (see the module docs).
pub fn encode_prompt(tok: &Tokenizer, rendered: &str) -> Result<Vec<u32>> {
    let bos_text = tok.bos().map(|b| tok.token_text(b)).unwrap_or("");
    if tok.adds_bos() && !bos_text.is_empty() && rendered.starts_with(bos_text) {
        tok.encode(rendered, false, true)
    } else {
        tok.encode(rendered, true, true)
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=...)`, as `transformers` defines `tojson`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or("").to_string()),
        },
    };
    let mut out = Vec::new();
    let res = match &indent {
        Some(ind) => {
            let fmt = serde_json::ser::PrettyFormatter::with_indent(ind.as_bytes());
            serde::Serialize::serialize(value, &mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => serde::Serialize::serialize(value, &mut serde_json::Serializer::with_formatter(&mut out, PyJson)),
    };
    res.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(String::from_utf8(out).unwrap_or_default()))
}

/// serde_json formatter with Python's default separators: `", "` and `": "`.
struct PyJson;

impl serde_json::ser::Formatter for PyJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `strftime_now(fmt)` for templates that print today's date (UTC): %Y %m %d %B %b %H %M %S %%.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_date(secs, fmt)
}

fn format_date(secs: u64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::{gemma, mistral, qwen, shared};

    fn msgs(v: &[(&str, &str)]) -> Vec<ChatMessage> {
        v.iter().map(|(r, c)| ChatMessage::new(r, c)).collect()
    }

    fn open(rel: &str) -> GgufFile {
        GgufFile::open(&shared().join(rel)).unwrap()
    }

    #[test]
    fn mistral_instruct_model_card_prompt() {
        let Some(_) = test_support::require_shared() else { return };
        let g = open("models/tiny-mistral-q4_0.gguf");
        let t = ChatTemplate::from_gguf(&g, None).unwrap();
        assert_eq!(t.name(), "gguf");
        let one = msgs(&[("user", "What is your favourite condiment?")]);
        assert_eq!(t.render(&one, true).unwrap(), "<s>[INST] What is your favourite condiment? [/INST]");
        let multi = msgs(&[
            ("user", "What is your favourite condiment?"),
            ("assistant", "Well, I'm quite partial to a good squeeze of fresh lemon juice."),
            ("user", "Do you have mayonnaise recipes?"),
        ]);
        let want =
            "<s>[INST] What is your favourite condiment? [/INST]Well, I'm quite partial to a good squeeze of fresh \
                    lemon juice.</s>[INST] Do you have mayonnaise recipes? [/INST]";
        assert_eq!(t.render(&multi, true).unwrap(), want);
        // The built-in gives the same text.
        let b = ChatTemplate::from_gguf(&g, Some("mistral")).unwrap();
        assert_eq!(b.name(), "mistral");
        assert_eq!(b.render(&one, true).unwrap(), t.render(&one, true).unwrap());
        assert_eq!(b.render(&multi, true).unwrap(), want);
        // And the prompt tokenizes to the reference's "chat" case.
        let ids = encode_prompt(mistral(), &t.render(&one, true).unwrap()).unwrap();
        assert_eq!(ids, [1, 733, 16289, 28793, 1824, 349, 574, 16020, 2076, 2487, 28804, 733, 28748, 16289, 28793]);
    }

    #[test]
    fn mistral_role_order_and_unknown_roles_are_errors() {
        let Some(_) = test_support::require_shared() else { return };
        let g = open("models/tiny-mistral-q4_0.gguf");
        for t in [ChatTemplate::from_gguf(&g, None).unwrap(), ChatTemplate::builtin("mistral", "<s>", "</s>").unwrap()]
        {
            let e = t.render(&msgs(&[("user", "a"), ("user", "b")]), true).unwrap_err().to_string();
            assert!(e.contains("alternate"), "{}: {e}", t.name());
            let e = t.render(&msgs(&[("assistant", "a")]), true).unwrap_err().to_string();
            assert!(e.contains("alternate"), "{}: {e}", t.name());
        }
        let t = ChatTemplate::builtin("chatml", "", "").unwrap();
        let e = t.render(&msgs(&[("user", "a"), ("system", "b")]), true).unwrap_err().to_string();
        assert!(e.contains("system message must come first"), "{e}");
        let e = t.render(&msgs(&[("wizard", "a")]), true).unwrap_err().to_string();
        assert!(e.contains("Unknown role: wizard"), "{e}");
    }

    #[test]
    fn openorca_chatml_with_system_message() {
        let t = ChatTemplate::builtin("chatml", "<s>", "</s>").unwrap();
        let m = msgs(&[
            ("system", "You are MistralOrca, a large language model trained by Alignment Lab AI."),
            ("user", "How are you?"),
        ]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>system\nYou are MistralOrca, a large language model trained by Alignment Lab AI.<|im_end|>\n\
             <|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t.render(&m, false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn claude_chat_vicuna() {
        let t = ChatTemplate::builtin("vicuna", "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "Hi")]), true).unwrap(),
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, \
             detailed, and polite answers to the user's questions. USER: Hi ASSISTANT:"
        );
        let m = msgs(&[("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")]);
        assert_eq!(t.render(&m, true).unwrap(), "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:");
    }

    #[test]
    fn gemma3_has_no_template_and_gets_the_gemma_builtin() {
        let Some(_) = test_support::require_shared() else { return };
        let g = open("vocab/gemma-3-270m.vocab.gguf");
        let t = ChatTemplate::from_gguf(&g, None).unwrap();
        assert_eq!(t.name(), "gemma");
        let text = t.render(&msgs(&[("user", "Write a haiku about the sea.")]), true).unwrap();
        assert_eq!(text, "<bos><start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n");
        // The reference's gemma "chat" case was tokenized from exactly this prompt.
        let ids = encode_prompt(gemma(), &text).unwrap();
        assert_eq!(ids, [2, 105, 2364, 107, 6974, 496, 678, 20517, 1003, 506, 5442, 236761, 106, 107, 105, 4368, 107]);
        let sys = t.render(&msgs(&[("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]), false).unwrap();
        assert_eq!(
            sys,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        );
    }

    #[test]
    fn qwen25_template_renders_with_and_without_tools() {
        let Some(_) = test_support::require_shared() else { return };
        let g = open("vocab/qwen2.5-coder.vocab.gguf");
        let t = ChatTemplate::from_gguf(&g, None).unwrap();
        let m = msgs(&[("system", "You are a helpful assistant."), ("user", "Write a haiku about the sea.")]);
        let text = t.render(&m, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a haiku about the \
             sea.<|im_end|>\n<|im_start|>assistant\n"
        );
        // The reference's qwen "chat" case.
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(shared().join("reference/qwen2.5-coder-0.5b-instruct-q4_k_m.json")).unwrap(),
        )
        .unwrap();
        let case = r["cases"].as_array().unwrap().iter().find(|c| c["name"] == "chat").unwrap();
        assert_eq!(case["text"].as_str().unwrap(), text);
        let want: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(encode_prompt(qwen(), &text).unwrap(), want);
        // Without a system message the template supplies its own.
        let text = t.render(&msgs(&[("user", "Hi")]), true).unwrap();
        assert!(text.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."), "{text}");
        // Tools: rendered with Python's json.dumps separators.
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "str"}}}]);
        let text = t.render_with_tools(&msgs(&[("user", "Weather in Paris?")]), true, Some(&tools)).unwrap();
        // (Key order is whatever the serde_json::Value holds: sorted unless serde_json's
        // preserve_order feature is on.)
        assert!(text.contains(r#""function": {"name": "get_weather", "parameters": {"city": "str"}}"#), "{text}");
        assert!(text.contains(r#""type": "function""#), "{text}");
        assert!(text.contains("<tools>") && text.ends_with("<|im_start|>assistant\n"), "{text}");
    }

    #[test]
    fn python_string_methods_and_helpers() {
        let src = "{{ messages[0].content.strip().upper() }}|{{ 'a,b'.split(',') | length }}|\
                   {{ messages[0].content.startswith('  hi') }}|{{ {'k': [1, 'é']} | tojson }}|{{ {'k': 1} | tojson(indent=2) }}";
        let t = ChatTemplate::from_source("test", src, "", "").unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "  hi there ")]), false).unwrap(),
            "HI THERE|2|True|{\"k\": [1, \"é\"]}|{\n  \"k\": 1\n}"
        );
        assert_eq!(format_date(0, "%d %b %Y %H:%M"), "01 Jan 1970 00:00");
        assert_eq!(format_date(1_709_251_200, "%Y-%m-%d %B"), "2024-03-01 March");
    }

    #[test]
    fn invalid_templates_and_overrides_are_clear_errors() {
        let e =
            ChatTemplate::from_source("gguf", "{% for m in messages %}{{ m.content }", "", "").unwrap_err().to_string();
        assert!(e.contains("invalid chat template (gguf)"), "{e}");
        let e = ChatTemplate::from_override("no-such-template", "", "").unwrap_err().to_string();
        assert!(e.contains("no-such-template") && e.contains("chatml"), "{e}");
        let t = ChatTemplate::from_source("x", "{{ messages[0].content.no_such_method() }}", "", "").unwrap();
        assert!(t.render(&msgs(&[("user", "a")]), false).is_err());
        // A template file.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jinja");
        std::fs::write(&p, "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}").unwrap();
        let t = ChatTemplate::from_override(p.to_str().unwrap(), "", "").unwrap();
        assert_eq!(t.name(), "file");
        assert_eq!(t.render(&msgs(&[("user", "x")]), true).unwrap(), "[user]x");
    }

    /// The built-ins render the reference's chat-shaped `tokenize` strings exactly, and
    /// `encode_prompt` gives the reference's ids for them on every vocabulary (BOS as the model says).
    #[test]
    fn builtins_render_the_reference_strings() {
        let Some(_) = test_support::require_shared() else { return };
        let cases = [
            ("chatml", msgs(&[("system", "You are a helpful assistant."), ("user", "Hi")]), true),
            (
                "vicuna",
                msgs(&[
                    ("system", "A chat between a curious user and an artificial intelligence assistant."),
                    ("user", "Hi"),
                ]),
                true,
            ),
        ];
        for (json, tok) in [
            ("tiny-mistral-q4_0.json", mistral()),
            ("gemma-3-270m-q4_k_m.json", gemma()),
            ("qwen2.5-coder-0.5b-instruct-q4_k_m.json", qwen()),
        ] {
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(shared().join("reference").join(json)).unwrap()).unwrap();
            let entry = |text: &str| -> Vec<u32> {
                let e =
                    r["tokenize"].as_array().unwrap().iter().find(|e| e["text"] == text && e["parse_special"] == true);
                serde_json::from_value(e.unwrap_or_else(|| panic!("{json}: no entry {text:?}"))["ids"].clone()).unwrap()
            };
            let bos = tok.bos().map(|b| tok.token_text(b)).unwrap_or("");
            for (name, m, gen) in &cases {
                let text = ChatTemplate::builtin(name, bos, "").unwrap().render(m, *gen).unwrap();
                assert_eq!(encode_prompt(tok, &text).unwrap(), entry(&text), "{json}: {name}");
            }
            // Gemma's turn format, with the BOS the template writes (or not: same ids).
            let text = ChatTemplate::builtin("gemma", bos, "").unwrap().render(&msgs(&[("user", "Hi")]), true).unwrap();
            let want = entry(text.strip_prefix(bos).unwrap());
            let ids = encode_prompt(tok, &text).unwrap();
            if tok.adds_bos() {
                assert_eq!(ids, want, "{json}: gemma with BOS text");
            } else {
                // A model that adds no BOS keeps the one its template writes.
                assert_eq!((ids[0], &ids[1..]), (tok.bos().unwrap(), &want[..]), "{json}: gemma with BOS text");
            }
            assert_eq!(encode_prompt(tok, text.strip_prefix(bos).unwrap()).unwrap(), want, "{json}: gemma without");
        }
    }

    #[test]
    fn builtin_choice_by_architecture_and_name() {
        let none = |_: &str| false;
        assert_eq!(choose_builtin("gemma3", "", none), "gemma");
        assert_eq!(choose_builtin("llama", "Mistral 7B OpenOrca", none), "chatml");
        assert_eq!(choose_builtin("llama", "Mistral-7B-Claude-Chat", none), "vicuna");
        assert_eq!(choose_builtin("llama", "Mistral 7B Instruct v0.2", none), "mistral");
        assert_eq!(choose_builtin("llama", "Meta Llama 3 8B Instruct", none), "llama3");
        assert_eq!(choose_builtin("qwen2", "Qwen2.5", none), "chatml");
        assert_eq!(choose_builtin("llama", "x", |t| t == "<|im_start|>"), "chatml");
        let t = ChatTemplate::builtin("llama3", "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(
            t.render(&msgs(&[("system", "S"), ("user", "U")]), true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    /// Renders `src` on another thread; `None` if it has not finished within 20 s (a hang).
    fn render_within(src: &str) -> Option<Result<String>> {
        let t = ChatTemplate::from_source("file", src, "<s>", "</s>").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(t.render(&msgs(&[("user", "hi")]), true));
        });
        rx.recv_timeout(std::time::Duration::from_secs(20)).ok()
    }

    #[test]
    fn runaway_templates_end_in_an_error() {
        for src in [
            // 10 billion iterations
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
            // 100 MB in one expression (under minijinja's own repeat limit)
            "{{ 'ab' * 50000000 }}",
            // a string doubled 40 times: a terabyte
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        ] {
            let r = render_within(src).unwrap_or_else(|| panic!("still rendering after 20 s: {src}"));
            let e = r.err().unwrap_or_else(|| panic!("rendered: {src}")).to_string();
            assert!(e.contains("out of fuel"), "{src}: {e}");
        }
    }

    #[test]
    fn real_templates_render_conversations_as_large_as_a_request() {
        // A request body holds at most 4 MiB: as a few long messages, and as many short ones.
        let long: Vec<ChatMessage> = (0..256)
            .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, &"word ".repeat(3200)))
            .collect();
        let short: Vec<ChatMessage> =
            (0..20_000).map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "hi")).collect();
        let mut templates: Vec<ChatTemplate> =
            BUILTIN_NAMES.iter().map(|n| ChatTemplate::builtin(n, "<s>", "</s>").unwrap()).collect();
        templates.push(ChatTemplate::from_gguf(&open("vocab/qwen2.5-coder.vocab.gguf"), None).unwrap());
        for t in &templates {
            for conv in [&long, &short] {
                let text = t.render(conv, true).unwrap_or_else(|e| panic!("{}: {e}", t.name()));
                assert!(text.len() >= conv.iter().map(|m| m.content.len()).sum::<usize>(), "{}", t.name());
            }
        }
    }

    #[test]
    fn a_syntax_error_far_along_a_long_line_is_an_error() {
        for col in [65_534, 65_535, 70_000] {
            // an unterminated string: the lexer's error at the end of the line
            let src = format!("{{{{ '{}", "x".repeat(col));
            let e = std::panic::catch_unwind(|| ChatTemplate::from_source("file", &src, "", "").map(|_| ()))
                .unwrap_or_else(|_| panic!("panicked on a syntax error at column {col}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid chat template"), "{e}");
        }
        // Many long lines are fine.
        let long_lines = format!("{}\n", "y".repeat(60_000)).repeat(3);
        assert!(ChatTemplate::from_source("file", &long_lines, "", "").is_ok());
    }
}
