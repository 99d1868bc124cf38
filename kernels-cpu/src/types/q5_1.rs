//! Q5_1: blocks of 32 weights, f16 scale and minimum, 5-bit quants (fifth bits in `qh`):
//! value `j` = `d * q[j] + m`. Takes Q8_1 activations.

use super::q8_1::BlockQ8_1;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q5_1.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Minimum (f16).
    pub m: [u8; 2],
    /// Fifth bits, little-endian u32: bit j = element j.
    pub qh: [u8; 4],
    /// Low nibble of byte j = element j, high nibble = element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == super::WeightType::Q5_1.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ5_1 {}

impl BlockQ5_1 {
    /// The 32 quants of the block, 0..=31.
    #[inline(always)]
    pub fn quants(&self) -> [u8; QK] {
        let qh = u32::from_le_bytes(self.qh);
        let mut q = [0u8; QK];
        for j in 0..QK / 2 {
            q[j] = (self.qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
            q[j + QK / 2] = (self.qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
        }
        q
    }
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.05;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockQ5_1::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q5_1: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (o, q) in out.iter_mut().zip(b.quants()) {
            *o = q as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q5_1_ref`: 32 steps from the block's minimum to its maximum.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ5_1::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q5_1: {} blocks for {} values", blocks.len(), src.len());
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
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // ggml casts to uint8_t without a clamp; (max - min) * (1/d) can exceed 31 by an ulp,
            // which truncation absorbs, so the clamp only guards against a wider overshoot.
            let x0 = (((x[j] - min) * id + 0.5) as u8).min(31);
            let x1 = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(31);
            b.qs[j] = (x0 & 0x0f) | ((x1 & 0x0f) << 4);
            qh |= ((x0 as u32 & 0x10) >> 4) << j;
            qh |= ((x1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Q5_1 x Q8_1: `d_w * d_x * sum(q_w * q_x) + m_w * s_x` per block.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ5_1::slice(w)[..nb];
    let x = &BlockQ8_1::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi: i32 = a.quants().iter().zip(&b.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
        sum += (f16_to_f32(a.d) * f16_to_f32(b.d)) * sumi as f32 + f16_to_f32(a.m) * f16_to_f32(b.s);
    }
    sum
}
