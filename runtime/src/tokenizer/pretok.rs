//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) pre-tokenization: the regular expressions the
//! reference engine applies for each `tokenizer.ggml.pre`, and the GPT-2 byte <-> character map.
//!
//! The reference applies a *list* of expressions one after the other: each expression splits every
//! piece produced so far into its matches and the text between them (nothing is dropped). The
//! expressions below are the reference's own (after its rewrite of `(?i:'s|...)` into explicit
//! case classes, which is equivalent); fancy-regex gives the `(?!\S)` look-ahead.

use anyhow::{bail, Context, Result};
use fancy_regex::Regex;

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
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const DEFAULT_EXPRS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
const GPT2_EXPRS: &[&str] = &[GPT2];
const LLAMA3_EXPRS: &[&str] = &[LLAMA3];
const QWEN2_EXPRS: &[&str] = &[QWEN2];
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
            "unsupported tokenizer.ggml.pre '{other}' (known: default, gpt-2, llama-bpe/llama3, qwen2, \
             deepseek-llm, deepseek-coder, deepseek-v3, deepseek-r1-qwen, starcoder, falcon, ...)"
        ),
    })
}

/// The compiled expressions for one vocabulary.
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(exprs: &[&str]) -> Result<PreTokenizer> {
        let regexes = exprs
            .iter()
            .map(|e| Regex::new(e).with_context(|| format!("compiling pre-tokenizer expression {e:?}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Split `text` into byte ranges, appended to `out` (cleared first); `tmp` is scratch space.
    pub fn split(&self, text: &str, out: &mut Vec<(usize, usize)>, tmp: &mut Vec<(usize, usize)>) -> Result<()> {
        out.clear();
        if text.is_empty() {
            return Ok(());
        }
        out.push((0, text.len()));
        for re in &self.regexes {
            tmp.clear();
            for &(s, e) in out.iter() {
                let piece = &text[s..e];
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.context("pre-tokenizer regex failed (backtrack limit)")?;
                    if m.start() == m.end() {
                        continue;
                    }
                    if m.start() > last {
                        tmp.push((s + last, s + m.start()));
                    }
                    tmp.push((s + m.start(), s + m.end()));
                    last = m.end();
                }
                if last < piece.len() {
                    tmp.push((s + last, e));
                }
            }
            std::mem::swap(out, tmp);
        }
        Ok(())
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
            "default", "gpt-2", "gpt2", "llama-bpe", "llama3", "qwen2", "deepseek-llm", "deepseek-coder",
            "deepseek-v3", "deepseek-r1-qwen", "starcoder", "falcon", "command-r", "glm4", "dbrx",
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
