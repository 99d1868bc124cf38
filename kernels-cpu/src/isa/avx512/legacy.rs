//! avx512 kernels for the legacy types.

use crate::isa::{GemmTileFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;

pub fn vec_dot(_t: WeightType) -> Option<VecDotFn> {
    None
}

pub fn gemm(_t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    None
}

pub fn quantize(_t: WeightType) -> Option<QuantizeFn> {
    None
}
