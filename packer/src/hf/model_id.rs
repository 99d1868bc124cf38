//! The reference converter's reading of a model id (`org/Name-7B-Instruct-v0.2`, from
//! config.json's `_name_or_path` or the directory's name) into the `general.*` name, basename,
//! size label, finetune and version, so the converted file's descriptive keys are the same.

use regex::Regex;
use std::sync::LazyLock;

/// What a model id says (each part optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelId {
    pub name: Option<String>,
    pub organization: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

static VERSION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^(v|iter)?\d+([.]\d+)*$").expect("valid"));
static QUANT_TYPE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^(i?q\d(_\w)*|b?fp?(16|32))$").expect("valid"));
static SIZE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^((([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?)|small|mini|medium|large|x?xl)$").expect("valid")
});
static FINETUNE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^(chat|instruct|vision|lora)$").expect("valid"));

/// A part of an id in title form: dashes become spaces, all-lower-case words are capitalized
/// (not version numbers nor words starting with a digit).
pub fn id_to_title(s: &str) -> String {
    static KEEP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").expect("valid"));
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| if is_lower(w) && !KEEP.is_match(w) { title(w) } else { w.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's str.islower(): some cased character, none upper-case.
fn is_lower(w: &str) -> bool {
    w.chars().any(|c| c.is_lowercase()) && !w.chars().any(|c| c.is_uppercase())
}

/// Python's str.title(): each run of letters starts upper-case, the rest lower-case.
fn title(w: &str) -> String {
    let mut out = String::new();
    let mut prev_letter = false;
    for c in w.chars() {
        if prev_letter {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_letter = c.is_alphabetic();
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Basename,
    SizeLabel,
    Finetune,
    Version,
    Type,
}

/// The parts of `model_id` (`total_params`: the model's, to tell a size label from a context
/// length).
pub fn components(model_id: &str, total_params: u64) -> ModelId {
    if model_id.contains(' ') {
        return ModelId { name: Some(model_id.to_string()), ..Default::default() };
    }
    let (org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()).filter(|o| !o.starts_with('.')), f.to_string()),
        None => (None, model_id.to_string()),
    };
    let mut parts: Vec<String> = full.split('-').filter(|p| !p.is_empty()).map(|s| s.to_string()).collect();
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); parts.len()];
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if VERSION.is_match(&part) {
            kinds[i].push(Kind::Version);
        } else if QUANT_TYPE.is_match(&part) {
            kinds[i].push(Kind::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && SIZE.is_match(&part) {
            let mut p = part.replace('_', ".");
            let chars: Vec<char> = p.chars().collect();
            // bloom-7b1 style: the last digit is the decimal.
            if chars.last().is_some_and(|c| c.is_ascii_digit()) && chars.len() >= 2 {
                let n = chars.len();
                p = format!("{}.{}{}", chars[..n - 2].iter().collect::<String>(), chars[n - 1], chars[n - 2]);
            }
            let chars: Vec<char> = p.chars().collect();
            let n = chars.len();
            if n > 1 && chars[n - 2].is_ascii_digit() && "kmbt".contains(chars[n - 1]) {
                p = format!("{}{}", chars[..n - 1].iter().collect::<String>(), chars[n - 1].to_ascii_uppercase());
            }
            if total_params != 0 {
                let (num, suffix) = p.split_at(p.len() - p.chars().last().map(|c| c.len_utf8()).unwrap_or(0));
                if let (Ok(v), Some(scale)) = (num.parse::<f64>(), " KMBT".find(suffix).filter(|_| suffix.len() == 1)) {
                    let label = v * 1000f64.powi(scale as i32);
                    let t = total_params as f64;
                    if (label - t).abs() > (7 * total_params / 8) as f64 {
                        kinds[i].push(Kind::Finetune);
                        p = format!("{num}{}", suffix.to_lowercase());
                    }
                }
            }
            if kinds[i].is_empty() {
                kinds[i].push(Kind::SizeLabel);
            }
            parts[i] = p;
        } else if i > 0 && FINETUNE.is_match(&part) {
            kinds[i].push(Kind::Finetune);
        }
    }
    // Word sizes ("small") give way to a numeric one.
    let numeric_size =
        parts.iter().zip(&kinds).any(|(p, k)| k.contains(&Kind::SizeLabel) && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.contains(&Kind::SizeLabel) && p.chars().all(|c| c.is_alphabetic()) {
                k.retain(|x| *x != Kind::SizeLabel);
            }
        }
    }
    let mut at_start = true;
    for (p, k) in parts.iter().zip(kinds.iter_mut()) {
        if at_start
            && ((k.is_empty() && p.chars().next().is_some_and(|c| c.is_alphabetic())) || k.contains(&Kind::Version))
        {
            k.push(Kind::Basename);
        } else {
            at_start = false;
            if k.is_empty() {
                k.push(Kind::Finetune);
            }
        }
    }
    for k in kinds.iter_mut().rev() {
        if k.contains(&Kind::Basename) && k.len() > 1 {
            k.retain(|x| *x != Kind::Basename);
        } else {
            break;
        }
    }
    let join = |f: &dyn Fn(&Vec<Kind>) -> bool| {
        let mut seen: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            if f(k) {
                seen.push(p);
            }
        }
        Some(seen.join("-")).filter(|s| !s.is_empty())
    };
    let mut basename = join(&|k| k.contains(&Kind::Basename));
    let size_label = {
        let mut uniq: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            if k.contains(&Kind::SizeLabel) && !uniq.contains(&p.as_str()) {
                uniq.push(p);
            }
        }
        Some(uniq.join("-")).filter(|s| !s.is_empty())
    };
    let finetune = join(&|k| k.contains(&Kind::Finetune));
    let version = join(&|k| k.contains(&Kind::Version) && !k.contains(&Kind::Basename));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    ModelId { name: Some(full), organization: org, basename, finetune, version, size_label }
}

