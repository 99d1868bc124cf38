//! `qwen2`: the llama block with biases on the q/k/v projections and NEOX RoPE (rotating the two
//! halves of each head). Output tied to the embeddings when `output.weight` is absent (0.5B).

use super::{common_hparams, Architecture, FfnActivation, Hparams, Recipe, RopeStyle};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

pub struct Qwen2;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Neox,
    ffn_act: FfnActivation::Silu,
    qkv_bias: true,
    qk_norm: false,
    post_norms: false,
    scale_embeddings: false,
    rope_factors: false,
    longrope: false,
};

impl Architecture for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        common_hparams(g, "qwen2", RECIPE)
    }
}
