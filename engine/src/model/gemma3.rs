//! `gemma3`: embeddings scaled by sqrt(n_embd); RMSNorm of each q and k head before RoPE (NEOX);
//! RMSNorm of the attention and FFN outputs before each residual add; GELU(tanh)-gated FFN; output
//! tied to the embeddings. Attention: q scaled by 1/sqrt(key_length); local layers use a
//! sliding window (`gemma3.attention.sliding_window`, 512 for the small models) with RoPE base
//! `gemma3.rope.freq_base_swa` (10000 when absent, as the reference) and no scaling, every 6th
//! layer (5, 11, 17...) is global with the metadata's base and linear scaling. A file without a
//! window (or with 0) has only global layers, as the reference runs it. The converter already
//! stores Gemma's norm weights as (1 + w), so they are plain multipliers here.

use super::{
    common_hparams, opt_u64, positive_f32, Architecture, FfnActivation, Hparams, LayerAttn, Recipe, RopeStyle,
};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

pub struct Gemma3;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Neox,
    ffn_act: FfnActivation::GeluTanh,
    qkv_bias: false,
    qk_norm: true,
    post_norms: true,
    scale_embeddings: true,
    rope_factors: false,
    longrope: false,
};

/// RoPE base of the local (sliding-window) layers when `rope.freq_base_swa` is absent.
pub const LOCAL_ROPE_BASE: f32 = 10000.0;
/// Every `SWA_PATTERN`-th layer is global.
pub const SWA_PATTERN: usize = 6;

impl Architecture for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        let mut hp = common_hparams(g, "gemma3", RECIPE)?;
        // The 27B model scales by 1/sqrt(n_embd / n_head); the others by 1/sqrt(key_length),
        // which common_hparams already set.
        if hp.n_layer == 62 {
            hp.attn_scale = 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt();
        }
        let Some(window) = opt_u64(g, "gemma3.attention.sliding_window").filter(|w| *w > 0) else {
            return Ok(hp);
        };
        let pattern = opt_u64(g, "gemma3.attention.sliding_window_pattern").filter(|p| *p > 0).unwrap_or(SWA_PATTERN);
        let local_base = positive_f32(g, "gemma3.rope.freq_base_swa", LOCAL_ROPE_BASE)?;
        for (il, l) in hp.layers.iter_mut().enumerate() {
            let global = (il + 1) % pattern == 0;
            *l = if global {
                LayerAttn { window: None, ..*l }
            } else {
                LayerAttn { rope_base: local_base, rope_freq_scale: 1.0, window: Some(window) }
            };
        }
        Ok(hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny_gguf_as;
    use llamafile_format::gguf::MetaValue::{self, *};

    /// The tiny model as a `gemma3` file (RoPE base 1e6), with `extra` metadata.
    fn hparams(extra: &[(&str, MetaValue)]) -> Hparams {
        let mut meta = vec![("gemma3.rope.freq_base", F32(1e6))];
        meta.extend_from_slice(extra);
        Gemma3.hparams(&tiny_gguf_as("gemma3", &meta, &[])).unwrap()
    }

    #[test]
    fn a_file_without_a_window_has_only_global_layers() {
        let window = "gemma3.attention.sliding_window";
        for hp in [hparams(&[]), hparams(&[(window, U32(0))])] {
            for l in &hp.layers {
                assert_eq!((l.window, l.rope_base), (None, 1e6));
            }
        }
        let hp = hparams(&[(window, U32(16)), ("gemma3.attention.sliding_window_pattern", U32(2))]);
        let got: Vec<_> = hp.layers.iter().map(|l| (l.window, l.rope_base)).collect();
        assert_eq!(got, [(Some(16), LOCAL_ROPE_BASE), (None, 1e6)]);
    }
}
