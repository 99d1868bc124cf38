//! HF tensor names to GGUF names, the shapes config.json implies, the q/k row permutation of
//! the Llama family, and the element conversion (F16/BF16/F32 in; F16, BF16, F32 or Q8_0 out).

use super::config::{Arch, Config};
use anyhow::bail;
use half::{bf16, f16};
use kernels_cpu::WeightType;

/// ggml type ids of the outputs.
pub const GGML_F32: u32 = WeightType::F32.id();
pub const GGML_F16: u32 = WeightType::F16.id();
pub const GGML_BF16: u32 = WeightType::BF16.id();
pub const GGML_Q8_0: u32 = WeightType::Q8_0.id();

/// The type of the 2-D weights, as the reference converter's `--outtype` names it; norms,
/// biases and 1-D tensors stay F32 whatever it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutType {
    /// BF16 when the checkpoint's first 2-D tensor is BF16, else F16.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
    /// Q8_0 (the reference's file quantizer's rounding), F16 for a tensor whose rows are not
    /// whole 32-blocks, as the converter falls back.
    Q8_0,
}

impl OutType {
    /// Every type by the name `--outtype` takes (the converter's, less its ternary types).
    pub const ALL: [(&'static str, OutType); 5] = [
        ("auto", OutType::Auto),
        ("f32", OutType::F32),
        ("f16", OutType::F16),
        ("bf16", OutType::Bf16),
        ("q8_0", OutType::Q8_0),
    ];

    /// The type named `s` (a name of [`Self::ALL`], any case).
    pub fn from_name(s: &str) -> Option<OutType> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)).map(|(_, t)| *t)
    }

    /// The ggml type of the 2-D weights and `general.file_type` (the reference's
    /// `llama_ftype`), given the checkpoint's first 2-D tensor's dtype for `Auto`.
    pub fn weight_and_file_type(self, first_2d_dtype: &str) -> (u32, u32) {
        match self {
            OutType::Auto if first_2d_dtype == "BF16" => (GGML_BF16, 32),
            OutType::Auto | OutType::F16 => (GGML_F16, 1),
            OutType::F32 => (GGML_F32, 0),
            OutType::Bf16 => (GGML_BF16, 32),
            OutType::Q8_0 => (GGML_Q8_0, 7),
        }
    }
}

/// Bytes of a tensor of ggml type `t` (one of the output types) and shape `shape` (rows
/// first); `None` when its rows are not whole blocks of the type.
pub fn tensor_bytes(t: u32, shape: &[usize]) -> Option<u64> {
    let w = WeightType::from_ggml(t)?;
    let cols = *shape.last().unwrap_or(&1);
    if !cols.is_multiple_of(w.block_size()) {
        return None;
    }
    let rows: usize = shape.iter().rev().skip(1).product();
    (rows as u64).checked_mul(w.row_bytes(cols) as u64)
}