/// The reference's merge of what `_name_or_path` (when it is a model id) and the directory's
/// name say, the former first; names and organizations in title form.
pub fn from_sources(name_or_path: Option<&str>, dir_name: &str, total_params: u64) -> ModelId {
    let mut m = ModelId::default();
    let ids = name_or_path.filter(|s| s.matches('/').count() <= 1).into_iter().chain(std::iter::once(dir_name));
    for id in ids {
        let c = components(id, total_params);
        m.name = m.name.or(c.name.map(|n| id_to_title(&n)));
        m.organization = m.organization.or(c.organization.map(|o| id_to_title(&o)));
        m.basename = m.basename.or(c.basename);
        m.finetune = m.finetune.or(c.finetune);
        m.version = m.version.or(c.version);
        m.size_label = m.size_label.or(c.size_label);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, n: u64) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
        let m = components(id, n);
        (m.basename, m.size_label, m.finetune, m.version)
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn ids_as_the_reference_reads_them() {
        assert_eq!(c("Mistral-7B-Instruct-v0.2", 7_241_732_096), (s("Mistral"), s("7B"), s("Instruct"), s("v0.2")));
        assert_eq!(c("Qwen2.5-Coder-0.5B-Instruct", 494_032_768), (s("Qwen2.5-Coder"), s("0.5B"), s("Instruct"), None));
        assert_eq!(c("llama", 4_200_000), (None, None, None, None));
        // A "size" far from the parameter count is a context length: a finetune, lower-cased.
        assert_eq!(c("Model-7B-32K", 7_000_000_000), (s("Model"), s("7B"), s("32k"), None));
        let m = from_sources(Some("mistralai/Mistral-7B-v0.1"), "whatever", 7_241_732_096);
        assert_eq!(m.name.as_deref(), Some("Mistral 7B v0.1"));
        assert_eq!(m.organization.as_deref(), Some("Mistralai"));
    }

    #[test]
    fn titles() {
        assert_eq!(id_to_title("llama"), "Llama");
        assert_eq!(id_to_title("tiny-mistral-v0.2"), "Tiny Mistral v0.2");
        assert_eq!(id_to_title("Qwen2.5-0.5B"), "Qwen2.5 0.5B");
    }
}
