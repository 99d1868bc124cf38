//! Q8_K: the activation format of the K-quant dot products (ggml `block_q8_K`).
//!
//! A block is 256 values: `f32 d; i8 qs[256]; i16 bsums[16]` (292 bytes), value = `d * qs[i]`,
//! `bsums[j]` = sum of `qs[16j..16j+16]` (the K-quant kernels use them to apply the minimums).
//!
//! This file also holds what every K-quant file shares: `QK_K`, viewing bytes as blocks, the f16
//! fields, the reference's rounding (`nearest_int`) and its scale searches (`make_qx_quants`,
//! `make_q3_quants`, `make_qkx2_quants`), written from the ggml quantizer's description.
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

pub(crate) use super::{f16_to_f32, f32_to_f16};
use super::Block;

/// Elements per K-quant super-block.
pub const QK_K: usize = super::WeightType::Q8_K.block_size();

/// The first whole blocks of `T` in `b` (a trailing partial block is ignored).
#[cfg(test)]
pub(crate) fn blocks<T: Block>(b: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    T::slice(&b[..b.len() / size * size])
}

/// Mutable view of the whole blocks of `T` in `b`.
pub(crate) fn blocks_mut<T: Block>(b: &mut [u8]) -> &mut [T] {
    let whole = b.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>();
    T::slice_mut(&mut b[..whole])
}

/// The first `nb` blocks of `b`, with a clear panic if the buffer is too short (a caller bug).
#[inline]
pub(crate) fn first_blocks<'a, T: Block>(b: &'a [u8], nb: usize, what: &str) -> &'a [T] {
    let size = std::mem::size_of::<T>();
    assert!(b.len() >= nb * size, "{what}: buffer holds {} blocks, {nb} needed", b.len() / size);
    T::slice(&b[..nb * size])
}

#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0f32;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// Symmetric quantization of `x` to levels `-nmax..nmax-1` (stored in `l` offset by `nmax`),
/// weighted by `x²` (ggml's `make_qx_quants` with rmse_type 1), or by `qw` when given:
/// a first guess from the largest magnitude, then 18 nearby scales tried. Returns the scale.
/// The weighted sums round as the reference's do (`w*l*l` is `(w*l)*l`, two f32 roundings, here
/// and in `make_q3_quants`): the scale search compares near-equal sums, so another order picks
/// another scale in a few blocks and the bytes stop being the reference quantizer's.
/// `qw`: an importance matrix's values for these columns (the reference's `quant_weights`).
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = quant(iscale, x[i]);
        l[i] = (q + nmax) as i8;
        let w = qw.map_or(x[i] * x[i], |q| q[i]);
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut iscales = [0f32; 18];
    for (k, is) in (-9..=9).filter(|&is| is != 0).enumerate() {
        iscales[k] = -(nmax as f32 + 0.1 * is as f32) / max;
    }
    let mut sums = [(0f32, 0f32); 18];
    sym_sums(x, qw, nmax, &iscales, &mut sums);
    let mut chosen = None;
    for (&iscale, &(sumlx, suml2)) in iscales.iter().zip(&sums) {
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            chosen = Some(iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    if let Some(iscale) = chosen {
        for i in 0..n {
            l[i] = (quant(iscale, x[i]) + nmax) as i8;
        }
    }
    scale
}

/// `make_qx_quants`'s sums for each of `iscales`: `(sum w·x·l, sum w·l²)` with `l` the levels of
/// `x` at that scale, `w` = `qw` or `x²`, each summed in `x`'s order (the scalar specification
/// of the AVX2 search, which takes eight scales at once).
pub(crate) fn sym_sums(x: &[f32], qw: Option<&[f32]>, nmax: i32, iscales: &[f32], sums: &mut [(f32, f32)]) {
    #[cfg(target_arch = "x86_64")]
    if search_avx2() {
        // SAFETY: `search_avx2` checked that the CPU has AVX2.
        return unsafe { super::search_avx2::sym_sums(x, qw, nmax, iscales, sums) };
    }
    sym_sums_scalar(x, qw, nmax, iscales, sums)
}

/// `sym_sums`'s specification.
pub(crate) fn sym_sums_scalar(x: &[f32], qw: Option<&[f32]>, nmax: i32, iscales: &[f32], sums: &mut [(f32, f32)]) {
    for (&iscale, sum) in iscales.iter().zip(sums) {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = qw.map_or(v * v, |q| q[i]);
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        *sum = (sumlx, suml2);
    }
}

/// Whether the scale searches run their AVX2 form (`types::search_avx2`): whenever the CPU has
/// AVX2. Its results are the specification's bits (tested there), so unlike the dot products it
/// does not follow `LLAMAFILE_ISA`, which lives with the kernels (`isa`, which builds on `types`).
#[cfg(target_arch = "x86_64")]
fn search_avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Symmetric quantization to `-nmax..nmax-1` (stored offset by `nmax`) refined by coordinate
/// descent on the x²-weighted error (ggml's `make_q3_quants` with rmse). Returns the scale.
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for v in l[..n].iter_mut() {
        *v += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Asymmetric quantization `x ≈ scale * l - min`, `l` in `0..=nmax`, searching `nstep + 1`
/// scales around the range's (ggml's `make_qkx2_quants`). Returns `(scale, min)` with
/// `min >= 0` being subtracted.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let iscale = nmax as f32 / (max - min);
    let scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = asym_level(iscale, x[i], min, nmax);
        best_error += weights[i] * err(scale * l[i] as f32 + min - x[i]);
    }
    let fit = AsymFit { x, weights, nmax, use_mad, max, sum_w, sum_x };
    asym_search(&fit, l, rmin, rdelta, nstep, (scale, min, best_error))
}

