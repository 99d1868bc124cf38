//! The engine: architectures as recipes (`model`), the CPU and GPU backends (`backend`),
//! tokenizers and chat templates (`tokenizer`), grammars (`grammar`), and on top of them the
//! API the CLI and the server use (this file): KV cache, batching, generation loop, sampler.
//! They use only this API, never model internals: the server is written against these names,
//! so they are extended, not broken.
//!
//! - `Engine::load` maps the model (weights stay in the mmap), builds the tokenizer and chat
//!   template, decides which backend runs which layers (`crate::backend::plan`) and makes the
//!   rayon pool (`-t`).
//! - `Session` = one KV cache (per backend) sized at creation for `n_ctx` positions and batches of
//!   `n_batch` tokens, plus every buffer a request needs: generating allocates nothing per token
//!   in the forward pass.
//! - `Session::generate` reuses the longest common prefix of the cached tokens and the new prompt
//!   (the server's prompt cache; `--chat` keeps earlier turns this way).
//! - `Session::embed` (`embed`): pooled final hidden states of several inputs, batched together.

pub mod backend;
pub mod embed;
pub mod fast_forward;
pub mod fim;
pub mod grammar;
pub mod logprobs;
pub mod model;
pub mod sampler;
pub mod tokenizer;

use crate::backend::{Backend, BackendState, PlanOptions};
use crate::model::transformer::INVARIANT_BATCH;
use crate::model::Model;
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Context, Result};
use kernels_cpu::matmul::balanced_chunks;
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::GgufFile;
pub use sampler::SamplingParams;
use sampler::{Sampler, TokenConstraint};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Default context when the model's is larger (`-c 0`).
pub const DEFAULT_MAX_CTX: usize = 4096;
/// Default largest batch of prompt tokens processed at once (`-b`).
pub const DEFAULT_BATCH: usize = 512;

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
    /// Sessions the caller keeps open at once (the server's slots): the memory they need is
    /// checked at load, so that making them later cannot fail halfway.
    pub n_sessions: usize,
    /// `--swa-full`: no sliding window on any layer.
    pub swa_full: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            model: PathBuf::new(),
            n_ctx: None,
            n_threads: None,
            n_gpu_layers: 0,
            gpu: "auto".into(),
            chat_template: None,
            verbose: false,
            n_sessions: 1,
            swa_full: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; the text returned excludes it.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// What the output must match (grammar-constrained sampling); `None` = free text.
    pub grammar: Option<crate::grammar::Grammar>,
}

/// What a generation gives besides one text (`Session::generate_with`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// How many answers ("choices") to generate from the prompt; 0 is taken as 1.
    pub n: usize,
    /// Report each generated token's log-probability with this many likeliest alternatives
    /// (`None` = no report; at most `logprobs::MAX_TOP_LOGPROBS` is sensible).
    pub logprobs: Option<usize>,
}

