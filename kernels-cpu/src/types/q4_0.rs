//! Q4_0: blocks of 32 weights, one f16 scale, 4-bit quants with an offset of 8.
//! Value `j` of a block is `d * ((qs[j % 16] >> (4 * (j / 16))) & 15) - 8)`.
//! Its dot product takes Q8_0 activations.

use super::q8_0::BlockQ8_0;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q4_0.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Nibbles: low nibble of byte j = element j, high nibble = element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == super::WeightType::Q4_0.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ4_0 {}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.1;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockQ4_0::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q4_0: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..QK / 2 {
            out[j] = d * ((b.qs[j] & 0x0f) as i32 - 8) as f32;
            out[j + QK / 2] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

/// ggml's `quantize_row_q4_0_ref`: the scale maps the value of largest magnitude to -8.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ4_0::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q4_0: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for j in 0..QK / 2 {
            // `as i8` truncates toward zero like C's (int8_t) cast (and saturates, never UB).
            let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let x1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = x0 | (x1 << 4);
        }
    }
}

/// Q4_0 x Q8_0: per block the exact integer dot product, scaled by both f16 scales.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ4_0::slice(w)[..nb];
    let x = &BlockQ8_0::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += ((a.qs[j] & 0x0f) as i32 - 8) * b.qs[j] as i32;
            sumi += ((a.qs[j] >> 4) as i32 - 8) * b.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * f16_to_f32(a.d) * f16_to_f32(b.d);
    }
    sum
}
