//! f32 helpers for the transformer: rmsnorm, softmax, rope (normal and NEOX), silu, gelu,
//! add, mul, scale, and f16 helpers for an f16 KV cache (dot, axpy, conversions; F16C when the
//! chosen ISA has it).
//!
//! Where the reference engine's numerics are visible in the logits, they are followed: rmsnorm
//! sums squares in f64 and rounds `x * scale` before the weight multiply; RoPE angles are
//! advanced by repeated multiplication in f32 like ggml's rope cache; GELU goes through the
//! reference's f16 table (input rounded to f16, result rounded to f16).
//!
//! Portable SIMD with `wide` (f32x8) where the loop is plain arithmetic; transcendental
//! functions use the standard library's, which are exact to an ulp.

use crate::isa::{kernels, Isa};
use half::f16;
use std::sync::OnceLock;
use wide::f32x8;

#[inline(always)]
fn load8(s: &[f32]) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(s).expect("8 lanes"))
}

/// Sum of squares in f64 (as ggml's `ggml_float` accumulation), 8 lanes of f32 squares at a time.
fn sum_squares(x: &[f32]) -> f64 {
    let mut sum = 0f64;
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        let v = load8(c);
        let sq = (v * v).to_array();
        sum += sq.iter().map(|&s| s as f64).sum::<f64>();
    }
    for &v in chunks.remainder() {
        sum += (v * v) as f64;
    }
    sum
}

/// RMSNorm: `out = (x / sqrt(mean(x²) + eps)) * w` (ggml's rms_norm followed by mul).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len(), "rmsnorm: lengths {} {} {}", x.len(), w.len(), out.len());
    let mean = (sum_squares(x) / x.len() as f64) as f32;
    let s = 1.0 / (mean + eps).sqrt();
    let sv = f32x8::splat(s);
    let n8 = x.len() / 8 * 8;
    for ((o, a), b) in out[..n8].chunks_exact_mut(8).zip(x[..n8].chunks_exact(8)).zip(w[..n8].chunks_exact(8)) {
        o.copy_from_slice(&((load8(a) * sv) * load8(b)).to_array());
    }
    for i in n8..x.len() {
        out[i] = (x[i] * s) * w[i];
    }
}

/// RMSNorm in place.
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    assert_eq!(x.len(), w.len(), "rmsnorm: lengths {} {}", x.len(), w.len());
    let mean = (sum_squares(x) / x.len() as f64) as f32;
    let s = 1.0 / (mean + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * s) * g;
    }
}

/// Softmax in place: `exp(x - max) / sum`, the sum in f64. An all `-inf` row becomes zeros.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    scale(x, (1.0 / sum) as f32);
}

/// Rotary position embedding: the one specification of RoPE. The CPU transformer's position
/// tables and the GPU reference backend compute with it; the CUDA kernel follows the same formula.
///
/// Pair `i` (0 <= i < n_rot/2) of each head rotates by
/// `theta_i(p) = freq_scale * ((p * base^(-2i/n_rot)) / factor_i)`,
/// `factor_i = factors[i]` when per-dimension factors are given, else 1, and its cos and sin are
/// multiplied by `attn_factor` (ggml's `rope_ext` without YaRN extrapolation: the rotated
/// elements of q and k are both scaled, so their dot products by `attn_factor^2`). The pairs are
/// `(2i, 2i+1)` (normal, ggml mode 0, llama/Mistral) or `(i, i + n_rot/2)` (NEOX); elements past
/// `n_rot` are left as they are, unscaled.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Dimensions rotated at the start of each head (usually the head size).
    pub n_rot: usize,
    /// Frequency base (`rope.freq_base`, e.g. 10000 or 1e6).
    pub base: f32,
    /// Linear position scaling (1 / `rope.scaling.factor`; 1.0 when none).
    pub freq_scale: f32,
    /// NEOX layout: pairs are `(i, i + n_rot/2)`; otherwise adjacent `(2i, 2i+1)`.
    pub neox: bool,
    /// Per-dimension frequency divisors, `n_rot / 2` of them (`rope_freqs.weight`: Llama 3.1's
    /// frequency-dependent scaling, precomputed by the converter).
    pub factors: Option<Vec<f32>>,
    /// Multiplier of the cos and sin (`rope.scaling.attn_factor`, LongRoPE's magnitude scaling;
    /// 1.0 when none).
    pub attn_factor: f32,
}