/// What `Session::generate_with` reports, for choice number `.0`.
#[derive(Debug)]
pub enum Output<'a> {
    /// A piece of the choice's text that is final.
    Text(usize, &'a str),
    /// A generated token, just before the text it begins (only with `GenerateOptions::logprobs`).
    Token(usize, &'a logprobs::TokenLogprob),
    /// The choice ended: its statistics (the prompt's figures are the generation's).
    Done(usize, &'a GenerationStats),
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
    /// Forward passes this generation ran (prompt batches plus one per token fed back).
    pub decode_calls: usize,
    /// With `StopReason::StopString`: which of the request's `stop` strings was met.
    pub stop_index: Option<usize>,
}

struct Inner {
    model: Arc<Model>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    backends: Vec<Arc<dyn Backend>>,
    pool: rayon::ThreadPool,
    name: String,
    n_ctx: usize,
    n_batch: usize,
    load_ms: f64,
    /// The vocabulary's token trie for constrained sampling, built on the first request that
    /// has a grammar (the error as text: it is reported to every such request).
    grammar: std::sync::OnceLock<std::result::Result<Arc<crate::grammar::Factory>, String>>,
    /// The fill-in-the-middle markers (`engine::fim`).
    fim: fim::FimTokens,
}

/// A loaded model: weights (mmapped), tokenizer, template. `Send + Sync`; share it with `Arc`.
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Engine> {
        Engine::load_with_batch(opts, DEFAULT_BATCH)
    }
    /// `load`, with the largest batch of prompt tokens processed at once (`-b`): sessions size
    /// their buffers for it.
    pub fn load_with_batch(opts: &LoadOptions, n_batch: usize) -> anyhow::Result<Engine> {
        let t0 = Instant::now();
        let path = &opts.model;
        // The reader's errors name the path (once) themselves.
        let file = GgufFile::open(path)?;
        let name = file
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        // The model first: an unsupported architecture or a missing tensor is the clearest error.
        let mut model = Model::load(file.clone()).with_context(|| escape_path(path))?;
        if opts.swa_full {
            model.hp.full_attention();
        }
        // LongRoPE's factor set depends on the context, so it is chosen before any backend
        // takes the model.
        let n_ctx = context_length(opts.n_ctx, model.hp.n_ctx_train);
        model.hp.choose_rope_factors(n_ctx);
        let model = Arc::new(model);
        // Its errors name the file.
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let fim = fim::FimTokens::from_gguf(&file, &tokenizer);
        let template = match ChatTemplate::from_gguf(&file, opts.chat_template.as_deref()) {
            Ok(t) => t,
            Err(e) if opts.chat_template.is_none() => {
                eprintln!("warning: {}: chat template: {}; using chatml", escape_path(path), escape(&format!("{e:#}")));
                ChatTemplate::from_gguf(&file, Some("chatml"))?
            }
            Err(e) => return Err(e.context("--chat-template")),
        };
        let hp = &model.hp;
        if tokenizer.vocab_size() > hp.n_vocab {
            bail!(
                "{}: the tokenizer has {} tokens but the embeddings only {}",
                escape_path(path),
                tokenizer.vocab_size(),
                hp.n_vocab
            );
        }
        if n_ctx > hp.n_ctx_train {
            eprintln!("warning: context {n_ctx} is longer than the {} the model was trained with", hp.n_ctx_train);
        }
        let n_threads = opts
            .n_threads
            .filter(|t| *t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("llamafile-{i}"))
            .build()
            .context("starting the thread pool")?;
        let backends = backend::plan(
            &model,
            &PlanOptions { n_gpu_layers: opts.n_gpu_layers, gpu: &opts.gpu, verbose: opts.verbose },
        )?;
        check_chain(&backends, hp.n_layer)?;
        let n_batch = n_batch.clamp(1, n_ctx);
        check_memory(
            session_bytes(&backends, hp, n_ctx, n_batch).saturating_mul(opts.n_sessions.max(1) as u64),
            n_ctx,
            opts.n_sessions,
        )?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Engine {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                template,
                backends,
                pool,
                name,
                n_ctx,
                n_batch,
                load_ms,
                grammar: Default::default(),
                fim,
            }),
        })
    }
    pub fn model_name(&self) -> &str {
        &self.inner.name
    }
    /// Context length of each session.
    pub fn n_ctx(&self) -> usize {
        self.inner.n_ctx
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.template
    }
    /// A conversation slot with its own KV cache (allocated here, once).
    ///
    /// Panics only if a backend cannot allocate its state; use `try_new_session` to get the error.
    pub fn new_session(&self) -> Session {
        self.try_new_session().expect("allocating a session")
    }
    /// `new_session`, with the backend's error instead of a panic.
    pub fn try_new_session(&self) -> Result<Session> {
        let inner = self.inner.clone();
        let hp = &inner.model.hp;
        let states =
            inner.backends.iter().map(|b| b.new_state(inner.n_ctx, inner.n_batch)).collect::<Result<Vec<_>>>()?;
        Ok(Session {
            x: vec![0.0; inner.n_batch * hp.n_embd],
            logits: vec![0.0; hp.n_vocab],
            sampler: Sampler::new(hp.n_vocab),
            ahead: Default::default(),
            decode_calls: 0,
            tokens: Vec::with_capacity(inner.n_ctx),
            exact: 0,
            states,
            inner,
        })
    }
    /// The model's vocabulary prepared for constrained sampling (built once, on first use).
    pub fn grammar_factory(&self) -> Result<Arc<crate::grammar::Factory>> {
        self.inner.grammar_factory()
    }
    /// Start building `grammar_factory` (1-2 s for a 150k vocabulary) on a background thread,
    /// so that a first request with a grammar finds it ready, or waits only for the rest of it.
    /// The thread runs at the lowest scheduling priority, so requests without a grammar keep the
    /// CPU meanwhile.
    pub fn prepare_grammar(&self) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new().name("grammar-vocab".into()).spawn(move || {
            lowest_thread_priority();
            let _ = inner.grammar_factory();
        });
        // Without the thread, the first request with a grammar builds it.
        drop(spawned);
    }
    /// The model's fill-in-the-middle markers.
    pub fn fim_tokens(&self) -> fim::FimTokens {
        self.inner.fim
    }
    /// A fill-in-the-middle prompt of at most `budget` tokens (`engine::fim`); the inner error
    /// says what the model lacks or what does not fit.
    pub fn fim_prompt(&self, input: &fim::FimInput, budget: usize) -> Result<std::result::Result<Vec<u32>, String>> {
        fim::prompt(&self.inner.tokenizer, &self.inner.fim, input, budget)
    }
    /// The model (hyperparameters, tensor views).
    pub fn model(&self) -> &Model {
        &self.inner.model
    }
    /// Where the layers run, in order.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.inner.backends
    }
    pub fn n_threads(&self) -> usize {
        self.inner.pool.current_num_threads()
    }
    pub fn n_batch(&self) -> usize {
        self.inner.n_batch
    }
    /// Width of the hidden states (and of the embeddings).
    pub fn n_embd(&self) -> usize {
        self.inner.model.hp.n_embd
    }
    /// The pooling the model's GGUF declares for embeddings (`embed::Pooling::from_model`).
    pub fn pooling(&self) -> Result<Option<embed::Pooling>> {
        embed::Pooling::from_model(&self.inner.model)
    }
    /// Time `load` took (map, tokenizer, tensor table), in milliseconds.
    pub fn load_ms(&self) -> f64 {
        self.inner.load_ms
    }
}

