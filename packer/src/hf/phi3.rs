//! Phi3ForCausalLM: the `phi3.*` metadata as the reference converter writes it (its own order,
//! not the other architectures'), the rotary dimensions of a partial rotary factor, and the
//! 128k models' LongRoPE: `rope_scaling`'s long and short factors become the tensors
//! `rope_factors_long.weight`/`rope_factors_short.weight`, with the original context length and
//! the attention factor the converter derives from the two context lengths.

use super::config::{rope_theta, Config};
use super::vocab::Meta;
use super::Json;
use anyhow::{bail, Context};
use llamafile_format::escape::escape;
use llamafile_format::gguf::MetaValue;

/// Phi3Config's defaults, which the converter sees for keys config.json leaves out.
const DEFAULT_CONTEXT: u64 = 4096;
const DEFAULT_ROPE_THETA: f64 = 10000.0;
const DEFAULT_RMS_EPS: f64 = 1e-5;

#[derive(Clone, Debug)]
pub struct Phi3 {
    /// `n_positions` or `max_position_embeddings`.
    pub n_ctx: u64,
    /// `original_max_position_embeddings`: the context the model was trained with before scaling.
    pub n_ctx_orig: u64,
    /// Dimensions of each head that RoPE rotates: partial_rotary_factor * hidden / heads.
    pub rope_dims: usize,
    pub longrope: Option<LongRope>,
}

#[derive(Clone, Debug)]
pub struct LongRope {
    pub long: Vec<f32>,
    pub short: Vec<f32>,
    /// sqrt(1 + ln(n_ctx / n_ctx_orig) / ln(n_ctx_orig)), 1 when the context is not extended.
    pub attn_factor: f32,
}

fn factors(r: &Json, key: &str) -> anyhow::Result<Option<Vec<f32>>> {
    let Some(v) = r.get(key).filter(|v| !v.is_null()) else { return Ok(None) };
    let Some(a) = v.as_array() else { bail!("config.json: rope_scaling.{key} is not a list") };
    a.iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()
        .with_context(|| format!("config.json: rope_scaling.{key} holds a value that is not a number"))
        .map(Some)
}

impl Phi3 {
    pub fn read(j: &Json, n_embd: usize, n_head: usize) -> anyhow::Result<Phi3> {
        let pos = |k: &str| j.get(k).filter(|v| !v.is_null());
        let positive = |k: &str, d: u64| -> anyhow::Result<u64> {
            match pos(k) {
                None => Ok(d),
                Some(v) => v.as_u64().filter(|&n| n > 0 && n < (1 << 32)).with_context(|| {
                    format!("config.json: '{k}' is {}, not a positive integer", escape(&v.to_string()))
                }),
            }
        };
        let n_ctx = if pos("n_positions").is_some() {
            positive("n_positions", DEFAULT_CONTEXT)?
        } else {
            positive("max_position_embeddings", DEFAULT_CONTEXT)?
        };
        let rope = j.get("rope_scaling").or_else(|| j.get("rope_parameters")).filter(|r| !r.is_null());
        // rope_scaling's own value first, as the converter reads it.
        let n_ctx_orig = match rope.and_then(|r| r.get("original_max_position_embeddings")).filter(|v| !v.is_null()) {
            Some(v) => v.as_u64().filter(|&n| n > 0 && n < (1 << 32)).with_context(|| {
                format!(
                    "config.json: rope_scaling.original_max_position_embeddings is {}, not a positive integer",
                    escape(&v.to_string())
                )
            })?,
            None => positive("original_max_position_embeddings", DEFAULT_CONTEXT)?,
        };
        let rot = match pos("partial_rotary_factor") {
            None => 1.0,
            Some(v) => v.as_f64().filter(|f| *f > 0.0 && *f <= 1.0).with_context(|| {
                format!("config.json: 'partial_rotary_factor' is {}, not a number in (0, 1]", escape(&v.to_string()))
            })?,
        };
        let rope_dims = (rot * n_embd as f64) as usize / n_head;
        if rope_dims == 0 || !rope_dims.is_multiple_of(2) {
            bail!("config.json: partial_rotary_factor {rot} rotates {rope_dims} dimensions of each head, not a positive even number");
        }
        let mut longrope = None;
        if let Some(r) = rope {
            let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()).unwrap_or("");
            let long = factors(r, "long_factor")?;
            let short = factors(r, "short_factor")?;
            match (ty.to_lowercase().as_str(), long) {
                ("" | "default", None) => {}
                ("su" | "longrope", Some(long)) if !long.is_empty() => {
                    let Some(short) = short else { bail!("config.json: rope_scaling has long_factor but no short_factor") };
                    if long.len() != rope_dims / 2 || short.len() != rope_dims / 2 {
                        bail!(
                            "config.json: rope_scaling has {} long and {} short factors, the rotary dimensions need {}",
                            long.len(),
                            short.len(),
                            rope_dims / 2
                        );
                    }
                    let scale = n_ctx as f64 / n_ctx_orig as f64;
                    let attn_factor = if scale > 1.0 {
                        (1.0 + scale.ln() / (n_ctx_orig as f64).ln()).sqrt() as f32
                    } else {
                        1.0
                    };
                    longrope = Some(LongRope { long, short, attn_factor });
                }
                (other, _) => bail!(
                    "config.json: rope_scaling type '{}' is not supported by pack --hf for Phi-3 (LongRoPE with long_factor and short_factor is)",
                    escape(other)
                ),
            }
        }
        Ok(Phi3 { n_ctx, n_ctx_orig, rope_dims, longrope })
    }

    /// Keys the converter writes while it generates the LongRoPE tensors, before `general.*`.
    pub fn early_meta(&self) -> Meta {
        match &self.longrope {
            Some(l) => vec![("phi3.rope.scaling.attn_factor".into(), MetaValue::F32(l.attn_factor))],
            None => Meta::new(),
        }
    }

    /// `phi3.*` and `general.file_type`, in the converter's order.
    pub fn model_meta(&self, cfg: &Config, file_type: u32) -> Meta {
        let j = &cfg.json;
        let u = |v: u64| MetaValue::U32(v as u32);
        let eps = j.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(DEFAULT_RMS_EPS);
        // A missing window is written as 0 (the converter tells Phi-4 from Phi-3 by it).
        let window = j.get("sliding_window").and_then(|v| v.as_u64()).unwrap_or(0);
        vec![
            ("phi3.context_length".into(), u(self.n_ctx)),
            ("phi3.rope.scaling.original_context_length".into(), u(self.n_ctx_orig)),
            ("phi3.embedding_length".into(), u(cfg.n_embd as u64)),
            ("phi3.feed_forward_length".into(), u(cfg.n_ff as u64)),
            ("phi3.block_count".into(), u(cfg.n_layer as u64)),
            ("phi3.attention.head_count".into(), u(cfg.n_head as u64)),
            ("phi3.attention.head_count_kv".into(), u(cfg.n_head_kv as u64)),
            ("phi3.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(eps as f32)),
            ("phi3.rope.dimension_count".into(), u(self.rope_dims as u64)),
            ("phi3.rope.freq_base".into(), MetaValue::F32(rope_theta(j).unwrap_or(DEFAULT_ROPE_THETA) as f32)),
            ("general.file_type".into(), MetaValue::U32(file_type)),
            ("phi3.attention.sliding_window".into(), u(window)),
        ]
    }
}
