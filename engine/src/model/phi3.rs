//! `phi3` (Phi-3, Phi-4-mini): the llama block with NEOX RoPE, often partial
//! (`phi3.rope.dimension_count` below the head size), q/k/v in one matrix (`attn_qkv`) and the
//! FFN's gate and up projections in one (`ffn_up` of 2 x n_ff rows, gate first); the loader
//! splits both. `phi3.attention.sliding_window` is ignored, as the reference does (it disables
//! Phi's sliding window). The 128k models' LongRoPE: `rope_factors_short`/`rope_factors_long`
//! (one set chosen by the context size against `rope.scaling.original_context_length`,
//! `Hparams::choose_rope_factors`) and `rope.scaling.attn_factor` (RoPE's cos and sin scaled).

use super::{common_hparams, Architecture, FfnActivation, Hparams, Recipe, RopeStyle};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

pub struct Phi3;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Neox,
    ffn_act: FfnActivation::Silu,
    qkv_bias: false,
    qk_norm: false,
    post_norms: false,
    scale_embeddings: false,
    rope_factors: false,
    longrope: true,
};

impl Architecture for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        let mut hp = common_hparams(g, "phi3", RECIPE)?;
        hp.full_attention();
        Ok(hp)
    }
}
