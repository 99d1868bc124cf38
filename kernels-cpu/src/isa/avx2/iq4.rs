//! avx2 dot products of the IQ4 types: IQ4_NL against Q8_0 and IQ4_XS against Q8_K.
//!
//! 32 values at a time: the 16 index bytes of a block (IQ4_NL) or sub-block (IQ4_XS) become
//! 32 signed codebook values with one `vpshufb` of `types::iq4_nl::KVALUES` (low nibbles =
//! values 0..16, high = 16..32, the activations' order). `vpmaddubsw` needs one unsigned
//! operand: it takes `|v|` and the activations with `v`'s sign (`vpsignb`), pairs summed in 16
//! bits without saturation (2 * 127 * 127 < 2^15), then `vpmaddwd` sums pairs into i32 lanes
//! (by ones for IQ4_NL, by the sub-block scale `ls - 32` for IQ4_XS: exact integers as in the
//! scalar specification), and each block costs one convert and one multiply-add by its scales.
//! The one-token kernels (`gemv`) are `iq4gemv`'s; the few-token tile (`gemm`, 2 rows x 4 tokens) decodes
//! each weight sub-block once and uses it for its 4 tokens (the sign trick's `|v|` too; only
//! the signed activations are per token). Many tokens take the panel kernels (`lpanel` for
//! IQ4_NL with AVX-VNNI, `iq4panel` for IQ4_XS).
//!
//! Installed only when `super::available()` (AVX2, FMA, F16C), which is what makes calling
//! the `#[target_feature]` code sound.

use super::legacy::{h2f, ld128, ld256};
use crate::isa::{prefetch_ahead, GemmTileFn, GemvFn, Tile, VecDotFn};
use crate::types::iq4_nl::{BlockIQ4NL, KVALUES, QK};
use crate::types::iq4_xs::BlockIQ4XS;
use crate::types::q8_0::BlockQ8_0;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use crate::types::WeightType;
use std::arch::x86_64::*;

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    if !super::available() {
        return None;
    }
    Some(match t {
        WeightType::IQ4_NL => vec_dot_iq4nl,
        WeightType::IQ4_XS => vec_dot_iq4xs,
        _ => return None,
    })
}

pub fn gemv(t: WeightType) -> Option<GemvFn> {
    gemv_with(t, super::iq4gemv::vnni())
}

/// With or without AVX-VNNI (`vnni` only where the CPU has it).
fn gemv_with(t: WeightType, vnni: bool) -> Option<GemvFn> {
    use super::iq4gemv::{gemv_iq4nl, gemv_iq4xs};
    if !super::available() || (vnni && !super::iq4gemv::vnni()) {
        return None;
    }
    Some(match (t, vnni) {
        (WeightType::IQ4_NL, false) => gemv_iq4nl::<false>,
        (WeightType::IQ4_NL, true) => gemv_iq4nl::<true>,
        (WeightType::IQ4_XS, false) => gemv_iq4xs::<false>,
        (WeightType::IQ4_XS, true) => gemv_iq4xs::<true>,
        _ => return None,
    })
}

/// Tile shape: rows x tokens (2 x 4 accumulators of each kind stay in the 16 ymm registers).
const TILE_ROWS: usize = 2;
const TILE_TOKENS: usize = 4;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    if !super::available() {
        return None;
    }
    Some(match t {
        WeightType::IQ4_NL => (gemm_iq4nl as GemmTileFn, TILE_ROWS, TILE_TOKENS),
        WeightType::IQ4_XS => (gemm_iq4xs as GemmTileFn, TILE_ROWS, TILE_TOKENS),
        _ => return None,
    })
}

/// The 32 signed codebook values of the 16 index bytes at `p`, in value order.
///
/// # Safety
/// 16 bytes readable at `p`; AVX2 (inlined into the kernels' features).
#[inline(always)]
unsafe fn values(p: *const u8) -> __m256i {
    let t = ld128(KVALUES.as_ptr());
    let v = ld128(p);
    let m4 = _mm_set1_epi8(0x0f);
    let idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
    _mm256_shuffle_epi8(_mm256_set_m128i(t, t), idx)
}

