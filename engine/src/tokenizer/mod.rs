//! Tokenizer built from GGUF metadata, and chat templates (minijinja).
//! The engine, CLI and server rely on its API: it is extended, not broken.
//!
//! The ids must be exactly the reference engine's (llama.cpp), so the pipeline follows it step by
//! step:
//! 1. Special tokens are cut out of the text first (`special.rs`): control and unknown tokens
//!    only with `parse_special`, user-defined tokens always.
//! 2. Each text fragment in between is tokenized on its own:
//!    - `llama` (SentencePiece, `spm.rs`): a space is prepended when the metadata asks for it
//!      (`add_space_prefix`, default true) and the fragment starts the text or follows a special
//!      token; spaces become `▁`; then the reference's merge loop (highest-scoring pair first)
//!      with byte fallback to `<0xNN>` pieces.
//!    - `gpt2` (byte-level BPE, `bpe.rs`): split by the reference's regexes for
//!      `tokenizer.ggml.pre` (`pretok.rs`), each piece mapped byte by byte to GPT-2's printable
//!      characters, then merged by the metadata's merge ranks.
//! 3. BOS/EOS are added as the metadata says when `add_special` is set.
//!
//! The HF `tokenizers` crate reproduces both merge loops exactly (SentencePiece through merges
//! synthesized from the scores: each pair of pieces whose concatenation is a piece, ranked by
//! that piece's score), but building its model costs 1.0 s for Gemma 3's
//! 262,144 pieces and 0.33 s for Qwen2.5 (strings for every merge, re-hashed by its builder),
//! against a 300 ms budget; the two loops here are the reference's own algorithms over one packed
//! token index (`index.rs`) and build in 78 ms / ~60 ms. The crate stays as the tests' oracle:
//! they check both loops against it as well as against the reference's ids.
//!
//! Token attributes follow the reference, including its name-based fix-ups: tokens spelled like
//! end-of-turn markers (`<|im_end|>`, `<end_of_turn>`, `</s>`, ...) or FIM markers become control
//! tokens and end generation (`end_tokens`).

mod bpe;
pub mod chat;
mod index;
mod pretok;
mod special;
mod spm;
#[cfg(test)]
mod tests;

use anyhow::{anyhow, bail, Context, Result};
use index::{Packed, TokenIndex};
use llamafile_format::gguf::{GgufFile, MetaValue};
use special::{Fragment, SpecialMatcher};

/// Token attribute bits (the reference's `llama_token_attr`).
pub mod attr {
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;
}

/// GGUF `tokenizer.ggml.token_type` values -> attribute bits.
fn attr_from_gguf_type(t: i64) -> u8 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0, // undefined
    }
}

/// Spellings the reference treats as end of generation (and forces to control tokens).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
];
/// End-of-turn spellings (the reference's EOT auto-detection; also forced to control).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<end_of_utterance>",
];
/// Fill-in-the-middle markers by role, as the reference finds them when the metadata names none
/// (`engine::fim`): prefix, suffix and middle are forced to control; pad, repository and file
/// separator also end generation.
pub const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"];
pub const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"];
pub const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"];
pub const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
pub const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
pub const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Which algorithm a vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `llama`: SentencePiece with scores and byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE with merges and a regex pre-tokenizer.
    Bpe,
}

