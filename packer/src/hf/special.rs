//! Special tokens, add_bos/add_eos/add_sep, merges and the chat template, from tokenizer.json
//! (its added tokens and post-processor), tokenizer_config.json and config.json, with the
//! reference converter's precedence: the post-processor's add flags over tokenizer_config's, a
//! token named in tokenizer_config over config.json's id, the first id found for a type kept.

use super::vocab::{read_json, Meta};
use super::Json;
use anyhow::bail;
use llamafile_format::escape::escape_path;
use llamafile_format::gguf::MetaValue;
use std::path::Path;

/// The special-token kinds read, in order; `eot`/`eom` join when a template's last token is not
/// the EOS. (`cls` has no GGUF key: the reference skips it.)
const KINDS: &[&str] = &["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

fn id_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "bos" => "tokenizer.ggml.bos_token_id",
        "eos" => "tokenizer.ggml.eos_token_id",
        "unk" => "tokenizer.ggml.unknown_token_id",
        "sep" => "tokenizer.ggml.seperator_token_id",
        "pad" => "tokenizer.ggml.padding_token_id",
        "mask" => "tokenizer.ggml.mask_token_id",
        "eot" => "tokenizer.ggml.eot_token_id",
        "eom" => "tokenizer.ggml.eom_token_id",
        _ => return None,
    })
}

fn add_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "bos" => "tokenizer.ggml.add_bos_token",
        "eos" => "tokenizer.ggml.add_eos_token",
        "sep" => "tokenizer.ggml.add_sep_token",
        _ => return None,
    })
}

/// An ordered map (insertion order kept, a value replaced in place), as the reference's dicts.
#[derive(Default)]
struct Ordered<V>(Vec<(String, V)>);

impl<V: Clone> Ordered<V> {
    fn get(&self, k: &str) -> Option<&V> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }
    fn set(&mut self, k: &str, v: V) {
        match self.0.iter_mut().find(|(x, _)| x == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
    fn set_default(&mut self, k: &str, v: V) {
        if self.get(k).is_none() {
            self.0.push((k.to_string(), v));
        }
    }
}

fn str_field<'a>(j: &'a Json, k: &str) -> Option<&'a str> {
    match j.get(k)? {
        Json::String(s) if !s.is_empty() => Some(s),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// The metadata after the token list: merges (for BPE), special ids, add flags, chat template,
/// normalizer flags. `n_vocab`: ids at or past it are ignored (SentencePiece vocabularies).
pub fn special_meta(
    dir: &Path,
    config: &Json,
    tokenizer_config: Option<Json>,
    n_vocab: Option<usize>,
    load_merges: bool,
) -> anyhow::Result<Meta> {
    let mut merges: Vec<String> = Vec::new();
    let mut ids: Ordered<u32> = Ordered::default();
    let mut add: Ordered<bool> = Ordered::default();
    let mut kinds: Vec<&str> = KINDS.to_vec();
    let mut lowercase = None;
    let mut strip_accents = None;
    let mut tc = tokenizer_config.filter(|t| t.as_object().is_some_and(|o| !o.is_empty()));
    let json_path = dir.join("tokenizer.json");
    let tokenizer = if json_path.is_file() { Some(read_json(&json_path)?) } else { None };
    let mut added: Vec<(String, u64)> = Vec::new();
    if let Some(t) = &tokenizer {
        if load_merges {
            merges = read_merges(t, &json_path)?;
        }
        if let Some(n) = t.get("normalizer") {
            normalizer(n, &mut lowercase, &mut strip_accents);
        }
        for a in t.get("added_tokens").and_then(|a| a.as_array()).map(|a| a.as_slice()).unwrap_or(&[]) {
            if let (Some(c), Some(id)) =
                (a.get("content").and_then(|c| c.as_str()), a.get("id").and_then(|i| i.as_u64()))
            {
                added.push((c.to_string(), id));
            }
        }
        post_processor(t, tc.as_mut(), &mut add, &mut kinds);
    }
    if let Some(tc) = &tc {
        for kind in &kinds {
            if let Some(v) = tc.get(format!("add_{kind}_token")).and_then(|v| v.as_bool()) {
                add.set_default(kind, v);
            }
            if let Some(content) = str_field(tc, &format!("{kind}_token")) {
                if let Some((_, id)) = added.iter().find(|(c, _)| c == content) {
                    set_id(&mut ids, kind, *id as i64, n_vocab)?;
                }
            }
        }
    }
    for kind in &kinds {
        let v = config
            .get(format!("{kind}_token_id"))
            .or_else(|| config.get("text_config")?.get(format!("{kind}_token_id")));
        if let Some(id) = v.and_then(|v| v.as_i64()) {
            set_id(&mut ids, kind, id, n_vocab)?;
        }
    }
    let mut meta = Meta::new();
    if !merges.is_empty() {
        meta.push((
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(merges.into_iter().map(MetaValue::String).collect()),
        ));
    }
    for (kind, id) in ids.0 {
        if let Some(k) = id_key(&kind) {
            meta.push((k.into(), MetaValue::U32(id)));
        }
    }
    for (kind, v) in add.0 {
        if let Some(k) = add_key(&kind) {
            meta.push((k.into(), MetaValue::Bool(v)));
        }
    }
    if let Some(tc) = &tc {
        if let Some(t) = chat_template(dir, tc)? {
            meta.push(("tokenizer.chat_template".into(), MetaValue::String(t)));
        }
    }
    if let Some(v) = lowercase {
        meta.push(("tokenizer.ggml.normalizer.lowercase".into(), MetaValue::Bool(v)));
    }
    if let Some(v) = strip_accents {
        meta.push(("tokenizer.ggml.normalizer.strip_accents".into(), MetaValue::Bool(v)));
    }
    Ok(meta)
}

fn set_id(ids: &mut Ordered<u32>, kind: &str, id: i64, n_vocab: Option<usize>) -> anyhow::Result<()> {
    if id < 0 {
        bail!("special token {kind}: id {id} is negative");
    }
    if n_vocab.is_none_or(|n| (id as usize) < n) && id <= u32::MAX as i64 {
        ids.set_default(kind, id as u32);
    }
    Ok(())
}

fn normalizer(n: &Json, lowercase: &mut Option<bool>, strip: &mut Option<bool>) {
    match n.get("type").and_then(|t| t.as_str()) {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(v) = n.get("lowercase").and_then(|v| v.as_bool()) {
                *lowercase = Some(v);
            }
            if let Some(v) = n.get("strip_accents").and_then(|v| v.as_bool()) {
                *strip = Some(v);
            }
        }
        Some("Sequence") => {
            for m in n.get("normalizers").and_then(|a| a.as_array()).map(|a| a.as_slice()).unwrap_or(&[]) {
                normalizer(m, lowercase, strip);
            }
        }
        _ => {}
    }
}

