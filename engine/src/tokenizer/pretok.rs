//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) pre-tokenization: the regular expressions the
//! reference engine applies for each `tokenizer.ggml.pre`, and the GPT-2 byte <-> character map.
//!
//! The reference applies a *list* of expressions one after the other: each expression splits every
//! piece produced so far into its matches and the text between them (nothing is dropped). The
//! expressions below are the reference's own (after its rewrite of `(?i:'s|...)` into explicit
//! case classes, which is equivalent).
//!
//! Their only look-around is a final `\s+(?!\S)` (optionally followed by `|\s+`): a run of
//! whitespace, less its last character when a non-space follows. A backtracking engine
//! (fancy-regex, as the `tokenizers` crate uses) needs one stack entry per character of such a
//! run and fails on a megabyte of spaces ("max stack size exceeded"), so that alternative is
//! applied by hand and the rest runs on the `regex` crate (linear time): at each position, the
//! other alternatives are tried first (they come first in the expression); where none matches
//! and whitespace starts, the run is taken whole at the end of the piece or when it is one
//! character, else all but its last character (left for the next word's leading space).
use anyhow::{bail, Context, Result};
use regex::Regex;

/// What a `tokenizer.ggml.pre` value means for a byte-level BPE vocabulary.
pub(crate) struct PreTokenizerConfig {
    pub exprs: &'static [&'static str],
    /// Use a whole pre-token directly when it is in the vocabulary (llama3 family).
    pub ignore_merges: bool,
    /// The reference's `clean_spaces` detokenizer pass (" ." -> "." ...).
    pub clean_spaces: bool,
    /// Add BOS by default (the metadata's `add_bos_token` still wins).
    pub add_bos_default: Option<bool>,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// Mistral's Tekken (Nemo, Small 3): the reference rewrites the original's cased-letter classes
// ([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}]) as "a letter that is not a-z"
// and "a letter that is not A-Z"; these are its classes, so that the ids are its ids.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const DEFAULT_EXPRS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
const GPT2_EXPRS: &[&str] = &[GPT2];
const LLAMA3_EXPRS: &[&str] = &[LLAMA3];
const QWEN2_EXPRS: &[&str] = &[QWEN2];
const TEKKEN_EXPRS: &[&str] = &[TEKKEN];
const STARCODER_EXPRS: &[&str] = &[r"\p{N}", GPT2];
const FALCON_EXPRS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"];
const DEEPSEEK_CODER_EXPRS: &[&str] = &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"];
const DEEPSEEK_LLM_EXPRS: &[&str] = &[
    "[\r\n]",
    // Cased letters (the deepseek-llm tokenizer's list), written as escapes so that no editor
    // can normalize the Greek and letterlike endpoints.
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];
const DEEPSEEK3_EXPRS: &[&str] = &[
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// The configuration for `pre`, or an error naming it (no guessing: a wrong pre-tokenizer gives
/// subtly wrong ids, which is worse than refusing).
pub(crate) fn config_for(pre: &str) -> Result<PreTokenizerConfig> {
    let c = |exprs, ignore_merges, clean_spaces, add_bos_default| PreTokenizerConfig {
        exprs,
        ignore_merges,
        clean_spaces,
        add_bos_default,
    };
    Ok(match pre {
        "default" => c(DEFAULT_EXPRS, false, true, None),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            c(LLAMA3_EXPRS, true, true, Some(true))
        }
        "dbrx" | "smaug-bpe" => c(LLAMA3_EXPRS, false, true, None),
        "tekken" => c(TEKKEN_EXPRS, true, false, Some(true)),
        "qwen2" | "deepseek-r1-qwen" | "kormo" => c(QWEN2_EXPRS, false, false, None),
        "megrez" | "stablelm2" => c(QWEN2_EXPRS, false, true, None),
        "hunyuan" => c(QWEN2_EXPRS, false, false, None),
        "deepseek-llm" => c(DEEPSEEK_LLM_EXPRS, false, false, None),
        "deepseek-coder" => c(DEEPSEEK_CODER_EXPRS, false, false, None),
        "deepseek-v3" => c(DEEPSEEK3_EXPRS, false, false, None),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
        | "mellum" | "mpt" | "olmo" | "jais" | "exaone4" => c(GPT2_EXPRS, false, true, None),
        "trillion" | "granite-docling" => c(GPT2_EXPRS, false, false, None),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => c(STARCODER_EXPRS, false, true, None),
        "command-r" | "smollm" => c(STARCODER_EXPRS, false, false, None),
        "falcon" => c(FALCON_EXPRS, false, true, None),
        "glm4" | "chatglm-bpe" => c(LLAMA3_EXPRS, false, true, None),
        other => bail!(
            "unsupported tokenizer.ggml.pre '{other}' (known: default, gpt-2, llama-bpe/llama3, qwen2, tekken, \
             deepseek-llm, deepseek-coder, deepseek-v3, deepseek-r1-qwen, starcoder, falcon, ...)"
        ),
    })
}