/// Everything the tokenizer is built from, as plain data (what the GGUF's `tokenizer.ggml.*` hold).
#[derive(Clone, Debug)]
pub struct VocabSpec<'a> {
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre` (byte-level BPE only; `None` = "default").
    pub pre: Option<&'a str>,
    pub tokens: Vec<&'a str>,
    /// Empty = all 0.
    pub scores: Vec<f32>,
    /// GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); empty = all normal.
    pub token_types: Vec<i64>,
    /// "left right" strings, in rank order (byte-level BPE).
    pub merges: Vec<&'a str>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `general.name`: the reference gives Phi-3's special tokens their right-strip by it.
    pub model_name: Option<&'a str>,
}

impl<'a> VocabSpec<'a> {
    /// An empty specification of the given kind (fill in the fields).
    pub fn new(kind: VocabKind) -> VocabSpec<'a> {
        VocabSpec {
            kind,
            pre: None,
            tokens: Vec::new(),
            scores: Vec::new(),
            token_types: Vec::new(),
            merges: Vec::new(),
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            unk: None,
            pad: None,
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
            model_name: None,
        }
    }

    /// Read `tokenizer.ggml.*` from an opened GGUF.
    pub fn from_gguf(g: &'a GgufFile) -> Result<VocabSpec<'a>> {
        let model = g.get_str("tokenizer.ggml.model").context("no tokenizer.ggml.model in the metadata")?;
        let kind = match model {
            "llama" => VocabKind::Spm,
            "gpt2" => VocabKind::Bpe,
            other => bail!("unsupported tokenizer.ggml.model '{other}' (supported: llama, gpt2)"),
        };
        let mut s = VocabSpec::new(kind);
        s.pre = g.get_str("tokenizer.ggml.pre");
        s.model_name = g.get_str("general.name");
        let strings = |key: &str| -> Result<Vec<&'a str>> {
            match g.get_array(key) {
                None => Ok(Vec::new()),
                Some(arr) => arr
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        MetaValue::String(s) => Ok(s.as_str()),
                        other => Err(anyhow!("{key}[{i}] is not a string: {other:?}")),
                    })
                    .collect(),
            }
        };
        s.tokens = strings("tokenizer.ggml.tokens")?;
        if s.tokens.is_empty() {
            bail!("tokenizer.ggml.tokens is missing or empty");
        }
        s.merges = strings("tokenizer.ggml.merges")?;
        if let Some(arr) = g.get_array("tokenizer.ggml.scores") {
            s.scores = arr
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    MetaValue::F32(x) => Ok(*x),
                    MetaValue::F64(x) => Ok(*x as f32),
                    other => Err(anyhow!("tokenizer.ggml.scores[{i}] is not a float: {other:?}")),
                })
                .collect::<Result<_>>()?;
        }
        if let Some(arr) = g.get_array("tokenizer.ggml.token_type") {
            s.token_types = arr
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    meta_int(v).ok_or_else(|| anyhow!("tokenizer.ggml.token_type[{i}] is not an integer: {v:?}"))
                })
                .collect::<Result<_>>()?;
        }
        let id = |key: &str| g.get_u64(key).map(|v| v as u32);
        s.bos = id("tokenizer.ggml.bos_token_id");
        s.eos = id("tokenizer.ggml.eos_token_id");
        s.eot = id("tokenizer.ggml.eot_token_id");
        s.eom = id("tokenizer.ggml.eom_token_id");
        s.unk = id("tokenizer.ggml.unknown_token_id");
        s.pad = id("tokenizer.ggml.padding_token_id");
        let flag = |key: &str| match g.get(key) {
            Some(MetaValue::Bool(b)) => Some(*b),
            Some(v) => meta_int(v).map(|i| i != 0),
            None => None,
        };
        s.add_bos = flag("tokenizer.ggml.add_bos_token");
        s.add_eos = flag("tokenizer.ggml.add_eos_token");
        s.add_space_prefix = flag("tokenizer.ggml.add_space_prefix");
        Ok(s)
    }
}

fn meta_int(v: &MetaValue) -> Option<i64> {
    Some(match *v {
        MetaValue::U8(x) => x as i64,
        MetaValue::I8(x) => x as i64,
        MetaValue::U16(x) => x as i64,
        MetaValue::I16(x) => x as i64,
        MetaValue::U32(x) => x as i64,
        MetaValue::I32(x) => x as i64,
        MetaValue::U64(x) => x as i64,
        MetaValue::I64(x) => x,
        _ => return None,
    })
}

// ---- the steps of `Tokenizer::from_spec` ----

/// The vocabulary size, after checking it and the lengths of the per-token arrays.
fn check_counts(spec: &VocabSpec) -> Result<usize> {
    let n = spec.tokens.len();
    if n == 0 {
        bail!("the vocabulary is empty");
    }
    if n > u32::MAX as usize / 2 {
        bail!("the vocabulary has {n} tokens, too many");
    }
    if !spec.scores.is_empty() && spec.scores.len() != n {
        bail!("tokenizer.ggml.scores has {} entries for {n} tokens", spec.scores.len());
    }
    if !spec.token_types.is_empty() && spec.token_types.len() != n {
        bail!("tokenizer.ggml.token_type has {} entries for {n} tokens", spec.token_types.len());
    }
    Ok(n)
}

/// `id` if it is inside a vocabulary of `n` tokens (`name` says which special token it is).
fn check_id(name: &str, id: Option<u32>, n: usize) -> Result<Option<u32>> {
    match id {
        Some(i) if i as usize >= n => bail!("{name} token id {i} is outside the vocabulary of {n} tokens"),
        other => Ok(other),
    }
}

/// Every token's text, an empty one replaced by `[EMPTY_<id>]` (kept in `names`) as the
/// reference does, so that every token has a distinct, non-empty text.
fn token_texts<'a>(spec: &VocabSpec<'a>, names: &'a mut Vec<String>) -> Vec<&'a str> {
    let n = spec.tokens.len();
    *names = (0..n).filter(|&i| spec.tokens[i].is_empty()).map(|i| format!("[EMPTY_{i}]")).collect();
    let mut empty = names.iter();
    spec.tokens.iter().map(|t| if t.is_empty() { empty.next().unwrap().as_str() } else { *t }).collect()
}

/// The texts packed, their index (text -> id) and their total length. The reference refuses
/// duplicate texts, so do we.
fn index_texts(tokens: &[&str]) -> Result<(Packed, TokenIndex, usize)> {
    let total: usize = tokens.iter().map(|t| t.len()).sum();
    let mut texts = Packed::with_capacity(tokens.len(), total);
    for t in tokens {
        texts.push(t.as_bytes());
    }
    let index = TokenIndex::build(&texts).map_err(|(a, b)| {
        anyhow!("token text {:?} appears twice in the vocabulary (ids {a} and {b})", tokens[b as usize])
    })?;
    Ok((texts, index, total))
}

/// Marks the end-of-turn, fill-in-the-middle and end-of-generation texts present in the
/// vocabulary as control tokens; returns the ids that end generation by their text.
fn mark_controls(attrs: &mut [u8], lookup: &impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let mut eog: Vec<u32> = Vec::new();
    for t in
        EOT_TEXTS.iter().chain(FIM_PRE_TEXTS).chain(FIM_SUF_TEXTS).chain(FIM_MID_TEXTS).chain(["<|eom_id|>"].iter())
    {
        if let Some(id) = lookup(t) {
            attrs[id as usize] |= attr::CONTROL;
        }
    }
    for t in FIM_PAD_TEXTS.iter().chain(FIM_REP_TEXTS).chain(FIM_SEP_TEXTS).chain(EOG_TEXTS) {
        if let Some(id) = lookup(t) {
            attrs[id as usize] |= attr::CONTROL;
            eog.push(id);
        }
    }
    eog
}

/// Control tokens named "unused" are unused.
fn mark_unused(tokens: &[&str], attrs: &mut [u8]) {
    for (i, t) in tokens.iter().enumerate() {
        if attrs[i] & attr::CONTROL != 0 && t.contains("unused") {
            attrs[i] |= attr::UNUSED;
        }
    }
}

/// The reference's exceptions to the end-of-generation set `eog` (then sorted, without
/// repeats), and the tokens it turns into text.
fn end_of_generation_fixups(eog: &mut Vec<u32>, attrs: &mut [u8], lookup: &impl Fn(&str) -> Option<u32>) {
    let has = |eog: &[u32], t: &str| lookup(t).is_some_and(|id| eog.contains(&id));
    // Harmony / solar-open: "<|end|>" does not end generation when "<|return|>"/"<|call|>" exist.
    if let Some(end) = lookup("<|end|>") {
        let (ret, call, calls, flush) =
            (has(eog, "<|return|>"), has(eog, "<|call|>"), has(eog, "<|calls|>"), has(eog, "<|flush|>"));
        if eog.contains(&end) && ((ret && call) || ((call || calls) && flush)) {
            eog.retain(|&x| x != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Gemma 4 / PaddleOCR: "</s>" is text when "<|tool_response>" exists.
    if let Some(s) = lookup("</s>") {
        if has(eog, "<|tool_response>") {
            eog.retain(|&x| x != s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
    for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = lookup(t) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.sort_unstable();
    eog.dedup();
}

/// The matcher of the special tokens (control, user-defined, unknown) written in a text; the
/// user-defined ones are matched even without `parse_special`.
fn special_matcher(tokens: &[&str], attrs: &[u8]) -> Result<SpecialMatcher> {
    let specials: Vec<(u32, &str, bool)> = (0..tokens.len())
        .filter(|&i| attrs[i] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .map(|i| (i as u32, tokens[i], attrs[i] & (attr::CONTROL | attr::UNKNOWN) == 0))
        .collect();
    SpecialMatcher::new(&specials)
}

/// The special tokens that swallow the whitespace after them (the reference's RSTRIP), set by
/// the reference for a model whose `general.name` says Phi-3: every special token and `</s>`,
/// but not `<unk>`, `<s>` and `<|endoftext|>`.
fn phi3_rstrip(spec: &VocabSpec, tokens: &[&str], attrs: &[u8], lookup: &impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let name = spec.model_name.unwrap_or("").to_ascii_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..tokens.len())
        .filter(|&i| attrs[i] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .map(|i| i as u32)
        .chain(lookup("</s>"))
        .collect();
    let keep: Vec<u32> = ["<unk>", "<s>", "<|endoftext|>"].iter().filter_map(|t| lookup(t)).collect();
    ids.retain(|i| !keep.contains(i));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The pipeline of the vocabulary's kind and the defaults that come with it.
struct PipelineChoice {
    pipeline: Pipeline,
    add_bos: bool,
    add_eos: bool,
    clean_spaces: bool,
    add_space_prefix: bool,
}

impl PipelineChoice {
    fn new(spec: &VocabSpec, texts: &Packed, index: &TokenIndex) -> Result<PipelineChoice> {
        Ok(match spec.kind {
            VocabKind::Spm => {
                let n = spec.tokens.len();
                let scores: Vec<f32> = if spec.scores.is_empty() { vec![0.0; n] } else { spec.scores.clone() };
                let model = spm::SpmModel::new(texts, index, scores, check_id("UNK", spec.unk, n)?)?;
                let asp = spec.add_space_prefix.unwrap_or(true);
                let pipeline = Pipeline::Spm { model, add_space_prefix: asp };
                PipelineChoice { pipeline, add_bos: true, add_eos: false, clean_spaces: false, add_space_prefix: asp }
            }
            VocabKind::Bpe => {
                let cfg = pretok::config_for(spec.pre.unwrap_or("default"))?;
                let pre = pretok::PreTokenizer::new(cfg.exprs)?;
                let model = bpe::BpeModel::new(texts, index, &spec.merges, cfg.ignore_merges)?;
                let pipeline = Pipeline::Bpe { model, pre, byte_chars: Box::new(pretok::byte_to_char_table()) };
                let add_bos = cfg.add_bos_default.unwrap_or(false);
                PipelineChoice {
                    pipeline,
                    add_bos,
                    add_eos: false,
                    clean_spaces: cfg.clean_spaces,
                    add_space_prefix: false,
                }
            }
        })
    }
}

/// The bytes each token stands for (what decoding emits), packed; `total`: the texts' length.
fn decoded_pieces(kind: VocabKind, tokens: &[&str], attrs: &[u8], total: usize) -> Result<Packed> {
    let mut pieces = Packed::with_capacity(tokens.len(), total);
    let char_to_byte = pretok::char_to_byte_table();
    let mut buf = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        buf.clear();
        let a = attrs[i];
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            buf.extend_from_slice(t.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match kind {
                VocabKind::Spm => buf.extend_from_slice(t.replace('▁', " ").as_bytes()),
                VocabKind::Bpe => byte_level_bytes(t, &char_to_byte, &mut buf),
            }
        } else if a & attr::BYTE != 0 && kind == VocabKind::Spm {
            match parse_byte_token(t) {
                Some(b) => buf.push(b),
                None => bail!("token {i} {t:?} is marked as a byte token but is not <0xNN>"),
            }
        }
        pieces.push(&buf);
    }
    Ok(pieces)
}

/// A byte-level BPE token's text back to its bytes, into `buf`.
fn byte_level_bytes(t: &str, char_to_byte: &[Option<u8>], buf: &mut Vec<u8>) {
    for c in t.chars() {
        match char_to_byte.get(c as usize).copied().flatten() {
            Some(b) => buf.push(b),
            // Not a byte-level character: keep it as text.
            None => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

enum Pipeline {
    Spm { model: spm::SpmModel, add_space_prefix: bool },
    Bpe { model: bpe::BpeModel, pre: pretok::PreTokenizer, byte_chars: Box<[char; 256]> },
}

/// A tokenizer for one model: text <-> token ids exactly as the reference engine.
pub struct Tokenizer {
    kind: VocabKind,
    pipeline: Pipeline,
    specials: SpecialMatcher,
    /// Token texts as stored in the vocabulary (valid UTF-8: they come from `&str`s).
    texts: Packed,
    index: TokenIndex,
    /// The bytes each token stands for (what decoding emits).
    pieces: Packed,
    attrs: Vec<u8>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    clean_spaces: bool,
    strip_leading_space: bool,
    end_tokens: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.attrs.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.*` metadata (`llama` SentencePiece or `gpt2` byte-level BPE).
    pub fn from_gguf(g: &GgufFile) -> anyhow::Result<Tokenizer> {
        let spec =
            VocabSpec::from_gguf(g).with_context(|| format!("reading the vocabulary of {}", g.path().display()))?;
        Tokenizer::from_spec(&spec).with_context(|| format!("building the tokenizer of {}", g.path().display()))
    }

    /// Build from plain vectors (what `from_gguf` reads).
    pub fn from_spec(spec: &VocabSpec) -> Result<Tokenizer> {
        let n = check_counts(spec)?;
        let mut names = Vec::new();
        let tokens = token_texts(spec, &mut names);
        let (texts, index, total) = index_texts(&tokens)?;
        let mut attrs: Vec<u8> = if spec.token_types.is_empty() {
            vec![attr::NORMAL; n]
        } else {
            spec.token_types.iter().map(|&t| attr_from_gguf_type(t)).collect()
        };

        // Special ids and the reference's name-based fix-ups.
        let bos = check_id("BOS", spec.bos, n)?;
        let eos = check_id("EOS", spec.eos, n)?;
        let eot = check_id("EOT", spec.eot, n)?;
        let eom = check_id("EOM", spec.eom, n)?;
        check_id("PAD", spec.pad, n)?;
        let lookup = |t: &str| index.get(&texts, t.as_bytes());
        let eot = eot.or_else(|| EOT_TEXTS.iter().find_map(|t| lookup(t)));
        let mut eog = mark_controls(&mut attrs, &lookup);
        mark_unused(&tokens, &mut attrs);
        eog.extend([eos, eot, eom].into_iter().flatten());
        end_of_generation_fixups(&mut eog, &mut attrs, &lookup);

        let specials = special_matcher(&tokens, &attrs)?.with_rstrip(phi3_rstrip(spec, &tokens, &attrs, &lookup));
        let p = PipelineChoice::new(spec, &texts, &index)?;
        let pieces = decoded_pieces(spec.kind, &tokens, &attrs, total)?;

        let add_bos = spec.add_bos.unwrap_or(p.add_bos);
        let add_eos = spec.add_eos.unwrap_or(p.add_eos);
        if add_bos && bos.is_none() {
            bail!("the metadata asks for a BOS token but names none (tokenizer.ggml.bos_token_id)");
        }
        if add_eos && eos.is_none() {
            bail!("the metadata asks for an EOS token but names none (tokenizer.ggml.eos_token_id)");
        }
        Ok(Tokenizer {
            kind: spec.kind,
            pipeline: p.pipeline,
            specials,
            texts,
            index,
            pieces,
            attrs,
            bos,
            eos,
            eot,
            add_bos,
            add_eos,
            clean_spaces: p.clean_spaces,
            strip_leading_space: p.add_space_prefix,
            end_tokens: eog,
        })
    }

    /// Text -> ids. `add_special`: add BOS/EOS as the metadata says (`add_bos_token`...).
    /// `parse_special`: recognise special/control tokens written in the text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_into(text, add_special, parse_special, &mut out)?;
        Ok(out)
    }

    /// As `encode`, appending to `out` (not cleared).
    pub fn encode_into(&self, text: &str, add_special: bool, parse_special: bool, out: &mut Vec<u32>) -> Result<()> {
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut fragments = Vec::new();
        self.specials.partition(text, parse_special, &mut fragments);
        let mut buf = String::new();
        let (mut ranges, mut tmp) = (Vec::new(), Vec::new());
        let mut scratch = spm::Scratch::default();
        let mut bpe_scratch = bpe::Scratch::default();
        let mut prev_special = true;
        for f in fragments {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s, e) => {
                    let frag = &text[s..e];
                    match &self.pipeline {
                        Pipeline::Spm { model, add_space_prefix } => {
                            buf.clear();
                            if *add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            spm::escape_whitespace(frag, &mut buf);
                            model.encode(&self.texts, &self.index, &buf, out, &mut scratch)?;
                        }
                        Pipeline::Bpe { model, pre, byte_chars } => {
                            pre.split(frag, &mut ranges, &mut tmp)?;
                            for &(a, b) in &ranges {
                                buf.clear();
                                buf.extend(frag.as_bytes()[a..b].iter().map(|&x| byte_chars[x as usize]));
                                model.encode_word(&self.texts, &self.index, &buf, out, &mut bpe_scratch);
                            }
                        }
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(())
    }

    /// Ids -> text (special tokens rendered as their text), as the reference's
    /// `llama_detokenize(remove_special = false, unparse_special = true)`: the space a
    /// SentencePiece vocabulary puts before the first word is removed. Ids outside the
    /// vocabulary are skipped; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false, true)
    }

    /// The reference's `llama_detokenize`: `remove_special` drops a leading BOS / trailing EOS
    /// (when the model adds them), `unparse_special` renders control tokens (else they vanish).
    pub fn decode_with(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> String {
        let mut ids = ids;
        let mut remove_space = self.strip_leading_space;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == self.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(piece) = self.piece(id) else { continue };
            if !unparse_special && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
                remove_space = false;
                continue;
            }
            let piece = if remove_space { piece.strip_prefix(b" ").unwrap_or(piece) } else { piece };
            remove_space = false;
            bytes.extend_from_slice(piece);
        }
        if self.clean_spaces {
            bytes = clean_spaces(&bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn piece(&self, id: u32) -> Option<&[u8]> {
        ((id as usize) < self.attrs.len()).then(|| self.pieces.get(id as usize))
    }

    /// The raw bytes one token stands for (byte-fallback and byte-level decoded, `▁` -> ' ').
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_piece(id).to_vec()
    }

    /// As `token_bytes`, borrowed (no allocation; empty for an id outside the vocabulary).
    pub fn token_piece(&self, id: u32) -> &[u8] {
        self.piece(id).unwrap_or(&[])
    }

    /// A token's text as stored in the vocabulary (e.g. "▁Hello", "<s>"); "" outside the vocabulary.
    pub fn token_text(&self, id: u32) -> &str {
        if id as usize >= self.attrs.len() {
            return "";
        }
        // The packed texts were pushed from `&str`s, so every item is valid UTF-8.
        std::str::from_utf8(self.texts.get(id as usize)).unwrap_or("")
    }

    /// The id of the token with exactly this vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.index.get(&self.texts, text.as_bytes())
    }

    /// The reference's attribute bits of a token (see [`attr`]); 0 outside the vocabulary.
    pub fn token_attr(&self, id: u32) -> u8 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// Control or unknown token (rendered only on request, never produced from plain text).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0
    }

    pub fn vocab_size(&self) -> usize {
        self.attrs.len()
    }
    pub fn kind(&self) -> VocabKind {
        self.kind
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// The end-of-turn token (metadata `eot_token_id`, or found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// Every token that ends a turn/generation (EOS, EOT, `<|im_end|>`, `<end_of_turn>`, ...).
    pub fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }
    /// Whether `id` ends generation.
    pub fn is_end_token(&self, id: u32) -> bool {
        self.end_tokens.binary_search(&id).is_ok()
    }
    /// Whether `add_special` adds a BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `add_special` adds an EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The reference's detokenizer clean-up for some BPE vocabularies: no space before `?!.,`, none