impl Inner {
    fn grammar_factory(&self) -> Result<Arc<crate::grammar::Factory>> {
        self.grammar
            .get_or_init(|| crate::grammar::Factory::new(&self.tokenizer).map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!(e))
    }
}

// The server shares the engine between threads and moves sessions into blocking tasks.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<Session>();
};

/// Lower the calling thread's priority to the least (Linux's nice values are per thread; other
/// systems would lower the whole process, so there it is left alone).
fn lowest_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; a failure only leaves the priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// The context a session gets: `requested` (`-c`) when given and non-zero, else the model's
/// training context capped at [`DEFAULT_MAX_CTX`].
pub fn context_length(requested: Option<usize>, n_ctx_train: usize) -> usize {
    match requested {
        Some(c) if c > 0 => c,
        _ => n_ctx_train.min(DEFAULT_MAX_CTX),
    }
}

/// Host memory one session of `n_ctx` positions allocates on `backends` (their KV caches and
/// workspaces) plus the engine's own buffers for batches of `n_batch` tokens: what a load
/// checks against the available memory, per slot.
pub fn session_bytes(backends: &[Arc<dyn Backend>], hp: &crate::model::Hparams, n_ctx: usize, n_batch: usize) -> u64 {
    let session = backends.iter().fold(0u64, |a, b| a.saturating_add(b.host_state_bytes(n_ctx, n_batch)));
    let buffers = 4 * (n_ctx as u64 + (n_batch * hp.n_embd) as u64 + 3 * hp.n_vocab as u64);
    session.saturating_add(buffers)
}

/// A value of /proc/meminfo (`MemTotal`, `MemAvailable`...) in bytes; `None` where the file or
/// the line is absent.
pub fn meminfo(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the kernel says can be allocated without swapping (`MemAvailable`), in bytes; `None`
/// where /proc/meminfo is absent.
pub fn mem_available() -> Option<u64> {
    meminfo("MemAvailable")
}

/// `1.5 GiB`, `12 MiB`.
pub fn show_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b.div_ceil(1 << 20))
    }
}

/// Refuse, before allocating, a session for `n_ctx` positions that needs `need` bytes of host
/// memory when less is available: one line with what was asked, what it needs and what there is
/// (instead of an abort, or the OOM killer, halfway through the allocation).
fn check_memory(need: u64, n_ctx: usize, n_sessions: usize) -> Result<()> {
    match mem_available() {
        Some(avail) if need > avail && n_sessions > 1 => bail!(
            "{n_sessions} slots with a context of {n_ctx} tokens each need {} of memory for their KV caches and buffers, but {} is available; choose fewer slots (--parallel) or a smaller context (-c)",
            show_bytes(need),
            show_bytes(avail)
        ),
        Some(avail) if need > avail => bail!(
            "a context of {n_ctx} tokens needs {} of memory for the KV cache and buffers, but {} is available; choose a smaller context (-c)",
            show_bytes(need),
            show_bytes(avail)
        ),
        _ => Ok(()),
    }
}

fn check_chain(backends: &[Arc<dyn Backend>], n_layer: usize) -> Result<()> {
    let mut next = 0;
    for (i, b) in backends.iter().enumerate() {
        let l = b.layers();
        if l.start != next || l.end < l.start {
            bail!("backend {} takes layers {:?}, expected to start at {next}", b.name(), l);
        }
        if b.runs_output() != (i + 1 == backends.len()) {
            bail!("backend chain: the output layer must run on the last backend");
        }
        next = l.end;
    }
    if next != n_layer || backends.is_empty() {
        bail!("backend chain covers {next} of {n_layer} layers");
    }
    Ok(())
}