/// One compiled expression.
enum Expr {
    /// Matches and the text between them become pieces.
    Plain(Regex),
    /// The expression without its trailing `\s+(?!\S)` (and `|\s+`), applied as described above.
    SpaceRuns(Regex),
}

/// The compiled expressions for one vocabulary.
pub(crate) struct PreTokenizer {
    exprs: Vec<Expr>,
}

impl PreTokenizer {
    pub fn new(exprs: &[&str]) -> Result<PreTokenizer> {
        let exprs = exprs
            .iter()
            .map(|&e| {
                let (body, runs) = match e.strip_suffix(r"|\s+(?!\S)|\s+").or_else(|| e.strip_suffix(r"|\s+(?!\S)")) {
                    Some(body) => (body, true),
                    None => (e, false),
                };
                if body.contains("(?=") || body.contains("(?!") || body.contains("(?<") {
                    bail!("pre-tokenizer expression {e:?} has look-around this tokenizer does not implement");
                }
                let re = Regex::new(body).with_context(|| format!("compiling pre-tokenizer expression {e:?}"))?;
                Ok(if runs { Expr::SpaceRuns(re) } else { Expr::Plain(re) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreTokenizer { exprs })
    }

    /// Split `text` into byte ranges, appended to `out` (cleared first); `tmp` is scratch space.
    pub fn split(&self, text: &str, out: &mut Vec<(usize, usize)>, tmp: &mut Vec<(usize, usize)>) -> Result<()> {
        out.clear();
        if text.is_empty() {
            return Ok(());
        }
        out.push((0, text.len()));
        for expr in &self.exprs {
            tmp.clear();
            for &(s, e) in out.iter() {
                let piece = &text[s..e];
                let mut emit = |a: usize, b: usize| tmp.push((s + a, s + b));
                match expr {
                    Expr::Plain(re) => split_plain(re, piece, &mut emit),
                    Expr::SpaceRuns(re) => split_space_runs(re, piece, &mut emit),
                }
            }
            std::mem::swap(out, tmp);
        }
        Ok(())
    }
}

/// Matches and the gaps between them, in order.
fn split_plain(re: &Regex, piece: &str, emit: &mut impl FnMut(usize, usize)) {
    let mut last = 0;
    for m in re.find_iter(piece) {
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            emit(last, m.start());
        }
        emit(m.start(), m.end());
        last = m.end();
    }
    if last < piece.len() {
        emit(last, piece.len());
    }
}

/// `re` followed by the alternative `\s+(?!\S)|\s+`, without backtracking.
fn split_space_runs(re: &Regex, piece: &str, emit: &mut impl FnMut(usize, usize)) {
    let len = piece.len();
    let (mut pos, mut last) = (0, 0);
    // The first whitespace at or after `pos` (recomputed when `pos` passes it).
    let mut ws = 0;
    let mut ws_valid = false;
    while pos < len {
        if !ws_valid || ws < pos {
            ws = piece[pos..].char_indices().find(|(_, c)| c.is_whitespace()).map_or(len, |(i, _)| pos + i);
            ws_valid = true;
        }
        let m = re.find_at(piece, pos).filter(|m| m.end() > m.start());
        let m_start = m.map_or(len, |m| m.start());
        if ws < m_start {
            // No other alternative matches before this run: the whitespace alternative does.
            let mut run_end = ws;
            let mut last_char = 0;
            for c in piece[ws..].chars() {
                if !c.is_whitespace() {
                    break;
                }
                last_char = c.len_utf8();
                run_end += last_char;
            }
            let single = run_end - ws == last_char;
            let end = if run_end == len || single { run_end } else { run_end - last_char };
            if ws > last {
                emit(last, ws);
            }
            emit(ws, end);
            pos = end;
            last = end;
            continue;
        }
        match m {
            Some(m) => {
                if m.start() > last {
                    emit(last, m.start());
                }
                emit(m.start(), m.end());
                pos = m.end();
                last = m.end();
            }
            None => break,
        }
    }
    if last < len {
        emit(last, len);
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes are moved to U+0100 and up, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

/// The inverse: characters U+0000..U+0143 back to bytes (None for characters outside the map).
pub(crate) fn char_to_byte_table() -> Vec<Option<u8>> {
    let fwd = byte_to_char_table();
    let mut inv = vec![None; 324];
    for (b, c) in fwd.iter().enumerate() {
        inv[*c as usize] = Some(b as u8);
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let cfg = config_for(pre).unwrap();
        let p = PreTokenizer::new(cfg.exprs).unwrap();
        let (mut out, mut tmp) = (vec![], vec![]);
        p.split(text, &mut out, &mut tmp).unwrap();
        out.iter().map(|&(s, e)| text[s..e].to_string()).collect()
    }

    #[test]
    fn every_known_pre_compiles() {
        for pre in [
            "default",
            "gpt-2",
            "gpt2",
            "llama-bpe",
            "llama3",
            "qwen2",
            "tekken",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "deepseek-r1-qwen",
            "starcoder",
            "falcon",
            "command-r",
            "glm4",
            "dbrx",
        ] {
            let cfg = config_for(pre).unwrap();
            PreTokenizer::new(cfg.exprs).unwrap_or_else(|e| panic!("{pre}: {e:#}"));
        }
    }

    #[test]
    fn unknown_pre_is_an_error_naming_it() {
        let e = config_for("no-such-pre").err().unwrap().to_string();
        assert!(e.contains("no-such-pre"), "{e}");
    }

    #[test]
    fn qwen2_splits_like_the_reference_regex() {
        assert_eq!(split("qwen2", "Hello world!"), ["Hello", " world", "!"]);
        assert_eq!(split("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(split("qwen2", "a  b"), ["a", " ", " b"]);
        assert_eq!(split("qwen2", "I'LL do"), ["I", "'LL", " do"]);
        assert_eq!(split("qwen2", "x\n\n  y"), ["x", "\n\n", " ", " y"]);
    }

    #[test]
    fn tekken_splits_at_case_changes_and_single_digits() {
        assert_eq!(split("tekken", "HelloWorld path/to 123"), ["Hello", "World", " path", "/to", " ", "1", "2", "3"]);
        assert_eq!(split("tekken", "URLs éCOLE"), ["URLs", " é", "COLE"]);
    }

    #[test]
    fn whitespace_runs_follow_the_look_ahead_rule() {
        // A run before a word keeps its last space for the word; at the end it is taken whole;
        // a lone non-space whitespace before a digit is its own piece.
        assert_eq!(split("qwen2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(split("qwen2", "a   "), ["a", "   "]);
        assert_eq!(split("qwen2", "a\t1"), ["a", "\t", "1"]);
        assert_eq!(split("qwen2", "a \t 1"), ["a", " \t", " ", "1"]);
        assert_eq!(split("gpt-2", "a\t\tb  "), ["a", "\t", "\t", "b", "  "]);
        assert_eq!(split("gpt-2", "Hello   world 1"), ["Hello", "  ", " world", " 1"]);
        assert_eq!(split("gpt-2", "x\u{a0}\u{a0}y"), ["x", "\u{a0}", "\u{a0}", "y"]);
        let long = " ".repeat(1 << 20);
        assert_eq!(split("qwen2", &long), std::slice::from_ref(&long));
    }

    /// The same splits as the expressions run whole on a backtracking engine (fancy-regex, with
    /// the look-ahead), on random strings rich in whitespace, for every known pre-tokenizer.
    #[test]
    fn agrees_with_backtracking_regex() {
        let alphabet: Vec<char> = "ab Z1 2 \t\n\r\u{a0}\u{3000}.!'sS,é日🦙-".chars().collect();
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let texts: Vec<String> = (0..1500)
            .map(|_| {
                let n = (next() % 24) as usize;
                (0..n).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            })
            .collect();
        for pre in [
            "default",
            "gpt-2",
            "llama-bpe",
            "qwen2",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "starcoder",
            "falcon",
        ] {
            let cfg = config_for(pre).unwrap();
            let fancy: Vec<fancy_regex::Regex> =
                cfg.exprs.iter().map(|e| fancy_regex::Regex::new(e).unwrap()).collect();
            let ours = PreTokenizer::new(cfg.exprs).unwrap();
            let (mut out, mut tmp) = (vec![], vec![]);
            for t in &texts {
                let mut pieces = vec![t.clone()];
                for re in &fancy {
                    let mut nextp = vec![];
                    for p in &pieces {
                        let mut last = 0;
                        for m in re.find_iter(p) {
                            let m = m.unwrap();
                            if m.start() == m.end() {
                                continue;
                            }
                            if m.start() > last {
                                nextp.push(p[last..m.start()].to_string());
                            }
                            nextp.push(m.as_str().to_string());
                            last = m.end();
                        }
                        if last < p.len() {
                            nextp.push(p[last..].to_string());
                        }
                    }
                    pieces = nextp;
                }
                ours.split(t, &mut out, &mut tmp).unwrap();
                let got: Vec<&str> = out.iter().map(|&(a, b)| &t[a..b]).collect();
                assert_eq!(got, pieces, "{pre}: {t:?}");
            }
        }
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(split("llama-bpe", "1234567"), ["123", "456", "7"]);
    }

    #[test]
    fn multi_expression_split_keeps_all_text() {
        let text = "Hello, world 12345!! ünï";
        for pre in ["default", "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "starcoder"] {
            let joined: String = split(pre, text).concat();
            assert_eq!(joined, text, "{pre}");
        }
        assert_eq!(split("default", "abc1234"), ["abc", "123", "4"]);
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let fwd = byte_to_char_table();
        let inv = char_to_byte_table();
        for b in 0..=255u8 {
            assert_eq!(inv[fwd[b as usize] as usize], Some(b));
        }
        assert_eq!(fwd[b' ' as usize], 'Ġ');
        assert_eq!(fwd[b'\n' as usize], 'Ċ');
        assert_eq!(fwd[b'A' as usize], 'A');
    }
}
