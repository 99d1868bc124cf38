//! Tiny models in the exact layout of each architecture the runtime runs (tensor names, shapes,
//! metadata, tokenizer kind), written deterministically by the project's own GGUF writer, so that
//! the reference engine's answers on them (tests/data/reference/tiny-<name>.json, made by
//! tests/data/make_reference.py) can be compared with ours. Each file is pinned by sha256: the
//! answers hold for that content only.
//!
//! Weights are seeded pseudo-random numbers, F16 matrices and F32 vectors (norm weights near 1),
//! scaled so that activations keep unit size through the layers. Vocabularies are real ones,
//! copied from a GGUF (`tokenizer.*` keys) or converted from a Hugging Face `tokenizer.json`.

#![allow(dead_code)] // each test crate that includes this module uses part of it

use llamafile_format::gguf::{writer, GgufFile, MetaValue};
use std::path::{Path, PathBuf};

/// One architecture's tiny layout.
pub struct Layout {
    pub arch: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// `attention.key_length` (= value_length) when it differs from n_embd / n_head.
    pub head_dim: Option<usize>,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// q/k/v biases (`attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// Per-head q/k RMSNorm (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// No `output.weight`: the output is the embedding matrix.
    pub tied: bool,
    /// `rope_freqs.weight`.
    pub rope_factors: Option<Vec<f32>>,
    /// LongRoPE's (short, long) factors: `rope_factors_short.weight`, `rope_factors_long.weight`.
    pub longrope: Option<(Vec<f32>, Vec<f32>)>,
    /// `rope.dimension_count` when it is less than the head size (partial rotary).
    pub n_rot: Option<usize>,
    /// q, k, v in one `attn_qkv` matrix; gate and up in one `ffn_up` (Phi-3).
    pub fused: bool,
    /// Standard deviation of the logits of a unit-RMS final hidden state: the output matrix
    /// (the embedding when tied) holds values of standard deviation `logit_std / sqrt(n_embd)`.
    /// None: values uniform in [-1, 1) (standard deviation 0.58 whatever the width).
    pub logit_std: Option<f32>,
    /// More `<arch>.*` metadata (without the prefix); a key written anyway (`context_length`)
    /// takes this value instead.
    pub extra: Vec<(&'static str, MetaValue)>,
}

impl Layout {
    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }
}

