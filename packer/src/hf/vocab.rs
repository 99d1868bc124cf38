//! The tokenizer metadata of a checkpoint, as the reference converter writes it: a SentencePiece
//! `tokenizer.model` becomes a `llama` vocabulary (pieces, scores, types), a byte-level BPE
//! `tokenizer.json` a `gpt2` one (tokens, types, merges, the pre-tokenizer named by its
//! fingerprint); then the special token ids, add_bos/add_eos and the chat template from
//! `tokenizer_config.json`, `tokenizer.json` and `config.json` ([`special`]).

use super::{bpe_pre, spm, Json};
use anyhow::{bail, Context};
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::MetaValue;
use std::path::Path;

/// GGUF token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Metadata entries, in the order they are written.
pub type Meta = Vec<(String, MetaValue)>;

/// Read a JSON file of the checkpoint (at most 256 MiB: a tokenizer.json is tens of MiB).
pub fn read_json(path: &Path) -> anyhow::Result<Json> {
    let text = llamafile_format::input::read_text_capped(path, 256 << 20, "at most 256 MiB")?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", escape_path(path)))
}

fn read_json_opt(path: &Path) -> anyhow::Result<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Tokens that some models mark as not special though they are control tokens.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// How an architecture's converter class reads the tokenizer files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The Llama family: tokenizer_config's `add_prefix_space` written first.
    Llama,
    /// The shared SentencePiece or byte-level BPE reading, nothing more (Qwen).
    Plain,
    /// Phi-3's own SentencePiece reading ([`phi3_sentencepiece`]); a `GPT2Tokenizer` class is
    /// read as byte-level BPE.
    Phi3,
    /// Gemma 2: SentencePiece only, `add_space_prefix` false written last.
    Gemma2,
    /// Gemma 3: SentencePiece (`add_space_prefix` false written last) or byte-level BPE.
    Gemma3,
}

/// The tokenizer entries for the checkpoint in `dir` (`config`: its config.json), as the
/// converter class of `flavor` writes them.
pub fn tokenizer_meta(dir: &Path, config: &Json, flavor: Flavor) -> anyhow::Result<Meta> {
    let mut meta = Meta::new();
    let tc_path = dir.join("tokenizer_config.json");
    let tokenizer_config = read_json_opt(&tc_path)?;
    let spm_path = dir.join("tokenizer.model");
    let mut phi3_bpe = false;
    if flavor == Flavor::Phi3 {
        if let Some(tc) = &tokenizer_config {
            let Some(class) = tc.get("tokenizer_class") else {
                bail!("{}: no 'tokenizer_class' (the Phi-3 conversion needs it)", escape_path(&tc_path))
            };
            phi3_bpe = class.as_str() == Some("GPT2Tokenizer");
        }
    }
    if matches!(flavor, Flavor::Phi3 | Flavor::Gemma2) && !phi3_bpe && !spm_path.is_file() {
        bail!("{}: missing tokenizer.model", escape_path(dir));
    }
    if flavor == Flavor::Llama {
        if let Some(v) = tokenizer_config.as_ref().and_then(|t| t.get("add_prefix_space")).and_then(|v| v.as_bool()) {
            meta.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(v)));
        }
    }
    let vocab_size = config.get("vocab_size").and_then(|v| v.as_u64()).map(|v| v as usize);
    let json_path = dir.join("tokenizer.json");
    let n_vocab = if spm_path.is_file() && !phi3_bpe {
        let (tokens, scores, types) = if flavor == Flavor::Phi3 {
            phi3_sentencepiece(&spm_path, vocab_size, tokenizer_config.as_ref(), dir)?
        } else {
            sentencepiece(&spm_path, vocab_size, tokenizer_config.as_ref(), dir)?
        };
        let n = tokens.len();
        meta.push(("tokenizer.ggml.model".into(), MetaValue::String("llama".into())));
        meta.push(("tokenizer.ggml.pre".into(), MetaValue::String("default".into())));
        meta.push((
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        ));
        meta.push(("tokenizer.ggml.scores".into(), MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect())));
        meta.push((
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ));
        Some(n)
    } else if json_path.is_file() {
        let (tokens, types, pre) = bpe(&json_path, vocab_size)?;
        meta.push(("tokenizer.ggml.model".into(), MetaValue::String("gpt2".into())));
        meta.push(("tokenizer.ggml.pre".into(), MetaValue::String(pre)));
        meta.push((
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        ));
        meta.push((
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ));
        None
    } else {
        bail!("{}: no tokenizer.model nor tokenizer.json", escape_path(dir));
    };
    let spm = n_vocab.is_some();
    meta.extend(super::special::special_meta(dir, config, tokenizer_config, n_vocab, n_vocab.is_none())?);
    if spm && matches!(flavor, Flavor::Gemma2 | Flavor::Gemma3) {
        meta.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(false)));
    }
    Ok(meta)
}

