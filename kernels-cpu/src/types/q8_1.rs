//! Q8_1: Q8_0 plus `s = d * sum(qs)` (f16), the activation format of Q4_1 and Q5_1 weights
//! (the sum lets the weights' minimum be applied once per block).

use super::q8_0::amax;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q8_1.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// `d * sum(qs)` (f16).
    pub s: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == super::WeightType::Q8_1.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ8_1 {}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 8e-3;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockQ8_1::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q8_1: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = d * q as f32;
        }
    }
}

/// As the reference quantizes activations on x86 (its AVX2 `quantize_row_q8_1`): multiplier
/// `127 / amax`, round half to even, `s = fp16(d * sum)` with the unrounded f32 `d`.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ8_1::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q8_1: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let amax = amax(x);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even().clamp(-128.0, 127.0) as i8;
            sum += *q as i32;
        }
        b.s = f32_to_f16(d * sum as f32);
    }
}

/// Q8_1 x Q8_1 (for completeness; no GGUF weight is stored as Q8_1).
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ8_1::slice(w)[..nb];
    let x = &BlockQ8_1::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi: i32 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| p as i32 * q as i32).sum();
        sum += sumi as f32 * (f16_to_f32(a.d) * f16_to_f32(b.d));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sum_field_is_scale_times_quant_sum() {
        let x: Vec<f32> = (0..QK).map(|i| i as f32 - 10.0).collect();
        let mut b = [0u8; 36];
        quantize(&x, &mut b);
        let blk = BlockQ8_1::slice(&b)[0];
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(blk.qs[31], 127);
        let d = 21.0f32 / 127.0;
        assert_eq!(f16_to_f32(blk.s), f16_to_f32(f32_to_f16(d * sum as f32)));
    }
}
