//! The K-quant scale searches (`q8_k::asym_search`, `sym_sums`) with one search step per
//! vector lane: eight candidate scales go through the values together, each lane summing in the
//! values' order with the scalar specification's operations (no FMA), so every lane's sums, fit
//! and error are bit for bit the scalar's and the quantized bytes stay the reference quantizer's.
//! The search for a scale is most of the time a file quantizer spends on a K-quant type; the
//! scalar form runs its steps one after another because each sum depends on the last.

use crate::types::q8_k::{asym_iscale, asym_level, AsymFit};
use std::arch::x86_64::*;

/// `nearest_int` on eight lanes, exactly: the same magic-number addition and mantissa bits, so
/// even values past its exact range (and NaN) give the scalar's level.
#[inline(always)]
unsafe fn nearest_int8(v: __m256) -> __m256i {
    let b = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0)));
    _mm256_sub_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000))
}

/// Steps `0..=nstep` of `asym_search` (see there), eight at a time: a batch of eight steps is
/// evaluated with the current min; the first step in it that improves on the best is taken, and
/// the search goes on from the step after it (whose levels depend on the new min). Levels are
/// recomputed once at the end for the winning step. Values: at most 32.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn asym_search(
    fit: &AsymFit,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    best: (f32, f32, f32),
) -> (f32, f32) {
    let (mut scale, mut min, mut best_error) = best;
    let (x, nmax) = (fit.x, fit.nmax);
    let n = x.len();
    assert!(n <= 32 && fit.weights.len() >= n && l.len() >= n, "scale search of {n} values");
    // the winning step's inverse scale and the min its levels were measured from
    let mut chosen: Option<(f32, f32)> = None;
    let mut is = 0;
    while is <= nstep {
        let mut iscales = [0f32; 8];
        for (k, v) in iscales.iter_mut().enumerate() {
            *v = asym_iscale(rmin, rdelta, is + k as i32, nmax, fit.max, min);
        }
        let steps = asym_steps8(fit, &iscales, min);
        let mut next = is + 8;
        let left = (nstep - is + 1).min(8) as usize;
        for (k, &iscale) in iscales.iter().enumerate().take(left) {
            let (valid, this_scale, this_min, err) = (steps.valid[k], steps.scale[k], steps.min[k], steps.err[k]);
            if valid && err < best_error {
                chosen = Some((iscale, min));
                best_error = err;
                scale = this_scale;
                min = this_min;
                next = is + k as i32 + 1;
                break;
            }
        }
        is = next;
    }
    if let Some((iscale, from)) = chosen {
        for i in 0..n {
            l[i] = asym_level(iscale, x[i], from, nmax);
        }
    }
    (scale, -min)
}

/// Eight steps' fits: whether the fit exists (`det > 0`), its scale and min, and its error.
struct Steps8 {
    valid: [bool; 8],
    scale: [f32; 8],
    min: [f32; 8],
    err: [f32; 8],
}

#[target_feature(enable = "avx2")]
unsafe fn asym_steps8(fit: &AsymFit, iscales: &[f32; 8], min: f32) -> Steps8 {
    let n = fit.x.len();
    let (x, w) = (fit.x, &fit.weights[..n]);
    let iscale = _mm256_loadu_ps(iscales.as_ptr());
    let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(fit.nmax));
    let mut levels = [_mm256_setzero_ps(); 32];
    let (mut sum_l, mut sum_l2, mut sum_xl) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
    for i in 0..n {
        let q = nearest_int8(_mm256_mul_ps(iscale, _mm256_set1_ps(x[i] - min)));
        let q = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(q, zero), top));
        levels[i] = q;
        let wq = _mm256_mul_ps(_mm256_set1_ps(w[i]), q);
        sum_l = _mm256_add_ps(sum_l, wq);
        sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wq, q));
        sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wq, _mm256_set1_ps(x[i])));
    }
    let (sw, sx) = (_mm256_set1_ps(fit.sum_w), _mm256_set1_ps(fit.sum_x));
    let det = _mm256_sub_ps(_mm256_mul_ps(sw, sum_l2), _mm256_mul_ps(sum_l, sum_l));
    let this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sw, sum_xl), _mm256_mul_ps(sx, sum_l)), det);
    let this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sx), _mm256_mul_ps(sum_l, sum_xl)), det);
    let above = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, _mm256_setzero_ps());
    let this_min = _mm256_blendv_ps(this_min, _mm256_setzero_ps(), above);
    let this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), above);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut err = _mm256_setzero_ps();
    for i in 0..n {
        let d = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, levels[i]), this_min), _mm256_set1_ps(x[i]));
        let e = if fit.use_mad { _mm256_and_ps(d, abs) } else { _mm256_mul_ps(d, d) };
        err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_set1_ps(w[i]), e));
    }
    let valid = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(det, _mm256_setzero_ps()));
    let mut out = Steps8 { valid: [false; 8], scale: [0.0; 8], min: [0.0; 8], err: [0.0; 8] };
    for (k, v) in out.valid.iter_mut().enumerate() {
        *v = valid >> k & 1 != 0;
    }
    _mm256_storeu_ps(out.scale.as_mut_ptr(), this_scale);
    _mm256_storeu_ps(out.min.as_mut_ptr(), this_min);
    _mm256_storeu_ps(out.err.as_mut_ptr(), err);
    out
}

