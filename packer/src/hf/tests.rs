//! `pack --hf` on checkpoints made here: the layout of a good one (names, types, the q/k
//! permutation), and each kind of bad input refused in one line naming the file or field, with
//! nothing written.

use super::*;
use half::f16;
use serde_json::json;

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV: usize = 1;
const FFN: usize = 16;
const VOCAB: usize = 4;

/// A SentencePiece model of `VOCAB` pieces.
fn spm_model() -> Vec<u8> {
    let mut m = Vec::new();
    for (i, (text, kind)) in [("<unk>", 2u8), ("<s>", 3), ("</s>", 3), ("\u{2581}a", 1)].iter().enumerate() {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&(-(i as f32)).to_le_bytes());
        p.extend_from_slice(&[0x18, *kind]);
        m.extend([0x0a, p.len() as u8]);
        m.extend(p);
    }
    m
}

fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// F16 values 0, 1, 2, ... of a tensor of `shape`.
fn counting(shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    (0..n).flat_map(|i| f16::from_f32(i as f32).to_le_bytes()).collect()
}

fn good_tensors() -> Vec<(String, Vec<usize>)> {
    let hd = HIDDEN / HEADS;
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ];
    let p = "model.layers.0.";
    for (n, s) in [
        ("input_layernorm.weight", vec![HIDDEN]),
        ("post_attention_layernorm.weight", vec![HIDDEN]),
        ("self_attn.q_proj.weight", vec![HEADS * hd, HIDDEN]),
        ("self_attn.k_proj.weight", vec![KV * hd, HIDDEN]),
        ("self_attn.v_proj.weight", vec![KV * hd, HIDDEN]),
        ("self_attn.o_proj.weight", vec![HIDDEN, HEADS * hd]),
        ("mlp.gate_proj.weight", vec![FFN, HIDDEN]),
        ("mlp.up_proj.weight", vec![FFN, HIDDEN]),
        ("mlp.down_proj.weight", vec![HIDDEN, FFN]),
    ] {
        t.push((format!("{p}{n}"), s));
    }
    t
}

fn config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "bos_token_id": 1, "eos_token_id": 2
    })
}

/// A good checkpoint in a new directory.
fn checkpoint() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), serde_json::to_vec(&config()).unwrap()).unwrap();
    std::fs::write(d.path().join("tokenizer.model"), spm_model()).unwrap();
    std::fs::write(d.path().join("tokenizer_config.json"), br#"{"add_bos_token": true, "chat_template": "{{ x }}"}"#)
        .unwrap();
    let all = good_tensors();
    let t: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        all.iter().map(|(n, s)| (n.as_str(), "F16", s.clone(), counting(s))).collect();
    std::fs::write(d.path().join("model.safetensors"), safetensors(&t)).unwrap();
    d
}

/// (name, dtype, shape, bytes) of each tensor of a checkpoint.
type TensorList = Vec<(String, String, Vec<usize>, Vec<u8>)>;

fn rewrite_tensors(d: &Path, f: &dyn Fn(&mut TensorList)) {
    let mut t: TensorList =
        good_tensors().into_iter().map(|(n, s)| (n, "F16".to_string(), s.clone(), counting(&s))).collect();
    f(&mut t);
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        t.iter().map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone())).collect();
    std::fs::write(d.join("model.safetensors"), safetensors(&refs)).unwrap();
}

fn convert(d: &Path) -> (anyhow::Result<u64>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let _lock = crate::tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    (convert_to_gguf(d, OutType::Auto, &out.path().join("m.gguf"), false, false), out)
}

/// The error of converting `d`, after checking it is one line and nothing was written.
fn refused(d: &Path) -> String {
    let (r, out) = convert(d);
    let e = format!("{:#}", r.expect_err("bad input must be refused"));
    assert!(!e.contains('\n'), "one line: {e}");
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing may be written: {left:?}");
    e
}

