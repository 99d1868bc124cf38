//! avx2 kernels. Same function names in every ISA module; `None` = not provided here (fall back).

use super::{GemmTileFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;

/// AVX2 + FMA + F16C.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

pub fn vec_dot(_t: WeightType) -> Option<VecDotFn> {
    None
}

pub fn gemm(_t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    None
}

pub fn quantize(_t: WeightType) -> Option<QuantizeFn> {
    None
}