/// One KV cache. Keeps the tokens it holds so the next request reuses the common prefix.
pub struct Session {
    inner: Arc<Inner>,
    states: Vec<Box<dyn BackendState>>,
    /// The tokens whose keys/values are in the cache, in order.
    tokens: Vec<u32>,
    /// How many of the first `tokens` were computed in batches of `INVARIANT_BATCH` or more
    /// (their keys and values do not depend on how the prompt was cut).
    exact: usize,
    /// [n_batch x n_embd] residual stream of the batch being processed.
    x: Vec<f32>,
    /// [n_vocab] logits of the last token processed.
    logits: Vec<f32>,
    sampler: Sampler,
    /// Forced tokens evaluated ahead, and of those the ones generation kept (`fast_forward`).
    ahead: fast_forward::Counts,
    /// Forward passes run so far (`GenerationStats::decode_calls` is the difference).
    decode_calls: usize,
}

/// Largest logits buffer `eval_all` uses (values), so a 262k vocabulary does not need GBs.
const EVAL_LOGITS_BUDGET: usize = 32 << 20;

impl Session {
    /// Tokens in the cache.
    pub fn n_past(&self) -> usize {
        self.tokens.len()
    }
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn n_ctx(&self) -> usize {
        self.inner.n_ctx
    }
    /// Logits after the last `eval` (of its last token).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    /// Forget everything from position `n` on.
    pub fn truncate(&mut self, n: usize) {
        self.exact = self.exact.min(n);
        if n < self.tokens.len() {
            self.tokens.truncate(n);
            for s in &mut self.states {
                s.truncate(n);
            }
        }
    }
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Run one batch (at most n_batch tokens) through the chain at the current position.
    fn forward_batch(&mut self, toks: &[u32], logits: Option<&mut [f32]>) -> Result<()> {
        let inner = &*self.inner;
        let e = inner.model.hp.n_embd;
        let n = toks.len();
        let pos = self.tokens.len();
        if pos + n > inner.n_ctx {
            bail!("{} tokens do not fit: {pos} of the context of {} are used", n, inner.n_ctx);
        }
        for (t, &id) in toks.iter().enumerate() {
            inner.model.embed(id, &mut self.x[t * e..(t + 1) * e])?;
        }
        let x = &mut self.x[..n * e];
        let states = &mut self.states;
        let last = states.len() - 1;
        let mut logits = logits;
        inner.pool.install(|| -> Result<()> {
            for (i, s) in states.iter_mut().enumerate() {
                let l = if i == last { logits.as_deref_mut() } else { None };
                s.forward(x, n, pos, l)?;
            }
            Ok(())
        })?;
        if let Some(l) = logits {
            inner.model.softcap_logits(l);
        }
        if n >= INVARIANT_BATCH && self.exact == pos {
            self.exact = pos + n;
        }
        self.tokens.extend_from_slice(toks);
        self.decode_calls += 1;
        Ok(())
    }

    /// Append `tokens` to the cache, in batches; with `want_logits`, `logits()` then holds the
    /// last token's. No batch is shorter than `INVARIANT_BATCH` unless `tokens` is.
    pub fn eval(&mut self, tokens: &[u32], want_logits: bool) -> Result<()> {
        let nb = self.inner.n_batch;
        let mut logits = std::mem::take(&mut self.logits);
        let mut r = Ok(());
        for c in balanced_chunks(tokens.len(), nb, INVARIANT_BATCH) {
            let last = c.end == tokens.len();
            r = self.forward_batch(&tokens[c], if last && want_logits { Some(&mut logits) } else { None });
            if r.is_err() {
                break;
            }
        }
        self.logits = logits;
        r
    }

    /// Append `tokens`, calling `f(i, logits of tokens[i])` for every one of them
    /// (teacher-forced evaluation, perplexity).
    pub fn eval_all(&mut self, tokens: &[u32], f: &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let nv = self.inner.model.hp.n_vocab;
        let nb = self.inner.n_batch.min((EVAL_LOGITS_BUDGET / nv).max(1));
        let mut buf = vec![0f32; nb.min(tokens.len().max(1)) * nv];
        let mut done = 0;
        let mut last_n = 0;
        for chunk in tokens.chunks(nb) {
            let n = chunk.len();
            let out = &mut buf[..n * nv];
            self.forward_batch(chunk, Some(if n == 1 { &mut out[..nv] } else { out }))?;
            for t in 0..n {
                f(done + t, &buf[t * nv..(t + 1) * nv])?;
            }
            done += n;
            last_n = n;
        }
        if last_n > 0 {
            self.logits.copy_from_slice(&buf[(last_n - 1) * nv..last_n * nv]);
        }
        Ok(())
    }