/// The pieces of a SentencePiece model padded (`[PAD<i>]`, UNUSED) or cut to the model's
/// vocab size, then added_tokens.json's tokens over them (USER_DEFINED). `strict`: more pieces
/// than the vocab size are refused (Phi-3's reading fails on them) instead of cut.
fn pieces_and_added(
    path: &Path,
    vocab_size: Option<usize>,
    dir: &Path,
    strict: bool,
) -> anyhow::Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    let bytes = llamafile_format::input::read_regular(path, "a SentencePiece model")?;
    let pieces =
        spm::pieces(&bytes).with_context(|| format!("{}: cannot read the SentencePiece model", escape_path(path)))?;
    let n = vocab_size.unwrap_or(pieces.len());
    if strict && pieces.len() > n {
        bail!("{}: {} pieces, more than config.json's vocab_size {n}", escape_path(path), pieces.len());
    }
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (i, p) in pieces.iter().enumerate().take(n) {
        tokens[i] = p.text.clone();
        scores[i] = p.score;
        // User-defined pieces are NORMAL here: SentencePiece's IsUnknown/IsControl/IsUnused/
        // IsByte are what the reference asks, in that order.
        types[i] = match p.kind {
            spm::UNKNOWN | spm::CONTROL | spm::UNUSED | spm::BYTE => p.kind,
            _ => NORMAL,
        };
    }
    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_json_opt(&added_path)? {
        let Some(obj) = added.as_object() else { bail!("{}: not an object", escape_path(&added_path)) };
        for (k, v) in obj {
            let Some(id) = v.as_u64().map(|v| v as usize) else {
                bail!("{}: '{}' is not a token id", escape_path(&added_path), escape(k))
            };
            if id < n {
                tokens[id] = k.clone();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    Ok((tokens, scores, types))
}

/// A SentencePiece vocabulary: pieces padded to the model's vocab size, then the added tokens
/// of added_tokens.json and tokenizer_config.json's `added_tokens_decoder` over them.
fn sentencepiece(
    path: &Path,
    vocab_size: Option<usize>,
    tokenizer_config: Option<&Json>,
    dir: &Path,
) -> anyhow::Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    let (mut tokens, mut scores, mut types) = pieces_and_added(path, vocab_size, dir, false)?;
    let n = tokens.len();
    if let Some(dec) = tokenizer_config.and_then(|t| t.get("added_tokens_decoder")).and_then(|d| d.as_object()) {
        for (k, v) in dec {
            let Ok(id) = k.parse::<usize>() else {
                bail!("tokenizer_config.json: added_tokens_decoder key '{}' is not a token id", escape(k))
            };
            let Some(content) = v.get("content").and_then(|c| c.as_str()) else {
                bail!("tokenizer_config.json: added_tokens_decoder['{id}'] has no content")
            };
            if id >= n {
                continue;
            }
            let special = v.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            if special || looks_special(content) {
                types[id] = CONTROL;
                tokens[id] = content.to_string();
            } else {
                types[id] = USER_DEFINED;
                tokens[id] = content.replace('\u{2581}', " ");
            }
            scores[id] = -1000.0;
        }
    }
    Ok((tokens, scores, types))
}

/// Phi-3's SentencePiece vocabulary: the pieces (no padding past the model's vocab size), then
/// added_tokens.json, tokenizer_config.json's `added_tokens_decoder` and tokenizer.json's
/// `added_tokens`, each over the previous, kept as written (the shared reading turns a
/// user-defined token's U+2581 into a space; this one does not) and CONTROL only when marked
/// special. An added id past the vocab size is refused (the converter fails on it).
fn phi3_sentencepiece(
    path: &Path,
    vocab_size: Option<usize>,
    tokenizer_config: Option<&Json>,
    dir: &Path,
) -> anyhow::Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    let (mut tokens, mut scores, mut types) = pieces_and_added(path, vocab_size, dir, true)?;
    let n = tokens.len();
    let mut set = |file: &str, id: u64, content: &str, special: bool| -> anyhow::Result<()> {
        let Some(i) = usize::try_from(id).ok().filter(|&i| i < n) else {
            bail!("{file}: added token id {id} is not below config.json's vocab_size {n}")
        };
        tokens[i] = content.to_string();
        scores[i] = -1000.0;
        types[i] = if special { CONTROL } else { USER_DEFINED };
        Ok(())
    };
    if let Some(dec) = tokenizer_config.and_then(|t| t.get("added_tokens_decoder")).and_then(|d| d.as_object()) {
        for (k, v) in dec {
            let Ok(id) = k.parse::<u64>() else {
                bail!("tokenizer_config.json: added_tokens_decoder key '{}' is not a token id", escape(k))
            };
            let Some(content) = v.get("content").and_then(|c| c.as_str()) else {
                bail!("tokenizer_config.json: added_tokens_decoder['{id}'] has no content")
            };
            let special = v.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            set("tokenizer_config.json", id, content, special)?;
        }
    }
    let json_path = dir.join("tokenizer.json");
    if let Some(t) = read_json_opt(&json_path)? {
        for a in t.get("added_tokens").and_then(|a| a.as_array()).map(|a| a.as_slice()).unwrap_or(&[]) {
            let (Some(id), Some(content)) =
                (a.get("id").and_then(|i| i.as_u64()), a.get("content").and_then(|c| c.as_str()))
            else {
                bail!("{}: an added token without id or content", escape_path(&json_path))
            };
            let special = a.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            set("tokenizer.json", id, content, special)?;
        }
    }
    Ok((tokens, scores, types))
}

