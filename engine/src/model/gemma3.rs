//! `gemma3`: embeddings scaled by sqrt(n_embd); RMSNorm of each q and k head before RoPE (NEOX);
//! RMSNorm of the attention and FFN outputs before each residual add; GELU(tanh)-gated FFN; output
//! tied to the embeddings. Attention: q scaled by 1/sqrt(key_length); local layers use a
//! sliding window (`gemma3.attention.sliding_window`, 512 for the small models) with RoPE base
//! `gemma3.rope.freq_base_swa` (10000 when absent, as the reference) and no scaling, every 6th
//! layer (5, 11, 17...) is global with the metadata's base and linear scaling. The converter already stores Gemma's norm weights as (1 + w), so they are
//! plain multipliers here.

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
/// Window when the metadata declares none.
pub const DEFAULT_WINDOW: usize = 512;

impl Architecture for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        let mut hp = common_hparams(g, "gemma3", RECIPE)?;
        let window = opt_u64(g, "gemma3.attention.sliding_window").filter(|w| *w > 0).unwrap_or(DEFAULT_WINDOW);
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
        // The 27B model scales by 1/sqrt(n_embd / n_head); the others by 1/sqrt(key_length),
        // which common_hparams already set.
        if hp.n_layer == 62 {
            hp.attn_scale = 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt();
        }
        Ok(hp)
    }
}
