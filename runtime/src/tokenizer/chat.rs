//! Chat templates: `tokenizer.chat_template` rendered with minijinja (Python-compatible string
//! methods), or a built-in one chosen by architecture/model name. CONTRACT (owner: issue #4).

use crate::gguf::GgufFile;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    _private: (),
}

impl ChatTemplate {
    /// The model's template, or a built-in chosen by architecture/name, or `override_`
    /// (a built-in name such as "chatml", "mistral", "vicuna", "gemma", "llama3", or a file path).
    pub fn from_gguf(g: &GgufFile, override_: Option<&str>) -> anyhow::Result<ChatTemplate> {
        let _ = (g, override_);
        todo!()
    }
    /// Render the conversation (with the generation prompt for the assistant if asked).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> anyhow::Result<String> {
        let _ = (messages, add_generation_prompt);
        todo!()
    }
    /// A short name for logs ("gguf", "mistral", "chatml", ...).
    pub fn name(&self) -> &str {
        todo!()
    }
}