#[test]
fn good_checkpoint_converts_with_permuted_q_and_k() {
    let d = checkpoint();
    let (r, out) = convert(d.path());
    r.unwrap();
    let g = llamafile_format::gguf::GgufFile::open(&out.path().join("m.gguf")).unwrap();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(KV as u64));
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(g.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    assert_eq!(g.get_str("tokenizer.chat_template"), Some("{{ x }}"));
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, [HIDDEN as u64, HIDDEN as u64]);
    assert_eq!(q.ggml_type, GGML_F16);
    assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().ggml_type, GGML_F32);
    // Head size 4: each head's rows 0,1,2,3 come from HF rows 0,2,1,3.
    let row = |t: &str, r: usize| {
        let data = g.tensor_data(g.tensor(t).unwrap());
        f16::from_le_bytes([data[r * HIDDEN * 2], data[r * HIDDEN * 2 + 1]]).to_f32() as usize / HIDDEN
    };
    assert_eq!((0..8).map(|r| row("blk.0.attn_q.weight", r)).collect::<Vec<_>>(), [0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!((0..4).map(|r| row("blk.0.attn_k.weight", r)).collect::<Vec<_>>(), [0, 2, 1, 3]);
    assert_eq!((0..4).map(|r| row("blk.0.attn_v.weight", r)).collect::<Vec<_>>(), [0, 1, 2, 3]);
}

/// `--outtype f32` keeps the F16 values exactly (rows permuted as for F16); `q8_0` falls back
/// to F16 for rows that are not whole 32-blocks (every row here: 8 and 16 columns), as the
/// converter does on its quantization error, while `general.file_type` still says Q8_0 (7).
#[test]
fn outtypes_f32_exact_and_q8_0_falls_back_on_short_rows() {
    let d = checkpoint();
    let _lock = crate::tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let write = |t: OutType| {
        let path = out.path().join(format!("{t:?}.gguf"));
        convert_to_gguf(d.path(), t, &path, false, false).unwrap();
        llamafile_format::gguf::GgufFile::open(&path).unwrap()
    };
    let (auto, f32s, q8) = (write(OutType::Auto), write(OutType::F32), write(OutType::Q8_0));
    assert_eq!(auto.get_u64("general.file_type"), Some(1));
    assert_eq!(f32s.get_u64("general.file_type"), Some(0));
    assert_eq!(q8.get_u64("general.file_type"), Some(7));
    for t in auto.tensors() {
        let (a, f, q) = (auto.tensor(&t.name).unwrap(), f32s.tensor(&t.name).unwrap(), q8.tensor(&t.name).unwrap());
        assert_eq!(q.ggml_type, a.ggml_type, "{}", t.name);
        assert_eq!(q8.tensor_data(q), auto.tensor_data(a), "{}", t.name);
        assert_eq!(f.ggml_type, GGML_F32, "{}", t.name);
        let widened: Vec<u8> = if a.ggml_type == GGML_F16 {
            auto.tensor_data(a)
                .chunks_exact(2)
                .flat_map(|h| f16::from_le_bytes([h[0], h[1]]).to_f32().to_le_bytes())
                .collect()
        } else {
            auto.tensor_data(a).to_vec()
        };
        assert_eq!(f32s.tensor_data(f), widened.as_slice(), "{}", t.name);
    }
}

#[test]
fn outtype_names_are_the_converters() {
    for (name, t, types) in [
        ("auto", OutType::Auto, (GGML_F16, 1)),
        ("F32", OutType::F32, (GGML_F32, 0)),
        ("f16", OutType::F16, (GGML_F16, 1)),
        ("bf16", OutType::Bf16, (tensors::GGML_BF16, 32)),
        ("q8_0", OutType::Q8_0, (tensors::GGML_Q8_0, 7)),
    ] {
        assert_eq!(OutType::from_name(name), Some(t));
        assert_eq!(t.weight_and_file_type("F16"), types);
    }
    assert_eq!(OutType::Auto.weight_and_file_type("BF16"), (tensors::GGML_BF16, 32));
    assert_eq!(OutType::F16.weight_and_file_type("BF16"), (GGML_F16, 1));
    assert_eq!(OutType::from_name("tq1_0"), None);
}

/// Llama 3's rope_freqs as the converter computes them in torch (f32 throughout), bit for bit:
/// Llama 3.1 8B's (head size 128, factor 8) and Llama 3.2 1B's (head size 64, factor 32); the
/// values between 1 and the factor are the ones an f64 computation gets wrong in the last bit.
#[test]
fn llama3_rope_factors_are_the_converters_bits() {
    for (head_dim, factor, smooth) in [
        (
            128,
            8.0,
            &[
                (29, 0x3f9a8ed5u32),
                (30, 0x3fc6d64a),
                (31, 0x4001af1d),
                (32, 0x402c732e),
                (33, 0x406bcace),
                (34, 0x40a83c06),
            ][..],
        ),
        (64, 32.0, &[(15, 0x3fd35ec2), (16, 0x4052b46f), (17, 0x411aaaee)][..]),
    ] {
        let d = checkpoint();
        let mut c = config();
        c["head_dim"] = json!(head_dim);
        c["rope_theta"] = json!(500000.0);
        c["rope_scaling"] = json!({"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"});
        std::fs::write(d.path().join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        let cfg = Config::read(d.path()).unwrap();
        let f = llama3_factors(&cfg, cfg.llama3_rope.expect("llama3 scaling read"));
        assert_eq!(f.len(), head_dim / 2);
        for (i, v) in f.iter().enumerate() {
            match smooth.iter().find(|(j, _)| *j == i) {
                Some((_, bits)) => assert_eq!(v.to_bits(), *bits, "factor {i}: {v}"),
                None if i < smooth[0].0 => assert_eq!(*v, 1.0, "factor {i}"),
                None => assert_eq!(*v, factor as f32, "factor {i}"),
            }
        }
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let d = checkpoint();
    let mut c = config();
    c["architectures"] = json!(["GPT2LMHeadModel"]);
    std::fs::write(d.path().join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    let e = refused(d.path());
    assert!(e.contains("config.json") && e.contains("'GPT2LMHeadModel' is not supported"), "{e}");
}

#[test]
fn missing_config_key_is_named() {
    let d = checkpoint();
    let mut c = config();
    c.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(d.path().join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    assert!(refused(d.path()).contains("config.json: missing 'hidden_size'"));
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert!(refused(d.path()).contains("missing config.json"));
}

#[test]
fn missing_shard_is_named() {
    let d = checkpoint();
    std::fs::rename(d.path().join("model.safetensors"), d.path().join("model-00001-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (n, _) in good_tensors() {
        let part =
            if n.contains("layers") { "model-00002-of-00002.safetensors" } else { "model-00001-of-00002.safetensors" };
        map.insert(n, json!(part));
    }
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::to_vec(&json!({ "weight_map": map })).unwrap(),
    )
    .unwrap();
    let e = refused(d.path());
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("missing shard"), "{e}");
}

/// No safetensors: named as such, and PyTorch pickles (which are not read) named as the reason
/// when they are what the directory holds.
#[test]
fn pickle_only_checkpoint_is_named() {
    let d = checkpoint();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("training_args.bin"), b"x").unwrap();
    let e = refused(d.path());
    assert!(e.contains("no model.safetensors or model.safetensors.index.json"), "{e}");
    std::fs::write(d.path().join("pytorch_model-00001-of-00002.bin"), b"x").unwrap();
    let e = refused(d.path());
    assert!(e.contains("only PyTorch pickle weights") && e.contains("convert the checkpoint to safetensors"), "{e}");
}

#[test]
fn wrong_shape_and_dtype_are_named() {
    let d = checkpoint();
    rewrite_tensors(d.path(), &|t| {
        let q = t.iter_mut().find(|x| x.0.ends_with("k_proj.weight")).unwrap();
        q.2 = vec![HIDDEN, HIDDEN];
        q.3 = counting(&q.2);
    });
    let e = refused(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("'model.layers.0.self_attn.k_proj.weight' has shape [8, 8]"),
        "{e}"
    );
    rewrite_tensors(d.path(), &|t| {
        let n = t.iter_mut().find(|x| x.0 == "model.norm.weight").unwrap();
        n.1 = "I32".into();
        n.3 = vec![0; HIDDEN * 4];
    });
    let e = refused(d.path());
    assert!(e.contains("'model.norm.weight' has dtype I32"), "{e}");
    rewrite_tensors(d.path(), &|t| {
        t.push(("model.layers.0.mlp.extra.weight".into(), "F16".into(), vec![2], counting(&[2])))
    });
    let e = refused(d.path());
    assert!(e.contains("'model.layers.0.mlp.extra.weight' has no GGUF name"), "{e}");
}

#[test]
fn bad_safetensors_headers_are_named() {
    let d = checkpoint();
    let f = d.path().join("model.safetensors");
    let good = std::fs::read(&f).unwrap();
    // Truncated inside the header.
    std::fs::write(&f, &good[..40]).unwrap();
    let e = refused(d.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    // A header length far past the file (and past any sane size).
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&good[8..]);
    std::fs::write(&f, &huge).unwrap();
    let e = refused(d.path());
    assert!(e.contains("not a valid safetensors file"), "{e}");
    // Shorter than the length field itself.
    std::fs::write(&f, b"abc").unwrap();
    assert!(refused(d.path()).contains("not a valid safetensors file"));
}

#[test]
fn unconvertible_tokenizers_are_named() {
    let d = checkpoint();
    std::fs::write(d.path().join("tokenizer.model"), b"\x0a\x05\x0a\x03").unwrap();
    let e = refused(d.path());
    assert!(e.contains("tokenizer.model") && e.contains("cannot read the SentencePiece model"), "{e}");
    std::fs::remove_file(d.path().join("tokenizer.model")).unwrap();
    let e = refused(d.path());
    assert!(e.contains("no tokenizer.model nor tokenizer.json"), "{e}");
    std::fs::write(d.path().join("tokenizer.json"), br#"{"model": {"type": "WordPiece", "vocab": {}}}"#).unwrap();
    let e = refused(d.path());
    assert!(e.contains("tokenizer.json") && e.contains("model type 'WordPiece' cannot be converted"), "{e}");
}

#[test]
fn quantized_checkpoints_are_refused_by_name() {
    let d = checkpoint();
    std::fs::write(d.path().join("quantize_config.json"), br#"{"bits": 4}"#).unwrap();
    let e = refused(d.path());
    assert!(e.contains("quantize_config.json"), "{e}");
}

#[test]
fn a_dequantizer_seam_supplies_the_weight_of_qweight_layers() {
    // A stub dequantizer: the q_proj layer comes as `.qweight` + `.scales`, and the seam gives
    // its f32 weight (all 0.5), which is converted as the HF weight would be.
    let d = checkpoint();
    rewrite_tensors(d.path(), &|t| {
        let i = t.iter().position(|x| x.0.ends_with("q_proj.weight")).unwrap();
        t.remove(i);
        t.push(("model.layers.0.self_attn.q_proj.qweight".into(), "I32".into(), vec![1, HIDDEN], vec![0; HIDDEN * 4]));
        t.push((
            "model.layers.0.self_attn.q_proj.scales".into(),
            "F16".into(),
            vec![1, HIDDEN],
            counting(&[1, HIDDEN]),
        ));
    });
    let q = Quantized {
        dequantize: Box::new(|prefix, get| {
            assert_eq!(prefix, "model.layers.0.self_attn.q_proj");
            assert_eq!(get(&format!("{prefix}.qweight")).unwrap().dtype, "I32");
            Ok((vec![HIDDEN, HIDDEN], vec![0.5; HIDDEN * HIDDEN]))
        }),
        exact_q4: Box::new(|_, _, _| Ok(None)),
        is_part: |n| n.ends_with(".qweight") || n.ends_with(".scales"),
    };
    let p = plan_with(d.path(), Config::read(d.path()).unwrap(), Some(q), OutType::Auto).unwrap();
    assert!(p.tensor_names().contains(&"blk.0.attn_q.weight"));
    let mut out = Vec::new();
    p.write(&mut out, &mut |_, _| {}).unwrap();
    let g = llamafile_format::gguf::GgufFile::from_bytes("m.gguf", out).unwrap();
    let data = g.tensor_data(g.tensor("blk.0.attn_q.weight").unwrap());
    assert!(data.chunks(2).all(|c| f16::from_le_bytes([c[0], c[1]]).to_f32() == 0.5));
}

#[test]
fn sentence_transformers_and_reranker_variants_are_refused() {
    let d = checkpoint();
    std::fs::write(d.path().join("modules.json"), b"[]").unwrap();
    let e = refused(d.path());
    assert!(e.contains("modules.json") && e.contains("sentence-transformers"), "{e}");
    std::fs::remove_file(d.path().join("modules.json")).unwrap();
    let mut c = config();
    c["architectures"] = json!(["Qwen3ForCausalLM"]);
    c["_name_or_path"] = json!("Qwen/Qwen3-Reranker-0.6B");
    std::fs::write(d.path().join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    let e = refused(d.path());
    assert!(e.contains("Qwen3 reranker"), "{e}");
}
