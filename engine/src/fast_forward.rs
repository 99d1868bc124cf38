//! Fast-forward of the text a grammar forces (JSON keys, punctuation between values): those
//! tokens are evaluated ahead, together with the token just sampled, in one batch, instead of
//! one forward pass each.
//!
//! The forced tokens are a guess (`GrammarMatcher::forced_tokens`): when generation reaches each
//! one, the step still masks and samples as usual, from the logits the batch computed for that
//! position, and the guess is kept only if the sampled token is the same; the first token that
//! differs drops the rest of the guess from the cache. So every step makes the token-by-token
//! choice (the same mask, sampler and draws of the random generator), the model still chooses
//! how to tokenize forced text, and what is saved is forward passes: a batch of k tokens costs
//! far less than k single tokens. The logits of a batch equal the token-by-token ones up to
//! float rounding (the batched matrix kernels add in another order, as for a prompt evaluated in
//! batches), so only a near tie between two tokens can go the other way.

use super::Session;
use crate::grammar::GrammarMatcher;
use anyhow::Result;

/// Most forced tokens evaluated ahead at once (a JSON key with its punctuation is a few tokens;
/// each costs a row of logits over the whole vocabulary).
const MAX_AHEAD: usize = 16;

/// Forced tokens a session evaluated ahead, and of those the ones generation kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub evaluated: u64,
    pub kept: u64,
}

/// One generation's tokens evaluated ahead.
pub(super) struct FastForward {
    on: bool,
    /// Tokens in the cache that belong to the prompt or the output; the cache may hold more
    /// (the rest of a guess not checked yet).
    kept: usize,
    /// The guess in the cache after position `kept`, and the next index of it to check.
    ahead: Vec<u32>,
    next: usize,
    /// Logits after each token of `ahead`, one row of `n_vocab` values each.
    rows: Vec<f32>,
}

impl FastForward {
    /// Off without a grammar or when the grammar asks so; `kept`: the tokens in the cache.
    pub(super) fn new(on: bool, kept: usize) -> FastForward {
        FastForward { on, kept, ahead: Vec::new(), next: 0, rows: Vec::new() }
    }

    /// Tokens of the cache that are prompt or output: the context the sampler sees.
    pub(super) fn kept(&self) -> usize {
        self.kept
    }
}

impl Session {
    /// Forced tokens this session evaluated ahead so far, and how many of them it kept.
    pub fn fast_forward_counts(&self) -> Counts {
        self.ahead
    }

    /// Before the first token: evaluate what the grammar forces at its start.
    pub(super) fn fast_forward_start(
        &mut self,
        ff: &mut FastForward,
        grammar: Option<&mut GrammarMatcher>,
        budget: usize,
    ) -> Result<()> {
        self.evaluate_ahead(None, ff, grammar, budget)
    }

    /// After `id` was sampled and accepted by the grammar, with room for it in the cache: put it
    /// in the cache with the logits of what follows in `self.logits`. If it is the next token
    /// of the guess it is there already; otherwise the rest of the guess is dropped, and `id` is
    /// evaluated with what the grammar forces after it (at most `budget` tokens: those that may
    /// still be generated).
    pub(super) fn advance(
        &mut self,
        id: u32,
        ff: &mut FastForward,
        grammar: Option<&mut GrammarMatcher>,
        budget: usize,
    ) -> Result<()> {
        if ff.next < ff.ahead.len() && ff.ahead[ff.next] == id {
            let nv = self.logits.len();
            self.logits.copy_from_slice(&ff.rows[ff.next * nv..(ff.next + 1) * nv]);
            ff.next += 1;
            ff.kept += 1;
            self.ahead.kept += 1;
            return Ok(());
        }
        self.evaluate_ahead(Some(id), ff, grammar, budget)
    }

    /// Drop what is left of the guess: the cache then holds only prompt and output.
    pub(super) fn fast_forward_finish(&mut self, ff: &FastForward) {
        self.truncate(ff.kept);
    }

