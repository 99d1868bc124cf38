//! Scalar kernels: the specification. Each type's file in `types/` holds its scalar dot product
//! and quantizer; this module only exposes them under the names the ISA modules use (`vec_dot`,
//! `gemm`, `quantize`, `gemv`; there is no scalar `panel`).

use super::{GemmTileFn, GemvFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    Some(crate::types::info(t).vec_dot)
}

pub fn gemm(_t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    None
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    Some(crate::types::info(t).quantize)
}

pub fn gemv(_t: WeightType) -> Option<GemvFn> {
    None
}
