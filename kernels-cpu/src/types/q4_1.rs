//! Q4_1: blocks of 32 weights, f16 scale `d` and minimum `m`, 4-bit quants:
//! value `j` = `d * q[j] + m`. Its dot product takes Q8_1 activations (whose `s` carries
//! `d * sum(q)`, so the minimum costs one multiply per block).

use super::q8_1::BlockQ8_1;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q4_1.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Minimum (f16).
    pub m: [u8; 2],
    /// Low nibble of byte j = element j, high nibble = element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == super::WeightType::Q4_1.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ4_1 {}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.1;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockQ4_1::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q4_1: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..QK / 2 {
            // Two roundings (multiply, then add), as ggml and the gguf package: no FMA.
            out[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            out[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q4_1_ref`: 16 steps from the block's minimum to its maximum.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ4_1::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q4_1: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for j in 0..QK / 2 {
            let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let x1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = x0 | (x1 << 4);
        }
    }
}

/// Q4_1 x Q8_1: `d_w * d_x * sum(q_w * q_x) + m_w * s_x` per block.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ4_1::slice(w)[..nb];
    let x = &BlockQ8_1::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += (a.qs[j] & 0x0f) as i32 * b.qs[j] as i32;
            sumi += (a.qs[j] >> 4) as i32 * b.qs[j + QK / 2] as i32;
        }
        sum += (f16_to_f32(a.d) * f16_to_f32(b.d)) * sumi as f32 + f16_to_f32(a.m) * f16_to_f32(b.s);
    }
    sum
}
