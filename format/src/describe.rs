//! What a GGUF file is, in `key: value` lines: `--info` prints it (with the CPU kernels this
//! machine would use) and `pack` shows it for the file it packs. Every string from the file is
//! escaped.

use crate::escape::{escape, escape_path};
use crate::gguf::GgufFile;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `268098176` -> `268.10 M`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn tokenizer_kind(model: &str) -> &'static str {
    match model {
        "llama" => "SentencePiece (BPE with byte fallback)",
        "gpt2" => "byte-level BPE",
        "bert" => "WordPiece",
        "t5" => "Unigram",
        "rwkv" => "RWKV",
        "none" => "none",
        _ => "unknown",
    }
}

/// The report `--info` prints: one `key: value` line each. Every string from the file is
/// escaped (see `crate::escape`).
pub fn describe(g: &GgufFile) -> String {
    let mut s = String::new();
    let arch = g.architecture().map(escape).unwrap_or_else(|| "(none: general.architecture is missing)".into());
    let key = |k: &str| format!("{}.{k}", g.architecture().unwrap_or(""));
    let _ = writeln!(s, "file:            {}", escape_path(g.path()));
    let _ = writeln!(s, "format:          GGUF v{}, {} bytes", g.version(), thousands(g.len()));
    let _ = writeln!(
        s,
        "weights offset:  {} (GGUF at byte {} of the file, tensor data from byte {})",
        g.file_offset(),
        thousands(g.file_offset()),
        thousands(g.file_offset() + g.data_offset())
    );
    let _ = writeln!(s, "architecture:    {arch}");
    let _ =
        writeln!(s, "name:            {}", g.get_str("general.name").map(escape).unwrap_or_else(|| "(unnamed)".into()));
    let params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    let _ = writeln!(s, "parameters:      {} ({})", human(params), thousands(params));
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in g.tensors() {
        let e = by_type.entry(t.type_name()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    let types: Vec<String> = by_type.iter().map(|(name, (n, _))| format!("{name} {n}")).collect();
    let _ = writeln!(s, "tensors:         {} ({})", g.tensors().len(), types.join(", "));
    let unsupported: Vec<&str> = g.tensors().iter().filter(|t| t.wtype.is_none()).map(|t| t.name.as_str()).collect();
    if !unsupported.is_empty() {
        let _ = writeln!(
            s,
            "unsupported:     {} tensor(s) of a type this engine lacks (first: {})",
            unsupported.len(),
            escape(unsupported[0])
        );
    }
    let ctx = g.get_u64(&key("context_length"));
    let _ = writeln!(s, "context length:  {}", ctx.map_or("(not given)".into(), |c| c.to_string()));
    let dims = [
        ("embedding_length", "embedding"),
        ("block_count", "layers"),
        ("attention.head_count", "heads"),
        ("attention.head_count_kv", "kv heads"),
    ];
    let shape: Vec<String> =
        dims.iter().filter_map(|(k, label)| g.get_u64(&key(k)).map(|v| format!("{label} {v}"))).collect();
    if !shape.is_empty() {
        let _ = writeln!(s, "shape:           {}", shape.join(", "));
    }
    let n_vocab = g.get_array("tokenizer.ggml.tokens").map(|a| a.len());
    let model = g.get_str("tokenizer.ggml.model");
    let pre = g.get_str("tokenizer.ggml.pre").map(|p| format!(", pre-tokenizer {}", escape(p))).unwrap_or_default();
    let _ = writeln!(
        s,
        "vocabulary:      {} tokens, tokenizer {}{}",
        n_vocab.map_or("(no)".into(), |n| thousands(n as u64)),
        model.map_or("(none)".to_string(), |m| format!("{}: {}", escape(m), tokenizer_kind(m))),
        pre
    );
    let tmpl = g.get_str("tokenizer.chat_template");
    let _ = writeln!(s, "chat template:   {}", tmpl.map_or("no".to_string(), |t| format!("yes ({} bytes)", t.len())));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::{build, TensorSpec};
    use crate::gguf::MetaValue;

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(268098176), "268,098,176");
        assert_eq!(human(268_098_176), "268.10 M");
        assert_eq!(human(7_241_732_096), "7.24 B");
    }

    #[test]
    fn strings_from_the_file_are_escaped_and_cut() {
        let evil = format!("\x1b]0;pwned\x07\x1b[2J\nfake: line\0{}", "A".repeat(5000));
        let bytes = build(
            &[
                ("general.architecture", MetaValue::String(evil.clone())),
                ("general.name", MetaValue::String(evil.clone())),
                ("tokenizer.ggml.model", MetaValue::String(evil.clone())),
                ("tokenizer.ggml.pre", MetaValue::String(evil)),
            ],
            &[],
            32,
        );
        let d = describe(&GgufFile::from_bytes("evil\n.gguf", bytes).unwrap());
        assert!(!d.chars().any(|c| c.is_control() && c != '\n'), "{d:?}");
        assert!(d.contains("name:            \\x1b]0;pwned\\x07\\x1b[2J\\nfake: line\\0AAA"), "{d}");
        assert!(d.contains("file:            evil\\n.gguf\n"), "{d}");
        assert!(d.lines().all(|l| l.chars().count() < 500), "long values are cut:\n{d}");
        assert!(!d.lines().any(|l| l.starts_with("fake:")), "no fake lines:\n{d}");
    }

    #[test]
    fn describes_a_small_model() {
        let q8 = vec![0u8; 34 * 4];
        let iq = vec![0u8; 66];
        let f = vec![0u8; 16];
        let bytes = build(
            &[
                ("general.architecture", MetaValue::String("llama".into())),
                ("general.name", MetaValue::String("Tiny".into())),
                ("llama.context_length", MetaValue::U32(4096)),
                ("llama.block_count", MetaValue::U32(4)),
                ("tokenizer.ggml.model", MetaValue::String("llama".into())),
                ("tokenizer.ggml.tokens", MetaValue::Array(vec![MetaValue::String("a".into()); 3])),
                ("tokenizer.chat_template", MetaValue::String("{{ x }}".into())),
            ],
            &[
                TensorSpec { name: "a", dims: &[32, 4], ggml_type: 8, data: &q8 },
                TensorSpec { name: "b", dims: &[4], ggml_type: 0, data: &f },
                TensorSpec { name: "c", dims: &[256], ggml_type: 16, data: &iq },
            ],
            32,
        );
        let g = GgufFile::from_bytes("tiny.gguf", bytes).unwrap();
        let d = describe(&g);
        for want in [
            "architecture:    llama\n",
            "name:            Tiny\n",
            "parameters:      388 (388)\n",
            "tensors:         3 (F32 1, IQ2_XXS 1, Q8_0 1)\n",
            "unsupported:     1 tensor(s)",
            "context length:  4096\n",
            "shape:           layers 4\n",
            "vocabulary:      3 tokens, tokenizer llama: SentencePiece",
            "chat template:   yes (7 bytes)\n",
            "weights offset:  0 ",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
    }
}
