//! The engine: KV cache, batching, generation loop, sampler. The CLI and the server use only
//! this API, never model internals. CONTRACT (owner: engine issue #5): the server is written
//! against these names; extend, don't break.

use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub model: PathBuf,
    /// Context per session (`-c`); `None` = the model's, capped at 4096.
    pub n_ctx: Option<usize>,
    /// Threads (`-t`); `None` = all cores.
    pub n_threads: Option<usize>,
    /// Layers to offload (`-ngl`); 0 = CPU only.
    pub n_gpu_layers: usize,
    /// `--gpu auto|cuda|disable`.
    pub gpu: String,
    /// `--chat-template NAME|FILE`.
    pub chat_template: Option<String>,
    pub verbose: bool,
}

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; the text returned excludes it.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end token (EOS/EOT...).
    EndToken,
    MaxTokens,
    ContextFull,
    StopString,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the previous request of this session.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    pub stop: StopReason,
}

/// A loaded model: weights (mmapped), tokenizer, template. `Send + Sync`; share it with `Arc`.
pub struct Engine {
    _private: (),
}

impl Engine {
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Engine> {
        let _ = opts;
        todo!()
    }
    pub fn model_name(&self) -> &str {
        todo!()
    }
    /// Context length of each session.
    pub fn n_ctx(&self) -> usize {
        todo!()
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        todo!()
    }
    pub fn chat_template(&self) -> &ChatTemplate {
        todo!()
    }
    /// A conversation slot with its own KV cache (allocated here, once).
    pub fn new_session(&self) -> Session {
        todo!()
    }
}

/// One KV cache. Keeps the tokens it holds so the next request reuses the common prefix.
pub struct Session {
    _private: (),
}

impl Session {
    /// Process the prompt (reusing the cached prefix), then generate. `on_text` gets each piece of
    /// text as it becomes final (stop strings held back); return `false` to cancel.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        let _ = (req, on_text);
        todo!()
    }
}
