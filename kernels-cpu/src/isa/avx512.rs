//! avx512 kernels. Same function names in every ISA module; `None` = not provided here (fall back).

use super::{GemmTileFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;


/// AVX-512 F/BW/VL (VNNI and BF16 are checked per kernel).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && super::avx2::available()
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
