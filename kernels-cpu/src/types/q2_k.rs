//! Q2_K: 256 values in 16 sub-blocks of 16, value = `d * (sc & 15) * q - dmin * (sc >> 4)`,
//! `q` in 0..4 (ggml `block_q2_K`).
//!
//! Value `i` is bits `2s..2s+2` of `qs[32h + l]` with `h = i / 128`, `s = (i % 128) / 32`,
//! `l = i % 32`; its sub-block is `i / 16`.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::Block;
use super::q8_k::{blocks_mut, f16_to_f32, f32_to_f16, first_blocks, make_qkx2_quants, nearest_int, BlockQ8K, QK_K};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == super::WeightType::Q2_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ2K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ2K {}

/// The 2-bit level of value `i` (0..256).
#[inline]
fn level(b: &BlockQ2K, i: usize) -> u8 {
    let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
    (b.qs[32 * h + l] >> (2 * s)) & 3
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.40;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ2K>(src, nb, "Q2_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        for j in 0..16 {
            let sc = b.scales[j];
            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
            for i in 16 * j..16 * j + 16 {
                y[i] = dl * level(b, i) as f32 - ml;
            }
        }
    }
}

/// Quantize as the reference does without an importance matrix (`quantize_row_q2_K_ref`).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q2_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockQ2K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q2_K quantize: output too short");
    const Q4SCALE: f32 = 15.0;
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        let mut weights = [0f32; 16];
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) =
                make_qkx2_quants(xs, &weights, 3, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true);
            max_scale = max_scale.max(scales[j]);
            max_min = max_min.max(mins[j]);
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                y.scales[j] = nearest_int(iscale * scales[j]).clamp(0, 15) as u8;
            }
            y.d = f32_to_f16(max_scale / Q4SCALE);
        } else {
            y.scales = [0; 16];
            y.d = f32_to_f16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                y.scales[j] |= (nearest_int(iscale * mins[j]).clamp(0, 15) as u8) << 4;
            }
            y.dmin = f32_to_f16(max_min / Q4SCALE);
        } else {
            y.dmin = f32_to_f16(0.0);
        }
        for j in 0..16 {
            let d = f16_to_f32(y.d) * (y.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = f16_to_f32(y.dmin) * (y.scales[j] >> 4) as f32;
            for i in 16 * j..16 * j + 16 {
                l[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |s: usize| l[128 * h + 32 * s + i];
                y.qs[32 * h + i] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
            }
        }
    }
}

/// The specification (as ggml's `vec_dot_q2_K_q8_K`): per block, exact integer sums weighted
/// by the 4-bit scales, and the Q8_K group sums weighted by the 4-bit mins; then
/// `d * x.d * sumi - dmin * x.d * summ`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockQ2K>(w, nb, "Q2_K vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q2_K vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let summ: i32 = (0..16).map(|j| a.bsum(j) * (b.scales[j] >> 4) as i32).sum();
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16).map(|i| level(b, i) as i32 * a.qs[i] as i32).sum();
            sumi += (b.scales[j] & 0xF) as i32 * s;
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

    const KQ: KQuant = KQuant(WeightType::Q2_K);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(35, 0x33);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(39);
    }
}
