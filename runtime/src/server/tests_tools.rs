//! Tool calls over HTTP with the fake model given Qwen's chat template (the Hermes format) and a
//! scripted reply: the non-streamed message, the streamed `delta.tool_calls`, and the
//! conversation with a call and its result rendered through the template.

use super::testing::FakeModel;
use super::tests::{post, rt};
use super::AppState;
use llamafile_engine::tokenizer::chat::ChatTemplate;
use serde_json::{json, Value};
use std::sync::Arc;

const CALLS: &str = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";

/// A server whose every reply is `reply`, with Qwen's template.
async fn server(template: &Arc<ChatTemplate>, reply: &str) -> std::net::SocketAddr {
    let mut m = FakeModel::new();
    m.n_ctx = 4096;
    m.template = Some(template.clone());
    m.reply = Some(reply.into());
    let mut state = AppState::new(Arc::new(m), 1, llamafile_engine::SamplingParams::default());
    Arc::get_mut(&mut state).unwrap().log = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = super::routes::router(state);
    tokio::spawn(super::listen::serve(listener, app, Default::default(), std::future::pending()));
    addr
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn request(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}], "tools": tools(), "stream": stream})
}

#[test]
fn calls_in_one_message() {
    let Some(t) = super::tools::qwen_template().map(Arc::new) else { return };
    rt().block_on(async {
        let a = server(&t, CALLS).await;
        let j = post(a, "/v1/chat/completions", request(false)).await.json();
        let c = &j["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{j}");
        assert_eq!(c["message"]["content"], "Checking.");
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\": \"Oslo\"}");
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        // parallel_tool_calls false: the first call only.
        let mut one = request(false);
        one["parallel_tool_calls"] = json!(false);
        let j = post(a, "/v1/chat/completions", one).await.json();
        assert_eq!(j["choices"][0]["message"]["tool_calls"].as_array().unwrap().len(), 1, "{j}");
        // response_format beside callable tools is refused, not ignored; with tool_choice none
        // it constrains the text.
        let mut both = request(false);
        both["response_format"] = json!({"type": "json_object"});
        let j =
            super::tests::assert_error(&post(a, "/v1/chat/completions", both.clone()).await, 400, "tool_choice 'none'");
        assert_eq!(j["error"]["param"], "response_format");
        both["tool_choice"] = json!("none");
        assert_eq!(post(a, "/v1/chat/completions", both).await.status, 200);
    });
}

#[test]
fn calls_streamed_as_openai_does() {
    let Some(t) = super::tools::qwen_template().map(Arc::new) else { return };
    rt().block_on(async {
        let a = server(&t, CALLS).await;
        let r = post(a, "/v1/chat/completions", request(true)).await;
        let events = r.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let (mut content, mut calls, mut finish) = (String::new(), Vec::<(String, String, String)>::new(), None);
        for c in &chunks {
            let d = &c["choices"][0]["delta"];
            content.push_str(d["content"].as_str().unwrap_or(""));
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let i = t["index"].as_u64().unwrap() as usize;
                if let Some(id) = t["id"].as_str() {
                    assert_eq!(
                        (i, t["type"].as_str(), t["function"]["arguments"].as_str()),
                        (calls.len(), Some("function"), Some("")),
                        "{t}"
                    );
                    calls.push((id.to_string(), t["function"]["name"].as_str().unwrap().to_string(), String::new()));
                } else {
                    calls[i].2.push_str(t["function"]["arguments"].as_str().unwrap());
                }
            }
            if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(content.trim_end(), "Checking.");
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].1.as_str(), calls[0].2.as_str()), ("get_weather", "{\"city\": \"Paris\"}"));
        assert_eq!(calls[1].2, "{\"city\": \"Oslo\"}");
        let fragments = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .is_some_and(|a| !a.is_empty())
            })
            .count();
        assert!(fragments > 2, "the arguments come in pieces as they are written ({fragments} chunks)");

        // Text only: streamed as content, finish_reason stop.
        let a = server(&t, "No tool is needed: 2 < 3.").await;
        let r = post(a, "/v1/chat/completions", request(true)).await;
        let chunks: Vec<Value> =
            r.events().iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
        let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, "No tool is needed: 2 < 3.");
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    });
}

#[test]
fn a_call_and_its_result_go_back_through_the_template() {
    let Some(t) = super::tools::qwen_template().map(Arc::new) else { return };
    rt().block_on(async {
        let a = server(&t, "It is sunny in Paris.").await;
        let call = json!({"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
        let body = json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 21 C"}
        ], "tools": tools(), "max_tokens": 50});
        let j = post(a, "/v1/chat/completions", body.clone()).await.json();
        assert_eq!(j["choices"][0]["message"]["content"], "It is sunny in Paris.", "{j}");
        assert_eq!(j["choices"][0]["finish_reason"], "stop");
        // The rendered prompt holds the call and the result in Qwen's form (the fake's tokens
        // are bytes, so the prompt length tells the template rendered them).
        let msgs: Vec<llamafile_engine::tokenizer::chat::ChatMessage> = vec![
            llamafile_engine::tokenizer::chat::ChatMessage::new("user", "Weather in Paris?"),
            llamafile_engine::tokenizer::chat::ChatMessage {
                tool_calls: Some(json!([{"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])),
                ..llamafile_engine::tokenizer::chat::ChatMessage::new("assistant", "")
            },
            llamafile_engine::tokenizer::chat::ChatMessage { tool_call_id: Some("call_7".into()), ..llamafile_engine::tokenizer::chat::ChatMessage::new("tool", "sunny, 21 C") },
        ];
        let prompt = t.render_with_tools(&msgs, true, Some(&tools())).unwrap();
        assert!(prompt.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
        assert!(prompt.contains("<tool_response>\nsunny, 21 C\n</tool_response>"));
        assert_eq!(j["usage"]["prompt_tokens"].as_u64().unwrap() as usize, prompt.len() + 1, "the prompt is the template's (plus BOS)");
        // Without tools in the request, the call and its result are still taken and rendered.
        let mut no_tools = body;
        no_tools.as_object_mut().unwrap().remove("tools");
        let j = post(a, "/v1/chat/completions", no_tools).await.json();
        let without = t.render(&msgs, true).unwrap();
        assert!(without.contains("<tool_response>\nsunny, 21 C\n</tool_response>"));
        assert_eq!(j["usage"]["prompt_tokens"].as_u64().unwrap() as usize, without.len() + 1, "{j}");
    });
}
