//! Q5_0: blocks of 32 weights, one f16 scale, 5-bit quants with an offset of 16: the low 4 bits
//! as in Q4_0, the fifth bit of element `j` is bit `j` of `qh`. Takes Q8_0 activations.

use super::q8_0::BlockQ8_0;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::Q5_0.block_size();

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Fifth bits, little-endian u32: bit j = element j.
    pub qh: [u8; 4],
    /// Low nibble of byte j = element j, high nibble = element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == super::WeightType::Q5_0.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockQ5_0 {}

impl BlockQ5_0 {
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
    let blocks = BlockQ5_0::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "Q5_0: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, q) in out.iter_mut().zip(b.quants()) {
            *o = d * (q as i32 - 16) as f32;
        }
    }
}

/// ggml's `quantize_row_q5_0_ref`: the scale maps the value of largest magnitude to -16.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockQ5_0::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "Q5_0: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let x1 = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            b.qs[j] = (x0 & 0x0f) | ((x1 & 0x0f) << 4);
            qh |= ((x0 as u32 & 0x10) >> 4) << j;
            qh |= ((x1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Q5_0 x Q8_0.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockQ5_0::slice(w)[..nb];
    let x = &BlockQ8_0::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi: i32 = a.quants().iter().zip(&b.qs).map(|(&q, &y)| (q as i32 - 16) * y as i32).sum();
        sum += sumi as f32 * f16_to_f32(a.d) * f16_to_f32(b.d);
    }
    sum
}
