//! Q4_K: 256 values per block in 8 sub-blocks of 32, value = `d * sc[j] * q - dmin * m[j]` with
//! `q` in 0..16 and 6-bit sub-block scales `sc` and mins `m` packed in 12 bytes (ggml `block_q4_K`).
//!
//! `qs` holds 4 groups of 32 bytes; group `k` has sub-block `2k` in its low nibbles and `2k+1`
//! in its high nibbles.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::Block;
use super::q8_k::{
    blocks_mut, f16_to_f32, f32_to_f16, first_blocks, make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int, BlockQ8K,
    QK_K,
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == super::WeightType::Q4_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ4K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ4K {}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes (ggml's `get_scale_min_k4`):
/// sub-blocks 0..4 use the low 6 bits of bytes `j` and `j+4`; 4..8 take 4 bits from byte `j+4`
/// and their top 2 bits from the spare top bits of bytes `j-4` and `j`.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// All 8 scales and 8 mins.
#[inline]
pub fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, q);
    }
    (sc, m)
}

/// All 8 scales then all 8 mins as 16 bytes, with word operations on the packed 12 bytes
/// (the same values as `scales_mins_k4`; used by the SIMD kernels).
#[inline]
pub fn scales_mins_k4_bytes(q: &[u8; 12]) -> [u8; 16] {
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    let scales_lo = a & M6;
    let scales_hi = (c & M4) | (((a >> 6) & M2) << 4);
    let mins_lo = b & M6;
    let mins_hi = ((c >> 4) & M4) | (((b >> 6) & M2) << 4);
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&scales_lo.to_le_bytes());
    out[4..8].copy_from_slice(&scales_hi.to_le_bytes());
    out[8..12].copy_from_slice(&mins_lo.to_le_bytes());
    out[12..16].copy_from_slice(&mins_hi.to_le_bytes());
    out
}

/// Inverse of `scale_min_k4` for all sub-blocks (values must be < 64).
pub(crate) fn pack_scales_mins_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`); 4 bits
/// and an asymmetric fit: about 4.5 effective bits, typically 0.05 to 0.07.
pub const MAX_RMS_ERROR: f32 = 0.1;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ4K>(src, nb, "Q4_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        for k in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * k, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * k + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &b.qs[32 * k..32 * k + 32];
            let y = &mut y[64 * k..64 * k + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Quantize as the reference does without an importance matrix (`quantize_row_q4_K_ref`):
/// per sub-block a weighted asymmetric fit, then 6-bit scales/mins relative to the largest.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_impl(src, dst, None)
}

/// Quantize one row with an importance matrix's values `qw` for its columns, as the reference
/// does (`quantize_row_q4_K_impl` with `quant_weights`): a weighted search per sub-block
/// ([`fit_scales_mins_weighted`]).
pub fn quantize_weighted(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    assert_eq!(src.len(), qw.len(), "Q4_K quantize: one importance per column");
    quantize_impl(src, dst, Some(qw))
}

fn quantize_impl(src: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    assert!(src.len().is_multiple_of(QK_K), "Q4_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockQ4K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q4_K quantize: output too short");
    for (b, (x, y)) in src.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let (ls, lm, d, dmin) = match qw {
            None => fit_scales_mins(x, 15, -1.0, 0.1, 20),
            Some(q) => fit_scales_mins_weighted(x, &q[QK_K * b..QK_K * (b + 1)], 15),
        };
        y.scales = pack_scales_mins_k4(&ls, &lm);
        y.d = f32_to_f16(d);
        y.dmin = f32_to_f16(dmin);
        let l = requantize(x, y.d, y.dmin, &y.scales, 15);
        for k in 0..4 {
            for i in 0..32 {
                y.qs[32 * k + i] = l[64 * k + i] | (l[64 * k + i + 32] << 4);
            }
        }
    }
}

/// The per-sub-block fit shared by Q4_K and Q5_K: returns 6-bit scale and min levels and the
/// super-block `d`, `dmin`.
pub(crate) fn fit_scales_mins(x: &[f32], nmax: i32, rmin: f32, rdelta: f32, nstep: i32) -> ([u8; 8], [u8; 8], f32, f32) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let mut l = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, nmax, &mut l, rmin, rdelta, nstep, false);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
    }
    (ls, lm, max_scale / 63.0, max_min / 63.0)
}

/// The per-sub-block fit shared by Q4_K and Q5_K with an importance matrix: each value weighted
/// by its importance times `sqrt(sigma² + x²)`, the scale and min searched by `make_qkx3_quants`,
/// then the 6-bit levels of the scales and mins fitted by `make_qp_quants` weighted by each
/// sub-block's total weight.
pub(crate) fn fit_scales_mins_weighted(x: &[f32], qw: &[f32], nmax: i32) -> ([u8; 8], [u8; 8], f32, f32) {
    let mut sum_x2 = 0f32;
    for v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut l = [0u8; 32];
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        for i in 0..32 {
            weights[i] = qw[32 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt();
        }
        let mut sumw = 0f32;
        for w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        (scales[j], mins[j]) = make_qkx3_quants(xs, &weights, nmax, &mut l, -0.9, 0.05, 36);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d = make_qp_quants(&scales, 63, &mut ls, &sw);
    let dmin = make_qp_quants(&mins, 63, &mut lm, &sw);
    (ls.map(|v| v.min(63)), lm.map(|v| v.min(63)), d, dmin)
}

/// Final levels for every value given the stored (rounded) scales, as the reference does.
pub(crate) fn requantize(x: &[f32], d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], nmax: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let d = f16_to_f32(d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

/// The specification: per block, exact integer sums of `q * x` per sub-block weighted by the
/// 6-bit scales, and of the Q8_K group sums weighted by the mins; then
/// `d * x.d * sumi - dmin * x.d * summ`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockQ4K>(w, nb, "Q4_K vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q4_K vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let (sc, m) = scales_mins_k4(&b.scales);
        let summ: i32 = (0..16).map(|j| a.bsum(j) * m[j / 2] as i32).sum();
        let mut sumi = 0i32;
        for k in 0..4 {
            let q = &b.qs[32 * k..32 * k + 32];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[l] & 0xF) as i32 * a.qs[64 * k + l] as i32;
                hi += (q[l] >> 4) as i32 * a.qs[64 * k + 32 + l] as i32;
            }
            sumi += sc[2 * k] as i32 * lo + sc[2 * k + 1] as i32 * hi;
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
    use super::*;
    use crate::types::WeightType;

    #[test]
    fn scales_pack_round_trip() {
        let mut r = Rng(3);
        for _ in 0..100 {
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for j in 0..8 {
                ls[j] = (r.next_u32() % 64) as u8;
                lm[j] = (r.next_u32() % 64) as u8;
            }
            let packed = pack_scales_mins_k4(&ls, &lm);
            let (s, m) = scales_mins_k4(&packed);
            assert_eq!((s, m), (ls, lm));
            let bytes = scales_mins_k4_bytes(&packed);
            assert_eq!((&bytes[..8], &bytes[8..]), (&ls[..], &lm[..]));
            // any 12 bytes: the word version agrees with the per-sub-block definition
            let mut any = [0u8; 12];
            any.iter_mut().for_each(|b| *b = r.next_u32() as u8);
            let (s, m) = scales_mins_k4(&any);
            let bytes = scales_mins_k4_bytes(&any);
            assert_eq!((&bytes[..8], &bytes[8..]), (&s[..], &m[..]));
        }
    }

    const KQ: KQuant = KQuant(WeightType::Q4_K);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(5, 0xAA);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(9);
    }
}
