//! Q8_0: blocks of 32 weights, one f16 scale, signed 8-bit quants: value `j` = `d * qs[j]`.
//! Also the activation format of Q4_0, Q5_0 and Q8_0 weights.

use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q8_0.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == super::WeightType::Q8_0.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ8_0 {}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 8e-3;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockQ8_0::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q8_0: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = d * q as f32;
        }
    }
}

/// The block's largest magnitude (ggml's order of operations does not matter for a max).
#[inline(always)]
pub(crate) fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Quantize as the reference engine quantizes activations at run time on x86 (its AVX2
/// `quantize_row_q8_0`): `d = amax / 127`, multiplier `127 / amax`, round half to even. This is
/// what the table uses, so that integer dot products see the same activations as the reference.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ8_0::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q8_0: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let amax = amax(x);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
    }
}

/// Quantize weights as the reference's file quantizer does (`quantize_row_q8_0_ref`):
/// multiplier `1 / d`, round half away from zero. Differs from `quantize` only on rare ties.
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ8_0::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q8_0: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let d = amax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Q8_0 x Q8_0: `sumi * (d_w * d_x)` per block.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ8_0::slice(w)[..nb];
    let x = &BlockQ8_0::slice(x)[..nb];
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
    fn activation_quantizer_rounds_ties_to_even_like_the_reference() {
        // amax = 127 makes the multiplier exactly 1, so x.5 values are ties.
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        let mut b = [0u8; 34];
        quantize(&x, &mut b);
        let blk = BlockQ8_0::slice(&b)[0];
        assert_eq!(&blk.qs[..4], &[127, 2, -4, 0]);
        quantize_ref(&x, &mut b);
        let blk = BlockQ8_0::slice(&b)[0];
        assert_eq!(&blk.qs[..4], &[127, 3, -4, 1]);
        assert_eq!(f16_to_f32(blk.d), 1.0);
    }
    #[test]
    fn zero_block_quantizes_to_zero() {
        let x = [0f32; QK];
        let mut b = [0xffu8; 34];
        quantize(&x, &mut b);
        assert!(b.iter().all(|&v| v == 0));
    }
}
