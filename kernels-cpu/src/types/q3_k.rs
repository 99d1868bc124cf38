//! Q3_K: 256 values in 16 sub-blocks of 16, value = `d * (sc[j] - 32) * q`, `q` in -4..4, with
//! 6-bit sub-block scales packed in 12 bytes (ggml `block_q3_K`).
//!
//! Value `i` (`h = i / 128`, `s = (i % 128) / 32`, `l = i % 32`): low 2 bits are bits `2s..2s+2`
//! of `qs[32h + l]`; `q = low - 4` unless bit `i / 32` of `hmask[l]` is set (then `q = low`).
//! Scale `j`: low 4 bits from `scales[j]` (j < 8) or `scales[j - 8] >> 4`, top 2 bits from
//! `scales[8 + j % 4] >> (2 * (j / 4))`.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::Block;
use super::q8_k::{blocks_mut, f16_to_f32, f32_to_f16, first_blocks, make_q3_quants, nearest_int, BlockQ8K, QK_K};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == super::WeightType::Q3_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ3K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ3K {}

/// The 16 signed scales (`sc - 32`, in -32..32), with word operations on the packed bytes.
#[inline]
pub fn scales_q3k(s: &[u8; 12]) -> [i8; 16] {
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, hi) = (w(0), w(1), w(2));
    let words = [
        (a & M4) | ((hi & M2) << 4),
        (b & M4) | (((hi >> 2) & M2) << 4),
        ((a >> 4) & M4) | (((hi >> 4) & M2) << 4),
        ((b >> 4) & M4) | (((hi >> 6) & M2) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, word) in words.iter().enumerate() {
        for (j, byte) in word.to_le_bytes().iter().enumerate() {
            out[4 * i + j] = *byte as i8 - 32;
        }
    }
    out
}

/// Scale `j` straight from the format's description (the test checks `scales_q3k` against it).
#[cfg(test)]
fn scale_q3k_by_definition(s: &[u8; 12], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// The signed level (-4..4) of value `i` (0..256).
#[inline]
fn level(b: &BlockQ3K, i: usize) -> i32 {
    let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
    let low = ((b.qs[32 * h + l] >> (2 * s)) & 3) as i32;
    if b.hmask[l] & (1 << (i / 32)) != 0 {
        low
    } else {
        low - 4
    }
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.19;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ3K>(src, nb, "Q3_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = f16_to_f32(b.d);
        let sc = scales_q3k(&b.scales);
        for j in 0..16 {
            let dl = d_all * sc[j] as f32;
            for i in 16 * j..16 * j + 16 {
                y[i] = dl * level(b, i) as f32;
            }
        }
    }
}

/// Quantize as the reference does without an importance matrix (`quantize_row_q3_K_ref`).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q3_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockQ3K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q3_K quantize: output too short");
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            for j in 0..16 {
                let v = (nearest_int(iscale * scales[j]).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    y.scales[j] = v & 0xF;
                } else {
                    y.scales[j - 8] |= (v & 0xF) << 4;
                }
                y.scales[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
            }
            y.d = f32_to_f16(1.0 / iscale);
        } else {
            y.d = f32_to_f16(0.0);
        }
        let sc = scales_q3k(&y.scales);
        for j in 0..16 {
            let d = f16_to_f32(y.d) * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        y.hmask = [0; QK_K / 8];
        for (i, v) in l.iter_mut().enumerate() {
            if *v > 3 {
                y.hmask[i % 32] |= 1 << (i / 32);
                *v -= 4;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |s: usize| l[128 * h + 32 * s + i] as u8;
                y.qs[32 * h + i] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
            }
        }
    }
}

/// The specification: exact integer sum of `(sc[j] - 32) * Σ q * x` per block, times `d * x.d`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockQ3K>(w, nb, "Q3_K vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q3_K vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let sc = scales_q3k(&b.scales);
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16).map(|i| level(b, i) * a.qs[i] as i32).sum();
            sumi += sc[j] as i32 * s;
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

    #[test]
    fn scale_unpacking_matches_definition() {
        let mut r = Rng(41);
        for _ in 0..200 {
            let mut s = [0u8; 12];
            s.iter_mut().for_each(|b| *b = r.next_u32() as u8);
            let fast = scales_q3k(&s);
            for j in 0..16 {
                assert_eq!(fast[j], scale_q3k_by_definition(&s, j));
            }
        }
    }

    const KQ: KQuant = KQuant(WeightType::Q3_K);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(45, 0x99);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(49);
    }
}
