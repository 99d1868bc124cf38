//! scalar kernels. Same function names in every ISA module; `None` = not provided here (fall back).

use super::{GemmTileFn, QuantizeFn, VecDotFn};
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
