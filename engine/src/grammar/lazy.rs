//! Lazy grammars, as llama.cpp has them for tool calls with `tool_choice: "auto"`: the model
//! writes freely until its output contains a trigger (the text that opens a call in the
//! model's format, e.g. `<tool_call>`); from there on the grammar applies, so a call it starts
//! always parses.
//!
//! The grammar describes the output from the trigger on (the trigger included). When the trigger
//! appears, the trigger and whatever the model wrote after it in the same token are fed to the
//! grammar. Were they not to fit (the model wrote them before the grammar could steer it), the
//! grammar stays off: the output is then read as it is, as without a grammar, rather than
//! failing the request. A control token's text is matched as text here, so the grammar writes
//! such a trigger as text too.

use super::GrammarMatcher;
use anyhow::Result;
use llguidance::toktrie::TokTrie;

/// Where a generation stands with its grammar.
pub(super) enum Phase {
    /// The grammar restricts every token.
    On,
    /// Free text until a trigger.
    Waiting(Waiting),
    /// Free text to the end.
    Off,
}

/// How far into the output a trigger at its start is looked for.
const START_WINDOW: usize = 64;

impl Phase {
    /// `On` for a grammar without triggers. A trigger written `^regex` is a regular expression
    /// that counts only at the start of the output (after white space, within its first
    /// `START_WINDOW` bytes); any other is a text that counts anywhere.
    pub(super) fn start(triggers: &[String]) -> Phase {
        if triggers.is_empty() {
            return Phase::On;
        }
        let (at_start, anywhere): (Vec<&String>, Vec<&String>) = triggers.iter().partition(|t| t.starts_with('^'));
        Phase::Waiting(Waiting {
            // A trigger that is not a valid expression is a bug in the caller: it never fires.
            at_start: at_start.iter().filter_map(|t| regex::bytes::Regex::new(t).ok()).collect(),
            anywhere: anywhere.iter().map(|t| t.as_bytes().to_vec()).filter(|t| !t.is_empty()).collect(),
            seen: Vec::new(),
        })
    }

    pub(super) fn is_on(&self) -> bool {
        matches!(self, Phase::On)
    }
}

pub(super) struct Waiting {
    at_start: Vec<regex::bytes::Regex>,
    anywhere: Vec<Vec<u8>>,
    /// The output's bytes: all of it while a trigger at the start is still looked for, else
    /// the tail that may hold the beginning of a trigger.
    seen: Vec<u8>,
}

impl Waiting {
    /// Take the next token's bytes; when the output now holds a trigger, the bytes from the
    /// trigger on.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.seen.extend_from_slice(bytes);
        if !self.at_start.is_empty() {
            let text = self.seen.trim_ascii_start();
            let skipped = self.seen.len() - text.len();
            if self.at_start.iter().any(|t| t.is_match(text)) {
                return Some(self.seen[skipped..].to_vec());
            }
            if self.seen.len() > START_WINDOW {
                self.at_start.clear();
            }
        }
        if let Some(at) = self.anywhere.iter().filter_map(|t| find(&self.seen, t)).min() {
            return Some(self.seen[at..].to_vec());
        }
        if self.at_start.is_empty() {
            let keep = self.anywhere.iter().map(|t| t.len() - 1).max().unwrap_or(0);
            let cut = self.seen.len().saturating_sub(keep);
            self.seen.drain(..cut);
        }
        None
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GrammarMatcher::accept` while the grammar is not on: watch for a trigger and switch on.
pub(super) fn accept(g: &mut GrammarMatcher, token: u32) -> Result<()> {
    let Phase::Waiting(w) = &mut g.phase else { return Ok(()) };
    let env = g.m.tok_env().map_err(|e| anyhow::anyhow!("grammar: {e}"))?;
    let trie = env.tok_trie();
    // Control tokens carry a marker byte before their text (see `Factory::new`).
    let bytes = trie.token(token);
    let bytes = bytes.strip_prefix(&[TokTrie::SPECIAL_TOKEN_MARKER]).unwrap_or(bytes);
    let Some(rest) = w.push(bytes) else { return Ok(()) };
    // Any split of the bytes into tokens will do: the grammar reads bytes.
    let tokens = trie.greedy_tokenize(&rest);
    let fits = g.m.try_consume_tokens(&tokens).is_ok_and(|n| n == tokens.len());
    g.phase = if fits { Phase::On } else { Phase::Off };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(triggers: &[&str]) -> Waiting {
        match Phase::start(&triggers.iter().map(|t| t.to_string()).collect::<Vec<_>>()) {
            Phase::Waiting(w) => w,
            _ => panic!("triggers make a waiting phase"),
        }
    }

    #[test]
    fn triggers_found_across_tokens() {
        let mut w = waiting(&["<tool_call>"]);
        assert_eq!(w.push(b"Let me check. <to"), None);
        assert_eq!(w.push(b"ol_"), None);
        assert_eq!(w.push(b"call>\n{\"na").as_deref(), Some(&b"<tool_call>\n{\"na"[..]));
        let mut w = waiting(&["<tool_call>"]);
        for _ in 0..1000 {
            assert_eq!(w.push(b"no call here "), None);
        }
        assert!(w.seen.len() < 20, "only a trigger's length is kept: {}", w.seen.len());
    }

    #[test]
    fn anchored_triggers_only_at_the_start() {
        let call = r#"^(```(json)?\s*)?\{\s*"name""#;
        let mut w = waiting(&[call, "<|python_tag|>"]);
        assert_eq!(w.push(b" \n{\"na"), None);
        assert_eq!(w.push(b"me\": \"get").as_deref(), Some(&b"{\"name\": \"get"[..]));
        let mut w = waiting(&[call]);
        assert_eq!(w.push(b"```json\n{\n  \"name\"").as_deref(), Some(&b"```json\n{\n  \"name\""[..]));
        let mut w = waiting(&[call]);
        assert_eq!(w.push(b"Sure: "), None);
        assert_eq!(w.push(b"{\"name\": \"x\"}"), None, "not at the start");
        let mut w = waiting(&[call]);
        assert_eq!(w.push(&[b' '; 70]), None);
        assert_eq!(w.push(b"{\"name\""), None, "past the window at the start");
        let mut w = waiting(&[call, "<|python_tag|>"]);
        assert_eq!(w.push(b"Hi "), None);
        assert_eq!(w.push(b"<|python_tag|>{").as_deref(), Some(&b"<|python_tag|>{"[..]));
    }
}