/// Largest `n_rot` supported (the cos/sin of one position live on the stack).
pub const MAX_ROT: usize = 1024;

impl Rope {
    /// Normal (adjacent pairs) RoPE over the whole head.
    pub fn normal(head_dim: usize, base: f32) -> Rope {
        Rope { n_rot: head_dim, base, freq_scale: 1.0, neox: false, factors: None, attn_factor: 1.0 }
    }
    /// NEOX (halves) RoPE over the whole head.
    pub fn neox(head_dim: usize, base: f32) -> Rope {
        Rope { n_rot: head_dim, base, freq_scale: 1.0, neox: true, factors: None, attn_factor: 1.0 }
    }

    /// Fill `cos`/`sin` (`n_rot / 2` each) for position `pos`. `p * base^(-2i/n_rot)` is advanced
    /// by repeated multiplication in f32 as ggml's rope cache does, then divided by the factor and
    /// scaled in ggml's order (the attention factor last), so positions agree with the reference
    /// to the last bit or so.
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.n_rot / 2;
        let theta_scale = self.base.powf(-2.0 / self.n_rot as f32);
        let mut theta = pos as f32;
        for i in 0..half {
            let ff = self.factors.as_ref().map_or(1.0, |f| f[i]);
            let t = self.freq_scale * (theta / ff);
            cos[i] = t.cos() * self.attn_factor;
            sin[i] = t.sin() * self.attn_factor;
            theta *= theta_scale;
        }
    }

    /// Rotate one head `x` (at least `n_rot` values) by the angles of one position.
    #[inline]
    pub fn rotate(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.n_rot / 2;
        if self.neox {
            let (a, b) = x[..self.n_rot].split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x0 * sin[i] + x1 * cos[i];
            }
        } else {
            for i in 0..half {
                let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = x0 * cos[i] - x1 * sin[i];
                x[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    /// Rotate `n_heads` heads of `head_dim` values (contiguous in `x`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize) {
        assert!(
            self.n_rot <= head_dim && self.n_rot.is_multiple_of(2) && self.n_rot <= MAX_ROT,
            "rope: n_rot {} for heads of {head_dim}",
            self.n_rot
        );
        assert!(x.len() >= n_heads * head_dim, "rope: {} values for {n_heads} heads of {head_dim}", x.len());
        assert!(
            self.factors.as_ref().is_none_or(|f| f.len() == self.n_rot / 2),
            "rope: factors for {} pairs",
            self.n_rot / 2
        );
        let half = self.n_rot / 2;
        let mut cos = [0f32; MAX_ROT / 2];
        let mut sin = [0f32; MAX_ROT / 2];
        self.angles(pos, &mut cos[..half], &mut sin[..half]);
        for h in x[..n_heads * head_dim].chunks_exact_mut(head_dim) {
            self.rotate(h, &cos[..half], &sin[..half]);
        }
    }
}

/// SiLU in place: `x / (1 + exp(-x))`.
pub fn silu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = *v / (1.0 + (-*v).exp());
    }
}

/// SwiGLU in place: `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = (*g / (1.0 + (-*g).exp())) * u;
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEF_A: f32 = 0.044715;

/// GELU, tanh approximation, computed in f32 (no f16 table).
#[inline]
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// The reference's GELU table: for every f16 input, the f16 of `gelu_f32`.
fn gelu_table() -> &'static [f16] {
    static T: OnceLock<Vec<f16>> = OnceLock::new();
    T.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_f32(gelu_f32(f16::from_bits(b).to_f32()))).collect())
}

/// GELU (tanh approximation) as the reference evaluates it: 0 below -10, identity above 10,
/// otherwise the f16 table at the input rounded to f16.
#[inline]
pub fn gelu_one(x: f32, table: &[f16]) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// GELU in place (reference numerics, see `gelu_one`).
pub fn gelu(x: &mut [f32]) {
    let t = gelu_table();
    for v in x.iter_mut() {
        *v = gelu_one(*v, t);
    }
}