/// xorshift64*: uniform values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The model file for `layout` with the vocabulary `vocab` (`tokenizer.*` entries).
pub fn build(layout: &Layout, vocab: &[(String, MetaValue)]) -> Vec<u8> {
    use kernels_cpu::WeightType;
    use MetaValue::*;
    let l = layout;
    let hd = l.head_dim();
    let n_vocab = match vocab.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, Array(t))) => t.len(),
        _ => panic!("vocabulary without tokenizer.ggml.tokens"),
    };
    let a = |k: &str| format!("{}.{k}", l.arch);
    let mut meta: Vec<(std::string::String, MetaValue)> = vec![
        ("general.architecture".into(), String(l.arch.into())),
        // (not "tiny phi3": the reference gives special tokens of models named phi3 other
        // attributes and then requires Llama 2's special tokens)
        ("general.name".into(), String(format!("tiny {}", if l.arch == "phi3" { "phi" } else { l.arch }))),
        ("general.file_type".into(), U32(1)),
        (a("context_length"), U32(4096)),
        (a("embedding_length"), U32(l.n_embd as u32)),
        (a("block_count"), U32(l.n_layer as u32)),
        (a("feed_forward_length"), U32(l.n_ff as u32)),
        (a("attention.head_count"), U32(l.n_head as u32)),
        (a("attention.head_count_kv"), U32(l.n_head_kv as u32)),
        (a("rope.freq_base"), F32(l.rope_base)),
        (a("attention.layer_norm_rms_epsilon"), F32(l.rms_eps)),
        (a("vocab_size"), U32(n_vocab as u32)),
        (a("rope.dimension_count"), U32(l.n_rot.unwrap_or(hd) as u32)),
    ];
    if let Some(d) = l.head_dim {
        meta.push((a("attention.key_length"), U32(d as u32)));
        meta.push((a("attention.value_length"), U32(d as u32)));
    }
    for (k, v) in &l.extra {
        match meta.iter_mut().find(|(m, _)| *m == a(k)) {
            Some(slot) => slot.1 = v.clone(),
            None => meta.push((a(k), v.clone())),
        }
    }
    meta.extend(vocab.iter().cloned());

    let (e, ff, q, kv) = (l.n_embd as u64, l.n_ff as u64, (l.n_head * hd) as u64, (l.n_head_kv * hd) as u64);
    // uniform values in [-s, s) of standard deviation 1 / sqrt(cols)
    let w = |cols: u64| (3.0 / cols as f32).sqrt();
    let output_scale = l.logit_std.map_or(1.0, |s| s * w(e));
    let embd_scale = if l.tied { output_scale } else { 1.0 };
    // (name, dims, scale of the uniform values)
    let mut shapes: Vec<(std::string::String, Vec<u64>, f32)> =
        vec![("token_embd.weight".into(), vec![e, n_vocab as u64], embd_scale)];
    if let Some(f) = &l.rope_factors {
        shapes.push(("rope_freqs.weight".into(), vec![f.len() as u64], 0.0));
    }
    if let Some((short, long)) = &l.longrope {
        shapes.push(("rope_factors_long.weight".into(), vec![long.len() as u64], 0.0));
        shapes.push(("rope_factors_short.weight".into(), vec![short.len() as u64], 0.0));
    }
    shapes.push(("output_norm.weight".into(), vec![e], 0.1));
    if !l.tied {
        shapes.push(("output.weight".into(), vec![e, n_vocab as u64], output_scale));
    }
    for b in 0..l.n_layer {
        let mut blk = vec![("attn_norm.weight", vec![e], 0.1)];
        if l.fused {
            blk.push(("attn_qkv.weight", vec![e, q + 2 * kv], w(e)));
        } else {
            blk.extend([
                ("attn_q.weight", vec![e, q], w(e)),
                ("attn_k.weight", vec![e, kv], w(e)),
                ("attn_v.weight", vec![e, kv], w(e)),
            ]);
        }
        blk.extend([("attn_output.weight", vec![q, e], w(q)), ("ffn_norm.weight", vec![e], 0.1)]);
        if l.fused {
            blk.push(("ffn_up.weight", vec![e, 2 * ff], w(e)));
        } else {
            blk.extend([("ffn_gate.weight", vec![e, ff], w(e)), ("ffn_up.weight", vec![e, ff], w(e))]);
        }
        blk.push(("ffn_down.weight", vec![ff, e], w(ff)));
        if l.qkv_bias {
            blk.extend([("attn_q.bias", vec![q], 0.3), ("attn_k.bias", vec![kv], 0.3), ("attn_v.bias", vec![kv], 0.3)]);
        }
        if l.post_norms {
            blk.extend([("post_attention_norm.weight", vec![e], 0.1), ("post_ffw_norm.weight", vec![e], 0.1)]);
        }
        if l.qk_norm {
            blk.extend([("attn_q_norm.weight", vec![hd as u64], 0.1), ("attn_k_norm.weight", vec![hd as u64], 0.1)]);
        }
        shapes.extend(blk.into_iter().map(|(n, d, s)| (format!("blk.{b}.{n}"), d, s)));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ l.arch.len() as u64);
    let data: Vec<(u32, Vec<u8>)> = shapes
        .iter()
        .map(|(name, dims, scale)| {
            let n: u64 = dims.iter().product();
            let factors = match name.as_str() {
                "rope_freqs.weight" => l.rope_factors.as_ref(),
                "rope_factors_short.weight" => l.longrope.as_ref().map(|f| &f.0),
                "rope_factors_long.weight" => l.longrope.as_ref().map(|f| &f.1),
                _ => None,
            };
            if let Some(f) = factors {
                return (0, f.iter().flat_map(|x| x.to_le_bytes()).collect());
            }
            if dims.len() == 1 {
                // norm weights 1 +- 0.1, biases +- scale
                let base = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
                return (0, (0..n).flat_map(|_| (base + scale * rng.next()).to_le_bytes()).collect());
            }
            let v: Vec<f32> = (0..n).map(|_| scale * rng.next()).collect();
            let mut out = vec![0u8; n as usize * 2];
            kernels_cpu::types::quantize_row(WeightType::F16, &v, &mut out);
            (1, out)
        })
        .collect();
    let specs: Vec<writer::TensorSpec> = shapes
        .iter()
        .zip(&data)
        .map(|((name, dims, _), (ty, d))| writer::TensorSpec { name, dims, ggml_type: *ty, data: d })
        .collect();
    let meta: Vec<(&str, MetaValue)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    writer::build(&meta, &specs, 32)
}