/// The GGUF name of HF tensor `name` and whether its rows are permuted (Llama q/k); `None` for
/// a tensor that is dropped (rotary inverse frequencies, Gemma's `lm_head`, tied to the
/// embeddings); an error for an unknown one.
pub fn map_name(cfg: &Config, name: &str) -> anyhow::Result<Option<(String, Option<usize>)>> {
    let gemma = matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3);
    if name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.masked_bias")
        || name.ends_with(".attention.bias")
        || (gemma && name == "lm_head.weight")
    {
        return Ok(None);
    }
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(Some((f.to_string(), None)));
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((layer, tail)) = rest.split_once('.') {
            if let Ok(bid) = layer.parse::<usize>() {
                if bid >= cfg.n_layer {
                    bail!("tensor '{name}': layer {bid} is past num_hidden_layers {}", cfg.n_layer);
                }
                let (module, suffix) = tail.rsplit_once('.').unwrap_or((tail, ""));
                let g = match module {
                    "input_layernorm" => "attn_norm",
                    // Gemma normalizes the attention output there; its FFN norm comes next.
                    "post_attention_layernorm" if gemma => "post_attention_norm",
                    "pre_feedforward_layernorm" if gemma => "ffn_norm",
                    "post_feedforward_layernorm" if gemma => "post_ffw_norm",
                    "post_attention_layernorm" => "ffn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    "self_attn.q_norm" if matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3) => "attn_q_norm",
                    "self_attn.k_norm" if matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3) => "attn_k_norm",
                    // Phi-3 keeps q/k/v and gate/up fused (the runtime splits them).
                    "self_attn.qkv_proj" if cfg.arch == Arch::Phi3 => "attn_qkv",
                    "mlp.gate_up_proj" if cfg.arch == Arch::Phi3 => "ffn_up",
                    _ => "",
                };
                if !g.is_empty() && (suffix == "weight" || suffix == "bias") {
                    // The Llama family's q and k rows are stored interleaved for HF's rotary
                    // layout; ggml's wants each head's two halves apart: the reference permutes.
                    let permute = match (cfg.arch, g) {
                        (Arch::Llama, "attn_q") => Some(cfg.n_head),
                        (Arch::Llama, "attn_k") => Some(cfg.n_head_kv),
                        _ => None,
                    };
                    return Ok(Some((format!("blk.{bid}.{g}.{suffix}"), permute)));
                }
            }
        }
    }
    bail!("tensor '{name}' has no GGUF name for {} (pack --hf cannot convert it)", cfg.hf_arch)
}

/// The shape (HF order: rows first) config.json implies for the GGUF tensor `gguf_name`.
pub fn expected_shape(cfg: &Config, gguf_name: &str) -> Option<Vec<usize>> {
    let (e, q, kv, f, v) =
        (cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim, cfg.n_ff, cfg.vocab_size);
    let base =
        gguf_name.rsplit_once("blk.").map(|(_, r)| r.split_once('.').map(|(_, t)| t).unwrap_or(r)).unwrap_or(gguf_name);
    Some(match base {
        "token_embd.weight" | "output.weight" => vec![v, e],
        "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![e],
        "post_attention_norm.weight" | "post_ffw_norm.weight" => vec![e],
        "attn_q_norm.weight" | "attn_k_norm.weight" => vec![cfg.head_dim],
        "attn_q.weight" => vec![q, e],
        "attn_qkv.weight" => vec![q + 2 * kv, e],
        "ffn_up.weight" if cfg.arch == Arch::Phi3 => vec![2 * f, e],
        "attn_k.weight" | "attn_v.weight" => vec![kv, e],
        "attn_output.weight" => vec![e, q],
        "ffn_gate.weight" | "ffn_up.weight" => vec![f, e],
        "ffn_down.weight" => vec![e, f],
        "attn_q.bias" => vec![q],
        "attn_k.bias" | "attn_v.bias" => vec![kv],
        "attn_output.bias" => vec![e],
        _ => return None,
    })
}

/// The source row that output row `r` takes under the permutation for `n_head` heads of a
/// tensor with `rows` rows: within each head, HF's interleaved (pair, half) order becomes
/// (half, pair).
pub fn permuted_source_row(r: usize, rows: usize, n_head: usize) -> usize {
    let per_head = rows / n_head;
    let half = per_head / 2;
    let (h, within) = (r / per_head, r % per_head);
    let (i, j) = (within / 2, within % 2);
    h * per_head + j * half + i
}

/// Element size of a safetensors float dtype the conversion reads.
pub fn float_size(dtype: &str) -> Option<usize> {
    match dtype {
        "F16" | "BF16" => Some(2),
        "F32" => Some(4),
        _ => None,
    }
}

/// Convert `src` (elements of `dtype`; whole rows for Q8_0) to ggml type `to`, appending to `out`.
pub fn convert_into(src: &[u8], dtype: &str, to: u32, out: &mut Vec<u8>) {
    let get = |i: usize| -> f32 {
        match dtype {
            "F16" => f16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32(),
            "BF16" => bf16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32(),
            _ => f32::from_le_bytes(src[4 * i..4 * i + 4].try_into().expect("4 bytes")),
        }
    };
    let n = src.len() / float_size(dtype).unwrap_or(4);
    match (dtype, to) {
        ("F16", GGML_F16) | ("BF16", GGML_BF16) | ("F32", GGML_F32) => out.extend_from_slice(src),
        (_, GGML_F16) => (0..n).for_each(|i| out.extend_from_slice(&f16::from_f32(get(i)).to_le_bytes())),
        (_, GGML_BF16) => (0..n).for_each(|i| out.extend_from_slice(&bf16::from_f32(get(i)).to_le_bytes())),
        (_, GGML_Q8_0) => convert_f32_into(&(0..n).map(get).collect::<Vec<f32>>(), to, out),
        _ => (0..n).for_each(|i| out.extend_from_slice(&get(i).to_le_bytes())),
    }
}

