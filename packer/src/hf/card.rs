//! The descriptive `general.*` keys as the reference converter writes them (gguf-py's
//! `Metadata.load` and `set_gguf_meta_model`): what the model card (README.md's front matter)
//! says first (name, author, license, base models, datasets, tags, languages, ...), then what the
//! model id in `_name_or_path` and the directory's name say ([`super::model_id`]) for the name,
//! organization, basename, finetune, version and size label the card leaves unset.
//!
//! The converter writes a string only when it is non-empty and an array only when it is not
//! empty, and fails on a value of another type that Python counts as true; here such a value is
//! refused in one line naming README.md and the field, and a false one (`0`, `false`, `null`) is
//! skipped as it skips it. Its arrays (tags, languages) hold items of one type: strings, or
//! booleans, integers or numbers written as GGUF bools, INT32 and FLOAT32.

use super::card_yaml::{self, Value};
use super::vocab::Meta;
use super::Json;
use anyhow::bail;
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::MetaValue;
use regex::Regex;
use std::path::Path;
use std::sync::LazyLock;

/// A README.md larger than this is refused: model cards are a few hundred KiB at most.
pub const MAX_CARD_BYTES: u64 = 16 << 20;

/// A card value and the card key it came from (for messages).
type Field = Option<(&'static str, Value)>;

/// A base model or dataset entry: its fields in the order the converter writes them.
type Entry = Vec<(&'static str, Field)>;

/// The fields of an entry, in the order the converter writes them.
const ENTRY_FIELDS: [&str; 9] =
    ["name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"];

/// The front matter of `dir/README.md` as a mapping (`Value::Map(vec![])` when the card is
/// missing, has no front matter, or its front matter is not a mapping, which the converter
/// ignores); an unreadable file, one that is not UTF-8 or one whose front matter is not YAML is
/// refused, as the converter fails on it.
pub fn read(dir: &Path) -> anyhow::Result<Value> {
    let empty = Value::Map(Vec::new());
    let Some(text) = readme_text(dir)? else { return Ok(empty) };
    let shown = escape_path(&dir.join("README.md"));
    let Some(yaml) = card_yaml::front_matter(&text) else { return Ok(empty) };
    match card_yaml::load(&yaml) {
        Ok(v @ Value::Map(_)) => Ok(v),
        Ok(_) => Ok(empty),
        Err(e) => bail!("{shown}: the front matter is not valid YAML: {}", escape(&e)),
    }
}

/// The text of `dir/README.md` (`None` when there is no such file), refused in one line when it is
/// larger than a card may be (before reading it), unreadable or not UTF-8.
pub fn readme_text(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join("README.md");
    if !path.is_file() {
        return Ok(None);
    }
    let shown = escape_path(&path);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len > MAX_CARD_BYTES {
        bail!("{shown}: {len} bytes, more than the {} MiB a model card may have", MAX_CARD_BYTES >> 20);
    }
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{shown}: cannot read it: {e}"))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(text)),
        Err(_) => bail!("{shown}: not UTF-8 text"),
    }
}

/// The first of `keys` the card has with a value other than null, as the converter's
/// successive "set if still unset" reads give it.
fn first(card: &Value, keys: &[&'static str]) -> Field {
    keys.iter().find_map(|k| card.get(k).filter(|v| **v != Value::Null).map(|v| (*k, v.clone())))
}

/// The converter's array fields: a string is one item, a list its items, anything else none
/// (but the field is then set, to an empty list).
fn extend_array(out: &mut Option<Vec<Value>>, card: &Value, key: &str) {
    let Some(v) = card.get(key).filter(|v| **v != Value::Null) else { return };
    let items = out.get_or_insert_with(Vec::new);
    match v {
        Value::Str(_) => items.push(v.clone()),
        Value::Seq(s) => items.extend(s.iter().cloned()),
        _ => {}
    }
}

/// The parts of a model or dataset id `https://huggingface.co/org/name` (or `org/name`).
fn id_entry(id: &str, total_params: u64, url_only: bool) -> Vec<(&'static str, String)> {
    let c = super::model_id::components(id, total_params);
    let title = super::model_id::id_to_title;
    let mut e = Vec::new();
    if let Some(n) = &c.name {
        e.push(("name", title(n)));
    }
    if let Some(o) = &c.organization {
        e.push(("organization", title(o)));
    }
    if let Some(v) = &c.version {
        e.push(("version", v.clone()));
    }
    if !url_only {
        if let (Some(o), Some(n)) = (&c.organization, &c.name) {
            e.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
        }
    }
    e
}

/// A base model or dataset as the converter reads an item of the card's list: a URL (its
/// Hugging Face id parsed when it has one), an id, or a mapping taken as it is.
fn entry(item: &Value, total_params: u64) -> Entry {
    static HF_URL: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").expect("valid"));
    let mut found: Vec<(&'static str, Value)> = Vec::new();
    match item {
        Value::Str(id) if ["http://", "https://", "ssh://"].iter().any(|p| id.starts_with(p)) => {
            found.push(("repo_url", item.clone()));
            if id.contains("huggingface.co") {
                if let Some(m) = HF_URL.captures(id) {
                    found.extend(id_entry(&m[1], total_params, true).into_iter().map(|(k, v)| (k, Value::Str(v))));
                }
            }
        }
        Value::Str(id) => found.extend(id_entry(id, total_params, false).into_iter().map(|(k, v)| (k, Value::Str(v)))),
        Value::Map(_) => {
            for k in ENTRY_FIELDS {
                if let Some(v) = item.get(k) {
                    found.push((k, v.clone()));
                }
            }
        }
        // The converter logs such an item and counts it as an entry with no fields.
        _ => {}
    }
    ENTRY_FIELDS.iter().map(|k| (*k, found.iter().rev().find(|(f, _)| f == k).map(|(_, v)| (*k, v.clone())))).collect()
}

/// The base model or dataset list under the first of `keys` the card has (`None` when it has
/// none of them; a value that is neither a string nor a list gives an empty list).
fn entries(card: &Value, keys: [&str; 3], total_params: u64) -> Option<Vec<Entry>> {
    let v = keys.iter().find_map(|k| card.get(k))?;
    let items: Vec<Value> = match v {
        Value::Str(_) => vec![v.clone()],
        Value::Seq(s) => s.clone(),
        _ => Vec::new(),
    };
    Some(items.iter().map(|i| entry(i, total_params)).collect())
}

/// Push `key` = the field's string, as the converter's string writer does.
fn put(m: &mut Meta, key: &str, field: &Field) -> anyhow::Result<()> {
    let Some((from, v)) = field else { return Ok(()) };
    match v {
        Value::Str(s) if !s.is_empty() => m.push((key.to_string(), MetaValue::String(s.clone()))),
        v if v.truthy() => bail!("'{from}' is {}, not a string", v.type_name()),
        _ => {}
    }
    Ok(())
}

/// Push an array (none when empty) as the converter's array writer does: the items all of one
/// type, strings, booleans, 32-bit integers or 32-bit floats.
fn put_array(m: &mut Meta, key: &str, from: &str, items: &Option<Vec<Value>>) -> anyhow::Result<()> {
    let Some(items) = items.as_ref().filter(|i| !i.is_empty()) else { return Ok(()) };
    let mut out = Vec::new();
    for v in items {
        if v.type_name() != items[0].type_name() {
            bail!("'{from}' mixes items of two types: {} and {}", items[0].type_name(), v.type_name());
        }
        out.push(match v {
            Value::Str(s) => MetaValue::String(s.clone()),
            Value::Bool(b) => MetaValue::Bool(*b),
            Value::Int(i) => match i.and_then(|i| i32::try_from(i).ok()) {
                Some(i) => MetaValue::I32(i),
                None => bail!("'{from}' has an integer item beyond 32 bits"),
            },
            Value::Float(f) if f.is_finite() && (*f as f32).is_infinite() => {
                bail!("'{from}' has a number item beyond a 32-bit float's range")
            }
            Value::Float(f) => MetaValue::F32(*f as f32),
            v => bail!("'{from}' has an item that is {}, which a GGUF array cannot hold", v.type_name()),
        });
    }
    m.push((key.to_string(), MetaValue::Array(out)));
    Ok(())
}

fn str_field(from: &'static str, s: Option<String>) -> Field {
    s.map(|s| (from, Value::Str(s)))
}

/// The name, author, ..., tags and languages keys of the checkpoint in `dir`, in the
/// converter's order (`total_params`: the model's, for size labels in ids; `counted_size`: the
/// size label its parameter count gives, when neither the card nor the id has one).
pub fn authorship_meta(dir: &Path, config: &Json, total_params: u64, counted_size: &str) -> anyhow::Result<Meta> {
    let card = read(dir)?;
    keys(dir, &card, config, total_params, counted_size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", escape_path(&dir.join("README.md"))))
}

fn keys(dir: &Path, card: &Value, config: &Json, total_params: u64, counted_size: &str) -> anyhow::Result<Meta> {
    let mut name = first(card, &["name", "model_name"]);
    let author = first(card, &["author", "model_author", "model_creator"]);
    let mut version = first(card, &["version", "model_version"]);
    let mut organization = first(card, &["organization", "model_organization"]);
    let description = first(card, &["description", "model_description"]);
    let mut finetune = first(card, &["finetune", "model_finetune"]);
    let mut basename = first(card, &["basename", "model_basename", "model_type"]);
    let mut size_label = first(card, &["size_label", "model_size_label"]);
    let source_url = first(card, &["url", "model_url"]);
    let source_doi = first(card, &["doi", "model_doi"]);
    let source_uuid = first(card, &["uuid", "model_uuid"]);
    let source_repo_url = first(card, &["repo_url", "model_repo_url"]);
    let base_models = entries(card, ["base_model", "base_models", "base_model_sources"], total_params);
    let datasets = entries(card, ["datasets", "dataset", "dataset_sources"], total_params);
    let mut license = first(card, &["license"]);
    let license_name = first(card, &["license_name"]);
    let license_link = first(card, &["license_link"]);
    let (mut tags, mut languages) = (None, None);
    extend_array(&mut tags, card, "tags");
    extend_array(&mut tags, card, "pipeline_tag");
    extend_array(&mut languages, card, "languages");
    extend_array(&mut languages, card, "language");

    // What the card leaves unset, from the model id.
    let dir_name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let id =
        super::model_id::from_sources(config.get("_name_or_path").and_then(|v| v.as_str()), &dir_name, total_params);
    name = name.or(str_field("name", Some(id.name.unwrap_or(dir_name))));
    organization = organization.or(str_field("organization", id.organization));
    basename = basename.or(str_field("basename", id.basename));
    finetune = finetune.or(str_field("finetune", id.finetune));
    version = version.or(str_field("version", id.version));
    size_label = size_label
        .or(str_field("size_label", id.size_label))
        .or(str_field("size_label", Some(counted_size.to_string())));

    // A license list is written joined by commas.
    if let Some((from, Value::Seq(items))) = &license {
        let mut parts = Vec::new();
        for v in items {
            match v {
                Value::Str(s) => parts.push(s.as_str()),
                v => bail!("'{from}' has an item that is {}, not a string", v.type_name()),
            }
        }
        license = Some((from, Value::Str(parts.join(","))));
    }

    let mut m = Meta::new();
    put(&mut m, "general.name", &name)?;
    put(&mut m, "general.author", &author)?;
    put(&mut m, "general.version", &version)?;
    put(&mut m, "general.organization", &organization)?;
    put(&mut m, "general.finetune", &finetune)?;
    put(&mut m, "general.basename", &basename)?;
    put(&mut m, "general.description", &description)?;
    put(&mut m, "general.size_label", &size_label)?;
    put(&mut m, "general.license", &license)?;
    put(&mut m, "general.license.name", &license_name)?;
    put(&mut m, "general.license.link", &license_link)?;
    put(&mut m, "general.source.url", &source_url)?;
    put(&mut m, "general.source.doi", &source_doi)?;
    put(&mut m, "general.source.uuid", &source_uuid)?;
    put(&mut m, "general.source.repo_url", &source_repo_url)?;
    for (kind, list) in [("base_model", &base_models), ("dataset", &datasets)] {
        let Some(list) = list else { continue };
        m.push((format!("general.{kind}.count"), MetaValue::U32(list.len() as u32)));
        for (i, e) in list.iter().enumerate() {
            for (field, v) in e {
                put(&mut m, &format!("general.{kind}.{i}.{field}"), v)?;
            }
        }
    }
    put_array(&mut m, "general.tags", "tags", &tags)?;
    put_array(&mut m, "general.languages", "language", &languages)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The descriptive keys for a directory holding `card` as README.md (the model id from
    /// the directory's name, "ck").
    fn keys_for(card: &[u8]) -> anyhow::Result<Meta> {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join("README.md"), card).unwrap();
        authorship_meta(&ck, &json!({}), 4_000_000, "4.0M")
    }

    fn err(card: &[u8]) -> String {
        format!("{:#}", keys_for(card).unwrap_err())
    }

    fn names(m: &Meta) -> Vec<&str> {
        m.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_card_fills_what_it_says_first_and_the_model_id_the_rest() {
        let m =
            keys_for(b"---\nmodel_creator: Org\nmodel_type: llama\nlicense: [a, b]\ntags: x\npipeline_tag: y\n---\n")
                .unwrap();
        assert_eq!(
            names(&m),
            [
                "general.name",
                "general.author",
                "general.basename",
                "general.size_label",
                "general.license",
                "general.tags"
            ]
        );
        assert_eq!(m[0].1, MetaValue::String("Ck".into()));
        assert_eq!(m[4].1, MetaValue::String("a,b".into()));
        assert_eq!(m[5].1, MetaValue::Array(vec![MetaValue::String("x".into()), MetaValue::String("y".into())]));
        // No card, no front matter, or one that is not a mapping: the model id's keys only.
        for card in [&b"# just a title\n"[..], b"---\n- a list\n---\n", b"---\n---\n"] {
            assert_eq!(names(&keys_for(card).unwrap()), ["general.name", "general.size_label"]);
        }
    }

    #[test]
    fn values_the_converter_skips_are_skipped() {
        // An empty or false name is set (so no fallback) but not written; null is unset.
        let m = keys_for(
            b"---\nmodel_name: ''\nauthor: null\nmodel_author: 0\nmodel_creator: X\nbase_model: {a: 1}\n---\n",
        )
        .unwrap();
        assert_eq!(names(&m), ["general.size_label", "general.base_model.count"]);
        assert_eq!(m[1].1, MetaValue::U32(0));
    }

    #[test]
    fn bad_cards_are_refused_in_one_line_naming_the_file_and_field() {
        let e = err(b"---\nmodel_name: 2024\n---\n");
        assert!(e.contains("README.md: 'model_name' is an integer, not a string"), "{e}");
        let e = err(b"---\nlicense: [mit, 3]\n---\n");
        assert!(e.contains("'license' has an item that is an integer"), "{e}");
        let e = err(b"---\ntags: [{b: c}]\n---\n");
        assert!(e.contains("'tags' has an item that is a mapping"), "{e}");
        let e = err(b"---\ntags: [1, x]\n---\n");
        assert!(e.contains("'tags' mixes items of two types: an integer and a string"), "{e}");
        let e = err(b"---\ntags: [3000000000]\n---\n");
        assert!(e.contains("'tags' has an integer item beyond 32 bits"), "{e}");
        let e = err(b"---\nbase_model:\n  - name: [x]\n---\n");
        assert!(e.contains("'name' is a list"), "{e}");
        let e = err(b"---\nlicense: [apache\nname: x\n---\n");
        assert!(e.contains("README.md: the front matter is not valid YAML") && e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = err(b"---\nlicense: mit\n---\n\xff\xfe body\n");
        assert!(e.contains("README.md: not UTF-8 text"), "{e}");
        // A control character in the card is named, not printed.
        let e = err("---\na: [\u{1b}[31m\n---\n".as_bytes());
        assert!(e.contains("U+001B") && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn a_huge_card_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("README.md")).unwrap();
        f.set_len(MAX_CARD_BYTES + 1).unwrap();
        let e = format!("{:#}", read(d.path()).unwrap_err());
        assert!(e.contains("more than the 16 MiB"), "{e}");
    }
}