/// GEGLU in place: `gate = gelu(gate) * up`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_mul: lengths");
    let t = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_one(*g, t) * u;
    }
}

macro_rules! binary_op {
    ($(#[$m:meta])* $name:ident, $op:tt) => {
        $(#[$m])*
        pub fn $name(a: &mut [f32], b: &[f32]) {
            assert_eq!(a.len(), b.len(), concat!(stringify!($name), ": lengths"));
            let n8 = a.len() / 8 * 8;
            for (x, y) in a[..n8].chunks_exact_mut(8).zip(b[..n8].chunks_exact(8)) {
                x.copy_from_slice(&(load8(x) $op load8(y)).to_array());
            }
            for i in n8..a.len() {
                #[allow(clippy::assign_op_pattern)]
                {
                    a[i] = a[i] $op b[i];
                }
            }
        }
    };
}
binary_op!(
    /// `a += b`.
    add, +
);
binary_op!(
    /// `a *= b` elementwise.
    mul, *
);

/// `a *= s`.
pub fn scale(a: &mut [f32], s: f32) {
    let sv = f32x8::splat(s);
    let mut chunks = a.chunks_exact_mut(8);
    for x in &mut chunks {
        x.copy_from_slice(&(load8(x) * sv).to_array());
    }
    for v in chunks.into_remainder() {
        *v *= s;
    }
}

/// `out = a + b`.
pub fn add_to(out: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(out.len() == a.len() && a.len() == b.len(), "add_to: lengths");
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// f32 dot product (8 lanes, f32 accumulation).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    let n8 = a.len() / 8 * 8;
    let mut acc = f32x8::ZERO;
    for (x, y) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        acc = load8(x).mul_add(load8(y), acc);
    }
    let mut s = acc.reduce_add();
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Whether the F16C helpers may be used (the chosen ISA includes AVX2 + F16C).
#[inline]
fn f16c() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| kernels().isa >= Isa::Avx2)
}

