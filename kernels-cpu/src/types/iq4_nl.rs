//! IQ4_NL: blocks of 32 weights, one f16 scale, 4-bit indices into a fixed non-linear codebook
//! of 16 signed values ([`KVALUES`], denser near zero, where most weights are). Value `j` of a
//! block is `d * KVALUES[(qs[j % 16] >> (4 * (j / 16))) & 15]`: Q4_0's layout with the
//! codebook in place of `q - 8`. Its dot product takes Q8_0 activations.
//!
//! This file also holds what IQ4_XS shares: the codebook and the reference's per-block fit
//! ([`fit_block`]).

use super::q8_0::BlockQ8_0;
use super::{f16_to_f32, f32_to_f16, Block};

pub const QK: usize = super::WeightType::IQ4_NL.block_size();

/// The codebook (ggml's `kvalues_iq4nl`), in increasing order.
pub const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The codebook plus 128 (1..=241): unsigned codes for the SIMD kernels' u8 x i8 products,
/// which take the 128 back out exactly as `128 * sum(x)`.
pub const UNSIGNED: [u8; 16] = {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = (KVALUES[i] as i32 + 128) as u8;
        i += 1;
    }
    a
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4NL {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Codebook indices: low nibble of byte j = element j, high nibble = element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == super::WeightType::IQ4_NL.type_size());
// SAFETY: repr(C) of byte arrays only: alignment 1, no padding, every bit pattern valid.
unsafe impl Block for BlockIQ4NL {}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`): 16
/// levels placed for gaussian-like data do a little better than Q4_0's uniform ones.
pub const MAX_RMS_ERROR: f32 = 0.1;

/// The codebook value of the low (`hi == false`) or high nibble of `q`.
#[inline(always)]
pub fn value(q: u8, hi: bool) -> i32 {
    KVALUES[((if hi { q >> 4 } else { q }) & 15) as usize] as i32
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let blocks = BlockIQ4NL::slice(src);
    assert_eq!(blocks.len() * QK, dst.len(), "IQ4_NL: {} blocks for {} values", blocks.len(), dst.len());
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..QK / 2 {
            out[j] = d * value(b.qs[j], false) as f32;
            out[j + QK / 2] = d * value(b.qs[j], true) as f32;
        }
    }
}

/// Index of the codebook value nearest to `x` (ggml's `best_index_int8`; ties go up).
#[inline]
pub(crate) fn best_index(x: f32) -> u8 {
    let v = |i: usize| KVALUES[i] as f32;
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0, 15);
    while mu - ml > 1 {
        let mid = (ml + mu) / 2;
        if x < v(mid) {
            mu = mid;
        } else {
            ml = mid;
        }
    }
    if x - v(mu - 1) < v(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// How many scales either side of the first guess the fit tries (ggml's `ntry`).
const NTRY: i32 = 7;

/// The reference's fit of one group of 32 values without an importance matrix (the per-group
/// part of ggml's `quantize_row_iq4_nl_impl`): weights `x²`, a first scale mapping the value of
/// largest magnitude to the codebook's end, then `2 NTRY + 1` scales around it, keeping the
/// least-squares scale of the best. Returns the scale (0 for an all-zero group).
pub(crate) fn fit_block(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        return 0.0;
    }
    let k0 = KVALUES[0] as f32;
    // sum(w q x) and sum(w q²) for the levels nearest to x * id.
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for &v in x {
            let q = KVALUES[best_index(id * v) as usize] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let (sumqx, sumq2) = sums(1.0 / (-max / k0));
    let mut d = sumqx / sumq2;
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = sums((itry as f32 + k0) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 codebook indices: low nibbles elements 0..16, high nibbles 16..32.
#[inline]
pub(crate) fn pack(l: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// ggml's `quantize_row_iq4_nl_ref` (no importance matrix): [`fit_block`], then each value's
/// nearest codebook entry for that (unrounded) scale.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = BlockIQ4NL::slice_mut(dst);
    assert_eq!(blocks.len() * QK, src.len(), "IQ4_NL: {} blocks for {} values", blocks.len(), src.len());
    for (b, x) in blocks.iter_mut().zip(src.chunks_exact(QK)) {
        let d = fit_block(x);
        b.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; QK];
        if d != 0.0 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = best_index(id * v);
            }
        }
        pack(&l, &mut b.qs);
    }
}

/// IQ4_NL x Q8_0: per block the exact integer dot product of codebook values and activation
/// quants, scaled by both f16 scales.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let w = &BlockIQ4NL::slice(w)[..nb];
    let x = &BlockQ8_0::slice(x)[..nb];
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += value(a.qs[j], false) * b.qs[j] as i32;
            sumi += value(a.qs[j], true) * b.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * f16_to_f32(a.d) * f16_to_f32(b.d);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_the_nearest_codebook_value() {
        for i in -140..140 {
            let x = i as f32 * 0.97;
            let got = KVALUES[best_index(x) as usize] as f32;
            let best = KVALUES.iter().map(|&k| (k as f32 - x).abs()).fold(f32::MAX, f32::min);
            assert_eq!((got - x).abs(), best, "{x}");
        }
        // a tie between 1 and 13 goes to the upper one, as ggml's does
        assert_eq!(best_index(7.0), 9);
    }

    #[test]
    fn a_block_of_codebook_values_round_trips_exactly() {
        let x: Vec<f32> = (0..QK).map(|j| KVALUES[(j * 7) % 16] as f32 * 0.5).collect();
        let mut q = [0u8; 18];
        quantize(&x, &mut q);
        let mut y = [0f32; QK];
        dequantize(&q, &mut y);
        assert_eq!(&x[..], &y[..]);
    }
}