    /// Process the prompt (reusing the cached prefix), then generate. `on_text` gets each piece of
    /// text as it becomes final (stop strings held back); return `false` to cancel.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        self.generate_with(req, &GenerateOptions::default(), &mut |out| match out {
            Output::Text(_, text) => on_text(text),
            Output::Token(..) | Output::Done(..) => true,
        })
    }

    /// `generate`, with what `opts` asks for besides one text: `opts.n` choices from one
    /// evaluation of the prompt (each choice starts from the prompt's cache and its logits,
    /// with its own seed, `sampler::choice_seed`; the choices run one after another), and each
    /// generated token's log-probabilities. `out` gets them as they come; return `false` to
    /// cancel. The statistics returned count the prompt once and the tokens of every choice;
    /// their `stop` is the last choice's (`Cancelled` when cancelled).
    pub fn generate_with(
        &mut self,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        out: &mut dyn FnMut(Output) -> bool,
    ) -> anyhow::Result<GenerationStats> {
        let inner = self.inner.clone();
        let n_ctx = inner.n_ctx;
        let prompt = &req.prompt;
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        if prompt.len() > n_ctx {
            bail!("the prompt is {} tokens, longer than the context of {n_ctx} tokens", prompt.len());
        }
        if let Some(bad) = prompt.iter().find(|t| **t as usize >= inner.model.hp.n_vocab) {
            bail!("token id {bad} is outside the vocabulary ({} tokens)", inner.model.hp.n_vocab);
        }
        // Reuse the common prefix, but always evaluate at least the last prompt token (its logits).
        let mut common =
            self.tokens.iter().zip(prompt.iter()).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        if req.sampling.temperature <= 0.0 {
            // Greedy answers are the same whatever the cache held: reuse only keys and values
            // computed in batches of `INVARIANT_BATCH` or more, and evaluate the rest as a fresh
            // prompt would be (`eval` makes no batch shorter than that): the result is then
            // bit-identical to evaluating the whole prompt. Costs the re-evaluation of the
            // previous answer's tokens (computed one by one) and of a short prompt tail.
            common = common.min(self.exact);
            if prompt.len() - common < INVARIANT_BATCH {
                common = prompt.len().saturating_sub(INVARIANT_BATCH);
            }
        }
        self.truncate(common);
        let decodes_before = self.decode_calls;
        let t0 = Instant::now();
        self.eval(&prompt[common..], true)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

        let n = opts.n.max(1);
        // Every choice starts from these: the prompt is evaluated once.
        let prompt_logits = if n > 1 { self.logits.clone() } else { Vec::new() };
        let mut total = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: common,
            generated_tokens: 0,
            prompt_ms,
            generation_ms: 0.0,
            stop: StopReason::MaxTokens,
            decode_calls: 0,
            stop_index: None,
        };
        for choice in 0..n {
            if choice > 0 {
                self.truncate(prompt.len());
                self.logits.copy_from_slice(&prompt_logits);
            }
            let t1 = Instant::now();
            let (generated, stop, stop_index) = self.decode(req, opts, choice, out)?;
            let stats = GenerationStats {
                generated_tokens: generated,
                generation_ms: t1.elapsed().as_secs_f64() * 1e3,
                stop,
                stop_index,
                decode_calls: self.decode_calls - decodes_before,
                ..total.clone()
            };
            total.generated_tokens += generated;
            total.generation_ms += stats.generation_ms;
            total.stop = stop;
            total.stop_index = stop_index;
            total.decode_calls = stats.decode_calls;
            if stop == StopReason::Cancelled || !out(Output::Done(choice, &stats)) {
                total.stop = StopReason::Cancelled;
                break;
            }
        }
        Ok(total)
    }

    /// Generate one choice from the logits of the last token in the cache: how many tokens, why
    /// it stopped, and which stop string stopped it.
    fn decode(
        &mut self,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        choice: usize,
        out: &mut dyn FnMut(Output) -> bool,
    ) -> Result<(usize, StopReason, Option<usize>)> {
        let inner = self.inner.clone();
        let n_ctx = inner.n_ctx;
        let mut grammar = match &req.grammar {
            Some(g) => Some(inner.grammar_factory()?.matcher(g)?),
            None => None,
        };
        let mut ff =
            fast_forward::FastForward::new(req.grammar.as_ref().is_some_and(|g| g.fast_forward()), self.tokens.len());
        self.fast_forward_start(&mut ff, grammar.as_mut(), req.max_tokens)?;
        self.sampler.reseed(sampler::choice_seed(req.sampling.seed, choice));
        let tok = &inner.tokenizer;
        let mut decoder = StreamDecoder::default();
        let mut stopper = StopStrings::new(&req.stop);
        // With log-probabilities: the raw logits of the step (the sampler changes them in place).
        let mut raw = if opts.logprobs.is_some() { vec![0f32; self.logits.len()] } else { Vec::new() };
        let mut em = Emitter { choice, out, pending: Default::default(), produced: 0, emitted: 0 };
        let mut generated = 0;
        let mut stop_index = None;
        let stop = loop {
            if generated >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            let id = self.sample_next(req, grammar.as_mut(), ff.kept(), opts.logprobs.map(|_| &mut raw[..]))?;
            if (!req.ignore_eos || grammar.is_some()) && tok.end_tokens().contains(&id) {
                break StopReason::EndToken;
            }
            if let Some(g) = grammar.as_mut() {
                g.accept(id)?;
            }
            generated += 1;
            let piece = decoder.push(tok, id);
            if let Some(k) = opts.logprobs {
                em.pending.push_back(logprobs::token_logprob(&raw, id, k, em.produced));
            }
            em.produced += piece.len();
            match stopper.push(&piece) {
                StopOutcome::Emit(s) => {
                    if !em.give(&s, false) {
                        break StopReason::Cancelled;
                    }
                }
                StopOutcome::Stop(s, which) => {
                    em.give(&s, false);
                    em.pending.clear();
                    stop_index = Some(which);
                    break StopReason::StopString;
                }
            }
            if generated >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            if ff.kept() >= n_ctx {
                break StopReason::ContextFull;
            }
            self.advance(id, &mut ff, grammar.as_mut(), req.max_tokens - generated)?;
        };
        self.fast_forward_finish(&ff);
        // Whatever the decoder and the stop-string buffer still hold is final now.
        if stop != StopReason::StopString && stop != StopReason::Cancelled {
            let mut rest = decoder.finish();
            rest.insert_str(0, &stopper.flush());
            if !em.give(&rest, true) {
                return Ok((generated, StopReason::Cancelled, None));
            }
        }
        Ok((generated, stop, stop_index))
    }

    /// The next token, sampled from the logits of the last token in the cache (`kept` tokens),
    /// masked by the grammar if any; `raw` (with log-probabilities) gets the logits as they were.
    fn sample_next(
        &mut self,
        req: &GenerateRequest,
        grammar: Option<&mut crate::grammar::GrammarMatcher>,
        kept: usize,
        raw: Option<&mut [f32]>,
    ) -> Result<u32> {
        let mut logits = std::mem::take(&mut self.logits);
        if let Some(raw) = raw {
            raw.copy_from_slice(&logits);
        }
        let masked = match grammar {
            Some(g) => g.mask(&mut logits),
            None => Ok(()),
        };
        let id = self.sampler.sample(&mut logits, &self.tokens[..kept], &req.sampling);
        self.logits = logits;
        masked?;
        Ok(id)
    }
}