/// BPE merges as "a b" strings; pairs (the newer form) with a space inside a part have it
/// written as U+0120 + ... (the code point 256 above the space), as the reference encodes them.
fn read_merges(t: &Json, path: &Path) -> anyhow::Result<Vec<String>> {
    let Some(m) = t.get("model").and_then(|m| m.get("merges")).and_then(|m| m.as_array()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(m.len());
    for (i, x) in m.iter().enumerate() {
        match x {
            Json::String(s) => out.push(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(|s| s.is_string()) => {
                let enc = |s: &Json| s.as_str().unwrap_or("").replace(' ', "\u{120}");
                out.push(format!("{} {}", enc(&p[0]), enc(&p[1])));
            }
            _ => bail!("{}: model.merges[{i}] is neither \"a b\" nor [\"a\", \"b\"]", escape_path(path)),
        }
    }
    Ok(out)
}

fn special_token_id(x: &Json) -> Option<String> {
    x.get("SpecialToken")?.get("id")?.as_str().map(|s| s.to_string())
}

/// The post-processor's add flags (ByteLevel: none by default; RobertaProcessing: BOS, EOS
/// and SEP; TemplateProcessing: the tokens around the single sequence), with the BOS/EOS it
/// implies written into `tc` as the reference does.
fn post_processor(t: &Json, mut tc: Option<&mut Json>, add: &mut Ordered<bool>, kinds: &mut Vec<&str>) {
    let Some(pp) = t.get("post_processor").filter(|p| !p.is_null()) else { return };
    let list: Vec<&Json> = match pp.get("processors").and_then(|p| p.as_array()) {
        Some(a) => a.iter().collect(),
        None => vec![pp],
    };
    let get = |tc: &Option<&mut Json>, k: &str| tc.as_deref().and_then(|t| str_field(t, k)).map(|s| s.to_string());
    let mut bos = get(&tc, "bos_token");
    let cls = get(&tc, "cls_token");
    let mut eos = get(&tc, "eos_token");
    let sep = get(&tc, "sep_token");
    if bos.is_none() && cls.is_some() {
        if let Some(t) = tc.as_deref_mut() {
            t["bos_token"] = Json::String(cls.clone().unwrap_or_default());
            bos = cls.clone();
        }
    }
    if eos.is_none() && sep.is_some() {
        if let Some(t) = tc.as_deref_mut() {
            t["eos_token"] = Json::String(sep.clone().unwrap_or_default());
            eos = sep.clone();
        }
    }
    for p in list {
        match p.get("type").and_then(|t| t.as_str()) {
            Some("ByteLevel") => {
                add.set_default("bos", false);
                add.set_default("eos", false);
            }
            Some("RobertaProcessing") => {
                add.set("bos", true);
                add.set("eos", true);
                add.set("sep", true);
            }
            Some("TemplateProcessing") => {
                let single = p.get("single").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                if single.len() > 1 {
                    if let Some(first) = special_token_id(&single[0]) {
                        let has_tc = tc.as_deref().is_some_and(|t| t.as_object().is_some_and(|o| !o.is_empty()));
                        if !has_tc {
                            bos = Some(first.clone());
                        } else if Some(&first) != bos.as_ref() && Some(&first) != cls.as_ref() {
                            if let Some(t) = tc.as_deref_mut() {
                                if bos.is_none() {
                                    t["bos_token"] = Json::String(first.clone());
                                    bos = Some(first.clone());
                                }
                                if cls.is_none() {
                                    t["cls_token"] = Json::String(first.clone());
                                }
                            }
                        }
                        add.set("bos", Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref());
                    }
                    if let Some(last) = special_token_id(&single[single.len() - 1]) {
                        let has_tc = tc.as_deref().is_some_and(|t| t.as_object().is_some_and(|o| !o.is_empty()));
                        if !has_tc {
                            eos = Some(last.clone());
                        } else if Some(&last) != eos.as_ref() {
                            if let Some(t) = tc.as_deref_mut() {
                                let old = eos.clone().map(Json::String).unwrap_or(Json::Null);
                                if !kinds.contains(&"eot") {
                                    kinds.push("eot");
                                    t["eot_token"] = old;
                                } else if !kinds.contains(&"eom") {
                                    kinds.push("eom");
                                    t["eom_token"] = old;
                                }
                                t["eos_token"] = Json::String(last.clone());
                                eos = Some(last.clone());
                            }
                        }
                        add.set("eos", Some(&last) == eos.as_ref());
                    }
                }
                // A pair template "A [sep] B" (after the single template's own first/last
                // tokens) says whether a separator is added.
                let pair = p.get("pair").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                if !pair.is_empty() {
                    let first = single.first().filter(|_| single.len() > 1).and_then(special_token_id);
                    let last = single.last().filter(|_| single.len() > 1).and_then(special_token_id);
                    let start = usize::from(first.is_some() && special_token_id(&pair[0]) == first);
                    let stop = if last.is_some() && special_token_id(&pair[pair.len() - 1]) == last {
                        pair.len() - 1
                    } else {
                        pair.len()
                    };
                    if start < stop {
                        let mid = &pair[start..stop];
                        let seq = |x: &Json| {
                            x.get("Sequence").and_then(|s| s.get("id")).and_then(|i| i.as_str()).map(|s| s.to_string())
                        };
                        if seq(&mid[0]).as_deref() == Some("A")
                            && seq(&mid[mid.len() - 1]).as_deref() == Some("B")
                            && mid.len() > 2
                        {
                            let inner = &mid[1..mid.len() - 1];
                            let is_sep = |x: &Json| {
                                special_token_id(x)
                                    .is_some_and(|e| Some(&e) == sep.as_ref() || Some(&e) == eos.as_ref())
                            };
                            let mut add_sep = is_sep(&inner[0]) && last.is_none();
                            if inner.len() == 2 && is_sep(&inner[1]) {
                                add_sep = true;
                            }
                            add.set("sep", add_sep);
                            if add_sep && sep.is_none() {
                                if let (Some(t), Some(e)) = (tc.as_deref_mut(), &eos) {
                                    t["sep_token"] = Json::String(e.clone());
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The chat template: tokenizer_config's `chat_template`, else chat_template.jinja, else
/// chat_template.json's; a list of named templates gives its `default` one.
fn chat_template(dir: &Path, tc: &Json) -> anyhow::Result<Option<String>> {
    let v = match tc.get("chat_template") {
        Some(v) => v.clone(),
        None => {
            let jinja = dir.join("chat_template.jinja");
            let json = dir.join("chat_template.json");
            if jinja.is_file() {
                Json::String(llamafile_format::input::read_text_capped(
                    &jinja,
                    16 << 20,
                    "a chat template is at most 16 MiB",
                )?)
            } else if json.is_file() {
                read_json(&json)?.get("chat_template").cloned().unwrap_or(Json::Null)
            } else {
                Json::Null
            }
        }
    };
    Ok(match v {
        Json::String(s) => Some(s),
        Json::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(|s| s.to_string())),
        _ => None,
    })
}