/// Dot product of f32 `a` with f16 `b` (e.g. a query against a cached key), f32 accumulation.
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: f16c() is true only when AVX2+FMA+F16C were detected; lengths checked above.
        return unsafe { crate::isa::avx2::f16ops::dot_f32_f16(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

/// Dot product of two f16 vectors (ggml's F16 x F16), f32 accumulation.
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: f16c() is true only when AVX2+FMA+F16C were detected; lengths checked above.
        return unsafe { crate::isa::avx2::f16ops::dot_f16(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x.to_f32() * y.to_f32()).sum()
}

/// `y += a * x` with f16 `x` (e.g. accumulating a cached value row weighted by attention).
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    assert_eq!(y.len(), x.len(), "axpy_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: f16c() is true only when AVX2+FMA+F16C were detected; lengths checked above.
        return unsafe { crate::isa::avx2::f16ops::axpy_f16(y, a, x) };
    }
    for (v, h) in y.iter_mut().zip(x) {
        *v += a * h.to_f32();
    }
}

/// f32 to f16 (round to nearest even), e.g. writing keys and values into the cache.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_slice: lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: f16c() is true only when AVX2+FMA+F16C were detected; lengths checked above.
        return unsafe { crate::isa::avx2::f16ops::f32_to_f16(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

/// f16 to f32.
pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32_slice: lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: f16c() is true only when AVX2+FMA+F16C were detected; lengths checked above.
        return unsafe { crate::isa::avx2::f16ops::f16_to_f32(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn rmsnorm_matches_definition() {
        for n in [1, 7, 8, 33, 256] {
            let x = seq(n, 1);
            let w = seq(n, 2);
            let mut out = vec![0f32; n];
            rmsnorm(&x, &w, 1e-5, &mut out);
            let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            let s = 1.0 / (ms + 1e-5).sqrt();
            for i in 0..n {
                let want = x[i] as f64 * s * w[i] as f64;
                assert!((out[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1e-3), "n={n} i={i}");
            }
            let mut y = x.clone();
            rmsnorm_inplace(&mut y, &w, 1e-5);
            assert_eq!(y, out);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0f32, 2.0, 3.0, f32::NEG_INFINITY, 1000.0, 999.0];
        softmax(&mut x);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
        assert!((x[4] / x[5] - std::f32::consts::E).abs() < 1e-4);
        let mut m = vec![f32::NEG_INFINITY; 4];
        softmax(&mut m);
        assert_eq!(m, vec![0.0; 4]);
    }

    #[test]
    fn rope_normal_rotates_adjacent_pairs_and_neox_halves() {
        let hd = 8;
        let base = 10000f32;
        let x = seq(2 * hd, 3);
        let pos = 5;
        let mut a = x.clone();
        Rope::normal(hd, base).apply(&mut a, 2, hd, pos);
        let mut b = x.clone();
        Rope::neox(hd, base).apply(&mut b, 2, hd, pos);
        for h in 0..2 {
            for i in 0..hd / 2 {
                let th = pos as f64 * (base as f64).powf(-2.0 * i as f64 / hd as f64);
                let (c, s) = (th.cos(), th.sin());
                let (x0, x1) = (x[h * hd + 2 * i] as f64, x[h * hd + 2 * i + 1] as f64);
                assert!((a[h * hd + 2 * i] as f64 - (x0 * c - x1 * s)).abs() < 1e-5);
                assert!((a[h * hd + 2 * i + 1] as f64 - (x0 * s + x1 * c)).abs() < 1e-5);
                let (y0, y1) = (x[h * hd + i] as f64, x[h * hd + i + hd / 2] as f64);
                assert!((b[h * hd + i] as f64 - (y0 * c - y1 * s)).abs() < 1e-5);
                assert!((b[h * hd + i + hd / 2] as f64 - (y0 * s + y1 * c)).abs() < 1e-5);
            }
        }
        // Position 0 is the identity; norms are preserved.
        let mut z = x.clone();
        Rope::normal(hd, base).apply(&mut z, 2, hd, 0);
        assert_eq!(z, x);
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = a.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
    }

    #[test]
    fn rope_partial_leaves_the_tail() {
        let x = seq(16, 4);
        let mut a = x.clone();
        Rope { n_rot: 8, base: 1e6, freq_scale: 1.0, neox: true, factors: None, attn_factor: 1.0 }
            .apply(&mut a, 1, 16, 9);
        assert_eq!(&a[8..], &x[8..]);
        assert_ne!(&a[..8], &x[..8]);
    }

    #[test]
    fn rope_factors_divide_each_pairs_angle() {
        // Factor f on pair i rotates it as if the position were p / f; freq_scale multiplies.
        let hd = 8;
        let x = seq(hd, 5);
        let factors = vec![1.0, 2.0, 8.0, 0.5];
        let with = Rope { factors: Some(factors.clone()), freq_scale: 0.5, ..Rope::normal(hd, 500000.0) };
        let mut a = x.clone();
        with.apply(&mut a, 1, hd, 12);
        for (i, f) in factors.iter().enumerate() {
            let th = 0.5 * 12.0 * 500000f64.powf(-2.0 * i as f64 / hd as f64) / *f as f64;
            let (x0, x1) = (x[2 * i] as f64, x[2 * i + 1] as f64);
            assert!((a[2 * i] as f64 - (x0 * th.cos() - x1 * th.sin())).abs() < 1e-5, "pair {i}");
            assert!((a[2 * i + 1] as f64 - (x0 * th.sin() + x1 * th.cos())).abs() < 1e-5, "pair {i}");
        }
        let mut b = x.clone();
        Rope { factors: None, ..with }.apply(&mut b, 1, hd, 12);
        assert_eq!(&a[..2], &b[..2], "factor 1 is no factor");
        assert_ne!(&a[2..], &b[2..]);
    }

    #[test]
    fn rope_attn_factor_scales_the_rotated_elements_only() {
        // NEOX over 8 of 16 elements: the rotated 8 are the unscaled rotation times the factor
        // (q and k both, so scores by its square); the 8 past n_rot are untouched.
        let x = seq(16, 6);
        let plain = Rope::neox(8, 10000.0);
        let scaled = Rope { attn_factor: 1.25, ..plain.clone() };
        let (mut a, mut b) = (x.clone(), x.clone());
        plain.apply(&mut a, 1, 16, 7);
        scaled.apply(&mut b, 1, 16, 7);
        for i in 0..8 {
            assert!((b[i] - a[i] * 1.25).abs() <= 1e-6 * a[i].abs().max(1.0), "element {i}: {} vs {}", b[i], a[i]);
        }
        assert_eq!(&b[8..], &x[8..]);
    }

    #[test]
    fn silu_and_gelu_values() {
        let mut x = vec![0.0f32, 1.0, -1.0, 20.0, -20.0];
        silu(&mut x);
        let want = [0.0f32, 0.731_058_6, -0.268_941_43, 20.0, -4.122e-8];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let mut g = vec![0.0f32, 1.0, -1.0, 0.5, 12.0, -12.0, 3.0];
        gelu(&mut g);
        let want = [0.0f32, 0.841_192, -0.158_808, 0.345_714, 12.0, 0.0, 2.996_363];
        for (a, w) in g.iter().zip(want) {
            assert!((a - w).abs() < 2e-3 * w.abs().max(1.0), "{a} vs {w}");
            // Results are f16 values (the reference's table).
            assert_eq!(f16::from_f32(*a).to_f32(), *a);
        }
        let mut gate = vec![1.0f32, 2.0];
        silu_mul(&mut gate, &[2.0, 0.5]);
        assert!((gate[0] - 2.0 * 0.731_058_6).abs() < 1e-6);
        let mut gate = vec![1.0f32];
        gelu_mul(&mut gate, &[2.0]);
        assert!((gate[0] - 2.0 * 0.841_192).abs() < 2e-3);
    }

    #[test]
    fn elementwise_ops() {
        for n in [0, 3, 8, 19] {
            let a0 = seq(n, 5);
            let b = seq(n, 6);
            let mut a = a0.clone();
            add(&mut a, &b);
            assert!(a.iter().zip(a0.iter().zip(&b)).all(|(r, (x, y))| *r == x + y));
            let mut a = a0.clone();
            mul(&mut a, &b);
            assert!(a.iter().zip(a0.iter().zip(&b)).all(|(r, (x, y))| *r == x * y));
            let mut a = a0.clone();
            scale(&mut a, 0.5);
            assert!(a.iter().zip(&a0).all(|(r, x)| *r == x * 0.5));
            let mut o = vec![0f32; n];
            add_to(&mut o, &a0, &b);
            assert!(o.iter().zip(a0.iter().zip(&b)).all(|(r, (x, y))| *r == x + y));
            let d = dot(&a0, &b);
            let want: f64 = a0.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((d as f64 - want).abs() < 1e-4);
        }
    }

    #[test]
    fn f16_helpers_match_scalar() {
        for n in [1, 7, 8, 9, 64, 100] {
            let a = seq(n, 7);
            let b = seq(n, 8);
            let mut bh = vec![f16::ZERO; n];
            f32_to_f16_slice(&b, &mut bh);
            assert!(bh.iter().zip(&b).all(|(h, f)| *h == f16::from_f32(*f)));
            let mut back = vec![0f32; n];
            f16_to_f32_slice(&bh, &mut back);
            assert!(back.iter().zip(&bh).all(|(f, h)| *f == h.to_f32()));
            let want: f64 = a.iter().zip(&bh).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            assert!((dot_f32_f16(&a, &bh) as f64 - want).abs() < 1e-4, "n={n}");
            let mut ah = vec![f16::ZERO; n];
            f32_to_f16_slice(&a, &mut ah);
            let want: f64 = ah.iter().zip(&bh).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
            assert!((dot_f16(&ah, &bh) as f64 - want).abs() < 1e-4, "n={n}");
            let mut y = a.clone();
            axpy_f16(&mut y, 0.25, &bh);
            for i in 0..n {
                assert!((y[i] - (a[i] + 0.25 * bh[i].to_f32())).abs() < 1e-6);
            }
        }
    }
}