/// What `Session::decode` gives out for one choice, in order: each token's log-probabilities
/// (when asked) right before the text it begins; those of a stop string are never reported.
struct Emitter<'o> {
    choice: usize,
    out: &'o mut dyn FnMut(Output) -> bool,
    /// Tokens whose text has not been given out yet.
    pending: std::collections::VecDeque<logprobs::TokenLogprob>,
    /// Bytes of text decoded so far, and given out so far.
    produced: usize,
    emitted: usize,
}

impl Emitter<'_> {
    /// Gives out `text` after the pending tokens it begins (`all`: after every pending token);
    /// false when the receiver cancels.
    fn give(&mut self, text: &str, all: bool) -> bool {
        self.emitted += text.len();
        while let Some(t) = self.pending.front() {
            if !all && t.offset >= self.emitted {
                break;
            }
            let t = self.pending.pop_front().expect("front exists");
            if !(self.out)(Output::Token(self.choice, &t)) {
                return false;
            }
        }
        text.is_empty() || (self.out)(Output::Text(self.choice, text))
    }
}

/// Holds back text that might be the start of a stop string.
struct StopStrings<'a> {
    stops: &'a [String],
    pending: String,
}

enum StopOutcome {
    /// Text that is final.
    Emit(String),
    /// A stop string was found: the text before it and which string it was, then stop.
    Stop(String, usize),
}