/// What the steps of an asymmetric search (`make_qkx2_quants`, `make_qkx3_quants`) share: the
/// values, their weights, the top level, the error measure (absolute or squared), the range's
/// top and the weights' sums `sum w`, `sum w·x`.
pub(crate) struct AsymFit<'a> {
    pub x: &'a [f32],
    pub weights: &'a [f32],
    pub nmax: i32,
    pub use_mad: bool,
    pub max: f32,
    pub sum_w: f32,
    pub sum_x: f32,
}

/// The level of `v` at `iscale` above `min`, in `0..=nmax`.
#[inline]
pub(crate) fn asym_level(iscale: f32, v: f32, min: f32, nmax: i32) -> u8 {
    nearest_int(iscale * (v - min)).clamp(0, nmax) as u8
}

/// The inverse scale of search step `is` over the range `min..max`.
#[inline]
pub(crate) fn asym_iscale(rmin: f32, rdelta: f32, is: i32, nmax: i32, max: f32, min: f32) -> f32 {
    (rmin + rdelta * is as f32 + nmax as f32) / (max - min)
}

/// Steps `0..=nstep` of an asymmetric search from the first guess `(scale, min, error)` whose
/// levels are in `l`: each step's levels get the weighted least-squares scale and min (the min
/// clamped to <= 0), and a step whose error is below the best so far replaces it, levels, scale
/// and min. The later steps measure their levels from the new min (the reference's search does
/// so, and the bytes are its). One running sum per quantity, in the reference's order: the search
/// compares near-equal errors, so summing in another order picks another scale in a few blocks.
/// Returns `(scale, min)`.
pub(crate) fn asym_search(fit: &AsymFit, l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32, best: (f32, f32, f32)) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if search_avx2() {
        // SAFETY: `search_avx2` checked that the CPU has AVX2.
        return unsafe { super::search_avx2::asym_search(fit, l, rmin, rdelta, nstep, best) };
    }
    asym_search_scalar(fit, l, rmin, rdelta, nstep, best)
}

