//! Write a Mistral-7B-shaped GGUF with random weights, for benchmarks (`scripts/make-bench-model`).
//!
//! `cargo run --profile release -p runtime --example make_bench_model -- OUT.gguf [TYPE [LAYERS]]`
//! TYPE: q4_k_m (default), q8_0, q6_k, q2_k, q4_0, iq4_xs, or f16 (unquantized, an input for
//! `pack --quantize`). LAYERS: fewer blocks than the 32 of the 7B shape (a smaller file).
//!
//! The layout, metadata and vocabulary are the shared tiny models' (architecture `llama`, the
//! Mistral vocabulary and chat template), with Mistral 7B's shape: 32 blocks, embedding 4096,
//! FFN 14336, 32 query / 8 KV heads, vocabulary 32000. Type mixes follow the reference
//! quantizer's: Q4_K_M = Q4_K everywhere but Q6_K for `output` and for `attn_v`/`ffn_down` in
//! the first and last eighth of the layers and every third layer between; Q2_K = Q2_K with
//! Q3_K `attn_v`/`ffn_down` and Q6_K output; IQ4_XS = IQ4_XS with Q5_K `attn_v` and Q6_K
//! output; the others uniform with a Q6_K output (Q8_0 output for Q8_0).
//!
//! Weights: seeded Gaussian rows quantized with the kernels' quantizers. Quantizing 7 billion
//! values with the reference K-quant search would take many minutes on two cores, so a pool of
//! 512 distinct random rows per (type, row length) is quantized once and rows are drawn from it;
//! the bytes streamed per token (what speed depends on) are the same as for fully random weights.

use anyhow::{anyhow, bail, Context, Result};
use kernels_cpu::types::quantize_row;
use kernels_cpu::WeightType;
use llamafile_format::gguf::{GgufFile, MetaValue};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

const N_LAYER: usize = 32;
const N_EMBD: usize = 4096;
const N_FF: usize = 14336;
const N_HEAD: usize = 32;
const N_HEAD_KV: usize = 8;
const HEAD_DIM: usize = 128;
const N_VOCAB: usize = 32000;
const POOL_ROWS: usize = 512;
const ALIGN: u64 = 32;

struct Tensor {
    name: String,
    /// ggml order: [cols, rows] (or [n] for vectors)
    dims: Vec<u64>,
    ty: WeightType,
}

impl Tensor {
    fn bytes(&self) -> u64 {
        let cols = self.dims[0] as usize;
        let rows: u64 = self.dims[1..].iter().product();
        self.ty.row_bytes(cols) as u64 * rows
    }
}

fn mix(kind: &str, name: &str, layer: Option<usize>, n_layer: usize) -> WeightType {
    let more_bits = |l: usize| !(n_layer / 8..7 * n_layer / 8).contains(&l) || (l - n_layer / 8) % 3 == 2;
    let sensitive = name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight");
    match kind {
        "q4_k_m" => {
            if name == "output.weight" || (sensitive && layer.is_some_and(more_bits)) {
                WeightType::Q6_K
            } else {
                WeightType::Q4_K
            }
        }
        "q2_k" => {
            if name == "output.weight" {
                WeightType::Q6_K
            } else if sensitive {
                WeightType::Q3_K
            } else {
                WeightType::Q2_K
            }
        }
        "q6_k" => WeightType::Q6_K,
        "f16" => WeightType::F16,
        "q8_0" => WeightType::Q8_0,
        "q4_0" if name == "output.weight" => WeightType::Q6_K,
        "q4_0" => WeightType::Q4_0,
        // The reference's IQ4_XS mix for a model with 4 query heads per KV head.
        "iq4_xs" if name == "output.weight" => WeightType::Q6_K,
        "iq4_xs" if name.ends_with("attn_v.weight") => WeightType::Q5_K,
        "iq4_xs" => WeightType::IQ4_XS,
        _ => unreachable!(),
    }
}