    /// Evaluate `first` (if any) and the grammar's forced tokens in one batch.
    fn evaluate_ahead(
        &mut self,
        first: Option<u32>,
        ff: &mut FastForward,
        grammar: Option<&mut GrammarMatcher>,
        budget: usize,
    ) -> Result<()> {
        self.truncate(ff.kept);
        ff.ahead.clear();
        ff.next = 0;
        let room = self.inner.n_ctx.saturating_sub(ff.kept + first.is_some() as usize);
        let limit = budget.min(room).min(MAX_AHEAD).min(self.inner.n_batch - first.is_some() as usize);
        if let (true, Some(g)) = (ff.on, grammar) {
            ff.ahead = g.forced_tokens(&self.inner.tokenizer, limit);
        }
        self.ahead.evaluated += ff.ahead.len() as u64;
        let batch: Vec<u32> = first.into_iter().chain(ff.ahead.iter().copied()).collect();
        if batch.is_empty() {
            return Ok(());
        }
        let nv = self.logits.len();
        if first.is_some() && batch.len() == 1 {
            let mut logits = std::mem::take(&mut self.logits);
            let r = self.forward_batch(&batch, Some(&mut logits));
            self.logits = logits;
            r?;
        } else {
            let mut rows = std::mem::take(&mut ff.rows);
            rows.resize(batch.len() * nv, 0.0);
            self.forward_batch(&batch, Some(&mut rows))?;
            if first.is_some() {
                // The row after `first` is the next step's; the rest stay for the guess.
                self.logits.copy_from_slice(&rows[..nv]);
                rows.drain(..nv);
            }
            ff.rows = rows;
        }
        ff.kept += first.is_some() as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;
    use crate::grammar::Grammar;
    use crate::{Engine, GenerateRequest, LoadOptions, SamplingParams, StopReason};
    use serde_json::{json, Value};
    use std::path::Path;

    fn load(path: &Path) -> Engine {
        Engine::load(&LoadOptions {
            model: path.to_path_buf(),
            n_ctx: Some(1024),
            n_threads: Some(2),
            ..Default::default()
        })
        .unwrap()
    }

    /// Text, tokens, why it stopped, and the forced tokens evaluated ahead / kept.
    fn generate(
        e: &Engine,
        prompt: &[u32],
        g: Grammar,
        sampling: &SamplingParams,
        n: usize,
    ) -> (String, usize, StopReason, Counts) {
        let req = GenerateRequest {
            prompt: prompt.to_vec(),
            max_tokens: n,
            sampling: sampling.clone(),
            stop: vec![],
            ignore_eos: false,
            grammar: Some(g),
        };
        let mut s = e.new_session();
        let mut text = String::new();
        let st = s
            .generate(&req, &mut |t| {
                text.push_str(t);
                true
            })
            .unwrap();
        // Only prompt and output stay in the cache.
        assert_eq!(
            s.n_past(),
            prompt.len() + st.generated_tokens - (st.stop != StopReason::EndToken) as usize,
            "{text}"
        );
        (text, st.generated_tokens, st.stop, s.fast_forward_counts())
    }

    /// Every prompt and schema at temperature 0 gives the same text with the fast-forward as
    /// without; returns the forced tokens it evaluated ahead and kept. The batched logits differ
    /// from the token-by-token ones by rounding (up to 0.29 on Qwen's logits), which decides near
    /// ties: at a temperature, a draw near the boundary between two tokens; greedy, two tokens
    /// within that distance (Qwen's second tag for "Give me a red square." is one, and the tiny
    /// model's free integers are runs of near-equal digits), so those are not among the cases.
    fn same_output_both_ways(e: &Engine, prompts: &[String], schemas: &[Value], n: usize) -> Counts {
        let mut total = Counts::default();
        for prompt in prompts {
            let ids = e.tokenizer().encode(prompt, true, true).unwrap();
            for schema in schemas {
                let sampling = SamplingParams { temperature: 0.0, ..Default::default() };
                let g = Grammar::json_schema(schema).unwrap();
                let (t0, n0, s0, c0) = generate(e, &ids, g.clone().with_fast_forward(false), &sampling, n);
                let (t1, n1, s1, c1) = generate(e, &ids, g, &sampling, n);
                assert_eq!(c0, Counts::default(), "off means off");
                assert_eq!((&t1, n1, s1), (&t0, n0, s0), "prompt {prompt:?}, schema {schema}");
                assert!(c1.kept <= c1.evaluated);
                eprintln!("{n1} tokens, {} of {} forced tokens kept: {t1}", c1.kept, c1.evaluated);
                total.evaluated += c1.evaluated;
                total.kept += c1.kept;
            }
        }
        total
    }

    fn schemas() -> Vec<Value> {
        vec![
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "kind": {"enum": ["circle", "square"]},
                "at": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"], "additionalProperties": false},
                "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 2},
                "ok": {"type": "boolean"}
            }, "required": ["name", "kind", "at", "tags", "ok"], "additionalProperties": false}),
            json!({"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99}, "done": {"const": true}}, "required": ["id", "done"], "additionalProperties": false}, "minItems": 1, "maxItems": 3}),
        ]
    }

    #[test]
    fn fast_forward_gives_the_token_by_token_output_on_the_tiny_model() {
        let Some(dir) = test_support::require_shared() else { return };
        let e = load(&dir.join("models/tiny-mistral-q8_0.gguf"));
        let prompts = ["A shape as JSON:", "Some numbers", "Once upon a time"].map(String::from);
        let bounded = json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 6},
            "kind": {"enum": ["circle", "square"]},
            "at": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x", "y"], "additionalProperties": false},
            "ok": {"type": "boolean"}
        }, "required": ["name", "kind", "at", "ok"], "additionalProperties": false});
        let c = same_output_both_ways(&e, &prompts, &[bounded, schemas().remove(1)], 80);
        assert!(c.evaluated > 0, "{c:?}");
    }

    /// The server builds the grammar's view of the vocabulary in the background at start.
    #[test]
    fn the_grammar_vocabulary_is_prepared_in_the_background() {
        let Some(dir) = test_support::require_shared() else { return };
        let e = load(&dir.join("models/tiny-mistral-q8_0.gguf"));
        assert!(e.inner.grammar.get().is_none(), "built on demand only");
        e.prepare_grammar();
        let t0 = std::time::Instant::now();
        while e.inner.grammar.get().is_none() {
            assert!(t0.elapsed().as_secs() < 60, "not built in the background");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(e.grammar_factory().is_ok());
    }

    #[test]
    fn fast_forward_gives_the_token_by_token_output_on_qwen() {
        let Some(path) = test_support::require_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
        let e = load(&path);
        let prompts = ["Describe a shape as JSON.", "List three tasks as JSON.", "Describe a circle."]
            .map(|p| format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"));
        let c = same_output_both_ways(&e, &prompts, &schemas(), 120);
        // Qwen writes forced keys the way its tokenizer does: most of the guesses are kept.
        assert!(c.kept * 2 > c.evaluated, "{c:?}");
    }
}