/// Sums of `v * x` over pairs of bytes (16 lanes of i16, exact).
///
/// # Safety
/// AVX2 (inlined into the kernels' features).
#[inline(always)]
unsafe fn pair_products(v: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(x, v))
}

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4nl(w: &[BlockIQ4NL], x: &[BlockQ8_0]) -> f32 {
    // SAFETY: the features are enabled; every pointer is into a block of the slices.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (i, (b, a)) in w.iter().zip(x).enumerate() {
            prefetch_ahead(b);
            let p = _mm256_madd_epi16(pair_products(values(b.qs.as_ptr()), ld256(a.qs.as_ptr())), ones);
            let d = _mm256_set1_ps(h2f(b.d.as_ptr()) * h2f(a.d.as_ptr()));
            if i % 2 == 0 {
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, a0);
            } else {
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, a1);
            }
        }
        hsum(_mm256_add_ps(a0, a1))
    }
}

fn vec_dot_iq4nl(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK;
    let (w, x) = (
        first_blocks::<BlockIQ4NL>(w, nb, "IQ4_NL vec_dot weights"),
        first_blocks::<BlockQ8_0>(x, nb, "IQ4_NL vec_dot activations"),
    );
    // SAFETY: installed only when `super::available()`.
    unsafe { dot_iq4nl(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4xs(w: &[BlockIQ4XS], x: &[BlockQ8K]) -> f32 {
    // SAFETY: the features are enabled; every pointer is into a block of the slices.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, a) in w.iter().zip(x) {
            prefetch_ahead(b);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 32 {
                let v = values(b.qs.as_ptr().add(16 * j));
                let p = pair_products(v, ld256(a.qs.as_ptr().add(32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(b.scale(j) as i16)));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(h2f(b.d.as_ptr()) * a.d()), acc);
        }
        hsum(acc)
    }
}

fn vec_dot_iq4xs(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (w, x) = (
        first_blocks::<BlockIQ4XS>(w, nb, "IQ4_XS vec_dot weights"),
        first_blocks::<BlockQ8K>(x, nb, "IQ4_XS vec_dot activations"),
    );
    // SAFETY: installed only when `super::available()`.
    unsafe { dot_iq4xs(w, x) }
}

/// The two IQ4 formats as the tile kernel sees them: blocks of `SUBS` sub-blocks of 32 values,
/// each with a signed integer scale (IQ4_NL: one sub-block, scale 1), and one float scale per
/// block pair `d_w * d_x`.
trait Format {
    type W: crate::types::Block;
    type X: crate::types::Block;
    const SUBS: usize;
    /// The 32 signed values of sub-block `j`.
    ///
    /// # Safety
    /// AVX2 (inlined into the kernels' features).
    unsafe fn values(b: &Self::W, j: usize) -> __m256i;
    fn scale(b: &Self::W, j: usize) -> i16;
    /// The 32 activation quants of sub-block `j`.
    ///
    /// # Safety
    /// As `values`.
    unsafe fn quants(a: &Self::X, j: usize) -> __m256i;
    fn d(b: &Self::W, a: &Self::X) -> f32;
}

struct Nl;
impl Format for Nl {
    type W = BlockIQ4NL;
    type X = BlockQ8_0;
    const SUBS: usize = 1;
    #[inline(always)]
    unsafe fn values(b: &BlockIQ4NL, _j: usize) -> __m256i {
        values(b.qs.as_ptr())
    }
    #[inline(always)]
    fn scale(_b: &BlockIQ4NL, _j: usize) -> i16 {
        1
    }
    #[inline(always)]
    unsafe fn quants(a: &BlockQ8_0, _j: usize) -> __m256i {
        ld256(a.qs.as_ptr())
    }
    #[inline(always)]
    fn d(b: &BlockIQ4NL, a: &BlockQ8_0) -> f32 {
        // SAFETY: both point at two-byte f16 fields.
        unsafe { h2f(b.d.as_ptr()) * h2f(a.d.as_ptr()) }
    }
}

struct Xs;
impl Format for Xs {
    type W = BlockIQ4XS;
    type X = BlockQ8K;
    const SUBS: usize = QK_K / 32;
    #[inline(always)]
    unsafe fn values(b: &BlockIQ4XS, j: usize) -> __m256i {
        values(b.qs.as_ptr().add(16 * j))
    }
    #[inline(always)]
    fn scale(b: &BlockIQ4XS, j: usize) -> i16 {
        b.scale(j) as i16
    }
    #[inline(always)]
    unsafe fn quants(a: &BlockQ8K, j: usize) -> __m256i {
        ld256(a.qs.as_ptr().add(32 * j))
    }
    #[inline(always)]
    fn d(b: &BlockIQ4XS, a: &BlockQ8K) -> f32 {
        // SAFETY: a two-byte f16 field.
        unsafe { h2f(b.d.as_ptr()) * a.d() }
    }
}

/// `R` rows x `C` tokens over `nb` blocks, `out[c * os + r]`: per row and sub-block the values
/// and their magnitudes once, then per token the sign trick's two steps and one `vpmaddwd` by
/// the sub-block scale, exact i32 sums per block as in the scalar specification.
///
/// # Safety
/// AVX2/FMA/F16C (inlined into `tile_tf`); each of `rows`/`toks` holds `nb` blocks.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r and c index the row, token and accumulator arrays together
unsafe fn tile<F: Format, const R: usize, const C: usize>(
    nb: usize,
    rows: [&[F::W]; R],
    toks: [&[F::X]; C],
    out: &mut [f32],
    os: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..nb {
        let mut s = [[_mm256_setzero_si256(); C]; R];
        for row in rows {
            prefetch_ahead(&row[b]);
        }
        for j in 0..F::SUBS {
            for r in 0..R {
                let wb = &rows[r][b];
                let v = F::values(wb, j);
                let a = _mm256_sign_epi8(v, v);
                let sc = _mm256_set1_epi16(F::scale(wb, j));
                for c in 0..C {
                    let xv = _mm256_sign_epi8(F::quants(&toks[c][b], j), v);
                    s[r][c] = _mm256_add_epi32(s[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, xv), sc));
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let d = _mm256_set1_ps(F::d(&rows[r][b], &toks[c][b]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][c]), d, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            out[c * os + r] = hsum(acc[r][c]);
        }
    }
}

/// Dispatches a tile of `nr` x `nc` (at most 2 x 4) to its monomorphised kernel.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn tile_tf<F: Format>(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    x: &[u8],
    xs: usize,
    nc: usize,
    out: &mut [f32],
    os: usize,
    what: &str,
) {
    macro_rules! go {
        ($r:literal, $c:literal) => {{
            let rows: [&[F::W]; $r] = core::array::from_fn(|r| first_blocks::<F::W>(&w[r * ws..], nb, what));
            let toks: [&[F::X]; $c] = core::array::from_fn(|c| first_blocks::<F::X>(&x[c * xs..], nb, what));
            // SAFETY: this function's features are the ones `tile` needs; the blocks were
            // bounds-checked by `first_blocks`.
            unsafe { tile::<F, $r, $c>(nb, rows, toks, out, os) }
        }};
    }
    match (nr, nc) {
        (1, 1) => go!(1, 1),
        (1, 2) => go!(1, 2),
        (1, 3) => go!(1, 3),
        (1, _) => go!(1, 4),
        (_, 1) => go!(2, 1),
        (_, 2) => go!(2, 2),
        (_, 3) => go!(2, 3),
        _ => go!(2, 4),
    }
}

/// Checks a tile's shape against its output.
fn check_tile(nr: usize, nc: usize, out: &[f32], os: usize, what: &str) {
    assert!(
        (1..=TILE_ROWS).contains(&nr) && (1..=TILE_TOKENS).contains(&nc) && out.len() > (nc - 1) * os + nr - 1,
        "{what}: tile {nr}x{nc} does not fit its output"
    );
}

fn gemm_iq4nl(t: Tile<'_>) {
    let Tile { n, w, w_stride: ws, rows: nr, x, x_stride: xs, tokens: nc, out, out_stride: os } = t;
    check_tile(nr, nc, out, os, "IQ4_NL gemm");
    // SAFETY: installed only when `super::available()`.
    unsafe { tile_tf::<Nl>(n / QK, w, ws, nr, x, xs, nc, out, os, "IQ4_NL gemm") }
}

fn gemm_iq4xs(t: Tile<'_>) {
    let Tile { n, w, w_stride: ws, rows: nr, x, x_stride: xs, tokens: nc, out, out_stride: os } = t;
    check_tile(nr, nc, out, os, "IQ4_XS gemm");
    // SAFETY: installed only when `super::available()`.
    unsafe { tile_tf::<Xs>(n / QK_K, w, ws, nr, x, xs, nc, out, os, "IQ4_XS gemm") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::q8_k::test_util::{check_many_tokens, strided_rows};

    /// Every tile shape of both types, rows and tokens strided, against the scalar `vec_dot`
    /// (`check_many_tokens` also checks the gaps of the output stay untouched).
    #[test]
    fn tiles_match_scalar_vec_dot() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        for t in [WeightType::IQ4_NL, WeightType::IQ4_XS] {
            let (f, _, _) = gemm(t).expect("a tile kernel");
            for nr in 1..=TILE_ROWS {
                for nc in 1..=TILE_TOKENS {
                    for nb in [1, 3] {
                        let n = nb * t.block_size() * if t == WeightType::IQ4_NL { 8 } else { 1 };
                        let tol = |want: f32| 1e-5 * (n as f32).sqrt() * want.abs().max(1.0);
                        check_many_tokens(t.name(), t, f, n, nr, nc, (36, 70), 7 * nr as u64 + nc as u64, tol);
                    }
                }
            }
        }
    }

    /// The one-token kernels (`iq4gemv`), several strided rows, against the scalar `vec_dot`.
    #[test]
    fn gemv_matches_scalar_vec_dot() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        for (t, vnni) in [WeightType::IQ4_NL, WeightType::IQ4_XS].into_iter().flat_map(|t| [(t, false), (t, true)]) {
            let Some(f) = gemv_with(t, vnni) else {
                eprintln!("skipped: {} with AVX-VNNI (the CPU lacks it)", t.name());
                continue;
            };
            let scalar = crate::isa::scalar::vec_dot(t).unwrap();
            // IQ4_NL block counts of every remainder mod 8 (it takes eight blocks a step), and the
            // prepared buffer grown then reused shorter
            let sizes = [(1, 256), (5, 768), (3, 4096), (2, 96), (3, 320), (2, 8224), (2, 16640), (2, 128)];
            for (nr, n) in sizes.into_iter().chain([(3, 160), (1, 192), (2, 224), (1, 32)]) {
                if n % t.block_size() != 0 {
                    continue;
                }
                let (w, ws) = strided_rows(t, n, nr, 36, n as u64);
                let (x, _) = strided_rows(t.vec_dot_type(), n, 1, 0, 99);
                let mut out = vec![f32::NAN; nr];
                f(n, &w, ws, nr, &x, &mut out);
                for r in 0..nr {
                    let want = scalar(n, &w[r * ws..], &x);
                    assert!(
                        (out[r] - want).abs() <= 1e-5 * (n as f32).sqrt() * want.abs().max(1.0),
                        "{} (AVX-VNNI {vnni}) {nr} rows of {n}, row {r}: {} vs {want}",
                        t.name(),
                        out[r]
                    );
                }
            }
        }
    }
}