/// `asym_search`'s specification.
pub(crate) fn asym_search_scalar(fit: &AsymFit, l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32, best: (f32, f32, f32)) -> (f32, f32) {
    let (mut scale, mut min, mut best_error) = best;
    let AsymFit { x, weights, nmax, use_mad, max, sum_w, sum_x } = *fit;
    let n = x.len();
    let mut laux = [0u8; 32];
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    for is in 0..=nstep {
        let iscale = asym_iscale(rmin, rdelta, is, nmax, max, min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = asym_level(iscale, x[i], min, nmax);
            laux[i] = q;
            let (w, qf) = (weights[i], q as f32);
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Asymmetric quantization of `x` to levels `0..=nmax` with importance `weights`, searching
/// `nstep + 1` scales around the range's (ggml's `make_qkx3_quants`, the K-quant search when an
/// importance matrix is given). Returns `(scale, min)` with `min >= 0` being subtracted. The sums
/// run in the reference's order (one running sum each).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx3_quants(x: &[f32], weights: &[f32], nmax: i32, l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let iscale = nmax as f32 / (max - min);
    let scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        l[i] = asym_level(iscale, x[i], min, nmax);
        let diff = scale * l[i] as f32 + min - x[i];
        best += weights[i] * (diff * diff);
    }
    let fit = AsymFit { x, weights, nmax, use_mad: false, max, sum_w, sum_x };
    asym_search(&fit, l, rmin, rdelta, nstep, (scale, min, best))
}

/// Non-negative values `x` (sub-block scales or mins) to levels `0..=nmax` of one scale, weighted
/// by `w`: 9 scales tried, then 5 rounds of moving single levels while the weighted fit improves
/// (ggml's `make_qp_quants`). Returns the scale.
pub(crate) fn make_qp_quants(x: &[f32], nmax: i32, l: &mut [u8], w: &[f32]) -> f32 {
    let n = x.len();
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    if max < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    let scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]);
        let diff = x[i] - scale * q as f32;
        best += w[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best {
            best = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    let mut li = [0i32; 32];
    for i in 0..n {
        li[i] = nearest_int(iscale * x[i]).min(nmax);
        sumlx += w[i] * x[i] * li[i] as f32;
        suml2 += w[i] * li[i] as f32 * li[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let mut slx = sumlx - w[i] * x[i] * li[i] as f32;
            let mut sl2 = suml2 - w[i] * li[i] as f32 * li[i] as f32;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != li[i] {
                    slx += w[i] * x[i] * new_l as f32;
                    sl2 += w[i] * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        li[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for i in 0..n {
        l[i] = li[i].clamp(0, 255) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// One Q8_K block. `d` and `bsums` are kept as little-endian bytes so the block has alignment 1
/// and can be viewed in place in any byte buffer; the layout is ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == super::WeightType::Q8_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ8K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ8K {}

impl BlockQ8K {
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    #[inline]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`);
/// 256-value blocks: the largest magnitude (the scale) is larger than over 32.
pub const MAX_RMS_ERROR: f32 = 0.01;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ8K>(src, nb, "Q8_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = d * q as f32;
        }
    }
}

/// Quantize exactly as the reference quantizes activations (`quantize_row_q8_K_ref`): scale
/// from the value of largest magnitude mapped to -127, round to nearest even, clamp at 127.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q8_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let nb = src.len() / QK_K;
    let out = blocks_mut::<BlockQ8K>(dst);
    assert!(out.len() >= nb, "Q8_K quantize: output holds {} blocks, {nb} needed", out.len());
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        quantize_block(x, y);
    }
}

#[inline]
pub(crate) fn quantize_block(x: &[f32], y: &mut BlockQ8K) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *y = BlockQ8K { d: [0; 4], qs: [0; QK_K], bsums: [[0; 2]; QK_K / 16] };
        return;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let s: i32 = y.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        y.bsums[j] = (s as i16).to_le_bytes();
    }
    y.d = (1.0 / iscale).to_le_bytes();
}

/// Q8_K · Q8_K (not used by ggml for weights; provided so the type is complete).
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let a = first_blocks::<BlockQ8K>(w, nb, "Q8_K vec_dot weights");
    let b = first_blocks::<BlockQ8K>(x, nb, "Q8_K vec_dot activations");
    let mut sum = 0.0f32;
    for (a, b) in a.iter().zip(b) {
        let s: i32 = a.qs.iter().zip(b.qs.iter()).map(|(&p, &q)| p as i32 * q as i32).sum();
        sum += a.d() * b.d() * s as f32;
    }
    sum
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Deterministic pseudo-random f32 in [-1, 1) (xorshift), so tests need no extra crate.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        pub fn f32(&mut self) -> f32 {
            self.next_u32() as f32 / 2147483648.0 - 1.0
        }
        /// Gaussian-ish (sum of 4 uniforms), the shape of real weights.
        pub fn gauss(&mut self) -> f32 {
            (self.f32() + self.f32() + self.f32() + self.f32()) * 0.5
        }
    }

    /// `rows` rows of `n` values of type `t` (from `spiky_values`, seeds `seed + r`) at a stride
    /// `extra` bytes longer than a row, the gaps filled with bytes that make plausible blocks
    /// (scale ~1.06), so a kernel reading past a row's end changes its result. Returns the
    /// buffer and the stride.
    pub fn strided_rows(t: crate::types::WeightType, n: usize, rows: usize, extra: usize, seed: u64) -> (Vec<u8>, usize) {
        let wrb = t.row_bytes(n);
        let ws = wrb + extra;
        let mut w = vec![0x3cu8; ws * rows];
        for r in 0..rows {
            crate::types::quantize_row(t, &spiky_values(n, seed + r as u64, 1.0), &mut w[r * ws..r * ws + wrb]);
        }
        (w, ws)
    }

    /// Runs a many-token kernel (`GemmTileFn` or `PanelFn`) on `nr` strided rows of `n` values
    /// of `t` (gaps of `extra.0` bytes, seed `seed`) and `nc` strided tokens (gaps `extra.1`,
    /// seed `seed + 500`), into an output whose stride leaves three poisoned (NaN) slots per
    /// token, and checks every result against the scalar `vec_dot` within `tol(want)` and
    /// that the poisoned slots are untouched. `label` names the case in a failure.
    #[allow(clippy::too_many_arguments)]
    pub fn check_many_tokens(
        label: &str,
        t: crate::types::WeightType,
        f: crate::isa::GemmTileFn,
        n: usize,
        nr: usize,
        nc: usize,
        extra: (usize, usize),
        seed: u64,
        tol: impl Fn(f32) -> f32,
    ) {
        let at = t.vec_dot_type();
        let scalar = crate::isa::scalar::vec_dot(t).unwrap();
        let (wrb, xrb) = (t.row_bytes(n), at.row_bytes(n));
        let (w, ws) = strided_rows(t, n, nr, extra.0, seed);
        let (x, xs) = strided_rows(at, n, nc, extra.1, seed + 500);
        // an output stride above nr, the gaps poisoned: the kernel must not write them
        let os = nr + 3;
        let mut out = vec![f32::NAN; os * nc];
        f(crate::isa::Tile { n, w: &w, w_stride: ws, rows: nr, x: &x, x_stride: xs, tokens: nc, out: &mut out, out_stride: os });
        for c in 0..nc {
            for r in 0..os {
                let got = out[c * os + r];
                if r >= nr {
                    assert!(got.is_nan(), "{label} {nr}x{nc}: wrote the gap at ({r}, {c})");
                    continue;
                }
                let want = scalar(n, &w[r * ws..r * ws + wrb], &x[c * xs..c * xs + xrb]);
                assert!((got - want).abs() <= tol(want), "{label} {nr}x{nc}, {n} values ({r}, {c}): {got} vs scalar {want}");
            }
        }
    }

    /// Deterministic values in [-1, 1) times `scale`, every 97th 8x larger (splitmix64): the
    /// kernels' tests use them for weights and activations with a few outliers.
    pub fn spiky_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let v = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                scale * if i % 97 == 0 { 8.0 * v } else { v }
            })
            .collect()
    }

    /// Relative RMS error of `b` against `a`.
    pub fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f32 = a.iter().map(|x| x * x).sum();
        (num / den).sqrt()
    }

    /// The checks every K-quant weight type's unit tests share, on the type's `TYPES` entry.
    pub struct KQuant(pub crate::types::WeightType);

    impl KQuant {
        fn info(&self) -> &'static crate::types::TypeInfo {
            crate::types::info(self.0)
        }

        /// 8 gaussian blocks quantize -> dequantize within the type's `MAX_RMS_ERROR`; an
        /// all-zero block (into a buffer pre-filled with `fill`) dequantizes to exact zeros.
        pub fn check_error_bound(&self, seed: u64, fill: u8) {
            let (t, info, qk) = (self.0, self.info(), super::QK_K);
            let mut r = Rng(seed);
            let x: Vec<f32> = (0..8 * qk).map(|_| r.gauss()).collect();
            let mut q = vec![0u8; t.row_bytes(x.len())];
            (info.quantize)(&x, &mut q);
            let mut y = vec![0f32; x.len()];
            (info.dequantize)(&q, &mut y);
            let e = rel_rms(&x, &y);
            assert!(e <= info.max_rms_error, "{t} relative RMS error {e} above {}", info.max_rms_error);
            let mut q = vec![fill; t.row_bytes(qk)];
            (info.quantize)(&vec![0.0; qk], &mut q);
            let mut y = vec![1f32; qk];
            (info.dequantize)(&q, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{t}: zeros did not stay zeros");
        }

        /// The scalar dot product against Q8_K equals the f64 dot product of the dequantized
        /// values (4 blocks of gaussian weights and activations).
        pub fn check_vec_dot(&self, seed: u64) {
            let (t, info, n) = (self.0, self.info(), 4 * super::QK_K);
            let mut r = Rng(seed);
            let w: Vec<f32> = (0..n).map(|_| r.gauss()).collect();
            let x: Vec<f32> = (0..n).map(|_| r.gauss()).collect();
            let mut qw = vec![0u8; t.row_bytes(n)];
            (info.quantize)(&w, &mut qw);
            let mut qx = vec![0u8; t.vec_dot_type().row_bytes(n)];
            super::quantize(&x, &mut qx);
            let (mut dw, mut dx) = (vec![0f32; n], vec![0f32; n]);
            (info.dequantize)(&qw, &mut dw);
            super::dequantize(&qx, &mut dx);
            let want: f64 = dw.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = dw.iter().zip(&dx).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let got = (info.vec_dot)(n, &qw, &qx) as f64;
            assert!((got - want).abs() < 1e-5 * scale, "{t}: {got} vs {want}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-127.4), -127);
        assert_eq!(nearest_int(3.7), 4);
    }

    #[test]
    fn quantize_matches_reference_rule_and_bsums() {
        let mut r = Rng(7);
        let mut x: Vec<f32> = (0..2 * QK_K).map(|_| r.gauss() * 3.0).collect();
        x[300] = -9.0; // largest magnitude: maps to -127 with a positive d
        let mut q = vec![0u8; 2 * 292];
        quantize(&x, &mut q);
        let b = blocks::<BlockQ8K>(&q);
        assert_eq!(b[1].qs[300 - QK_K], -127);
        assert!((b[1].d() - 9.0 / 127.0).abs() < 1e-7);
        for blk in b {
            for j in 0..16 {
                let s: i32 = blk.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
                assert_eq!(blk.bsum(j), s);
            }
        }
        let mut y = vec![0f32; 2 * QK_K];
        dequantize(&q, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 9.0 / 127.0 * 0.5 + 1e-6, "{a} vs {b}");
        }
        // all zeros: d = 0 and zero quants
        let mut q = vec![0xffu8; 292];
        quantize(&[0.0; QK_K], &mut q);
        let b = &blocks::<BlockQ8K>(&q)[0];
        assert_eq!(b.d(), 0.0);
        assert!(b.qs.iter().all(|&v| v == 0) && (0..16).all(|j| b.bsum(j) == 0));
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        let mut r = Rng(11);
        let a: Vec<f32> = (0..4 * QK_K).map(|_| r.gauss()).collect();
        let b: Vec<f32> = (0..4 * QK_K).map(|_| r.gauss()).collect();
        let (mut qa, mut qb) = (vec![0u8; 4 * 292], vec![0u8; 4 * 292]);
        quantize(&a, &mut qa);
        quantize(&b, &mut qb);
        let (mut da, mut db) = (vec![0f32; 4 * QK_K], vec![0f32; 4 * QK_K]);
        dequantize(&qa, &mut da);
        dequantize(&qb, &mut db);
        let want: f64 = da.iter().zip(&db).map(|(x, y)| *x as f64 * *y as f64).sum();
        let got = vec_dot(4 * QK_K, &qa, &qb) as f64;
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }
}
