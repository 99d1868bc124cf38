//! Runs one generation: waits for a slot (FIFO), then calls the engine on a blocking thread
//! (never on the async executor) and sends the text through a channel as it comes.
//!
//! Cancellation: the response (SSE body or the non-streaming handler) owns the receiving end.
//! When the client goes away, hyper drops the response, the receiver goes with it, the next send
//! from the engine's callback fails, the callback returns `false`, and the engine stops: the slot
//! is free again. Server shutdown stops every generation the same way.

use super::error::ApiError;
use super::model::ModelSession;
use super::AppState;
use llamafile_engine::{GenerateRequest, GenerationStats, StopReason};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

pub enum GenEvent {
    /// A piece of the reply.
    Text(String),
    /// The end, with the figures.
    Done(GenerationStats),
    Failed(ApiError),
}

/// Events buffered between the engine and a slow client before the engine waits for it.
const CHANNEL: usize = 256;

pub fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::EndToken => "end_token",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
        StopReason::StopString => "stop_string",
        StopReason::Cancelled => "cancelled",
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(s: StopReason) -> &'static str {
    match s {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::EndToken | StopReason::StopString | StopReason::Cancelled => "stop",
    }
}

/// llama.cpp's `stop_type`.
pub fn stop_type(s: StopReason) -> &'static str {
    match s {
        StopReason::EndToken => "eos",
        StopReason::MaxTokens | StopReason::ContextFull => "limit",
        StopReason::StopString => "word",
        StopReason::Cancelled => "none",
    }
}

/// llama.cpp's `timings` object (the chat page shows tokens/s from it).
pub fn timings(s: &GenerationStats) -> serde_json::Value {
    let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let per_tok = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
    let prompt_n = s.prompt_tokens.saturating_sub(s.cached_tokens);
    serde_json::json!({
        "cache_n": s.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": s.prompt_ms,
        "prompt_per_token_ms": per_tok(prompt_n, s.prompt_ms),
        "prompt_per_second": per_s(prompt_n, s.prompt_ms),
        "predicted_n": s.generated_tokens,
        "predicted_ms": s.generation_ms,
        "predicted_per_token_ms": per_tok(s.generated_tokens, s.generation_ms),
        "predicted_per_second": per_s(s.generated_tokens, s.generation_ms),
    })
}

/// OpenAI's `usage`, with the prompt tokens served from the cache.
pub fn usage(s: &GenerationStats) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
        "prompt_tokens_details": { "cached_tokens": s.cached_tokens },
    })
}

/// Whether a generation may reuse what its slot has cached (llama.cpp's `cache_prompt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCache {
    /// Only the part of the prompt the slot does not hold is evaluated (the default).
    Reuse,
    /// The whole prompt is evaluated. The engine's arithmetic varies slightly with the batch a
    /// token is evaluated in, so at temperature 0 only this makes an answer independent of what
    /// the slot held before (as llama.cpp documents for `cache_prompt`).
    Fresh,
}

impl PromptCache {
    /// From a request's `cache_prompt` (absent: reuse).
    pub fn from_request(cache_prompt: Option<bool>) -> PromptCache {
        if cache_prompt == Some(false) {
            PromptCache::Fresh
        } else {
            PromptCache::Reuse
        }
    }
}

/// Queue the request and start it when a slot is free; the events come on the returned channel.
pub fn start(state: &Arc<AppState>, req: GenerateRequest, cache: PromptCache) -> mpsc::Receiver<GenEvent> {
    start_with(
        state,
        req,
        cache,
        |session, req, send| session.generate(req, &mut |t| send(GenEvent::Text(t.to_owned()))),
        |end| match end {
            Ok(stats) => GenEvent::Done(stats),
            Err(e) => GenEvent::Failed(e),
        },
    )
}

/// How a generation runs in its slot: the session, the request, and `send` for its events
/// (`false` once the client is gone or the server stops: then the generation should stop).
pub type RunFn<E> = dyn FnOnce(&mut dyn ModelSession, &GenerateRequest, &mut dyn FnMut(E) -> bool) -> anyhow::Result<GenerationStats>
    + Send;

