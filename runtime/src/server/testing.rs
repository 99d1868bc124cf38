//! A small deterministic stand-in for the engine, for the server's unit tests: a byte tokenizer
//! with `<s>`/`</s>`, Mistral's template rules (no system role, roles alternate), and sessions
//! that "generate" words at a chosen pace, keep their prompt prefix like the real KV cache, and
//! honour max_tokens, stop strings, the context and cancellation.

use super::model::{Model, ModelSession};
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::{GenerateRequest, GenerationStats, StopReason};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
const BYTE0: u32 = 3;
pub const WORDS: [&str; 8] = ["lorem ", "ipsum ", "dolor ", "sit ", "amet ", "consectetur ", "adipiscing ", "elit "];

#[derive(Default)]
pub struct Counters {
    /// Generations running right now, and the most seen at once.
    pub active: AtomicUsize,
    pub peak: AtomicUsize,
    pub sessions: AtomicUsize,
    pub cancelled: AtomicUsize,
}

pub struct FakeModel {
    pub n_ctx: usize,
    /// Pause per generated token, in microseconds.
    pub token_delay_us: Arc<AtomicU64>,
    pub counters: Arc<Counters>,
    /// A chat template (rendering and the tool-call format), instead of the Mistral-like rules.
    pub template: Option<Arc<llamafile_engine::tokenizer::chat::ChatTemplate>>,
    /// The reply every generation gives, 3 characters a "token" (grammars are not applied), instead
    /// of the words.
    pub reply: Option<Arc<str>>,
}

impl Default for FakeModel {
    fn default() -> Self {
        FakeModel::new()
    }
}

impl FakeModel {
    pub fn new() -> FakeModel {
        FakeModel {
            n_ctx: 256,
            token_delay_us: Arc::new(AtomicU64::new(0)),
            counters: Arc::new(Counters::default()),
            template: None,
            reply: None,
        }
    }
}

impl Model for FakeModel {
    fn name(&self) -> &str {
        "fake-model"
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn vocab_size(&self) -> usize {
        (BYTE0 + 256) as usize
    }
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_special {
            ids.push(BOS);
        }
        let mut rest = text;
        while !rest.is_empty() {
            if parse_special && rest.starts_with("<s>") {
                ids.push(BOS);
                rest = &rest[3..];
            } else if parse_special && rest.starts_with("</s>") {
                ids.push(EOS);
                rest = &rest[4..];
            } else {
                let c = rest.chars().next().unwrap();
                let mut buf = [0u8; 4];
                ids.extend(c.encode_utf8(&mut buf).bytes().map(|b| BYTE0 + b as u32));
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(ids)
    }
    fn detokenize(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        match id {
            BOS => b"<s>".to_vec(),
            EOS => b"</s>".to_vec(),
            id if (BYTE0..BYTE0 + 256).contains(&id) => vec![(id - BYTE0) as u8],
            _ => Vec::new(),
        }
    }
    fn bos(&self) -> Option<u32> {
        Some(BOS)
    }
    fn adds_bos(&self) -> bool {
        true
    }
    fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        if let Some(t) = &self.template {
            return t.render(messages, true);
        }
        let mut s = String::from("<s>");
        for (i, m) in messages.iter().enumerate() {
            if (m.role == "user") != (i % 2 == 0) {
                anyhow::bail!("Conversation roles must alternate user/assistant/user/assistant/...");
            }
            match m.role.as_str() {
                "user" => s.push_str(&format!("[INST] {} [/INST]", m.content)),
                "assistant" => s.push_str(&format!("{}</s>", m.content)),
                _ => anyhow::bail!("Only user and assistant roles are supported!"),
            }
        }
        Ok(s)
    }
    fn render_chat_with_tools(&self, messages: &[ChatMessage], tools: &serde_json::Value) -> anyhow::Result<String> {
        match &self.template {
            Some(t) => t.render_with_tools(messages, true, Some(tools)),
            None => anyhow::bail!("the fake model's template cannot describe tools"),
        }
    }
    fn template_source(&self) -> String {
        self.template.as_ref().map(|t| t.source().to_string()).unwrap_or_default()
    }
    fn template_name(&self) -> String {
        "fake".into()
    }
    fn n_embd(&self) -> usize {
        super::tests_embeddings::FAKE_N_EMBD
    }
    fn declared_pooling(&self) -> anyhow::Result<Option<llamafile_engine::embed::Pooling>> {
        Ok(Some(llamafile_engine::embed::Pooling::Mean))
    }
    fn embedder(&self) -> anyhow::Result<Box<dyn super::embeddings::Embedder>> {
        Ok(Box::new(super::tests_embeddings::FakeEmbedder))
    }
    fn new_session(&self) -> Box<dyn ModelSession> {
        self.counters.sessions.fetch_add(1, Ordering::SeqCst);
        Box::new(FakeSession {
            cached: Vec::new(),
            n_ctx: self.n_ctx,
            delay: self.token_delay_us.clone(),
            counters: self.counters.clone(),
            reply: self.reply.clone(),
        })
    }
}

pub struct FakeSession {
    cached: Vec<u32>,
    n_ctx: usize,
    delay: Arc<AtomicU64>,
    counters: Arc<Counters>,
    reply: Option<Arc<str>>,
}

struct ActiveGuard<'a>(&'a Counters);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ModelSession for FakeSession {
    fn clear(&mut self) {
        self.cached.clear();
    }
    fn generate(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        let now = self.counters.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.peak.fetch_max(now, Ordering::SeqCst);
        let _guard = ActiveGuard(&self.counters);
        let t0 = Instant::now();
        anyhow::ensure!(req.prompt.len() < self.n_ctx, "prompt of {} tokens over the context", req.prompt.len());
        let cached_tokens = self.cached.iter().zip(&req.prompt).take_while(|(a, b)| a == b).count();
        self.cached.truncate(cached_tokens);
        self.cached.extend_from_slice(&req.prompt[cached_tokens..]);
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut text = String::new();
        let mut generated = 0;
        let mut stop_index = None;
        let start = (req.sampling.seed % WORDS.len() as u64) as usize;
        let stop = loop {
            if generated >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.cached.len() >= self.n_ctx {
                break StopReason::ContextFull;
            }
            let delay = self.delay.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(Duration::from_micros(delay));
            }
            let word = match &self.reply {
                Some(r) => match r
                    .get(text.len()..)
                    .and_then(|rest| rest.char_indices().nth(3).map(|(i, _)| &rest[..i]).or(Some(rest)))
                {
                    Some("") | None => break StopReason::EndToken,
                    Some(piece) => piece,
                },
                None => WORDS[(start + generated) % WORDS.len()],
            };
            generated += 1;
            self.cached.push(BYTE0 + word.as_bytes()[0] as u32);
            let before = text.len();
            text.push_str(word);
            if let Some((pos, which)) =
                req.stop.iter().enumerate().filter_map(|(i, s)| Some((text.find(s.as_str())?, i))).min()
            {
                if pos > before && !on_text(&text[before..pos]) {
                    break StopReason::Cancelled;
                }
                stop_index = Some(which);
                break StopReason::StopString;
            }
            if !on_text(word) {
                break StopReason::Cancelled;
            }
        };
        if stop == StopReason::Cancelled {
            self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(GenerationStats {
            prompt_tokens: req.prompt.len(),
            cached_tokens,
            generated_tokens: generated,
            prompt_ms,
            generation_ms: t1.elapsed().as_secs_f64() * 1e3,
            stop,
            // one pass for the prompt, one per word fed back
            decode_calls: 1 + generated.saturating_sub(1),
            stop_index,
        })
    }
}
