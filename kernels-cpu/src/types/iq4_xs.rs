//! IQ4_XS: 256 weights per block in 8 sub-blocks of 32, each a 6-bit signed scale and 32
//! indices into IQ4_NL's codebook: value = `d * (ls[j] - 32) * KVALUES[q]` (ggml `block_iq4_xs`).
//!
//! Sub-block `j`'s scale `ls[j]` (0..64) has its low 4 bits in nibble `j % 2` of
//! `scales_l[j / 2]` and its top 2 bits at bits `2j..2j+2` of the u16 `scales_h`. Its quants
//! are `qs[16j..16j+16]` laid out as an IQ4_NL block's. Its dot product takes Q8_K activations.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::iq4_nl::{best_index, fit_block, pack, value};
use super::q8_k::{blocks_mut, f16_to_f32, f32_to_f16, first_blocks, nearest_int, BlockQ8K, QK_K};
use super::Block;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ4XS {
    pub d: [u8; 2],
    /// Top 2 bits of the 8 sub-block scales (u16, little-endian).
    pub scales_h: [u8; 2],
    /// Low 4 bits of the 8 sub-block scales, two per byte.
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == super::WeightType::IQ4_XS.type_size());
const _: () = assert!(std::mem::align_of::<BlockIQ4XS>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockIQ4XS {}

impl BlockIQ4XS {
    /// The signed scale `ls - 32` (-32..32) of sub-block `j` (0..8).
    #[inline]
    pub fn scale(&self, j: usize) -> i32 {
        let h = u16::from_le_bytes(self.scales_h);
        let ls = ((self.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) as i32 | ((((h >> (2 * j)) & 3) as i32) << 4);
        ls - 32
    }
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`); about
/// IQ4_NL's, the 6-bit sub-block scales costing little.
pub const MAX_RMS_ERROR: f32 = 0.1;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockIQ4XS>(src, nb, "IQ4_XS dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        for j in 0..8 {
            let dl = d * b.scale(j) as f32;
            let (q, y) = (&b.qs[16 * j..16 * j + 16], &mut y[32 * j..32 * j + 32]);
            for l in 0..16 {
                y[l] = dl * value(q[l], false) as f32;
                y[l + 16] = dl * value(q[l], true) as f32;
            }
        }
    }
}

/// ggml's `quantize_row_iq4_xs_ref` (no importance matrix): each sub-block fitted as an IQ4_NL
/// block, the super-block scale `d = -s / 32` for the sub-block scale `s` of largest magnitude,
/// the sub-block scales rounded to `-32..32` steps of `d`, then each value's nearest codebook
/// entry for its rounded scale.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "IQ4_XS quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockIQ4XS>(dst);
    assert!(out.len() >= src.len() / QK_K, "IQ4_XS quantize: output too short");
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut scales = [0f32; 8];
        let (mut amax_scale, mut max_scale) = (0f32, 0f32);
        for j in 0..8 {
            scales[j] = fit_block(&x[32 * j..32 * j + 32]);
            if scales[j].abs() > amax_scale {
                amax_scale = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let d = -max_scale / 32.0;
        y.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (mut h, mut sl) = (0u16, [0u8; 4]);
        let mut l = [0u8; 32];
        for j in 0..8 {
            let ls = nearest_int(id * scales[j]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (l, &v) in l.iter_mut().zip(&x[32 * j..32 * j + 32]) {
                *l = best_index(idl * v);
            }
            pack(&l, &mut y.qs[16 * j..16 * j + 16]);
            let ls = (ls + 32) as u8;
            sl[j / 2] |= (ls & 0xF) << (4 * (j % 2));
            h |= ((ls >> 4) as u16) << (2 * j);
        }
        y.scales_l = sl;
        y.scales_h = h.to_le_bytes();
    }
}

/// The specification: per block, exact integer sums of codebook value times activation quant
/// per sub-block, weighted by the signed sub-block scales; then `d * x.d * sumi`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockIQ4XS>(w, nb, "IQ4_XS vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "IQ4_XS vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let mut sumi = 0i32;
        for j in 0..8 {
            let q = &b.qs[16 * j..16 * j + 16];
            let qx = &a.qs[32 * j..32 * j + 32];
            let mut s = 0i32;
            for l in 0..16 {
                s += value(q[l], false) * qx[l] as i32 + value(q[l], true) * qx[l + 16] as i32;
            }
            sumi += b.scale(j) * s;
        }
        sum += f16_to_f32(b.d) * a.d() * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::q8_k::test_util::*;
    use super::*;
    use crate::types::WeightType;

    const KQ: KQuant = KQuant(WeightType::IQ4_XS);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(5, 0xAA);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(9);
    }

    #[test]
    fn scales_are_read_from_both_fields() {
        let mut b = BlockIQ4XS { d: [0; 2], scales_h: [0; 2], scales_l: [0; 4], qs: [0; 128] };
        // sub-block 5: low bits 0xA in the high nibble of scales_l[2], top bits 0b10 at bits 10..12
        b.scales_l[2] = 0xA0;
        b.scales_h = (0b10u16 << 10).to_le_bytes();
        assert_eq!(b.scale(5), 0x2A - 32);
        assert_eq!(b.scale(4), -32);
    }
}
