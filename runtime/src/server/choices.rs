//! Generations with several choices (`n`) and log-probabilities: the engine's
//! `Session::generate_with` behind the slot queue of `generation`, its events on a channel.
//!
//! The prompt is evaluated once; the choices run one after another in the request's slot, each
//! from the prompt's cache, with its own seed (`sampler::choice_seed`).

use super::error::ApiError;
use super::generation::{self, PromptCache};
use super::AppState;
use llamafile_engine::logprobs::TokenLogprob;
use llamafile_engine::{GenerateOptions, GenerateRequest, GenerationStats, Output};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most choices one request may ask for (`n`): they run one after another in one slot, so a
/// large `n` holds the slot that long.
pub const MAX_CHOICES: usize = 16;

pub enum ChoiceEvent {
    /// A piece of choice `.0`'s text.
    Text(usize, String),
    /// A generated token of choice `.0`, before the text it begins.
    Token(usize, TokenLogprob),
    /// Choice `.0` ended.
    ChoiceDone(usize, GenerationStats),
    /// The end: the prompt counted once, the tokens of every choice.
    Done(GenerationStats),
    Failed(ApiError),
}

/// Queue the request and start it when a slot is free.
pub fn start(
    state: &Arc<AppState>,
    req: GenerateRequest,
    cache: PromptCache,
    opts: GenerateOptions,
) -> mpsc::Receiver<ChoiceEvent> {
    generation::start_with(
        state,
        req,
        cache,
        move |session, req, send| {
            session.generate_with(req, &opts, &mut |out| match out {
                Output::Text(i, t) => send(ChoiceEvent::Text(i, t.to_owned())),
                Output::Token(i, t) => send(ChoiceEvent::Token(i, t.clone())),
                Output::Done(i, s) => send(ChoiceEvent::ChoiceDone(i, s.clone())),
            })
        },
        |end| match end {
            Ok(stats) => ChoiceEvent::Done(stats),
            Err(e) => ChoiceEvent::Failed(e),
        },
    )
}

/// One finished choice.
#[derive(Default)]
pub struct Choice {
    pub text: String,
    pub tokens: Vec<TokenLogprob>,
    pub stats: Option<GenerationStats>,
}

/// Wait for every choice (non-streaming requests).
pub async fn collect(
    mut rx: mpsc::Receiver<ChoiceEvent>,
    n: usize,
) -> Result<(Vec<Choice>, GenerationStats), ApiError> {
    let mut choices: Vec<Choice> = (0..n.max(1)).map(|_| Choice::default()).collect();
    while let Some(ev) = rx.recv().await {
        let i = match &ev {
            ChoiceEvent::Text(i, _) | ChoiceEvent::Token(i, _) | ChoiceEvent::ChoiceDone(i, _) => *i,
            ChoiceEvent::Done(stats) => {
                // a choice cut short (cancelled) ends as the whole generation did
                for c in &mut choices {
                    c.stats.get_or_insert_with(|| stats.clone());
                }
                return Ok((choices, stats.clone()));
            }
            ChoiceEvent::Failed(e) => return Err(e.clone()),
        };
        let c = choices
            .get_mut(i)
            .ok_or_else(|| ApiError::internal(format!("the generation reported choice {i} of {n}")))?;
        match ev {
            ChoiceEvent::Text(_, t) => c.text.push_str(&t),
            ChoiceEvent::Token(_, t) => c.tokens.push(t),
            ChoiceEvent::ChoiceDone(_, s) => c.stats = Some(s),
            ChoiceEvent::Done(_) | ChoiceEvent::Failed(_) => {}
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}
