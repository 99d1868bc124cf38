//! `pack --hf`: the tiny checkpoints of tests/fixtures/make_hf_checkpoint.py converted exactly
//! as the reference converter converts them (tests/data/hf/converter.json: the size and SHA-256
//! of its output, and how it was run), and their text tokenized by the converted vocabulary as
//! Hugging Face's own tokenizer does (tests/data/hf/tokenize-oracle.json). The packed
//! llamafiles' logits are compared with the reference engine's in tests/reference.rs.

use serde_json::Value;
use std::ffi::OsStr;

mod hf_support;
use hf_support::{checkpoint, dir, pack_hf};
use sha2::Digest;

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn data(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(e2e::root().join("tests/data/hf").join(name)).unwrap()).unwrap()
}

/// The checkpoint of `arch` converted with `pack --hf --gguf-out`: equal, byte for byte, to
/// the reference converter's GGUF; returns it.
fn converted_as_the_reference(arch: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    converted_as_the_reference_named(arch, None)
}

/// As [`converted_as_the_reference`], the checkpoint's directory renamed `name` first (the
/// converter reads the model's name, basename, size label, finetune and version from it).
fn converted_as_the_reference_named(arch: &str, name: Option<&str>) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let key = match name {
        Some(n) => format!("{arch} as {n}"),
        None => arch.to_string(),
    };
    converted_as_the_reference_with(arch, name, &key, |_| {})
}

/// As [`converted_as_the_reference_named`], config.json changed by `edit` first; `key` names
/// the reference's file in converter.json.
fn converted_as_the_reference_with(
    arch: &str,
    name: Option<&str>,
    key: &str,
    edit: fn(&mut Value),
) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    converted_as_the_reference_by(arch, name, ("converter.json", key), edit, &[])
}

/// As [`converted_as_the_reference_with`], `pack` given `args` too, its output pinned by entry
/// `pin.1` of tests/data/hf/`pin.0`.
fn converted_as_the_reference_by(
    arch: &str,
    name: Option<&str>,
    pin: (&str, &str),
    edit: fn(&mut Value),
    args: &[&str],
) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let (pins, key) = pin;
    let d = checkpoint(arch)?;
    let out = d.path().join(format!("{arch}.gguf"));
    let mut ck = dir(&d, arch);
    if let Some(n) = name {
        let renamed = d.path().join(n);
        std::fs::rename(&ck, &renamed).unwrap();
        ck = renamed;
    }
    let config_path = ck.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--gguf-out"), out.as_os_str()]);
    let o = pack_hf(&ck, &all);
    assert!(o.status.success(), "pack --hf {arch}: {}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let want = &data(pins)["files"][key];
    assert!(want.is_object(), "no reference for {key} in {pins}");
    if sha256_hex(&bytes) != want["sha256"].as_str().unwrap() {
        // Say what differs: the metadata keys and the tensors, as our reader sees them.
        let g = llamafile_format::gguf::GgufFile::open(&out).unwrap();
        let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k.as_str()).collect();
        let tensors: Vec<String> =
            g.tensors().iter().map(|t| format!("{} {} {:?}", t.name, t.type_name(), t.dims)).collect();
        panic!(
            "{arch}: {} bytes, not the reference converter's {} bytes / sha256 {}\nkeys: {keys:?}\ntensors: {tensors:?}",
            bytes.len(),
            want["size"],
            want["sha256"]
        );
    }
    Some((d, out))
}

#[test]
fn llama_two_shards_f16_converts_as_the_reference() {
    converted_as_the_reference("llama");
}

/// Llama 3.2's layout: BF16, tied embeddings, the rope_freqs factors generated from
/// rope_scaling (type llama3), Llama 3's byte-level BPE tokenizer.json (llama-bpe) whose
/// TemplateProcessing adds <|begin_of_text|>, <|eot_id|> as EOS.
#[test]
fn llama3_bpe_tied_rope_factors_convert_as_the_reference() {
    converted_as_the_reference("llama3");
}

/// SmolLM2's layout: tied embeddings and a GPT-2-style tokenizer.json whose fingerprint is
/// SmolLM's pre-tokenizer (digits one by one), ChatML tokens, no BOS added.
#[test]
fn smollm2_gpt2_bpe_converts_as_the_reference() {
    let Some((_d, gguf)) = converted_as_the_reference("smollm2") else { return };
    let g = llamafile_format::gguf::GgufFile::open(&gguf).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("smollm"));
}

#[test]
fn mistral_bf16_converts_as_the_reference() {
    converted_as_the_reference("mistral");
}

