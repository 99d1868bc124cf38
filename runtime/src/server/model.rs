//! What the server needs from a model, as a trait over the engine's API (`llamafile_engine`), so
//! that routes, queueing and cancellation are unit-tested with a small fake model
//! (`server::testing`) and run on the real engine in the binary.

use llamafile_engine::fim::{FimInput, FimTokens};
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::{Engine, GenerateOptions, GenerateRequest, GenerationStats, Output, Session};
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
    /// The chat template's Jinja text ("" when unknown); the tool-call format is read from it.
    fn template_source(&self) -> String {
        String::new()
    }
    /// A session with its own KV cache.
    fn new_session(&self) -> Box<dyn ModelSession>;

    // Embeddings (`server::embeddings`).
    /// Width of the embeddings (0 for a model that computes none).
    fn n_embd(&self) -> usize {
        0
    }
    /// The pooling the model declares (`None`: it declares none); an error for one that cannot
    /// be served (rank).
    fn declared_pooling(&self) -> anyhow::Result<Option<llamafile_engine::embed::Pooling>> {
        Ok(None)
    }
    /// A session for embeddings only, apart from the chat slots.
    fn embedder(&self) -> anyhow::Result<Box<dyn super::embeddings::Embedder>> {
        anyhow::bail!("this model computes no embeddings")
    }
    /// A fill-in-the-middle prompt of at most `budget` tokens (`engine::fim`); the inner error
    /// says what the model lacks or what does not fit.
    fn fim_prompt(&self, input: &FimInput, budget: usize) -> anyhow::Result<Result<Vec<u32>, String>> {
        let _ = (input, budget);
        Ok(Err(self
            .fim_tokens()
            .required()
            .err()
            .unwrap_or_else(|| "this model cannot build a fill-in-the-middle prompt".into())))
    }
    /// The model's fill-in-the-middle markers.
    fn fim_tokens(&self) -> FimTokens {
        FimTokens::default()
    }
}

pub trait ModelSession: Send {
    fn generate(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<GenerationStats>;
    /// Forget the cached tokens (the next prompt is evaluated from its start).
    fn clear(&mut self);
    /// `generate` with several choices and log-probabilities (`Session::generate_with`). This
    /// default runs `generate` once per choice and has no log-probabilities.
    fn generate_with(
        &mut self,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        out: &mut dyn FnMut(Output) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        anyhow::ensure!(opts.logprobs.is_none(), "this model reports no log-probabilities");
        let mut total: Option<GenerationStats> = None;
        for choice in 0..opts.n.max(1) {
            let mut one = req.clone();
            one.sampling.seed = llamafile_engine::sampler::choice_seed(req.sampling.seed, choice);
            let st = self.generate(&one, &mut |t| out(Output::Text(choice, t)))?;
            let cancelled = st.stop == llamafile_engine::StopReason::Cancelled || !out(Output::Done(choice, &st));
            let t =
                total.get_or_insert_with(|| GenerationStats { generated_tokens: 0, generation_ms: 0.0, ..st.clone() });
            t.generated_tokens += st.generated_tokens;
            t.generation_ms += st.generation_ms;
            t.stop = if cancelled { llamafile_engine::StopReason::Cancelled } else { st.stop };
            if cancelled {
                break;
            }
        }
        Ok(total.expect("at least one choice"))
    }
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
    fn template_source(&self) -> String {
        self.0.chat_template().source().to_string()
    }
    fn new_session(&self) -> Box<dyn ModelSession> {
        Box::new(self.0.new_session())
    }
    fn n_embd(&self) -> usize {
        self.0.n_embd()
    }
    fn declared_pooling(&self) -> anyhow::Result<Option<llamafile_engine::embed::Pooling>> {
        self.0.pooling()
    }
    fn embedder(&self) -> anyhow::Result<Box<dyn super::embeddings::Embedder>> {
        Ok(Box::new(self.0.try_new_session()?))
    }
    fn fim_prompt(&self, input: &FimInput, budget: usize) -> anyhow::Result<Result<Vec<u32>, String>> {
        self.0.fim_prompt(input, budget)
    }
    fn fim_tokens(&self) -> FimTokens {
        self.0.fim_tokens()
    }
}

impl ModelSession for Session {
    fn generate(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        Session::generate(self, req, on_text)
    }
    fn clear(&mut self) {
        Session::clear(self)
    }
    fn generate_with(
        &mut self,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        out: &mut dyn FnMut(Output) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        Session::generate_with(self, req, opts, out)
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
pub fn chat_prompt_with_tools(
    model: &dyn Model,
    messages: &[ChatMessage],
    tools: Option<&serde_json::Value>,
) -> anyhow::Result<Vec<u32>> {
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
pub(crate) fn fold_system(messages: &[ChatMessage]) -> Option<Vec<ChatMessage>> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    if system.is_empty() {
        return None;
    }
    let mut out: Vec<ChatMessage> = messages.iter().filter(|m| m.role != "system").cloned().collect();
    let sys = system.join("\n\n");
    match out.iter_mut().find(|m| m.role == "user") {
        Some(first_user) => first_user.content = format!("{sys}\n\n{}", first_user.content),
        None => out.insert(0, ChatMessage::new("user", &sys)),
    }
    Some(out)
}

/// The system prompt the chat template puts in by itself when a conversation has none (Qwen's
/// "You are Qwen, created by Alibaba Cloud. …"), for the chat page to say what an empty system
/// prompt does. Found by rendering a conversation without a system message and with a marker
/// one (folded into the user's message, as `chat_prompt` does, where the template refuses a
/// system message): the default is what stands where the marker stands. `Some("")` when the
/// template adds none; `None` when the template fails.
pub fn template_default_system(render: impl Fn(&[ChatMessage]) -> anyhow::Result<String>) -> Option<String> {
    const MARK: &str = "\u{1}system\u{1}";
    let user = ChatMessage::new("user", "\u{1}user\u{1}");
    let without = render(std::slice::from_ref(&user)).ok()?;
    let messages = [ChatMessage::new("system", MARK), user];
    let with = render(&messages).or_else(|e| fold_system(&messages).map_or(Err(e), |folded| render(&folded))).ok()?;
    let (prefix, suffix) = with.split_once(MARK)?;
    let default = without
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        // a template that writes no system part at all without a system message has no default
        .unwrap_or("");
    Some(default.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testing::FakeModel;
    use llamafile_engine::tokenizer::chat::ChatTemplate;

    #[test]
    fn the_template_default_system_prompt() {
        let of = |t: ChatTemplate| template_default_system(|m| t.render(m, true));
        let qwen_like = "{% if messages[0].role != 'system' %}<|im_start|>system\nYou are Qwen.<|im_end|>\n{% endif %}\
            {% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
            {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        assert_eq!(
            of(ChatTemplate::from_source("qwen-like", qwen_like, "", "").unwrap()).as_deref(),
            Some("You are Qwen.")
        );
        assert_eq!(of(ChatTemplate::builtin("chatml", "", "").unwrap()).as_deref(), Some(""), "chatml has no default");
        let vicuna = of(ChatTemplate::builtin("vicuna", "", "").unwrap()).unwrap();
        assert!(vicuna.starts_with("A chat between a curious"), "vicuna's default: {vicuna}");
        let m = FakeModel::new(); // refuses a system message (like Mistral's): it has no default
        assert_eq!(template_default_system(|msgs| m.render_chat(msgs)).as_deref(), Some(""));
        assert_eq!(template_default_system(|_| anyhow::bail!("broken template")), None);
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
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
