//! One assistant turn for the routes that take a conversation in another API's shape (OpenAI's
//! Responses API, Anthropic's Messages API): once their input is the chat route's messages and
//! tools, it is rendered, checked against the context and queued here as
//! `/v1/chat/completions` does it, and the reply is split into text and tool calls the same way
//! (`server::tools`).

use super::error::ApiError;
use super::generation::{self, GenEvent, PromptCache};
use super::routes::{blocking, generate_request, note_requested_model};
use super::tools::ToolPlan;
use super::types::Sampling;
use super::AppState;
use llamafile_engine::grammar::Grammar;
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::GenerateRequest;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc::Receiver;

pub struct TurnRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<ToolPlan>,
    /// A constraint on the reply other than the tools' (structured output).
    pub grammar: Option<Grammar>,
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    /// The request's `model` (this server answers with its one model whatever it names).
    pub model: Option<String>,
    /// The request field errors about the conversation name (`input`, `messages`).
    pub param: &'static str,
    /// llama.cpp's `cache_prompt` (`false`: evaluate the whole prompt).
    pub cache: PromptCache,
}

/// A queued turn: its events, and what is known before it runs.
pub struct Turn {
    pub rx: Receiver<GenEvent>,
    pub prompt_tokens: usize,
    pub tools: Option<ToolPlan>,
}

/// Render, check and queue the turn.
pub async fn start(st: &Arc<AppState>, t: TurnRequest) -> Result<Turn, ApiError> {
    if t.messages.is_empty() {
        return Err(ApiError::invalid_field(t.param, format!("'{}' holds no message", t.param)));
    }
    let format = super::tools::Format::of_template(&st.model.template_source());
    let (messages, tool_list) = super::tools::for_template(format, t.tools.as_ref(), t.messages);
    let model = st.model.clone();
    let param = t.param;
    let prompt =
        blocking(move || super::model::chat_prompt_with_tools(&*model, &messages, tool_list.as_ref())).await?.map_err(
            |e| ApiError::invalid_field(param, format!("the chat template could not render this conversation: {e:#}")),
        )?;
    let prompt_tokens = prompt.len();
    let grammar = t.tools.as_ref().and_then(|p| p.grammar.clone()).or(t.grammar);
    let gen = GenerateRequest { grammar, ..generate_request(st, prompt, param, t.max_tokens, t.sampling)? };
    let rx = generation::start(st, gen, t.cache);
    note_requested_model(st, t.model.as_deref());
    Ok(Turn { rx, prompt_tokens, tools: t.tools })
}

/// The reply's text before any tool call, and the calls (OpenAI chat objects:
/// `{"id", "type": "function", "function": {"name", "arguments"}}`).
pub fn split_calls(tools: Option<&ToolPlan>, text: String) -> (String, Vec<Value>) {
    match tools.and_then(|t| t.parse(&text)) {
        Some((before, calls)) => (before, calls),
        None => (text, Vec::new()),
    }
}