/// Mistral Nemo's layout: a head size that is not hidden / heads (written as key_length and
/// value_length, q and k permuted by it).
#[test]
fn nemo_head_size_converts_as_the_reference() {
    let Some((_d, gguf)) = converted_as_the_reference("nemo") else { return };
    let g = llamafile_format::gguf::GgufFile::open(&gguf).unwrap();
    assert_eq!(g.get_u64("llama.attention.key_length"), Some(32));
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().dims, [64, 128]);
}

#[test]
fn model_id_in_the_directory_name_is_read_as_the_reference_reads_it() {
    converted_as_the_reference_named("mistral", Some("Mistral-7B-Instruct-v0.2"));
}

#[test]
fn qwen2_bpe_tied_converts_as_the_reference() {
    converted_as_the_reference("qwen2");
}

#[test]
fn qwen3_bf16_head_size_and_qk_norms_convert_as_the_reference() {
    converted_as_the_reference("qwen3");
}

/// `--outtype` as the converter's: every 2-D weight F32, F16, BF16 or Q8_0 (the reference's
/// file quantizer's rounding) from an F16 (llama), BF16 (mistral) and a tied, padded-vocabulary
/// checkpoint with biases (qwen2); `general.file_type` 0, 1, 32 or 7.
#[test]
fn outtypes_convert_as_the_reference() {
    for (arch, outtype) in [
        ("llama", "f32"),
        ("llama", "bf16"),
        ("llama", "q8_0"),
        ("mistral", "f16"),
        ("mistral", "f32"),
        ("mistral", "q8_0"),
        ("qwen2", "f32"),
        ("qwen2", "Q8_0"),
    ] {
        let key = format!("{arch} --outtype {}", outtype.to_lowercase());
        let Some((_d, out)) =
            converted_as_the_reference_by(arch, None, ("converter.json", &key), |_| {}, &["--outtype", outtype])
        else {
            return;
        };
        let g = llamafile_format::gguf::GgufFile::open(&out).unwrap();
        let want = match outtype.to_lowercase().as_str() {
            "f32" => "F32",
            "f16" => "F16",
            "bf16" => "BF16",
            _ => "Q8_0",
        };
        assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().type_name(), want, "{key}");
        assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().type_name(), "F32", "{key}");
    }
}

/// `--outtype f32 --quantize T`: the F32 conversion quantized as the reference quantizer
/// quantizes the converter's F32 GGUF, byte for byte (tests/data/hf/quantized.json).
#[test]
fn f32_outtype_quantizes_as_the_reference_quantizer() {
    for (arch, mix) in [("llama", "Q4_K_M"), ("mistral", "Q8_0"), ("qwen2", "Q6_K")] {
        let key = format!("{arch} --outtype f32 --quantize {mix}");
        let args = ["--outtype", "f32", "--quantize", mix];
        if converted_as_the_reference_by(arch, None, ("quantized.json", &key), |_| {}, &args).is_none() {
            return;
        }
    }
}

/// `--outtype` outside the converter's names, or without `--hf`: refused naming the flag,
/// nothing written.
#[test]
fn unknown_outtype_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.gguf");
    for args in [
        vec!["--hf", ".", "--outtype", "tq1_0", "--gguf-out"],
        vec!["--hf", ".", "--outtype", "q4_0", "--gguf-out"],
        vec!["--gguf", "x.gguf", "--outtype", "f32", "--quantize", "Q8_0", "--gguf-out"],
    ] {
        let o = std::process::Command::new(e2e::bin("pack")).args(&args).arg(&out).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {err}");
        assert!(err.contains("--outtype"), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing may be written");
    }
}

/// A metadata value as tests/data/hf/cards.json writes it: its GGUF type's name and its value.
fn typed(v: &llamafile_format::gguf::MetaValue) -> (String, Value) {
    use llamafile_format::gguf::MetaValue as M;
    match v {
        M::String(s) => ("STRING".into(), Value::from(s.as_str())),
        M::U32(n) => ("UINT32".into(), Value::from(*n)),
        M::I32(n) => ("INT32".into(), Value::from(*n)),
        M::F32(f) if !f.is_finite() => ("FLOAT32".into(), Value::from(f.to_string())),
        M::F32(f) => ("FLOAT32".into(), Value::from(*f as f64)),
        M::Bool(b) => ("BOOL".into(), Value::from(*b)),
        M::Array(items) => {
            let inner: Vec<(String, Value)> = items.iter().map(typed).collect();
            let t = inner.first().map(|(t, _)| t.clone()).unwrap_or_default();
            (format!("ARRAY[{t}]"), Value::Array(inner.into_iter().map(|(_, v)| v).collect()))
        }
        other => (format!("{other:?}"), Value::Null),
    }
}

