use super::*;
use crate::server::tools::{check_calls, plan, stream::ToolStream, ToolPlan};
use llamafile_engine::tokenizer::chat::{ChatMessage, ChatTemplate};

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
    ])
}

/// Qwen2.5-Coder's own template (from the shared vocabulary file).
pub(crate) fn qwen_template() -> Option<ChatTemplate> {
    let dir = test_support::require_shared()?;
    let g = llamafile_format::gguf::GgufFile::open(&dir.join("vocab/qwen2.5-coder.vocab.gguf")).unwrap();
    Some(ChatTemplate::from_gguf(&g, None).unwrap())
}

fn names() -> Vec<String> {
    vec!["get_weather".into(), "get_time".into()]
}

fn tool_plan(format: Format, choice: &str) -> ToolPlan {
    plan(Some(&weather_tools()), Some(&json!(choice)), None, format, None).unwrap().unwrap()
}

/// The conversation of a tool round trip: a question, the assistant's call, its result.
fn round_trip(format: Format) -> Vec<ChatMessage> {
    let id = if format == Format::Mistral { "abcDEF123" } else { "call_1" };
    let calls = json!([{"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    vec![
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage { tool_calls: Some(check_calls(&calls, 1).unwrap()), ..ChatMessage::new("assistant", "") },
        ChatMessage {
            tool_call_id: Some(id.into()),
            name: Some("get_weather".into()),
            ..ChatMessage::new("tool", "18 C, sunny")
        },
    ]
}

/// Every split of `reply` into pieces of `step` bytes (at char boundaries) streams deltas that
/// add up to what the whole reply parses to.
fn check_streaming(p: &ToolPlan, reply: &str, step: usize) -> (String, Vec<(String, String)>) {
    let mut s = ToolStream::default();
    let mut deltas = Vec::new();
    let mut i = 0;
    while i < reply.len() {
        let mut j = (i + step).min(reply.len());
        while !reply.is_char_boundary(j) {
            j += 1;
        }
        deltas.extend(s.push(p, &reply[i..j]));
        i = j;
    }
    deltas.extend(s.finish(p));
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for d in &deltas {
        if let Some(c) = d["content"].as_str() {
            assert!(calls.is_empty(), "content after a call: {deltas:?}");
            content.push_str(c);
        }
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert_eq!(tc["type"], "function");
                assert!(
                    tc["id"].as_str().is_some_and(|id| !id.is_empty()),
                    "the first delta of a call has its id: {tc}"
                );
                assert_eq!(tc["function"]["arguments"], "", "the first delta has empty arguments");
                calls.push((tc["function"]["name"].as_str().unwrap().to_string(), String::new()));
            } else {
                assert!(
                    tc.get("id").is_none() && tc["function"].get("name").is_none(),
                    "later deltas carry arguments only: {tc}"
                );
                calls[i].1.push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    let whole = p.read(reply, true);
    assert_eq!(calls.len(), whole.calls.len(), "{reply:?} in pieces of {step}");
    for (got, want) in calls.iter().zip(&whole.calls) {
        assert_eq!((&got.0, &got.1), (&want.name, &want.args), "{reply:?} in pieces of {step}");
    }
    if calls.is_empty() {
        assert_eq!(content, whole.content, "{reply:?} in pieces of {step}");
    } else {
        assert_eq!(content.trim_end(), whole.content, "{reply:?} in pieces of {step}");
    }
    (content, calls)
}

fn stream_all_ways(p: &ToolPlan, reply: &str) -> (String, Vec<(String, String)>) {
    let whole = check_streaming(p, reply, reply.len().max(1));
    for step in [1, 2, 3, 7] {
        assert_eq!(check_streaming(p, reply, step), whole);
    }
    whole
}

#[test]
fn formats_are_picked_from_the_template() {
    let Some(t) = qwen_template() else { return };
    assert_eq!(Format::of_template(t.source()), Format::Hermes);
    assert_eq!(Format::of_template(MISTRAL_V3), Format::Mistral);
    assert_eq!(Format::of_template(LLAMA31), Format::Llama3);
    for builtin in llamafile_engine::tokenizer::chat::BUILTIN_NAMES {
        let t = ChatTemplate::builtin(builtin, "<s>", "</s>").unwrap();
        assert_eq!(Format::of_template(t.source()), Format::Generic, "{builtin}");
    }
}

#[test]
fn hermes_prompt_grammar_and_parsing() {
    let Some(t) = qwen_template() else { return };
    let p = tool_plan(Format::Hermes, "auto");
    let prompt = t.render_with_tools(&p.messages(round_trip(Format::Hermes)), true, Some(&p.tools)).unwrap();
    assert!(prompt.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), "{prompt}");
    assert!(
        prompt.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
        "{prompt}"
    );
    assert!(prompt.contains("<tool_response>\n18 C, sunny\n</tool_response>"), "{prompt}");

    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let two =
        format!("{call}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{\"zone\": \"CET\"}}}}\n</tool_call>");
    // auto: free text, and from `<tool_call>` on, calls that match the schemas.
    let g = p.grammar.as_ref().unwrap();
    for ok in [
        "Just text, no call.",
        call,
        &two,
        &format!("Let me check.\n{call}"),
        "{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}",
    ] {
        assert!(g.accepts(ok), "{ok}");
    }
    for bad in [
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Paris\"}}",
        "<tool_call>\n{\"name\": \"nope\"",
        "<tool_call> {",
    ] {
        assert!(!g.accepts(bad), "{bad}");
    }
    // required: calls from the first byte; parallel false: one.
    let req = tool_plan(Format::Hermes, "required");
    assert!(req.grammar.as_ref().unwrap().accepts(&two));
    assert!(!req.grammar.as_ref().unwrap().accepts("Sure"));
    let one =
        plan(Some(&weather_tools()), Some(&json!("required")), Some(false), Format::Hermes, None).unwrap().unwrap();
    assert!(one.grammar.as_ref().unwrap().accepts(call) && !one.grammar.as_ref().unwrap().accepts(&two));

    let r = Format::Hermes.parse(&format!("Let me check.\n{two}"), true, &names());
    assert_eq!(r.content, "Let me check.");
    assert_eq!(
        r.calls.iter().map(|c| (c.name.as_str(), c.args.as_str(), c.done)).collect::<Vec<_>>(),
        [("get_weather", "{\"city\": \"Paris\"}", true), ("get_time", "{\"zone\": \"CET\"}", true)]
    );
    let (content, calls) = stream_all_ways(&p, &format!("Let me check.\n{two}"));
    assert_eq!((content.trim_end(), calls.len()), ("Let me check.", 2));
    stream_all_ways(&p, "No call: a < b and <tool is not a tag.");
    stream_all_ways(&p, "  {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}");
    // A call in a code fence, laid out over lines (what Qwen2.5-Coder 0.5B often writes).
    let fenced = "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Paris\"\n  }\n}\n```";
    assert!(g.accepts(fenced), "{fenced}");
    assert!(!g.accepts("```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {}\n}\n```"), "city is required");
    let (text, calls) = stream_all_ways(&p, fenced);
    assert_eq!((text.as_str(), calls.len()), ("", 1));
    assert_eq!(calls[0].1, "{\n    \"city\": \"Paris\"\n  }");
    let (text, calls) = stream_all_ways(&p, "```python\nprint(1)\n```");
    assert_eq!((text.as_str(), calls.len()), ("```python\nprint(1)\n```", 0));
    assert!(g.accepts("```python\nprint(1)\n```"), "a code block is free text");
    let (text, calls) = stream_all_ways(&p, "{\"answer\": 42}");
    assert_eq!((text.as_str(), calls.len()), ("{\"answer\": 42}", 0), "JSON that is no call is text");
}

#[test]
fn mistral_prompt_grammar_and_parsing() {
    let t = ChatTemplate::from_source("mistral-v3", MISTRAL_V3, "<s>", "</s>").unwrap();
    let p = tool_plan(Format::Mistral, "auto");
    let prompt = t.render_with_tools(&p.messages(round_trip(Format::Mistral)), true, Some(&p.tools)).unwrap();
    assert!(
        prompt.starts_with("<s>[AVAILABLE_TOOLS] [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
        "{prompt}"
    );
    assert!(prompt.contains("[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcDEF123\"}]</s>"), "{prompt}");
    assert!(
        prompt.contains("[TOOL_RESULTS] {\"content\": \"18 C, sunny\", \"call_id\": \"abcDEF123\"}[/TOOL_RESULTS]"),
        "{prompt}"
    );

    let two = "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]";
    let g = p.grammar.as_ref().unwrap();
    assert!(
        g.accepts("Plain answer.")
            && g.accepts(two)
            && g.accepts("[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}]")
    );
    assert!(!g.accepts("[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {}}]"), "city is required");
    // Forced, with the trigger a control token: the grammar asks for the token itself.
    let forced = Format::Mistral
        .grammar(&Format::Mistral.call_schema("get_time", &json!({"type": "object"})), true, true, Some(5))
        .unwrap();
    assert!(
        !forced.accepts("[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]"),
        "the text is not the control token"
    );

    let r = Format::Mistral.parse(two, true, &names());
    assert_eq!(r.calls.len(), 2);
    assert_eq!(r.calls[1].args, "{\"zone\": \"CET\"}");
    let (_, calls) = stream_all_ways(&p, two);
    assert_eq!(calls[0], ("get_weather".to_string(), "{\"city\": \"Paris\"}".to_string()));
    stream_all_ways(&p, "No [TOOL_CALLS here, [brackets] are text.");
}

/// With `required`, a trigger that is a control token is asked for as that token (Qwen's
/// `<|im_start|>` stands in for Mistral's `[TOOL_CALLS]`, which the shared vocabularies lack).
#[test]
fn forced_calls_start_with_the_control_token() {
    let Some(dir) = test_support::require_shared() else { return };
    let g = llamafile_format::gguf::GgufFile::open(&dir.join("vocab/qwen2.5-coder.vocab.gguf")).unwrap();
    let tok = llamafile_engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let f = llamafile_engine::grammar::Factory::new(&tok).unwrap();
    let id = tok.encode("<|im_start|>", false, true).unwrap()[0];
    let call = Format::Mistral.call_schema(
        "get_time",
        &json!({"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}),
    );
    let grammar = Format::Mistral.grammar(&call, false, true, Some(id)).unwrap();
    let mut m = f.matcher(&grammar).unwrap();
    let first = m.allowed().unwrap();
    let allowed: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&i| first.is_allowed(i)).collect();
    assert_eq!(allowed, [id], "only the control token may start the reply");
    use llamafile_engine::sampler::TokenConstraint;
    m.accept(id).unwrap();
    for t in tok.encode("[{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]", false, false).unwrap() {
        assert!(m.allowed().unwrap().is_allowed(t), "{:?}", tok.token_text(t));
        m.accept(t).unwrap();
    }
    assert!(m.is_accepting());
}

#[test]
fn llama3_prompt_grammar_and_parsing() {
    let t = ChatTemplate::from_source("llama31", LLAMA31, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let p = tool_plan(Format::Llama3, "auto");
    let prompt = t.render_with_tools(&p.messages(round_trip(Format::Llama3)), true, Some(&p.tools)).unwrap();
    assert!(
        prompt.contains("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"),
        "{prompt}"
    );
    assert!(prompt.contains("<|start_header_id|>ipython<|end_header_id|>\n\n\"18 C, sunny\"<|eot_id|>"), "{prompt}");
    assert!(prompt.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"), "{prompt}");

    let call = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    let g = p.grammar.as_ref().unwrap();
    assert!(g.accepts(call) && g.accepts(&format!("<|python_tag|>{call}")) && g.accepts("It is sunny."));
    assert!(
        !g.accepts("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"),
        "Llama names them parameters"
    );
    let r = Format::Llama3.parse(&format!("<|python_tag|>{call}"), true, &names());
    assert_eq!((r.content.as_str(), r.calls.len(), r.calls[0].args.as_str()), ("", 1, "{\"city\": \"Paris\"}"));
    let r = Format::Llama3.parse(
        &format!("{call}; {{\"name\": \"get_time\", \"parameters\": {{\"zone\": \"CET\"}}}}"),
        true,
        &names(),
    );
    assert_eq!(r.calls.len(), 2, "calls separated by ';'");
    stream_all_ways(&p, call);
    stream_all_ways(&p, "The weather is {unknown}.");
}

#[test]
fn generic_prompt_grammar_and_parsing() {
    let t = ChatTemplate::builtin("mistral", "<s>", "</s>").unwrap();
    let p = tool_plan(Format::Generic, "auto");
    // The built-in Mistral template refuses a system turn and wants the roles to alternate.
    let msgs = crate::server::model::fold_system(&p.messages(round_trip(Format::Generic))).unwrap();
    let prompt = t.render_with_tools(&msgs, true, None).unwrap();
    assert!(
        prompt.contains("You can call these tools")
            && prompt.contains("{\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}]}"),
        "{prompt}"
    );
    assert!(prompt.contains("\"tool_response\""), "{prompt}");

    let calls = "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]}";
    let text = "{\"response\": \"It is \\\"sunny\\\" été.\"}";
    let g = p.grammar.as_ref().unwrap();
    assert!(g.accepts(calls), "{calls}");
    assert!(g.accepts(text), "{text}");
    assert!(!g.accepts("It is sunny."));
    let req = tool_plan(Format::Generic, "required");
    assert!(req.grammar.as_ref().unwrap().accepts(calls) && !req.grammar.as_ref().unwrap().accepts(text));
    let one = plan(Some(&weather_tools()), None, Some(false), Format::Generic, None).unwrap().unwrap();
    assert!(!one.grammar.as_ref().unwrap().accepts(calls), "one call with parallel_tool_calls false");

    assert_eq!(Format::Generic.parse(text, true, &names()).content, "It is \"sunny\" été.");
    let (content, none) = stream_all_ways(&p, text);
    assert_eq!((content.as_str(), none.len()), ("It is \"sunny\" été.", 0));
    let (_, two) = stream_all_ways(&p, calls);
    assert_eq!(two.len(), 2);
    assert_eq!(Format::Generic.parse("not JSON", true, &names()).content, "not JSON");
}

#[test]
fn partial_replies_only_grow() {
    // Every prefix of a reply reads to content and calls that the next prefix extends.
    let reply =
        "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa\\\"ris\"}}\n</tool_call>";
    let mut last = Parsed::default();
    for end in (0..=reply.len()).filter(|&e| reply.is_char_boundary(e)) {
        let p = Format::Hermes.parse(&reply[..end], false, &names());
        assert!(p.content.starts_with(&last.content) || last.content.starts_with(&p.content), "{end}: {p:?}");
        assert!(p.calls.len() >= last.calls.len(), "{end}");
        for (a, b) in p.calls.iter().zip(&last.calls) {
            assert!(a.name == b.name && a.args.starts_with(&b.args), "{end}: {a:?} after {b:?}");
        }
        last = p;
    }
    assert!(last.calls[0].done);
}

/// A Mistral v0.3-style template (tools in `[AVAILABLE_TOOLS]` before the last user message,
/// calls after `[TOOL_CALLS]` with 9-character ids, results in `[TOOL_RESULTS]`).
const MISTRAL_V3: &str = r#"{{- bos_token }}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {%- if tools and loop.first %}
            {{- "[AVAILABLE_TOOLS] " + (tools | tojson) + "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {{- "[INST] " + message.content + "[/INST]" }}
    {%- elif message.role == "assistant" and message.tool_calls %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.id is not string or tool_call.id | length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- '{"name": "' + tool_call.function.name + '", "arguments": ' + (tool_call.function.arguments | tojson) + ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ", " }}{%- endif %}
        {%- endfor %}
        {{- "]" + eos_token }}
    {%- elif message.role == "assistant" %}
        {{- " " + message.content + eos_token }}
    {%- elif message.role == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + (message.content | tojson) + ', "call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}"#;

/// A Llama 3.1-style template (tools described in the first user message, calls as
/// `{"name": ..., "parameters": ...}`, results in the `ipython` role).
const LLAMA31: &str = r#"{{- bos_token }}
{%- for message in messages %}
    {%- if message.role == "user" and tools and loop.first %}
        {{- "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, respond with a JSON for a function call with its proper arguments.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.\n\n" }}
        {%- for t in tools %}{{- t | tojson(indent=4) + "\n\n" }}{%- endfor %}
        {{- message.content + "<|eot_id|>" }}
    {%- elif message.role == "assistant" and message.tool_calls %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" + '{"name": "' + tool_call.name + '", "parameters": ' + (tool_call.arguments | tojson) + "}<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" + (message.content | tojson) + "<|eot_id|>" }}
    {%- else %}
        {{- "<|start_header_id|>" + message.role + "<|end_header_id|>\n\n" + message.content + "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}{%- endif %}"#;
