//! What the server needs from a model, as a trait over the engine's API (`crate::engine`), so
//! that routes, queueing and cancellation are unit-tested with a small fake model
//! (`server::testing`) and run on the real engine in the binary.

use crate::engine::{Engine, GenerateRequest, GenerationStats, Session};
use crate::tokenizer::chat::ChatMessage;
use std::sync::Arc;

pub trait Model: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Context length of each session.
    fn n_ctx(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> anyhow::Result<Vec<u32>>;
    fn detokenize(&self, ids: &[u32]) -> String;
    /// The bytes one token stands for.
    fn token_bytes(&self, id: u32) -> Vec<u8>;
    fn bos(&self) -> Option<u32>;
    fn adds_bos(&self) -> bool;
    /// The conversation rendered with the chat template, ready for the assistant's turn.
    fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String>;
    /// `render_chat` with OpenAI tool definitions for the template (`server::tools`).
    fn render_chat_with_tools(&self, messages: &[ChatMessage], tools: &serde_json::Value) -> anyhow::Result<String> {
        let _ = tools;
        anyhow::bail!("this model's chat template cannot describe tools ({} messages)", messages.len())
    }
    fn template_name(&self) -> String;
    /// A session with its own KV cache.
    fn new_session(&self) -> Box<dyn ModelSession>;
}

pub trait ModelSession: Send {
    fn generate(&mut self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> anyhow::Result<GenerationStats>;
}

/// The real engine behind the trait.
pub struct EngineModel(pub Arc<Engine>);

impl Model for EngineModel {
    fn name(&self) -> &str {
        self.0.model_name()
    }
    fn n_ctx(&self) -> usize {
        self.0.n_ctx()
    }
    fn vocab_size(&self) -> usize {
        self.0.tokenizer().vocab_size()
    }
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> anyhow::Result<Vec<u32>> {
        self.0.tokenizer().encode(text, add_special, parse_special)
    }
    fn detokenize(&self, ids: &[u32]) -> String {
        self.0.tokenizer().decode(ids)
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.0.tokenizer().token_bytes(id)
    }
    fn bos(&self) -> Option<u32> {
        self.0.tokenizer().bos()
    }
    fn adds_bos(&self) -> bool {
        self.0.tokenizer().adds_bos()
    }
    fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        self.0.chat_template().render(messages, true)
    }
    fn render_chat_with_tools(&self, messages: &[ChatMessage], tools: &serde_json::Value) -> anyhow::Result<String> {
        self.0.chat_template().render_with_tools(messages, true, Some(tools))
    }
    fn template_name(&self) -> String {
        self.0.chat_template().name().to_string()
    }
    fn new_session(&self) -> Box<dyn ModelSession> {
        Box::new(self.0.new_session())
    }
}

impl ModelSession for Session {
    fn generate(&mut self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> anyhow::Result<GenerationStats> {
        Session::generate(self, req, on_text)
    }
}

/// A conversation's prompt: the template's text tokenized with special tokens recognised (the
/// template writes them as text, e.g. `<s>[INST]`), and a BOS put in front when the model wants
/// one and the template did not write it. A template that refuses a system message (Mistral's
/// does) gets it folded into the first user message instead, as a user would expect.
pub fn chat_prompt(model: &dyn Model, messages: &[ChatMessage]) -> anyhow::Result<Vec<u32>> {
    chat_prompt_with_tools(model, messages, None)
}

/// `chat_prompt`, with tool definitions for the template when given.
pub fn chat_prompt_with_tools(model: &dyn Model, messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> anyhow::Result<Vec<u32>> {
    let render = |m: &[ChatMessage]| match tools {
        Some(t) => model.render_chat_with_tools(m, t),
        None => model.render_chat(m),
    };
    let text = match render(messages) {
        Ok(t) => t,
        Err(e) => match fold_system(messages) {
            Some(folded) => render(&folded).map_err(|_| e)?,
            None => return Err(e),
        },
    };
    let mut ids = model.tokenize(&text, false, true)?;
    if model.adds_bos() {
        if let Some(bos) = model.bos() {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
    }
    Ok(ids)
}

/// The system messages joined into the first user message; `None` if there is no system message.
fn fold_system(messages: &[ChatMessage]) -> Option<Vec<ChatMessage>> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    if system.is_empty() {
        return None;
    }
    let mut out: Vec<ChatMessage> = messages.iter().filter(|m| m.role != "system").cloned().collect();
    let sys = system.join("\n\n");
    match out.iter_mut().find(|m| m.role == "user") {
        Some(first_user) => first_user.content = format!("{sys}\n\n{}", first_user.content),
        None => out.insert(0, ChatMessage { role: "user".into(), content: sys }),
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testing::FakeModel;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn system_is_folded_when_the_template_refuses_it() {
        let m = FakeModel::new(); // its template refuses "system", like Mistral's
        let ids = chat_prompt(&m, &[msg("system", "Be brief."), msg("user", "Hi")]).unwrap();
        let text = m.detokenize(&ids);
        assert_eq!(text, "<s>[INST] Be brief.\n\nHi [/INST]");
        assert_eq!(ids[0], crate::server::testing::BOS);
        assert_eq!(ids.iter().filter(|&&t| t == crate::server::testing::BOS).count(), 1, "one BOS");
    }

    #[test]
    fn template_errors_without_system_are_reported() {
        let m = FakeModel::new();
        let e = chat_prompt(&m, &[msg("assistant", "x")]).unwrap_err();
        assert!(e.to_string().contains("alternate"), "{e}");
    }
}