/// Model cards (tests/data/hf/cards/*.md as the checkpoint's README.md: a TheBloke-style card,
/// a merge's with lists of base models and datasets as ids, URLs and mappings, a CRLF card with
/// tabs and falsy values, a front matter that is not a mapping, and real-* cards shaped as
/// Qwen2.5's, Llama 3's (gated fields, widget, model-index), TheBloke's OpenOrca and a Norwegian
/// model's with `- no`; tags and languages of integers, booleans and numbers): the same
/// general.* keys, types
/// and values in the same order as the reference converter writes (tests/data/hf/cards.json),
/// and the whole file byte for byte (converter.json).
#[test]
fn model_cards_give_the_general_keys_the_reference_writes() {
    let Some(d) = checkpoint("mistral") else { return };
    let ck = dir(&d, "mistral");
    let want = data("cards.json");
    let cards = want["cards"].as_object().unwrap();
    assert!(cards.len() >= 4);
    for (card, keys) in cards {
        std::fs::copy(e2e::root().join("tests/data/hf/cards").join(card), ck.join("README.md")).unwrap();
        let out = d.path().join(format!("{card}.gguf"));
        let o = pack_hf(&ck, &[OsStr::new("--gguf-out"), out.as_os_str()]);
        assert!(o.status.success(), "pack --hf with {card}: {}", String::from_utf8_lossy(&o.stderr));
        let g = llamafile_format::gguf::GgufFile::open(&out).unwrap();
        let got: Vec<Value> = g
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("general."))
            .map(|(k, v)| {
                let (t, v) = typed(v);
                serde_json::json!([k, t, v])
            })
            .collect();
        assert_eq!(&Value::Array(got), keys, "{card}: the general.* keys differ from the reference converter's");
        let file = &data("converter.json")["files"][format!("mistral with card {card}").as_str()];
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(sha256_hex(&bytes), file["sha256"].as_str().unwrap(), "{card}: not the converter's bytes");
    }
}

#[test]
fn phi3_fused_qkv_and_added_tokens_convert_as_the_reference() {
    converted_as_the_reference("phi3");
}

#[test]
fn phi3_longrope_and_partial_rotary_convert_as_the_reference() {
    converted_as_the_reference("phi3-longrope");
}

#[test]
fn phi4_mini_layout_bpe_tied_converts_as_the_reference() {
    converted_as_the_reference("phi4-mini");
}

#[test]
fn gemma3_norms_plus_one_qk_norms_and_local_rope_base_convert_as_the_reference() {
    converted_as_the_reference("gemma3");
}

#[test]
fn gemma2_f16_norms_plus_one_and_soft_capping_convert_as_the_reference() {
    converted_as_the_reference("gemma2");
}

/// The values config.json leaves out: the defaults of transformers' configs, which the
/// converter reads through (Gemma 3 also with linear RoPE scaling and a final soft cap).
#[test]
fn defaults_of_left_out_settings_are_the_references() {
    fn remove(c: &mut Value, keys: &[&str]) {
        for k in keys {
            c.as_object_mut().unwrap().remove(*k).unwrap_or_else(|| panic!("{k} not in the fixture"));
        }
    }
    converted_as_the_reference_with(
        "gemma3",
        None,
        "gemma3 with defaults, linear rope scaling and a final soft cap",
        |c| {
            c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 8.0});
            c["final_logit_softcapping"] = 30.0.into();
            remove(
                c,
                &["rope_local_base_freq", "sliding_window", "max_position_embeddings", "rope_theta", "rms_norm_eps"],
            );
        },
    );
    converted_as_the_reference_with("gemma2", None, "gemma2 with defaults", |c| {
        let keys = ["attn_logit_softcapping", "final_logit_softcapping", "sliding_window"];
        remove(c, &keys);
        remove(c, &["max_position_embeddings", "rms_norm_eps", "rope_theta"]);
    });
    converted_as_the_reference_with("phi3", None, "phi3 with defaults", |c| {
        let keys = ["original_max_position_embeddings", "sliding_window", "max_position_embeddings"];
        remove(c, &keys);
        remove(c, &["rms_norm_eps", "rope_theta", "rope_scaling"]);
    });
}