/// The `tokenizer.*` entries of a GGUF (a vocabulary file or a model).
pub fn vocab_of_gguf(path: &Path) -> Vec<(String, MetaValue)> {
    let f = GgufFile::open(path).unwrap();
    f.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect()
}

/// A Llama 3.x vocabulary as the reference converter writes it, from Meta's `tokenizer.json`:
/// byte-level BPE (`gpt2`) with the pre-tokenizer `pre` (`llama-bpe` for Llama 3 itself), the
/// 128,000 pieces and merges, the
/// 256 special tokens from 128000 as control tokens (ids past 128255, which only the vision
/// models use, left out), BOS `<|begin_of_text|>`, EOS `<|eot_id|>` (the instruct models'), the
/// Llama 3 chat template.
pub fn llama3_vocab(tokenizer_json: &Path, pre: &str) -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(tokenizer_json).unwrap()).unwrap();
    const N: usize = 128_256;
    let mut tokens = vec![None; N];
    let mut types = vec![1i32; N];
    for (piece, id) in v["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = Some(piece.clone());
    }
    for t in v["added_tokens"].as_array().unwrap() {
        let id = t["id"].as_u64().unwrap() as usize;
        if id < N {
            tokens[id] = Some(t["content"].as_str().unwrap().to_string());
            types[id] = if t["special"].as_bool().unwrap() { 3 } else { 4 };
        }
    }
    let tokens: Vec<MetaValue> =
        tokens.into_iter().enumerate().map(|(i, t)| String(t.unwrap_or_else(|| panic!("no token {i}")))).collect();
    let merges: Vec<MetaValue> = v["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => String(s.clone()),
            pair => String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap())),
        })
        .collect();
    let template = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
    vec![
        ("tokenizer.ggml.model".into(), String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Array(types.into_iter().map(I32).collect())),
        ("tokenizer.ggml.merges".into(), Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), U32(128_000)),
        ("tokenizer.ggml.eos_token_id".into(), U32(128_009)),
        ("tokenizer.ggml.add_bos_token".into(), Bool(true)),
        ("tokenizer.chat_template".into(), String(template.into())),
    ]
}

/// The frequency factors the reference converter writes as `rope_freqs.weight` for
/// `rope_scaling.rope_type = llama3`: 1 for wavelengths under `orig_ctx / high`, `factor` above
/// `orig_ctx / low`, interpolated between.
pub fn llama3_rope_factors(n_rot: usize, base: f32, factor: f32, low: f32, high: f32, orig_ctx: f32) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (orig_ctx / low, orig_ctx / high);
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f32 / n_rot as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// `bytes` written once to the test's target folder as `name` and checked against `sha256`.
pub fn pinned(name: &str, bytes: impl FnOnce() -> Vec<u8>, sha256: &str) -> PathBuf {
    use sha2::Digest;
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let hash = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    if std::fs::read(&p).is_ok_and(|b| hash(&b) == sha256) {
        return p;
    }
    let bytes = bytes();
    test_support::write_atomically(&p, &bytes);
    assert_eq!(hash(&bytes), sha256, "{}: not the file the reference answers were computed on", p.display());
    p
}