/// A byte-level BPE vocabulary from tokenizer.json: every id up to the model's vocab size (a
/// hole is `[PAD<i>]`, UNUSED), added tokens CONTROL or USER_DEFINED; the pre-tokenizer's name.
fn bpe(path: &Path, vocab_size: Option<usize>) -> anyhow::Result<(Vec<String>, Vec<i32>, String)> {
    let j = read_json(path)?;
    let model = j.get("model").with_context(|| format!("{}: no 'model'", escape_path(path)))?;
    let kind = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if kind != "BPE" {
        bail!(
            "{}: model type '{}' cannot be converted (pack --hf converts byte-level BPE tokenizer.json and SentencePiece tokenizer.model)",
            escape_path(path),
            escape(kind)
        );
    }
    if model.get("byte_fallback").and_then(|b| b.as_bool()) == Some(true) {
        bail!(
            "{}: a byte-fallback BPE (SentencePiece-style) tokenizer.json cannot be converted without its tokenizer.model",
            escape_path(path)
        );
    }
    let Some(vocab) = model.get("vocab").and_then(|v| v.as_object()) else {
        bail!("{}: model.vocab is not an object", escape_path(path))
    };
    let mut by_id: std::collections::BTreeMap<usize, String> = std::collections::BTreeMap::new();
    for (tok, id) in vocab {
        let Some(id) = id.as_u64() else { bail!("{}: vocab['{}'] is not an id", escape_path(path), escape(tok)) };
        by_id.insert(id as usize, tok.clone());
    }
    // Added tokens: content -> (special, normalized), by id.
    let mut added = std::collections::BTreeMap::new();
    for t in j.get("added_tokens").and_then(|a| a.as_array()).map(|a| a.as_slice()).unwrap_or(&[]) {
        let (Some(id), Some(content)) =
            (t.get("id").and_then(|i| i.as_u64()), t.get("content").and_then(|c| c.as_str()))
        else {
            bail!("{}: an added token without id or content", escape_path(path))
        };
        let special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
        by_id.insert(id as usize, content.to_string());
        added.insert(id as usize, special);
    }
    let max = by_id.keys().next_back().copied().unwrap_or(0);
    let n = vocab_size.unwrap_or(by_id.len());
    if max >= n {
        bail!("{}: token id {max} is not below config.json's vocab_size {n}", escape_path(path));
    }
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match (by_id.get(&i), added.get(&i)) {
            (None, _) => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            (Some(t), Some(&special)) => {
                if special || looks_special(t) {
                    tokens.push(t.clone());
                    types.push(CONTROL);
                } else {
                    tokens.push(t.replace('\u{2581}', " "));
                    types.push(USER_DEFINED);
                }
            }
            (Some(t), None) => {
                tokens.push(t.clone());
                types.push(NORMAL);
            }
        }
    }
    let pre = bpe_pre::name(path)?;
    Ok((tokens, types, pre))
}
