//! `qwen3`: the qwen2 block without q/k/v biases and with an RMSNorm of each q and k head before
//! RoPE (NEOX). The head size is `qwen3.attention.key_length` (128 in the small models, not
//! n_embd / n_head); q is scaled by 1/sqrt(head size). Output tied to the embeddings when
//! `output.weight` is absent (0.6B to 4B).

use super::{common_hparams, Architecture, FfnActivation, Hparams, Recipe, RopeStyle};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

pub struct Qwen3;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Neox,
    ffn_act: FfnActivation::Silu,
    qkv_bias: false,
    qk_norm: true,
    post_norms: false,
    scale_embeddings: false,
    rope_factors: false,
    longrope: false,
};

impl Architecture for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        common_hparams(g, "qwen3", RECIPE)
    }
}
