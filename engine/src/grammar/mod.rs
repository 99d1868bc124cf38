//! Grammar-constrained sampling: GBNF grammars and JSON Schemas restrict which token may come
//! next.
//!
//! The engine is the `llguidance` crate (with its `toktrie`), not a hand-written GBNF matcher:
//! - it computes the mask over the whole vocabulary by walking a trie of the tokens' exact bytes
//!   against an Earley parser with a derivative-based lexer, so a token that spans several grammar
//!   elements, or a multi-byte UTF-8 character split over tokens, is allowed exactly when some
//!   continuation of it is in the language; a hand-written per-token check would have to replay
//!   each of the 151,936 Qwen2.5 tokens through the grammar at every step;
//! - it compiles JSON Schema itself (properties, required, additionalProperties, enum, const,
//!   anyOf/oneOf/allOf, arrays with min/maxItems, `$ref`/`$defs`, string lengths, patterns and
//!   formats, numeric bounds) and refuses a keyword it does not implement by name, as asked of
//!   bad input here;
//! - it builds on stable Rust from crates.io (MIT, pure Rust) and is what llama.cpp (as an
//!   option) and mistral.rs use.
//!
//! It takes grammars in a Lark dialect, so llama.cpp's GBNF is converted first (`gbnf`).
//! The vocabulary's trie is built once per model (`Factory`) and shared by every request.

mod gbnf;
mod keywords;
mod lazy;

use crate::sampler::TokenConstraint;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::{Arc, OnceLock};

pub use gbnf::to_lark as gbnf_to_lark;

/// What the output must match, checked (compiled once against a one-byte vocabulary) when made,
/// so bad input is reported before any generation starts.
#[derive(Clone)]
pub struct Grammar {
    top: TopLevelGrammar,
    /// What it came from, for messages ("GBNF grammar", "JSON schema").
    kind: &'static str,
    /// Texts that switch the grammar on (`lazy`); none: on from the start.
    triggers: Vec<String>,
    /// Whether the engine evaluates the text the grammar forces ahead, in one batch.
    fast_forward: bool,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grammar({})", self.kind)
    }
}

impl Grammar {
    /// A llama.cpp GBNF grammar (start rule `root`).
    pub fn gbnf(src: &str) -> Result<Grammar> {
        let lark = gbnf::to_lark(src)?;
        Grammar::checked(TopLevelGrammar::from_lark(lark), "grammar")
    }

    /// A JSON Schema. Output is JSON on one line with `", "` and `": "` between items (no free
    /// whitespace: a small model at a high temperature would otherwise fill the output with it).
    pub fn json_schema(schema: &serde_json::Value) -> Result<Grammar> {
        let mut schema = match schema {
            serde_json::Value::Bool(true) => serde_json::json!({}),
            serde_json::Value::Object(_) => schema.clone(),
            _ => return Err(anyhow!("JSON schema: must be an object or true")),
        };
        keywords::check(&schema).map_err(|e| anyhow!("JSON schema: {e}"))?;
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(Self::json_style);
        }
        Grammar::checked(TopLevelGrammar::from_json_schema(schema), "JSON schema")
    }

    /// A grammar in llguidance's Lark dialect (`kind` names it in messages); `%json {schema}`
    /// from `lark_json` embeds a schema.
    pub fn lark(src: String, kind: &'static str) -> Result<Grammar> {
        Grammar::checked(TopLevelGrammar::from_lark(src), kind)
    }

    /// A Lark grammar that names tokens of the model's vocabulary (`<[id]>`), which the one-byte
    /// vocabulary of the check cannot hold: it is compiled against the model's vocabulary only,
    /// when a generation starts. For grammars this program writes, checked beforehand with the
    /// token written as text.
    pub fn lark_with_tokens(src: String, kind: &'static str) -> Grammar {
        Grammar { top: TopLevelGrammar::from_lark(src), kind, triggers: Vec::new(), fast_forward: true }
    }

    /// `%json {schema}` for a Lark grammar, in the output style of `json_schema`; `loose`: with
    /// up to 24 characters of white space wherever JSON allows it (for JSON the model has begun
    /// in its own layout, as a lazy grammar takes over).
    pub fn lark_json(schema: &serde_json::Value, loose: bool) -> String {
        let mut schema = schema.clone();
        let style = if loose {
            serde_json::json!({"whitespace_pattern": "[\\x20\\x0A\\x0D\\x09]{1,24}", "item_separator": ",", "key_separator": ":"})
        } else {
            Self::json_style()
        };
        if let Some(o) = schema.as_object_mut() {
            o.insert("x-guidance".into(), style);
        }
        format!("%json {schema}")
    }

    /// This grammar, off until the output contains one of `triggers`; from there on the output,
    /// from the trigger on, must match it (see `lazy`).
    pub fn lazy(mut self, triggers: Vec<String>) -> Grammar {
        self.triggers = triggers;
        self
    }

    /// JSON on one line with `", "` and `": "` between items.
    fn json_style() -> serde_json::Value {
        serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object() -> Grammar {
        Grammar::json_schema(&serde_json::json!({"type": "object"})).expect("the any-object schema compiles")
    }

    fn checked(top: TopLevelGrammar, kind: &'static str) -> Result<Grammar> {
        static CHECKER: OnceLock<ParserFactory> = OnceLock::new();
        let f = CHECKER.get_or_init(|| {
            let mut f = ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env()).expect("one-byte vocabulary");
            quiet(&mut f);
            f
        });
        f.create_parser(top.clone()).map_err(|e| anyhow!("{kind}: {}", one_line(&e.to_string())))?;
        Ok(Grammar { top, kind, triggers: Vec::new(), fast_forward: true })
    }

    /// This grammar with the fast-forward of forced text off (or on): the output is the same
    /// either way, so this is for measuring it.
    pub fn with_fast_forward(mut self, on: bool) -> Grammar {
        self.fast_forward = on;
        self
    }

    /// Whether the engine evaluates forced text ahead (`GrammarMatcher::forced_tokens`).
    pub fn fast_forward(&self) -> bool {
        self.fast_forward
    }
}