// ---- the layouts ----

/// The Llama 3 frequency factors of the tiny Llama 3 layouts for head size `n_rot`: base
/// 500000, factor 32, low/high frequency factors 1 and 4, for a 256-token original context.
fn tiny_llama3_factors(n_rot: usize) -> Vec<f32> {
    llama3_rope_factors(n_rot, 500000.0, 32.0, 1.0, 4.0, 256.0)
}

/// `l` widened to rows of 256 values everywhere (embedding 256, FFN 768, head size and rotary
/// dimensions scaled with the embedding), for the quantized tiny models: the reference quantizer
/// gives a row that is not whole 256-blocks a 32-block type instead of Q4_K, Q6_K or IQ4_XS, so
/// a 128-wide model would hold none of the types it is named after. What makes each layout
/// what it is stays: a head size that is not n_embd / n_head where it was, partial rotary, the
/// fused matrices, the factors, the windows and soft caps.
///
/// The output matrix has the tiny Mistral models' scale (values of standard deviation
/// 4 / sqrt(n_embd), a top logit near 17): a quantization error moves each logit in proportion
/// to it, so these models are held to the same limit as those. Gemma 2's final soft cap is the
/// real model's 30, which still bends its top logits at that scale (its tied embedding, scaled
/// by sqrt(n_embd) on the way in, makes the input token's own logit the largest by far).
pub fn wide(mut l: Layout) -> Layout {
    let s = 256 / l.n_embd;
    l.logit_std = Some(4.0);
    if let Some(cap) = l.extra.iter_mut().find(|(k, _)| *k == "final_logit_softcapping") {
        cap.1 = MetaValue::F32(30.0);
    }
    l.n_embd = 256;
    l.n_ff = 768;
    l.head_dim = l.head_dim.map(|d| d * s);
    l.n_rot = l.n_rot.map(|r| r * s);
    if l.rope_factors.is_some() {
        l.rope_factors = Some(tiny_llama3_factors(l.head_dim()));
    }
    assert!((l.n_head * l.head_dim()).is_multiple_of(256), "{}: attention rows of whole 256-blocks", l.arch);
    l
}

/// Llama 3.2 1B's layout scaled down: GQA, tied output (no output.weight), RoPE base 500000 with
/// Llama 3 frequency factors (rope_freqs.weight; made for a 256-token original context so that
/// they change the angles within the tested 700 positions), the Llama 3.2 vocabulary with the
/// llama-bpe pre-tokenizer and <|eot_id|> as its end token.
pub fn llama3_layout() -> Layout {
    Layout {
        arch: "llama",
        n_layer: 4,
        n_embd: 128,
        n_ff: 384,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        rope_base: 500000.0,
        rms_eps: 1e-5,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        tied: true,
        rope_factors: Some(tiny_llama3_factors(32)),
        longrope: None,
        n_rot: None,
        fused: false,
        logit_std: None,
        extra: vec![],
    }
}

/// Qwen3 0.6B's layout scaled down: per-head q/k RMSNorm before NEOX RoPE, no q/k/v biases, a
/// head size (key_length 32) that is not n_embd / n_head (16), GQA, tied output, base 1e6, the
/// Qwen2.5/Qwen3 vocabulary (byte-level BPE, qwen2 pre-tokenizer).
pub fn qwen3_layout() -> Layout {
    Layout {
        arch: "qwen3",
        n_layer: 4,
        n_embd: 64,
        n_ff: 192,
        n_head: 4,
        n_head_kv: 2,
        head_dim: Some(32),
        rope_base: 1e6,
        rms_eps: 1e-6,
        qkv_bias: false,
        qk_norm: true,
        post_norms: false,
        tied: true,
        rope_factors: None,
        longrope: None,
        n_rot: None,
        fused: false,
        logit_std: None,
        extra: vec![],
    }
}