/// `sym_sums` (see there), eight scales at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn sym_sums(x: &[f32], qw: Option<&[f32]>, nmax: i32, iscales: &[f32], sums: &mut [(f32, f32)]) {
    assert!(sums.len() >= iscales.len() && qw.is_none_or(|q| q.len() >= x.len()), "scale search sums");
    let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
    for (chunk, out) in iscales.chunks(8).zip(sums.chunks_mut(8)) {
        let mut s = [0f32; 8];
        s[..chunk.len()].copy_from_slice(chunk);
        let iscale = _mm256_loadu_ps(s.as_ptr());
        let (mut sumlx, mut suml2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (i, &v) in x.iter().enumerate() {
            let q = nearest_int8(_mm256_mul_ps(iscale, _mm256_set1_ps(v)));
            let q = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi));
            let w = qw.map_or(v * v, |q| q[i]);
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_set1_ps(w * v), q));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w), q), q));
        }
        let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(a.as_mut_ptr(), sumlx);
        _mm256_storeu_ps(b.as_mut_ptr(), suml2);
        for (k, o) in out.iter_mut().enumerate() {
            *o = (a[k], b[k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::types::q8_k::{asym_search_scalar, sym_sums_scalar, AsymFit};

    /// A deterministic value source (xorshift), with a few kinds of rows.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn row(&mut self, n: usize, kind: usize) -> Vec<f32> {
            (0..n)
                .map(|i| match kind {
                    0 => self.next(),
                    1 => self.next() * 0.5 - 0.7,            // all negative
                    2 => self.next().abs() * 3.0 + 0.1,      // all positive
                    3 => (self.next() * 4.0).round() * 0.25, // few distinct values
                    4 => {
                        if i % 7 == 0 {
                            self.next() * 1e4
                        } else {
                            self.next() * 1e-3
                        }
                    } // outliers
                    _ => self.next() * 1e-30,                // tiny
                })
                .collect()
        }
    }

    /// Both searches' first guess, as `make_qkx2_quants` makes it.
    fn search_both(
        x: &[f32],
        w: &[f32],
        nmax: i32,
        use_mad: bool,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
    ) -> Option<[(u32, u32, Vec<u8>); 2]> {
        let n = x.len();
        let min = x.iter().fold(0f32, |m, &v| m.min(v));
        let max = x.iter().fold(x[0], |m, &v| m.max(v));
        if max == min {
            return None;
        }
        let (sum_w, sum_x) = x.iter().zip(w).fold((0f32, 0f32), |(a, b), (&v, &w)| (a + w, b + w * v));
        let fit = AsymFit { x, weights: w, nmax, use_mad, max, sum_w, sum_x };
        let iscale = nmax as f32 / (max - min);
        let scale = 1.0 / iscale;
        let mut l0 = vec![0u8; n];
        let mut best = 0f32;
        for i in 0..n {
            l0[i] = crate::types::q8_k::asym_level(iscale, x[i], min, nmax);
            let d = scale * l0[i] as f32 + min - x[i];
            best += w[i] * if use_mad { d.abs() } else { d * d };
        }
        let run = |simd: bool| {
            let mut l = l0.clone();
            let (s, m) = if simd {
                // SAFETY: the caller checked AVX2.
                unsafe { super::asym_search(&fit, &mut l, rmin, rdelta, nstep, (scale, min, best)) }
            } else {
                asym_search_scalar(&fit, &mut l, rmin, rdelta, nstep, (scale, min, best))
            };
            (s.to_bits(), m.to_bits(), l)
        };
        Some([run(false), run(true)])
    }

    #[test]
    fn asym_search_is_the_scalar_bit_for_bit() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut compared, mut moved) = (0, 0);
        // Q4_K / Q5_K (32 values, squared error), Q2_K (16 values, absolute error), the
        // importance-matrix search (37 steps)
        for (n, nmax, mad, rmin, rdelta, nstep) in [
            (32, 15, false, -1.0, 0.1, 20),
            (32, 31, false, -0.5, 0.1, 15),
            (16, 3, true, -0.5, 0.1, 15),
            (32, 15, false, -0.9, 0.05, 36),
        ] {
            for round in 0..3000 {
                let x = r.row(n, round % 6);
                let w: Vec<f32> = match round % 3 {
                    0 => x.iter().map(|v| v.abs() + 0.3).collect(),
                    1 => x.iter().map(|v| v * v).collect(),
                    _ => (0..n).map(|_| r.next().abs()).collect(),
                };
                if let Some([scalar, simd]) = search_both(&x, &w, nmax, mad, rmin, rdelta, nstep) {
                    assert_eq!(scalar, simd, "n {n} nmax {nmax} round {round}: {x:?}");
                    compared += 1;
                    moved += (scalar.2 != scalar.2.iter().map(|_| 0).collect::<Vec<u8>>()) as usize;
                }
            }
        }
        assert!(compared > 11000 && moved > 5000, "{compared} searches compared, {moved} with levels");
    }

    #[test]
    fn sym_sums_are_the_scalar_bit_for_bit() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = Rng(5);
        for round in 0..3000 {
            let x = r.row(16, round % 6);
            let qw: Vec<f32> = (0..16).map(|_| r.next().abs()).collect();
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let iscales: Vec<f32> = (0..18 + round % 5).map(|k| -(32.0 + 0.1 * (k as f32 - 9.0)) / max).collect();
            for qw in [None, Some(&qw[..])] {
                let (mut a, mut b) = (vec![(0f32, 0f32); iscales.len()], vec![(0f32, 0f32); iscales.len()]);
                sym_sums_scalar(&x, qw, 32, &iscales, &mut a);
                // SAFETY: checked above.
                unsafe { super::sym_sums(&x, qw, 32, &iscales, &mut b) };
                let bits = |v: &[(f32, f32)]| v.iter().map(|(p, q)| (p.to_bits(), q.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "round {round}: {x:?}");
            }
        }
    }
}