fn quiet(f: &mut ParserFactory) {
    f.set_stderr_log_level(0);
    f.set_buffer_log_level(0);
}

/// llguidance's messages can span lines (a grammar excerpt); an error here is one line.
fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// The vocabulary as llguidance sees it: each token's exact bytes (byte-level BPE decoded,
/// SentencePiece `▁` and `<0xNN>` mapped), control tokens behind the special-token marker so no
/// text matches them, and the model's end tokens as end of generation.
pub struct Factory {
    inner: ParserFactory,
}

impl Factory {
    pub fn new(tok: &Tokenizer) -> Result<Factory> {
        let n = tok.vocab_size() as u32;
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                if tok.is_control(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tok.token_text(id).as_bytes());
                    w
                } else {
                    tok.token_bytes(id)
                }
            })
            .collect();
        let ends = tok.end_tokens();
        let eos =
            ends.first().copied().or(tok.eos()).ok_or_else(|| anyhow!("the model has no end-of-generation token"))?;
        let mut info = TokRxInfo::new(n, eos);
        info.tok_bos = tok.bos();
        let ends = if ends.is_empty() { vec![eos] } else { ends.to_vec() };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut inner = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )?;
        quiet(&mut inner);
        Ok(Factory { inner })
    }

    /// A matcher at the start of the output.
    pub fn matcher(&self, g: &Grammar) -> Result<GrammarMatcher> {
        let parser =
            self.inner.create_parser(g.top.clone()).map_err(|e| anyhow!("{}: {}", g.kind, one_line(&e.to_string())))?;
        Ok(GrammarMatcher { m: Matcher::new(Ok(parser)), mask: None, phase: lazy::Phase::start(&g.triggers) })
    }
}

/// One generation's position in the grammar.
pub struct GrammarMatcher {
    m: Matcher,
    mask: Option<SimpleVob>,
    /// Whether the grammar applies yet (a lazy grammar waits for its trigger).
    phase: lazy::Phase,
}

impl GrammarMatcher {
    /// The tokens allowed next (end tokens included where the grammar can end).
    pub fn allowed(&mut self) -> Result<&SimpleVob> {
        let v = self.m.compute_mask_or_eos().map_err(|e| anyhow!("grammar: {}", one_line(&e.to_string())))?;
        Ok(self.mask.insert(v))
    }

    /// Whether the output so far is a complete sentence of the grammar (any text is, while a
    /// lazy grammar is off).
    pub fn is_accepting(&mut self) -> bool {
        !self.phase.is_on() || self.m.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar restricts the next token (false while a lazy grammar waits for its
    /// trigger, or after the text following the trigger did not fit it).
    pub fn is_on(&self) -> bool {
        self.phase.is_on()
    }

    /// At most `max` tokens for the text the grammar forces next (keys, punctuation: everything
    /// up to its next choice), a guess the engine evaluates ahead and then checks token by token
    /// against what it samples, so it never changes the output. The guess is the tokenizer's own
    /// encoding of that text (what the model most likely writes), or the vocabulary's longest
    /// matches where that encoding does not give the text back (a SentencePiece space prefix),
    /// less the tokens at its end that a longer token could replace by spanning into the text
    /// after it (`"` before a string's first letters, `}` before `,`); empty when nothing is
    /// forced.
    pub fn forced_tokens(&mut self, tok: &Tokenizer, max: usize) -> Vec<u32> {
        // A lazy grammar waiting for its trigger forces nothing.
        if !self.phase.is_on() {
            return Vec::new();
        }
        let Ok(env) = self.m.tok_env() else { return Vec::new() };
        let bytes = if max == 0 { Vec::new() } else { self.m.compute_ff_bytes() };
        // A multi-byte character cut by the end of the forced text is left to sampling.
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        if text.is_empty() {
            return Vec::new();
        }
        let trie = env.tok_trie();
        let mut ids = match tok.encode(text, false, false) {
            Ok(ids) if ids.iter().flat_map(|&id| tok.token_piece(id).iter().copied()).eq(text.bytes()) => ids,
            _ => trie.greedy_tokenize(text.as_bytes()),
        };
        // The longest end of the text (within the last few tokens) that begins a longer token:
        // the tokens over it are dropped.
        let tail: usize = ids.iter().rev().take(4).map(|&id| trie.token_len(id)).sum();
        let from = text.len() - tail.min(trie.max_token_len()).min(text.len());
        if let Some(start) = (from..text.len()).find(|&i| trie.has_extensions(&text.as_bytes()[i..])) {
            let mut cut = text.len() - start;
            while cut > 0 {
                let Some(last) = ids.pop() else { break };
                cut = cut.saturating_sub(trie.token_len(last));
            }
        }
        ids.truncate(max);
        ids
    }
}

impl TokenConstraint for GrammarMatcher {
    fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        if !self.phase.is_on() {
            return Ok(());
        }
        let allowed = self.allowed()?;
        let n = allowed.len().min(logits.len());
        for (i, l) in logits[..n].iter_mut().enumerate() {
            if !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        // Padding rows of the output matrix beyond the tokenizer's vocabulary are never text.
        logits[n..].fill(f32::NEG_INFINITY);
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<()> {
        if !self.phase.is_on() {
            return lazy::accept(self, token);
        }
        self.m.consume_token(token).map_err(|e| anyhow!("grammar: {}", one_line(&e.to_string())))
    }
}

#[cfg(test)]
mod tests;
