//! `gemma2`: embeddings scaled by sqrt(n_embd); RMSNorm of the attention and FFN outputs before
//! each residual add; GELU(tanh)-gated FFN; NEOX RoPE; output tied to the embeddings. Attention
//! scores soft-capped at `gemma2.attn_logit_softcapping` (50 when absent) and the logits at
//! `gemma2.final_logit_softcapping` (30 when absent), the reference's defaults. Even layers
//! (0, 2, 4...; every layer but each `sliding_window_pattern`-th) attend within a sliding window
//! (`gemma2.attention.sliding_window`, 4096 when absent, 0 refused), odd ones globally; the same RoPE on
//! both. q is scaled by 1/sqrt(key_length), by 1/sqrt(n_embd / n_head) in the 27B model. The
//! converter already stores the norm weights as (1 + w).

use super::{common_hparams, opt_u64, Architecture, FfnActivation, Hparams, Recipe, RopeStyle};
use anyhow::{bail, Result};
use llamafile_format::gguf::GgufFile;

pub struct Gemma2;

pub const RECIPE: Recipe = Recipe {
    rope: RopeStyle::Neox,
    ffn_act: FfnActivation::GeluTanh,
    qkv_bias: false,
    qk_norm: false,
    post_norms: true,
    scale_embeddings: true,
    rope_factors: false,
    longrope: false,
};

/// Window when the metadata declares none.
pub const DEFAULT_WINDOW: usize = 4096;
/// Every `SWA_PATTERN`-th layer is global.
pub const SWA_PATTERN: usize = 2;
/// Soft caps when the metadata declares none.
pub const DEFAULT_ATTN_SOFTCAP: f32 = 50.0;
pub const DEFAULT_FINAL_SOFTCAP: f32 = 30.0;

impl Architecture for Gemma2 {
    fn name(&self) -> &'static str {
        "gemma2"
    }
    fn hparams(&self, g: &GgufFile) -> Result<Hparams> {
        let mut hp = common_hparams(g, "gemma2", RECIPE)?;
        if g.get("gemma2.attn_logit_softcapping").is_none() {
            hp.attn_softcap = DEFAULT_ATTN_SOFTCAP;
        }
        if g.get("gemma2.final_logit_softcapping").is_none() {
            hp.final_softcap = DEFAULT_FINAL_SOFTCAP;
        }
        let window = match opt_u64(g, "gemma2.attention.sliding_window") {
            // the reference masks every position with a window of 0 (no output it could match)
            Some(0) => {
                bail!("gemma2.attention.sliding_window is 0: the local layers need a window of at least one token")
            }
            Some(w) => w,
            None => DEFAULT_WINDOW,
        };
        let pattern = opt_u64(g, "gemma2.attention.sliding_window_pattern").filter(|p| *p > 0).unwrap_or(SWA_PATTERN);
        for (il, l) in hp.layers.iter_mut().enumerate() {
            l.window = if (il + 1) % pattern == 0 { None } else { Some(window) };
        }
        if hp.n_layer == 46 {
            hp.attn_scale = 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt();
        }
        Ok(hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny_gguf_as;
    use llamafile_format::gguf::MetaValue::{self, *};

    /// The tiny model as a `gemma2` file, with `extra` metadata.
    fn hparams(extra: &[(&str, MetaValue)]) -> Result<Hparams> {
        Gemma2.hparams(&tiny_gguf_as("gemma2", extra, &[]))
    }

    #[test]
    fn the_window_is_read_defaulted_and_a_zero_window_refused() {
        let windows = |hp: Hparams| hp.layers.iter().map(|l| l.window).collect::<Vec<_>>();
        assert_eq!(windows(hparams(&[]).unwrap()), [Some(DEFAULT_WINDOW), None]);
        assert_eq!(windows(hparams(&[("gemma2.attention.sliding_window", U32(64))]).unwrap()), [Some(64), None]);
        let e = format!("{:#}", hparams(&[("gemma2.attention.sliding_window", U32(0))]).unwrap_err());
        assert!(e.starts_with("gemma2.attention.sliding_window is 0:") && !e.contains('\n'), "{e}");
    }
}