/// Mistral Nemo's layout scaled down: the llama architecture with a head size (key_length 64)
/// that is not n_embd / n_head (32), GQA, untied output, base 1e6, a Tekken-pre-tokenized
/// byte-level BPE vocabulary (the Llama 3.2 pieces: Tekken's own vocabulary is not on the
/// registries this project reaches), and `llama.attention.sliding_window` 64 as Mistral 7B
/// v0.1 declares one.
pub fn nemo_layout() -> Layout {
    Layout {
        arch: "llama",
        n_layer: 4,
        n_embd: 128,
        n_ff: 384,
        n_head: 4,
        n_head_kv: 2,
        head_dim: Some(64),
        rope_base: 1e6,
        rms_eps: 1e-5,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        tied: false,
        rope_factors: None,
        longrope: None,
        n_rot: None,
        fused: false,
        logit_std: None,
        extra: vec![("attention.sliding_window", MetaValue::U32(64))],
    }
}

/// Gemma 2 2B's layout scaled down: embeddings scaled by sqrt(n_embd), post-attention and
/// post-FFN norms, GELU, NEOX RoPE, tied output, head size 64 (not n_embd / n_head = 32), a
/// sliding window of 32 positions on the even layers, and soft caps small enough (attention 2,
/// logits 100) that they shape these random weights' scores and logits (the top logit, ~66
/// uncapped, becomes ~58); the Gemma vocabulary (SentencePiece).
pub fn gemma2_layout() -> Layout {
    use MetaValue::F32;
    Layout {
        arch: "gemma2",
        n_layer: 4,
        n_embd: 128,
        n_ff: 384,
        n_head: 4,
        n_head_kv: 2,
        head_dim: Some(64),
        rope_base: 10000.0,
        rms_eps: 1e-6,
        qkv_bias: false,
        qk_norm: false,
        post_norms: true,
        tied: true,
        rope_factors: None,
        longrope: None,
        n_rot: None,
        fused: false,
        logit_std: None,
        extra: vec![
            ("attention.sliding_window", MetaValue::U32(32)),
            ("attn_logit_softcapping", F32(2.0)),
            ("final_logit_softcapping", F32(100.0)),
        ],
    }
}

/// Phi-4-mini's layout scaled down: q/k/v in one matrix, gate and up in one, NEOX RoPE on 24 of
/// each head's 32 dimensions (partial rotary), GQA, tied output; a sliding window declared (the
/// reference ignores Phi's).
pub fn phi3_layout() -> Layout {
    Layout {
        arch: "phi3",
        n_layer: 4,
        n_embd: 128,
        n_ff: 384,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        rope_base: 10000.0,
        rms_eps: 1e-5,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        tied: true,
        rope_factors: None,
        longrope: None,
        n_rot: Some(24),
        fused: true,
        logit_std: None,
        extra: vec![("attention.sliding_window", MetaValue::U32(32))],
    }
}

/// Phi-3-mini-128k's LongRoPE on the Phi-3 layout, scaled down: trained for 32 times the
/// original context as the 128k model is for 4096 (original 1024, multiple of 256 as the
/// reference rounds contexts so; training context 32768), factor sets shaped like its (short
/// ones near 1 rising gently, long ones rising from about 1 to about 50 for the lowest
/// frequencies) and the converter's attention factor sqrt(1 + ln(32) / ln(1024)).
pub fn phi3_longrope_layout() -> Layout {
    let mut l = phi3_layout();
    let pairs = l.n_rot.unwrap() / 2;
    let t = |i: usize| i as f32 / (pairs - 1) as f32;
    let short = (0..pairs).map(|i| 1.0 + 0.6 * t(i) * t(i)).collect();
    let long = (0..pairs).map(|i| 1.07 * 46f32.powf(t(i))).collect();
    l.longrope = Some((short, long));
    l.extra.extend([
        ("context_length", MetaValue::U32(32768)),
        ("rope.scaling.original_context_length", MetaValue::U32(1024)),
        ("rope.scaling.attn_factor", MetaValue::F32((1.0 + 32f32.ln() / 1024f32.ln()).sqrt())),
    ]);
    l
}