/// Seeded xorshift + Box-Muller: deterministic Gaussian values without a dependency.
struct Gauss(u64);
impl Gauss {
    fn next_f32(&mut self) -> f32 {
        let mut u = || {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out =
        PathBuf::from(args.get(1).ok_or_else(|| {
            anyhow!("usage: make_bench_model OUT.gguf [q4_k_m|q8_0|q6_k|q2_k|q4_0|iq4_xs|f16 [LAYERS]]")
        })?);
    let kind = args.get(2).map(String::as_str).unwrap_or("q4_k_m");
    if !["q4_k_m", "q8_0", "q6_k", "q2_k", "q4_0", "iq4_xs", "f16"].contains(&kind) {
        bail!("unknown type {kind}: q4_k_m, q8_0, q6_k, q2_k, q4_0, iq4_xs or f16");
    }
    let n_layer = match args.get(3) {
        Some(a) => a
            .parse()
            .ok()
            .filter(|n| (1..=N_LAYER).contains(n))
            .ok_or_else(|| anyhow!("LAYERS {a}: a number from 1 to {N_LAYER}"))?,
        None => N_LAYER,
    };
    let shared = test_support::shared();
    let src_path = shared.join("models/tiny-mistral-q4_k_m.gguf");
    let src = GgufFile::open(&src_path).with_context(|| format!("{}", src_path.display()))?;

    // metadata: the tiny model's, with the 7B shape
    let shape: HashMap<&str, MetaValue> = [
        ("general.name", MetaValue::String(format!("mistral-7b-shaped-random-{kind}"))),
        ("llama.block_count", MetaValue::U32(n_layer as u32)),
        ("llama.embedding_length", MetaValue::U32(N_EMBD as u32)),
        ("llama.feed_forward_length", MetaValue::U32(N_FF as u32)),
        ("llama.attention.head_count", MetaValue::U32(N_HEAD as u32)),
        ("llama.attention.head_count_kv", MetaValue::U32(N_HEAD_KV as u32)),
        ("llama.rope.dimension_count", MetaValue::U32(HEAD_DIM as u32)),
        ("llama.context_length", MetaValue::U32(32768)),
        (
            "general.file_type",
            MetaValue::U32(match kind {
                "q4_k_m" => 15,
                "q8_0" => 7,
                "q6_k" => 18,
                "q4_0" => 2,
                "iq4_xs" => 30,
                "f16" => 1,
                _ => 10,
            }),
        ),
    ]
    .into_iter()
    .collect();
    let mut meta: Vec<(String, MetaValue)> = src
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), shape.get(k.as_str()).cloned().unwrap_or_else(|| v.clone())))
        .collect();
    for (k, v) in &shape {
        if !meta.iter().any(|(m, _)| m == k) {
            meta.push((k.to_string(), v.clone()));
        }
    }

    // tensor table, in the tiny model's order
    let mut tensors = vec![
        Tensor {
            name: "output.weight".into(),
            dims: vec![N_EMBD as u64, N_VOCAB as u64],
            ty: mix(kind, "output.weight", None, n_layer),
        },
        Tensor { name: "output_norm.weight".into(), dims: vec![N_EMBD as u64], ty: WeightType::F32 },
        Tensor {
            name: "token_embd.weight".into(),
            dims: vec![N_EMBD as u64, N_VOCAB as u64],
            ty: mix(kind, "token_embd.weight", None, n_layer),
        },
    ];
    let kv = (N_HEAD_KV * HEAD_DIM) as u64;
    for l in 0..n_layer {
        let (e, f) = (N_EMBD as u64, N_FF as u64);
        for (n, dims) in [
            ("attn_k.weight", vec![e, kv]),
            ("attn_norm.weight", vec![e]),
            ("attn_output.weight", vec![e, e]),
            ("attn_q.weight", vec![e, e]),
            ("attn_v.weight", vec![e, kv]),
            ("ffn_down.weight", vec![f, e]),
            ("ffn_gate.weight", vec![e, f]),
            ("ffn_norm.weight", vec![e]),
            ("ffn_up.weight", vec![e, f]),
        ] {
            let name = format!("blk.{l}.{n}");
            let ty = if dims.len() == 1 { WeightType::F32 } else { mix(kind, &name, Some(l), n_layer) };
            tensors.push(Tensor { name, dims, ty });
        }
    }

    let tmp = out.with_extension("gguf.partial");
    let file = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let infos: Vec<(&str, &[u64], u32, u64)> =
        tensors.iter().map(|t| (t.name.as_str(), t.dims.as_slice(), t.ty as u32, t.bytes())).collect();
    let meta_refs: Vec<(&str, MetaValue)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    w.write_all(&llamafile_format::gguf::writer::header(&meta_refs, &infos, ALIGN))?;

    // data
    let mut pools: HashMap<(WeightType, usize), Vec<u8>> = HashMap::new();
    let mut pick = 0x2545_F491_4F6C_DD1Du64;
    let total: u64 = tensors.iter().map(|t| t.bytes()).sum();
    let mut written = 0u64;
    for t in &tensors {
        let cols = t.dims[0] as usize;
        let rows: usize = t.dims[1..].iter().product::<u64>() as usize;
        if t.dims.len() == 1 {
            // norm weights: around 1
            let mut g = Gauss(written + 1);
            for _ in 0..cols {
                w.write_all(&(1.0 + 0.1 * g.next_f32()).to_le_bytes())?;
            }
        } else {
            let rb = t.ty.row_bytes(cols);
            let pool = pools.entry((t.ty, cols)).or_insert_with(|| {
                let mut g = Gauss(cols as u64 * 31 + t.ty as u64);
                let sd = 1.0 / (cols as f32).sqrt();
                let mut row = vec![0f32; cols];
                let mut p = vec![0u8; rb * POOL_ROWS];
                for r in 0..POOL_ROWS {
                    row.iter_mut().for_each(|v| *v = g.next_f32() * sd);
                    quantize_row(t.ty, &row, &mut p[r * rb..(r + 1) * rb]);
                }
                p
            });
            for _ in 0..rows {
                pick ^= pick << 13;
                pick ^= pick >> 7;
                pick ^= pick << 17;
                let r = (pick % POOL_ROWS as u64) as usize;
                w.write_all(&pool[r * rb..(r + 1) * rb])?;
            }
        }
        written += t.bytes();
        let pad = written.div_ceil(ALIGN) * ALIGN - written;
        w.write_all(&vec![0u8; pad as usize])?;
        written += pad;
        if t.name.ends_with("ffn_up.weight") {
            eprint!("\r{:.0}%", written as f64 * 100.0 / total as f64);
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, &out)?;
    eprintln!(
        "\r{}: {:.2} GB, {} tensors, {kind}",
        out.display(),
        std::fs::metadata(&out)?.len() as f64 / 1e9,
        tensors.len()
    );
    Ok(())
}
