//! avx512 kernels. Every ISA module has the same lookups (`vec_dot`, `gemm`, `gemv`, `quantize`,
//! `panel`); `None` = not provided here, and
//! `Kernels::for_isa` falls back to a lower ISA. The kernels themselves live in `legacy`
//! (F16/BF16/Q4_0..Q8_1, IQ4_NL), `kquants` (Q2_K..Q8_K) and `iq4xs` (IQ4_XS; its panel in `kpanel`); they are only
//! installed when `available()` is true, which is what makes calling their `#[target_feature]`
//! code sound.

use super::{GemmTileFn, GemvFn, PanelFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;

mod iq4xs;
mod kpanel;
mod kquants;
mod legacy;
mod lpanel;

/// AVX-512 F/BW/VL (VNNI and BF16 are checked per kernel, with fallbacks).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && super::avx2::available()
}

/// AVX-512 with VNNI (`vpdpbusd`/`vpdpwssd`): what the K-quant and panel kernels need.
fn vnni() -> bool {
    available() && is_x86_feature_detected!("avx512vnni")
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    legacy::vec_dot(t).or_else(|| kquants::vec_dot(t)).or_else(|| iq4xs::vec_dot(t))
}

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    legacy::gemm(t).or_else(|| kquants::gemm(t)).or_else(|| iq4xs::gemm(t))
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    legacy::quantize(t).or_else(|| kquants::quantize(t))
}

/// Many rows against one token (`matmul` with one token).
pub fn gemv(t: WeightType) -> Option<GemvFn> {
    legacy::gemv(t).or_else(|| kquants::gemv(t)).or_else(|| iq4xs::gemv(t))
}

/// Whole row blocks against many tokens (`matmul` with at least `PANEL_MIN_TOKENS` tokens).
pub fn panel(t: WeightType) -> Option<PanelFn> {
    kpanel::panel(t).or_else(|| lpanel::panel(t))
}
