//! Q5_K: as Q4_K with a fifth bit per value (ggml `block_q5_K`): value =
//! `d * sc[j] * q - dmin * m[j]`, `q` in 0..32. The low 4 bits are laid out as in Q4_K; the fifth
//! bit of value `l` of group `k` (sub-blocks `2k`, `2k+1`) is bit `2k` / `2k+1` of `qh[l]`.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::q4_k::{fit_scales_mins, fit_scales_mins_weighted, pack_scales_mins_k4, requantize, scale_min_k4, scales_mins_k4};
use super::Block;
use super::q8_k::{blocks_mut, f16_to_f32, f32_to_f16, first_blocks, BlockQ8K, QK_K};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == super::WeightType::Q5_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ5K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ5K {}

/// The 5-bit level of value `l` (0..32) of sub-block `j` (0..8).
#[inline]
fn level(b: &BlockQ5K, j: usize, l: usize) -> u8 {
    let k = j / 2;
    let low = if j.is_multiple_of(2) { b.qs[32 * k + l] & 0xF } else { b.qs[32 * k + l] >> 4 };
    low | (((b.qh[l] >> j) & 1) << 4)
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.05;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ5K>(src, nb, "Q5_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let (dl, ml) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[32 * j + l] = dl * level(b, j, l) as f32 - ml;
            }
        }
    }
}

/// Quantize as the reference does without an importance matrix (`quantize_row_q5_K_ref`).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_impl(src, dst, None)
}

/// Quantize one row with an importance matrix's values `qw` for its columns, as the reference
/// does (`quantize_row_q5_K_impl` with `quant_weights`).
pub fn quantize_weighted(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    assert_eq!(src.len(), qw.len(), "Q5_K quantize: one importance per column");
    quantize_impl(src, dst, Some(qw))
}

fn quantize_impl(src: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    assert!(src.len().is_multiple_of(QK_K), "Q5_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockQ5K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q5_K quantize: output too short");
    for (b, (x, y)) in src.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let (ls, lm, d, dmin) = match qw {
            None => fit_scales_mins(x, 31, -0.5, 0.1, 15),
            Some(q) => fit_scales_mins_weighted(x, &q[QK_K * b..QK_K * (b + 1)], 31),
        };
        y.scales = pack_scales_mins_k4(&ls, &lm);
        y.d = f32_to_f16(d);
        y.dmin = f32_to_f16(dmin);
        let l = requantize(x, y.d, y.dmin, &y.scales, 31);
        y.qh = [0; QK_K / 8];
        for k in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * k + i], l[64 * k + 32 + i]);
                y.qs[32 * k + i] = (l1 & 0xF) | ((l2 & 0xF) << 4);
                y.qh[i] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1));
            }
        }
    }
}

/// The specification: exact integer sums per block, then `d * x.d * sumi - dmin * x.d * summ`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockQ5K>(w, nb, "Q5_K vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q5_K vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let (sc, m) = scales_mins_k4(&b.scales);
        let summ: i32 = (0..16).map(|j| a.bsum(j) * m[j / 2] as i32).sum();
        let mut sumi = 0i32;
        for j in 0..8 {
            let s: i32 = (0..32).map(|l| level(b, j, l) as i32 * a.qs[32 * j + l] as i32).sum();
            sumi += sc[j] as i32 * s;
        }
        let d = f16_to_f32(b.d) * a.d();
        let dmin = f16_to_f32(b.dmin) * a.d();
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::q8_k::test_util::*;
    use crate::types::WeightType;

    const KQ: KQuant = KQuant(WeightType::Q5_K);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(15, 0x55);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(19);
    }
}
