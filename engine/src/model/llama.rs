//! `llama`: Llama/Mistral as stored in GGUF. GQA, RMSNorm, SiLU-gated FFN, RoPE on adjacent pairs
//! (the converter permutes q/k rows so ggml's normal mode applies) with the base from the
//! metadata and Llama 3.1's per-dimension frequency factors (`rope_freqs.weight`) when present,
//! untied output (tied when `output.weight` is absent, as in Llama 3.2), sliding-window attention
//! on every layer when `llama.attention.sliding_window` is declared.

use super::{common_hparams, Architecture, FfnActivation, Hparams, Recipe, RopeStyle};
use anyhow::Result;
use llamafile_format::gguf::GgufFile;

pub struct Llama;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Normal,
    ffn_act: FfnActivation::Silu,
    qkv_bias: false,
    qk_norm: false,
    post_norms: false,
    scale_embeddings: false,
    rope_factors: true,
    longrope: false,
};

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        common_hparams(g, "llama", RECIPE)
    }
}