/// around a lone `'`, and none before `'s`, `'m`, `'re`, `'ve`.
fn clean_spaces(text: &[u8]) -> Vec<u8> {
    fn pass(t: &[u8], f: impl Fn(&[u8], usize) -> bool) -> Vec<u8> {
        // `f(t, i)`: drop the space at i-1 before writing t[i].
        let mut out: Vec<u8> = Vec::with_capacity(t.len());
        for i in 0..t.len() {
            if i > 0 && t[i - 1] == b' ' && f(t, i) {
                out.pop();
            }
            out.push(t[i]);
        }
        out
    }
    let t = pass(text, |t, i| matches!(t[i], b'?' | b'!' | b'.' | b','));
    // " ' " -> "'"
    let mut t2: Vec<u8> = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if i > 0 && t[i] == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            t2.pop();
            t2.push(b'\'');
            i += 2;
            continue;
        }
        t2.push(t[i]);
        i += 1;
    }
    pass(&t2, |t, i| {
        t[i] == b'\''
            && i + 1 < t.len()
            && (matches!(t[i + 1], b's' | b'm')
                || (i + 2 < t.len() && matches!((t[i + 1], t[i + 2]), (b'r', b'e') | (b'v', b'e'))))
    })
}

/// Incremental detokenizer: holds back bytes of a character split across tokens.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Feed one token; returns the text that is complete so far (may be empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let mut s = String::new();
        self.push_into(tok, id, &mut s);
        s
    }

    /// As `push`, appending to `out` (no allocation once `out` and the decoder have grown).
    pub fn push_into(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        self.pending.extend_from_slice(tok.token_piece(id));
        self.drain_complete(out, false);
    }

    /// Whatever is left (invalid bytes replaced by U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut s = String::new();
        self.drain_complete(&mut s, true);
        s
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    fn drain_complete(&mut self, out: &mut String, at_end: bool) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // Safe by construction: from_utf8 just validated these bytes.
                    out.push_str(std::str::from_utf8(&self.pending[start..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid + bad;
                        }
                        None if at_end => {
                            out.push('\u{FFFD}');
                            start = self.pending.len();
                            break;
                        }
                        None => {
                            // An incomplete character at the end: keep it for the next token.
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }
}