/// The converted vocabularies of the other architectures tokenize as the reference engine's
/// `llama-tokenize` does on the converter's GGUF (tests/data/hf/tokenize-reference.json): the
/// model's own BOS setting, special tokens parsed.
#[test]
fn converted_vocabularies_tokenize_as_llama_tokenize() {
    let oracle = data("tokenize-reference.json");
    let archs: Vec<String> = oracle["cases"].as_object().unwrap().keys().cloned().collect();
    for want in ["phi3", "gemma3", "gemma2"] {
        assert!(archs.iter().any(|a| a == want), "{archs:?}");
    }
    for arch in &archs {
        let Some((_d, gguf)) = converted_as_the_reference(arch) else { return };
        let g = llamafile_format::gguf::GgufFile::open(&gguf).unwrap();
        let tok = llamafile_engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let cases = oracle["cases"][arch.as_str()].as_array().unwrap();
        assert!(cases.len() >= 12);
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, true, true).unwrap(), want, "{arch}: {text:?}");
        }
    }
}

/// The converted vocabularies (SentencePiece and byte-level BPE) tokenize as Hugging Face's
/// tokenizer does, special tokens added and parsed.
#[test]
fn converted_vocabularies_tokenize_as_hugging_face() {
    let oracle = data("tokenize-oracle.json");
    for arch in ["llama", "qwen2", "llama3", "smollm2"] {
        let Some((_d, gguf)) = converted_as_the_reference(arch) else { return };
        let g = llamafile_format::gguf::GgufFile::open(&gguf).unwrap();
        let tok = llamafile_engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let cases = oracle["cases"][arch].as_array().unwrap();
        assert!(cases.len() >= 10);
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, true, true).unwrap(), want, "{arch}: {text:?}");
        }
    }
}