#[cfg(test)]
mod real_vocabulary {
    use super::super::{Factory, Grammar};
    use crate::sampler::TokenConstraint;
    use crate::tokenizer::Tokenizer;
    use llamafile_format::gguf::GgufFile;

    /// On Qwen2.5's vocabulary (where `<tool_call>` is one token): free text passes unmasked,
    /// the trigger token switches the grammar on, and from there only the call may follow.
    #[test]
    fn the_trigger_token_switches_the_grammar_on() {
        let Some(dir) = test_support::require_shared() else { return };
        let tok = Tokenizer::from_gguf(&GgufFile::open(&dir.join("vocab/qwen2.5-coder.vocab.gguf")).unwrap()).unwrap();
        let f = Factory::new(&tok).unwrap();
        let g = Grammar::lark("start: \"<tool_call>\" \"\\n\" %json {\"type\": \"object\", \"properties\": {\"city\": {\"const\": \"Paris\"}}, \"required\": [\"city\"]}\n".into(), "test")
            .unwrap()
            .lazy(vec!["<tool_call>".into()]);
        let mut m = f.matcher(&g).unwrap();
        let free = tok.encode("Let me check the weather.\n", false, true).unwrap();
        let n = tok.vocab_size();
        for &id in &free {
            let mut logits = vec![0f32; n];
            m.mask(&mut logits).unwrap();
            assert!(logits.iter().all(|l| *l == 0.0), "nothing is masked before the trigger");
            m.accept(id).unwrap();
            assert!(!m.is_on() && m.is_accepting());
        }
        let call = tok.encode("<tool_call>", false, true).unwrap();
        assert_eq!(call.len(), 1, "one token in Qwen's vocabulary");
        m.accept(call[0]).unwrap();
        assert!(m.is_on() && !m.is_accepting());
        let hello = tok.encode("Hello", false, false).unwrap()[0];
        let newline = tok.encode("\n", false, false).unwrap()[0];
        let mut logits = vec![0f32; n];
        m.mask(&mut logits).unwrap();
        assert!(logits[hello as usize].is_infinite() && logits[newline as usize] == 0.0);
        for id in tok.encode("\n{\"city\": \"Paris\"}", false, false).unwrap() {
            assert!(m.allowed().unwrap().is_allowed(id), "{:?}", tok.token_text(id));
            m.accept(id).unwrap();
        }
        assert!(m.is_accepting());

        // A trigger inside a token, with more text after it in that token: fed to the grammar.
        let mut m = f.matcher(&g).unwrap();
        for id in tok.encode("ok<tool_call>\n{\"ci", false, false).unwrap() {
            m.accept(id).unwrap();
        }
        assert!(m.is_on(), "on after the trigger spelled out in text");
        let ty = tok.encode("ty", false, false).unwrap()[0];
        assert!(m.allowed().unwrap().is_allowed(ty));

        // A control token as the trigger (as Mistral's `[TOOL_CALLS]` is in its vocabulary): its
        // text is matched, and the grammar reads it as text.
        let g = Grammar::lark("start: \"<|im_start|>\" \"[\" %json {\"type\": \"integer\"} \"]\"\n".into(), "test")
            .unwrap()
            .lazy(vec!["<|im_start|>".into()]);
        let mut m = f.matcher(&g).unwrap();
        let start = tok.encode("<|im_start|>", false, true).unwrap();
        assert!(start.len() == 1 && tok.is_control(start[0]));
        m.accept(tok.encode("x", false, false).unwrap()[0]).unwrap();
        assert!(!m.is_on());
        m.accept(start[0]).unwrap();
        assert!(m.is_on());
        let open = tok.encode("[", false, false).unwrap()[0];
        assert!(
            m.allowed().unwrap().is_allowed(open)
                && !m.allowed().unwrap().is_allowed(tok.encode("x", false, false).unwrap()[0])
        );
    }
}

impl super::Grammar {
    /// Whether `text` is a complete output under this grammar, fed one byte at a time to a
    /// matcher over the 256 single bytes (while the grammar is on, each byte must be allowed
    /// before it is taken), lazy triggers included. Slow (a parser per call): for tests of the
    /// grammars the server builds, not for sampling.
    pub fn accepts(&self, text: &str) -> bool {
        use crate::sampler::TokenConstraint;
        use llguidance::toktrie::ApproximateTokEnv;
        use llguidance::{Matcher, ParserFactory};
        let mut f = ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env()).unwrap();
        super::quiet(&mut f);
        let mut g = GrammarMatcher {
            m: Matcher::new(f.create_parser(self.top.clone())),
            mask: None,
            phase: Phase::start(&self.triggers),
        };
        for b in text.bytes() {
            if g.is_on() && (g.m.is_stopped() || !g.allowed().unwrap().is_allowed(b as u32)) {
                return false;
            }
            g.accept(b as u32).unwrap();
        }
        g.is_accepting()
    }
}