/// The special tokens mistral-common gives a Tekken file without a `special_tokens` list
/// (versions up to v7, e.g. Mistral Nemo's v3), ids 0..20; the rest up to the file's
/// `default_num_special_tokens` are `<SPECIAL_{id}>`.
const TEKKEN_DEFAULT_SPECIALS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

/// GPT-2's byte-to-character map: the printable bytes stand for themselves, the others for the
/// characters from U+0100 on, in byte order.
fn gpt2_byte_chars() -> [char; 256] {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut out = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    out
}

/// Mistral's Tekken vocabulary (`tekken.json`, as mistral-common ships it) as the reference
/// converter writes it for a Mistral-format model: byte-level BPE (`gpt2`) with the `tekken`
/// pre-tokenizer; the special tokens first (control tokens), then the first
/// `default_vocab_size - default_num_special_tokens` byte pieces in rank order, each written in
/// GPT-2's byte-to-character form; merges recovered from the ranks (for each piece from rank 256
/// on, every split into two pieces of the vocabulary, by the pieces' ranks); BOS 1, EOS 2, UNK 0,
/// padding `<pad>` (EOS when there is none), BOS added.
pub fn tekken_vocab(tekken_json: &Path) -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(tekken_json).unwrap()).unwrap();
    let n_vocab = v["config"]["default_vocab_size"].as_u64().unwrap() as usize;
    let n_special = v["config"]["default_num_special_tokens"].as_u64().unwrap() as usize;
    let mut specials: Vec<std::string::String> = match v.get("special_tokens") {
        Some(list) => list.as_array().unwrap().iter().map(|t| t["token_str"].as_str().unwrap().to_string()).collect(),
        None => TEKKEN_DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect(),
    };
    specials.extend((specials.len()..n_special).map(|i| format!("<SPECIAL_{i}>")));
    let inner = n_vocab - n_special;
    let pieces: Vec<Vec<u8>> = v["vocab"].as_array().unwrap()[..inner]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            assert_eq!(t["rank"].as_u64(), Some(i as u64), "tekken.json: ranks in order");
            base64::decode(t["token_bytes"].as_str().unwrap()).unwrap()
        })
        .collect();
    let rank: std::collections::HashMap<&[u8], usize> =
        pieces.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
    let chars = gpt2_byte_chars();
    let text = |p: &[u8]| p.iter().map(|&b| chars[b as usize]).collect::<std::string::String>();
    let mut merges = Vec::new();
    for piece in &pieces[256..] {
        let mut splits: Vec<(usize, usize)> =
            (1..piece.len()).filter_map(|j| Some((*rank.get(&piece[..j])?, *rank.get(&piece[j..])?))).collect();
        assert!(!splits.is_empty(), "tekken.json: no merge makes {piece:?}");
        splits.sort();
        merges.extend(splits.into_iter().map(|(l, r)| String(format!("{} {}", text(&pieces[l]), text(&pieces[r])))));
    }
    let n_control = specials.len();
    let pad = specials.iter().position(|s| s == "<pad>").unwrap_or(2) as u32;
    let tokens: Vec<MetaValue> =
        specials.into_iter().map(String).chain(pieces.iter().map(|p| String(text(p)))).collect();
    let types: Vec<MetaValue> = (0..n_vocab).map(|i| I32(if i < n_control { 3 } else { 1 })).collect();
    vec![
        ("tokenizer.ggml.model".into(), String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), String("tekken".into())),
        ("tokenizer.ggml.merges".into(), Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), U32(0)),
        ("tokenizer.ggml.padding_token_id".into(), U32(pad)),
        ("tokenizer.ggml.tokens".into(), Array(tokens)),
        ("tokenizer.ggml.scores".into(), Array((0..n_vocab).map(|_| F32(0.0)).collect())),
        ("tokenizer.ggml.token_type".into(), Array(types)),
        ("tokenizer.ggml.add_bos_token".into(), Bool(true)),
        ("tokenizer.ggml.add_eos_token".into(), Bool(false)),
    ]
}