/// `pack --hf DIR -o OUT.llamafile`, and with `--quantize`: a runnable llamafile whose GGUF
/// entry is the converted (or quantized) model, and no temporary left beside it.
#[test]
fn packs_a_llamafile_and_quantizes_on_the_way() {
    let Some(d) = checkpoint("mistral") else { return };
    let out = d.path().join("m.llamafile");
    let o = pack_hf(&dir(&d, "mistral"), &[OsStr::new("-o"), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let q = d.path().join("m-q8.llamafile");
    let o =
        pack_hf(&dir(&d, "mistral"), &[OsStr::new("--quantize"), OsStr::new("Q8_0"), OsStr::new("-o"), q.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let qg = d.path().join("m-q8.gguf");
    let o = pack_hf(
        &dir(&d, "mistral"),
        &[OsStr::new("--quantize"), OsStr::new("Q8_0"), OsStr::new("--gguf-out"), qg.as_os_str()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = llamafile_format::gguf::GgufFile::open(&qg).unwrap();
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().type_name(), "Q8_0");
    let mut names: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["m-q8.gguf", "m-q8.llamafile", "m.llamafile", "mistral"], "no temporary file may be left");
    for f in [&out, &q] {
        let r = std::process::Command::new(f)
            .args(["-p", "Hello", "-n", "4", "--temp", "0", "--log-disable"])
            .output()
            .unwrap();
        assert!(r.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&r.stderr));
    }
}

/// Bad input through the command: one line naming what is wrong, exit 1, nothing written.
#[test]
fn bad_checkpoint_is_one_line_and_writes_nothing() {
    let Some(d) = checkpoint("llama") else { return };
    let ck = dir(&d, "llama");
    std::fs::remove_file(ck.join("model-00002-of-00002.safetensors")).unwrap();
    let out = d.path().join("x.llamafile");
    let o = pack_hf(&ck, &[OsStr::new("-o"), out.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("missing shard"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [OsStr::new("llama")], "nothing may be written");
}

/// A README.md far larger than a model card may be is refused from its size (a Qwen3
/// checkpoint's card is also searched for a reranker's title, through the same bounded reader):
/// a 64 GiB sparse file gives the one-line size error at once, nothing written.
#[test]
fn a_huge_model_card_is_refused_unread() {
    let Some(d) = checkpoint("qwen3") else { return };
    let ck = dir(&d, "qwen3");
    std::fs::File::create(ck.join("README.md")).unwrap().set_len(64 << 30).unwrap();
    let out = d.path().join("x.gguf");
    let start = std::time::Instant::now();
    let o = pack_hf(&ck, &[OsStr::new("--gguf-out"), out.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("README.md: 68719476736 bytes, more than the 16 MiB a model card may have"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(60), "read before refused: {:?}", start.elapsed());
    assert!(!out.exists());
}

/// A Phi-3 config.json whose RoPE scaling pack cannot reproduce (an unknown type, factors that
/// do not fit the rotary dimensions, a missing short set): one line naming the field, exit 1,
/// nothing written.
#[test]
fn unsupported_phi3_rope_scaling_is_one_line_and_writes_nothing() {
    let cases: [ConfigEdit; 3] = [
        ("rope_scaling type 'yarn'", |c| c["rope_scaling"]["type"] = "yarn".into()),
        ("2 long and 4 short factors", |c| {
            c["rope_scaling"]["long_factor"].as_array_mut().unwrap().truncate(2);
        }),
        ("no short_factor", |c| {
            c["rope_scaling"].as_object_mut().unwrap().remove("short_factor");
        }),
    ];
    refused_config_edits("phi3-longrope", &cases);
}

/// Gemma config.json settings the conversion would drop or the runtime would compute otherwise:
/// one line naming the field, exit 1, nothing written.
#[test]
fn unsupported_gemma_settings_are_one_line_and_write_nothing() {
    let cases: [ConfigEdit; 4] = [
        ("rope_scaling type 'yarn'", |c| c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})),
        ("query_pre_attn_scalar 64", |c| c["query_pre_attn_scalar"] = 64.into()),
        ("layer_types", |c| c["layer_types"][0] = "full_attention".into()),
        ("attn_logit_softcapping", |c| c["attn_logit_softcapping"] = 50.0.into()),
    ];
    refused_config_edits("gemma3", &cases);
}

/// A config.json change and a text the one-line error must contain.
type ConfigEdit = (&'static str, fn(&mut Value));

/// Each edit of the `arch` checkpoint's config.json (one at a time): `pack --hf -o` exits 1 with
/// one line naming config.json and the text, and writes nothing.
fn refused_config_edits(arch: &str, cases: &[ConfigEdit]) {
    let Some(d) = checkpoint(arch) else { return };
    let ck = dir(&d, arch);
    let original: Value = serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap()).unwrap();
    for (want, change) in cases {
        let mut c = original.clone();
        change(&mut c);
        std::fs::write(ck.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
        let out = d.path().join("x.llamafile");
        let o = pack_hf(&ck, &[OsStr::new("-o"), out.as_os_str()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{want}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("config.json") && err.contains(want), "{want}: {err}");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [OsStr::new(arch)], "nothing may be written");
    }
}

/// SIGINT while `pack --hf -o X` converts (or packs what it converted): the temporary GGUF and
/// its directory are removed with the temporary output, and no output is left.
#[test]
fn interrupted_pack_hf_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let Some(d) = checkpoint("gemma3") else { return };
    let ck = dir(&d, "gemma3");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("g.llamafile");
    let mut interrupted = 0;
    for _ in 0..10 {
        let mut child = std::process::Command::new(e2e::bin("pack"))
            .arg("--hf")
            .arg(&ck)
            .args(["--quantize", "Q8_0", "-o"])
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Signalled once its temporary directory exists (the conversion has begun).
        let tmp = out_dir.path().join(format!(".pack-hf.{}", child.id()));
        let start = Instant::now();
        while !tmp.exists() && start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        let status = child.wait().unwrap();
        if kill.success() && status.signal() == Some(SIGINT) {
            interrupted += 1;
            let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "left behind after SIGINT: {left:?}");
        } else {
            // It finished before the signal: try again.
            let _ = std::fs::remove_file(&out);
        }
        if interrupted >= 3 {
            break;
        }
    }
    assert!(interrupted > 0, "pack always finished before SIGINT");
}

/// SIGINT's number (2 on Linux and the BSDs).
const SIGINT: i32 = 2;

/// An architecture, a text the one-line error must contain, and the change to its checkpoint.
type TokenizerEdit = (&'static str, &'static str, fn(&std::path::Path));

/// Tokenizer files the Gemma and Phi-3 conversions cannot read: no tokenizer.model (Gemma), a
/// tokenizer_config.json without `tokenizer_class` (Phi-3's converter needs it): one line naming
/// the file, exit 1, nothing written.
#[test]
fn unreadable_gemma_and_phi3_tokenizers_are_one_line_and_write_nothing() {
    let cases: [TokenizerEdit; 2] = [
        ("gemma3", "missing tokenizer.model", |ck| std::fs::remove_file(ck.join("tokenizer.model")).unwrap()),
        ("phi3", "tokenizer_config.json: no 'tokenizer_class'", |ck| {
            let p = ck.join("tokenizer_config.json");
            let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            c.as_object_mut().unwrap().remove("tokenizer_class").unwrap();
            std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        }),
    ];
    for (arch, want, change) in cases {
        let Some(d) = checkpoint(arch) else { return };
        let ck = dir(&d, arch);
        change(&ck);
        let out = d.path().join("x.llamafile");
        let o = pack_hf(&ck, &[OsStr::new("-o"), out.as_os_str()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{arch}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{arch}: {err}");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [OsStr::new(arch)], "nothing may be written");
    }
}