/// As [`convert_into`], each value plus 1 first (Gemma's norm weights), with the reference's
/// rounding: F16 values are added in F16 (the sum rounded to F16), BF16 ones after their
/// conversion to F32, F32 ones in F32.
pub fn convert_plus_one_into(src: &[u8], dtype: &str, to: u32, out: &mut Vec<u8>) {
    let mut shifted = Vec::with_capacity(src.len() * 2);
    for i in 0..src.len() / float_size(dtype).unwrap_or(4) {
        let v = match dtype {
            "F16" => f16::from_f32(f16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32() + 1.0).to_f32(),
            "BF16" => bf16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32() + 1.0,
            _ => f32::from_le_bytes(src[4 * i..4 * i + 4].try_into().expect("4 bytes")) + 1.0,
        };
        shifted.push(v);
    }
    convert_f32_into(&shifted, to, out)
}

/// Convert f32 values (a dequantized weight; whole rows for Q8_0) to ggml type `to`, appending
/// to `out`.
pub fn convert_f32_into(src: &[f32], to: u32, out: &mut Vec<u8>) {
    match to {
        GGML_Q8_0 => {
            let start = out.len();
            out.resize(start + WeightType::Q8_0.row_bytes(src.len()), 0);
            // The converter's Q8_0 (gguf-py) is bit for bit the reference's file quantizer's.
            kernels_cpu::types::quantize_weights(WeightType::Q8_0, src, &mut out[start..]);
        }
        GGML_F16 => src.iter().for_each(|&x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
        GGML_BF16 => src.iter().for_each(|&x| out.extend_from_slice(&bf16::from_f32(x).to_le_bytes())),
        _ => src.iter().for_each(|&x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_reshape_swapaxes() {
        // 2 heads of 6 rows: reshape(2, 2, 3).swapaxes(1, 2) reads rows 0,3,1,4,2,5 per head.
        let got: Vec<usize> = (0..12).map(|r| permuted_source_row(r, 12, 2)).collect();
        assert_eq!(got, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
    }

    #[test]
    fn plus_one_rounds_as_the_reference() {
        // 2^-12 is below F16's step at 1 (2^-10): F16 + 1 rounds it away, BF16 (added in F32
        // after conversion) and F32 keep it.
        let x = 2f32.powi(-12);
        let mut out = Vec::new();
        convert_plus_one_into(&f16::from_f32(x).to_le_bytes(), "F16", GGML_F32, &mut out);
        assert_eq!(out, 1.0f32.to_le_bytes());
        out.clear();
        convert_plus_one_into(&bf16::from_f32(x).to_le_bytes(), "BF16", GGML_F32, &mut out);
        assert_eq!(out, (1.0 + x).to_le_bytes());
        out.clear();
        convert_plus_one_into(&x.to_le_bytes(), "F32", GGML_F32, &mut out);
        assert_eq!(out, (1.0 + x).to_le_bytes());
    }

    #[test]
    fn converts_bf16_to_f32_and_f16() {
        let src = [bf16::from_f32(1.5).to_le_bytes(), bf16::from_f32(-2.0).to_le_bytes()].concat();
        let mut out = Vec::new();
        convert_into(&src, "BF16", GGML_F32, &mut out);
        assert_eq!(out, [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
        out.clear();
        convert_into(&src, "BF16", GGML_F16, &mut out);
        assert_eq!(out, [f16::from_f32(1.5).to_le_bytes(), f16::from_f32(-2.0).to_le_bytes()].concat());
    }
}
