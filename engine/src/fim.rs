//! Fill in the middle: the model's FIM marker tokens and the prompt built from them.
//!
//! The markers come from the GGUF (`tokenizer.ggml.fim_pre_token_id`, `..._suf_...`,
//! `..._mid_...`, `..._pad_...`, `..._rep_...`, `..._sep_...`), else from the vocabulary's
//! spelling of them (`<|fim_prefix|>`...), as the reference does: Qwen2.5-Coder's GGUF names
//! none but spells all six.
//!
//! The prompt is `[BOS] <PRE>{prefix}{prompt}<SUF>{suffix}<MID>`. With extra files, where the
//! model has the repository and file separator markers, they come first in the repository-level
//! layout (Qwen2.5-Coder's training format):
//!
//! ```text
//! [BOS] <REP>myproject\n <SEP>{file}\n{text} ... <SEP>filename\n <PRE>{prefix}{prompt}<SUF>{suffix}<MID>
//! ```
//!
//! without them, each after a `--- snippet ---` line. Without extra files the repository header
//! is left out: Qwen2.5-Coder-Instruct then answers the plain layout with code where it answers
//! the header with prose about the code (the reference leaves it out too whenever its batch
//! leaves no room for extra context, its default). `prompt` is text
//! typed after the prefix (the reference's placement: it continues the prefix). BOS, when the
//! model wants one, comes first: the model saw it at position 0 in training.

use crate::tokenizer::{self, Tokenizer};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

/// The FIM markers a model has (`None` where it has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FimTokens {
    pub pre: Option<u32>,
    pub suf: Option<u32>,
    pub mid: Option<u32>,
    pub pad: Option<u32>,
    pub rep: Option<u32>,
    pub sep: Option<u32>,
}

impl FimTokens {
    /// From the metadata, else from the vocabulary's spellings.
    pub fn from_gguf(g: &GgufFile, tok: &Tokenizer) -> FimTokens {
        let n = tok.vocab_size() as u64;
        let find = |key: &str, texts: &[&str]| {
            g.get_u64(&format!("tokenizer.ggml.{key}_token_id"))
                .filter(|&id| id < n)
                .map(|id| id as u32)
                .or_else(|| texts.iter().find_map(|t| tok.token_id(t)))
        };
        FimTokens {
            pre: find("fim_pre", tokenizer::FIM_PRE_TEXTS),
            suf: find("fim_suf", tokenizer::FIM_SUF_TEXTS),
            mid: find("fim_mid", tokenizer::FIM_MID_TEXTS),
            pad: find("fim_pad", tokenizer::FIM_PAD_TEXTS),
            rep: find("fim_rep", tokenizer::FIM_REP_TEXTS),
            sep: find("fim_sep", tokenizer::FIM_SEP_TEXTS),
        }
    }

    /// The prefix, suffix and middle markers, or what is missing (for an error message).
    pub fn required(&self) -> std::result::Result<(u32, u32, u32), String> {
        match (self.pre, self.suf, self.mid) {
            (Some(p), Some(s), Some(m)) => Ok((p, s, m)),
            _ => {
                let missing: Vec<&str> = [("prefix", self.pre), ("suffix", self.suf), ("middle", self.mid)]
                    .iter()
                    .filter(|(_, id)| id.is_none())
                    .map(|(name, _)| *name)
                    .collect();
                Err(format!("this model has no fill-in-the-middle {} token", missing.join(", ")))
            }
        }
    }
}

/// One extra file of context (`input_extra`).
#[derive(Clone, Debug, Default)]
pub struct ExtraFile {
    pub filename: String,
    pub text: String,
}

/// What a FIM prompt is made of, as text.
#[derive(Clone, Debug, Default)]
pub struct FimInput<'a> {
    pub prefix: &'a str,
    pub suffix: &'a str,
    /// Text typed after the prefix.
    pub prompt: &'a str,
    pub extra: &'a [ExtraFile],
}

/// How many tokens of each part a prompt of `budget` tokens keeps: the prefix up to three
/// quarters of it (its end: the text next to the hole), the suffix up to a quarter (its start),
/// the extra files what is left (their end: the files named last are the closest context).
fn take(budget: usize, prefix: usize, suffix: usize, fixed: usize, extra: usize) -> (usize, usize, usize) {
    let room = budget.saturating_sub(fixed);
    let p = prefix.min(room * 3 / 4);
    let s = suffix.min(room.saturating_sub(p).min(room / 4).max(room.saturating_sub(p).saturating_sub(extra)));
    let e = extra.min(room.saturating_sub(p + s));
    (p, s, e)
}

/// The prompt's tokens, at most `budget` of them (the context less the room to generate).
pub fn prompt(
    tok: &Tokenizer,
    fim: &FimTokens,
    input: &FimInput,
    budget: usize,
) -> Result<std::result::Result<Vec<u32>, String>> {
    let (pre, suf, mid) = match fim.required() {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let enc = |s: &str| tok.encode(s, false, false);
    let prefix = enc(input.prefix)?;
    let suffix = enc(input.suffix)?;
    let typed = enc(input.prompt)?;
    let mut extra = Vec::new();
    if let (Some(rep), false) = (fim.rep, input.extra.is_empty()) {
        extra.push(rep);
        extra.extend(enc("myproject\n")?);
    }
    for f in input.extra {
        match fim.sep {
            Some(sep) => {
                extra.push(sep);
                extra.extend(enc(&format!("{}\n", f.filename))?);
            }
            None => extra.extend(enc("\n\n--- snippet ---\n\n")?),
        }
        extra.extend(enc(&f.text)?);
    }
    if let (Some(sep), false) = (fim.sep, input.extra.is_empty()) {
        extra.push(sep);
        extra.extend(enc("filename\n")?);
    }
    let bos = tok.bos().filter(|_| tok.adds_bos());
    let fixed = 3 + typed.len() + bos.is_some() as usize;
    if fixed > budget {
        return Ok(Err(format!("the prompt and the markers take {fixed} tokens; {budget} fit")));
    }
    let (p, s, e) = take(budget, prefix.len(), suffix.len(), fixed, extra.len());
    let mut out = Vec::with_capacity(fixed + p + s + e);
    out.extend(bos);
    out.extend_from_slice(&extra[extra.len() - e..]);
    out.push(pre);
    out.extend_from_slice(&prefix[prefix.len() - p..]);
    out.extend_from_slice(&typed);
    out.push(suf);
    out.extend_from_slice(&suffix[..s]);
    out.push(mid);
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_split() {
        // everything fits: all of it
        assert_eq!(take(100, 10, 10, 3, 10), (10, 10, 10));
        // a long prefix takes three quarters, the suffix the rest, no room for extra
        assert_eq!(take(103, 500, 500, 3, 50), (75, 25, 0));
        // a short suffix leaves the rest of its quarter to the extra files
        assert_eq!(take(103, 500, 5, 3, 50), (75, 5, 20));
        // a short prefix leaves room for a longer suffix
        assert_eq!(take(103, 10, 500, 3, 0), (10, 90, 0));
    }
}