/// `start` with the generation run by `run`, whose events are of any kind; `end` makes the last
/// event from the outcome. The slot's bookkeeping (prompt cache, `/slots`, logs, a panic in the
/// engine) is the same for every kind.
pub fn start_with<E: Send + 'static>(
    state: &Arc<AppState>,
    req: GenerateRequest,
    cache: PromptCache,
    run: impl FnOnce(&mut dyn ModelSession, &GenerateRequest, &mut dyn FnMut(E) -> bool) -> anyhow::Result<GenerationStats>
        + Send
        + 'static,
    end: fn(Result<GenerationStats, ApiError>) -> E,
) -> mpsc::Receiver<E> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let state = state.clone();
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.subscribe();
        let lease = tokio::select! {
            lease = state.pool.acquire(&req.prompt) => Some(lease),
            _ = tx.closed() => return, // the client left while queued
            _ = async { let _ = shutdown.wait_for(|&down| down).await; } => None,
        };
        let Some(lease) = lease.filter(|_| !state.shutting_down.load(Ordering::SeqCst)) else {
            let _ = tx.send(end(Err(ApiError::unavailable("the server is shutting down")))).await;
            return;
        };
        let st = state.clone();
        let task = tokio::task::spawn_blocking(move || run_blocking(&st, lease, req, cache, tx, Box::new(run), end));
        if let Err(e) = task.await {
            // run_blocking catches the engine's panics itself; this would be a bug in it.
            eprintln!("server: generation task failed: {e}");
        }
    });
    rx
}

fn run_blocking<E>(
    state: &AppState,
    mut lease: super::slots::SlotLease,
    req: GenerateRequest,
    cache: PromptCache,
    tx: mpsc::Sender<E>,
    run: Box<RunFn<E>>,
    end: fn(Result<GenerationStats, ApiError>) -> E,
) {
    let slot_id = lease.id();
    let result = {
        let slot = lease.slot();
        if cache == PromptCache::Fresh {
            slot.session.clear();
            slot.cached.clear();
        }
        let mut send = |event: E| -> bool {
            if state.shutting_down.load(Ordering::Relaxed) {
                return false;
            }
            tx.blocking_send(event).is_ok()
        };
        let session = &mut *slot.session;
        std::panic::catch_unwind(AssertUnwindSafe(|| run(session, &req, &mut send)))
    };
    let outcome = match result {
        Ok(Ok(stats)) => {
            state.metrics.record(&stats);
            let slot = lease.slot();
            slot.cached.clear();
            slot.cached.extend_from_slice(&req.prompt);
            state.pool.set_result(
                slot_id,
                req.prompt.len(),
                stop_name(stats.stop),
                stats.generated_tokens,
                stats.cached_tokens,
            );
            if state.log {
                let tps = if stats.generation_ms > 0.0 {
                    stats.generated_tokens as f64 * 1e3 / stats.generation_ms
                } else {
                    0.0
                };
                eprintln!(
                    "slot {slot_id}: {} prompt tokens ({} cached) in {:.0} ms, {} generated in {:.0} ms ({tps:.1} tokens/s), stop: {}",
                    stats.prompt_tokens,
                    stats.cached_tokens,
                    stats.prompt_ms,
                    stats.generated_tokens,
                    stats.generation_ms,
                    stop_name(stats.stop)
                );
            }
            Ok(stats)
        }
        Ok(Err(e)) => {
            lease.slot().cached.clear();
            state.pool.set_result(slot_id, 0, "error", 0, 0);
            eprintln!("slot {slot_id}: generation failed: {e:#}");
            Err(ApiError::internal(format!("generation failed: {e:#}")))
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            eprintln!("slot {slot_id}: the engine panicked: {what}; the slot gets a fresh session");
            // The session may be half-updated: replace it rather than reuse its cache.
            let slot = lease.slot();
            slot.session = state.model.new_session();
            slot.cached.clear();
            state.pool.set_result(slot_id, 0, "error", 0, 0);
            Err(ApiError::internal(format!("the engine failed: {what}")))
        }
    };
    drop(lease); // the slot is free before the client hears the end
    let _ = tx.blocking_send(end(outcome));
}

/// Wait for the whole reply (non-streaming requests).
pub async fn collect(mut rx: mpsc::Receiver<GenEvent>) -> Result<(String, GenerationStats), ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done(stats) => return Ok((text, stats)),
            GenEvent::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}