impl<'a> StopStrings<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopStrings { stops, pending: String::new() }
    }
    fn push(&mut self, piece: &str) -> StopOutcome {
        if self.stops.iter().all(|s| s.is_empty()) {
            return StopOutcome::Emit(piece.to_string());
        }
        self.pending.push_str(piece);
        let found = self
            .stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| Some((self.pending.find(s.as_str())?, i)))
            .min();
        if let Some((at, which)) = found {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stop(out, which);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() > keep && s.starts_with(suffix) {
                    keep = suffix.len();
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Emit(out)
    }
    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests_generate;

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_engine(n_ctx: usize) -> Option<Engine> {
        let p = test_support::require_shared()?.join("models/tiny-mistral-q8_0.gguf");
        let opts = LoadOptions { model: p, n_ctx: Some(n_ctx), n_threads: Some(2), ..Default::default() };
        Some(Engine::load_with_batch(&opts, 16).unwrap())
    }

    fn greedy(_max_tokens: usize) -> SamplingParams {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    fn run(s: &mut Session, prompt: &[u32], n: usize, sampling: SamplingParams) -> (String, GenerationStats) {
        let req = GenerateRequest {
            prompt: prompt.to_vec(),
            max_tokens: n,
            sampling,
            stop: vec![],
            ignore_eos: true,
            grammar: None,
        };
        let mut text = String::new();
        let st = s
            .generate(&req, &mut |t| {
                text.push_str(t);
                true
            })
            .unwrap();
        (text, st)
    }

    /// Top-1 sampling at temperature 1: the same tokens as greedy, but not a greedy request, so
    /// the whole common prefix is reused.
    fn top1() -> SamplingParams {
        SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() }
    }

    #[test]
    fn prefix_reuse_gives_the_same_tokens_as_a_fresh_session() {
        let Some(e) = tiny_engine(256) else { return };
        let prompt: Vec<u32> = vec![1, 415, 2936, 9060, 285, 1142, 461, 10575, 754, 272, 17898, 3914, 28723];
        let mut a = e.new_session();
        let (t1, s1) = run(&mut a, &prompt, 12, top1());
        assert_eq!(s1.cached_tokens, 0);
        assert_eq!(s1.generated_tokens, 12);
        assert_eq!(s1.stop, StopReason::MaxTokens);
        // one prompt batch (13 tokens, batches of 16), then each token but the last fed back
        assert_eq!(s1.decode_calls, 1 + 11);
        // same prompt again: all but the last token come from the cache, same continuation
        let (t2, s2) = run(&mut a, &prompt, 12, top1());
        assert_eq!(s2.cached_tokens, prompt.len() - 1);
        assert_eq!(t1, t2);
        // a prompt that shares a prefix, in a session that has seen something else, equals a fresh one
        let other: Vec<u32> = vec![1, 415, 2936, 9060, 28705, 28740];
        let (t3, s3) = run(&mut a, &other, 8, top1());
        assert_eq!(s3.cached_tokens, 4);
        let (t4, _) = run(&mut e.new_session(), &other, 8, top1());
        assert_eq!(t3, t4);
        assert!(!t1.is_empty());
    }

    /// A greedy answer after a cached prefix is bit-identical to a fresh session's, also when the
    /// cache holds a previous answer (computed token by token) and the new prompt continues it
    /// (a chat's next turn); the prefix computed in a full batch is still reused.
    #[test]
    fn greedy_answers_do_not_depend_on_what_the_cache_holds() {
        let Some(dir) = test_support::require_shared() else { return };
        for ty in ["q8_0", "q4_k_m", "f16"] {
            let opts = LoadOptions {
                model: dir.join(format!("models/tiny-mistral-{ty}.gguf")),
                n_ctx: Some(512),
                n_threads: Some(2),
                ..Default::default()
            };
            let e = Engine::load(&opts).unwrap();
            let ids = |n: u32, salt: u32| -> Vec<u32> { (0..n).map(|i| (i * 7919 + salt) % 30000 + 3).collect() };
            let p1 = ids(100, 5);
            let mut a = e.new_session();
            run(&mut a, &p1, 20, greedy(20));
            // The next turn: the previous prompt, the answer, and more.
            let mut p2 = a.tokens().to_vec();
            p2.extend(ids(70, 11));
            let (ta, sa) = run(&mut a, &p2, 20, greedy(20));
            let mut fresh = e.new_session();
            let (tf, sf) = run(&mut fresh, &p2, 20, greedy(20));
            assert!(a.logits() == fresh.logits(), "{ty}: last logits are not bit-identical");
            assert_eq!(ta, tf, "{ty}: greedy text after the cache vs fresh");
            assert_eq!(sf.cached_tokens, 0);
            assert_eq!(sa.cached_tokens, p1.len(), "{ty}: the first prompt's batch is reused");
            // A short prompt sharing the cache: evaluated whole, as fresh.
            let p3 = ids(30, 5);
            let (tc, sc) = run(&mut a, &p3, 10, greedy(10));
            assert_eq!(sc.cached_tokens, 0);
            assert_eq!(tc, run(&mut e.new_session(), &p3, 10, greedy(10)).0, "{ty}: short prompt");
        }
    }

    #[test]
    fn batch_size_does_not_change_logits() {
        let Some(e) = tiny_engine(128) else { return };
        let toks: Vec<u32> = (0..40).map(|i| 100 + i * 37).collect();
        let eval_in = |chunk: usize| {
            let mut s = e.new_session();
            for c in toks.chunks(chunk) {
                s.eval(c, true).unwrap();
            }
            assert_eq!(s.n_past(), 40);
            s.logits().to_vec()
        };
        let (b16, b10, b7, b1) = (eval_in(16), eval_in(10), eval_in(7), eval_in(1));
        // Batches that take the same matrix kernels (8 tokens or more: the panel kernels where
        // the ISA has them) give the same numbers whatever their size.
        let d = b16.iter().zip(&b10).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-3, "batches of 16 vs 10: max |dlogit| {d}");
        // Fewer tokens take the tile kernels, one token the matrix-vector path: the same integer
        // sums, combined in another float order: rounding noise only (the reference moves by
        // 0.07 between batch and token by token).
        for (name, other) in [("7", &b7), ("1", &b1)] {
            let mean = b16.iter().zip(other).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / other.len() as f64;
            assert!(mean < 0.1, "batches of 16 vs {name}: mean |dlogit| {mean}");
            assert_eq!(sampler::argmax(&b16), sampler::argmax(other), "batches of 16 vs {name}: top token");
        }
    }

    #[test]
    fn seeds_reproduce_and_context_limits_are_enforced() {
        let Some(e) = tiny_engine(24) else { return };
        let prompt: Vec<u32> = vec![1, 415, 2936, 9060];
        let warm = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        let (a, _) = run(&mut e.new_session(), &prompt, 10, warm.clone());
        let (b, _) = run(&mut e.new_session(), &prompt, 10, warm.clone());
        assert_eq!(a, b, "same seed, same text");
        let seeds: Vec<String> = (8..12)
            .map(|seed| run(&mut e.new_session(), &prompt, 10, SamplingParams { seed, ..warm.clone() }).0)
            .collect();
        assert!(seeds.iter().any(|t| *t != a), "other seeds give other texts");
        // generation stops cleanly when the context is full
        let (_, st) = run(&mut e.new_session(), &prompt, 100, greedy(100));
        assert_eq!(st.stop, StopReason::ContextFull);
        assert_eq!(st.generated_tokens, 24 - prompt.len() + 1);
        // a prompt over the context is an error, not a panic
        let long: Vec<u32> = vec![415; 25];
        let req = GenerateRequest {
            prompt: long,
            max_tokens: 1,
            sampling: greedy(1),
            stop: vec![],
            ignore_eos: true,
            grammar: None,
        };
        let err = e.new_session().generate(&req, &mut |_| true).unwrap_err().to_string();
        assert!(err.contains("longer than the context"), "{err}");
    }

    #[test]
    fn cancel_and_stop_strings() {
        let Some(e) = tiny_engine(64) else { return };
        let prompt: Vec<u32> = vec![1, 415, 2936, 9060];
        let mut n = 0;
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 20,
            sampling: greedy(20),
            stop: vec![],
            ignore_eos: true,
            grammar: None,
        };
        let st = e
            .new_session()
            .generate(&req, &mut |_| {
                n += 1;
                n < 3
            })
            .unwrap();
        assert_eq!(st.stop, StopReason::Cancelled);
        assert_eq!(n, 3);
        // stop at a piece of the greedy text: the text returned ends right before it
        let (full, _) = run(&mut e.new_session(), &prompt, 12, greedy(12));
        let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
        let stop = full[cut..].chars().take(3).collect::<String>();
        let req = GenerateRequest { stop: vec![stop.clone()], max_tokens: 12, ..req };
        let mut text = String::new();
        let st = e
            .new_session()
            .generate(&req, &mut |t| {
                text.push_str(t);
                true
            })
            .unwrap();
        assert_eq!(st.stop, StopReason::StopString);
        assert_eq!(st.stop_index, Some(0));
        assert_eq!(text, full[..full.find(&stop).unwrap()]);
    }

    /// The text let through, and which stop string ended it (if one did).
    fn stop_run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStrings::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match s.push(p) {
                StopOutcome::Emit(t) => out.push_str(&t),
                StopOutcome::Stop(t, which) => {
                    out.push_str(&t);
                    return (out, Some(which));
                }
            }
        }
        out.push_str(&s.flush());
        (out, None)
    }

    #[test]
    fn stop_strings_split_across_pieces_are_held_back_and_cut() {
        assert_eq!(stop_run(&["</s>"], &["Hello", " wor", "ld</", "s> more"]), ("Hello world".into(), Some(0)));
        assert_eq!(stop_run(&["STOP"], &["a S", "T", "x"]), ("a STx".into(), None));
        assert_eq!(stop_run(&[], &["a", "b"]), ("ab".into(), None));
        assert_eq!(stop_run(&["ab", "b"], &["xab"]), ("x".into(), Some(0)));
        // the string met first is reported, whatever its place in the list
        assert_eq!(stop_run(&["zz", "", "b"], &["xa", "b"]), ("xa".into(), Some(2)));
    }
}
