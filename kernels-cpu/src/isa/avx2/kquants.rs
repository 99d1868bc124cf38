//! avx2 kernels for the K-quant types (AVX2 + FMA + F16C).
//!
//! Same scheme as the AVX-512 module: each weight block is unpacked into unsigned levels in the
//! activations' order (eight 32-byte vectors), 16-bit sub-block scale vectors matching
//! `vpmaddubsw`'s output, and a correction for the Q8_K group sums (`c16`: the minimums of
//! Q2_K/Q4_K/Q5_K, or the level offset of Q3_K/Q6_K times the scales). Then
//! `sumi = Σ_k madd(maddubs(lv[k], q8[k]), sc[k])` exactly in 32-bit integers, and the block
//! adds `d * x.d * sumi` (+ `f * x.d * (c16 · bsums)` for the minimums) to a float accumulator:
//! the scalar specification's arithmetic. The `vec_dot` loop is `isa::tiles`'s, with this
//! module's unpacking and accumulation; the tile kernel, which unpacks each block once per row
//! and uses it for several tokens, is written out per type (`kquant_tile!`).
//!
//! A kernel here is installed only when AVX2, FMA and F16C are detected (checked in the lookups
//! below), which is what makes calling its `#[target_feature]` code sound.

use core::arch::x86_64::*;

use crate::isa::tiles::{self, KquantBlock, KquantIsa, Unpack};
use crate::isa::{GemmTileFn, QuantizeFn, Tile, VecDotFn};
use crate::types::q2_k::BlockQ2K;
use crate::types::q3_k::BlockQ3K;
use crate::types::q4_k::{scales_mins_k4_bytes, BlockQ4K};
use crate::types::q5_k::BlockQ5K;
use crate::types::q6_k::BlockQ6K;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use crate::types::WeightType;

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    if !super::available() {
        return None;
    }
    Some(match t {
        WeightType::Q2_K => kquant_vec_dot::<BlockQ2K>,
        WeightType::Q3_K => kquant_vec_dot::<BlockQ3K>,
        WeightType::Q4_K => kquant_vec_dot::<BlockQ4K>,
        WeightType::Q5_K => kquant_vec_dot::<BlockQ5K>,
        WeightType::Q6_K => kquant_vec_dot::<BlockQ6K>,
        _ => return None,
    })
}

/// Rows handled per tile call (a plain loop: any number works) and tokens per tile.
const TILE_ROWS: usize = 16;
const TILE_TOKENS: usize = 4;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    if !super::available() {
        return None;
    }
    let f: GemmTileFn = match t {
        WeightType::Q2_K => q2k::gemm,
        WeightType::Q3_K => q3k::gemm,
        WeightType::Q4_K => q4k::gemm,
        WeightType::Q5_K => q5k::gemm,
        WeightType::Q6_K => q6k::gemm,
        _ => return None,
    };
    Some((f, TILE_ROWS, TILE_TOKENS))
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    if !super::available() || t != WeightType::Q8_K {
        return None;
    }
    Some(quantize_q8_k)
}

/// Q8_K activations, byte for byte what the scalar `types::q8_k::quantize` (the reference's
/// rule) writes: the largest magnitude (first one on ties) maps to -127, values are rounded to
/// nearest even (`vcvtps2dq` under the default rounding mode, as `nearest_int` for |v| < 2^22),
/// clamped at 127.
fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q8_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = crate::types::q8_k::blocks_mut::<BlockQ8K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q8_K quantize: output too short");
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: installed only when AVX2, FMA and F16C are detected.
        unsafe { quantize_block_q8_k(x.try_into().expect("a block is 256 values"), y) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_q8_k(x: &[f32; QK_K], y: &mut BlockQ8K) {
    // SAFETY: 32 x 8 floats inside `x`; the loads are unaligned.
    let v: [__m256; 32] = core::array::from_fn(|j| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * j)) });
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut amax = _mm256_setzero_ps();
    for vj in &v {
        // a NaN in the first operand leaves the running maximum: the scalar loop skips NaNs too
        amax = _mm256_max_ps(_mm256_and_ps(*vj, abs_mask), amax);
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps::<1>(amax));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    if amax == 0.0 {
        *y = BlockQ8K { d: [0; 4], qs: [0; QK_K], bsums: [[0; 2]; QK_K / 16] };
        return;
    }
    let target = _mm256_set1_ps(amax);
    let first = (0..32)
        .find_map(|j| {
            let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(v[j], abs_mask), target));
            (m != 0).then(|| 8 * j + m.trailing_zeros() as usize)
        })
        .expect("the maximum magnitude is one of the values");
    let iscale = -127.0f32 / x[first];
    let s = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    let quant = |vj: __m256| {
        let p = _mm256_mul_ps(s, vj);
        // NaN (from inf * 0) -> 0, as `nearest_int` gives for the default NaN
        let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
        _mm256_min_epi32(_mm256_and_si256(_mm256_cvtps_epi32(p), ordered), top)
    };
    for j in 0..16 {
        let (q0, q1) = (quant(v[2 * j]), quant(v[2 * j + 1]));
        // 16 x i32 -> i16 in order (packs works per 128-bit half) -> i8
        let w = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(q0, q1));
        let b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        // SAFETY: bytes 16j..16j+16 of the 256-byte `qs`; the store is unaligned.
        unsafe { _mm_storeu_si128(y.qs.as_mut_ptr().add(16 * j) as *mut __m128i, b) };
        let t = _mm256_add_epi32(q0, q1);
        let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0x4E>(t));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0xB1>(t));
        y.bsums[j] = (_mm_cvtsi128_si32(t) as i16).to_le_bytes();
    }
    y.d = (1.0 / iscale).to_le_bytes();
}

/// One weight block ready for the integer dot product (see the module comment).
#[derive(Clone, Copy)]
struct Unpacked {
    lv: [__m256i; 8],
    sc: [__m256i; 8],
    c16: __m256i,
    /// Factor of `sumi`.
    d: f32,
    /// Factor of `c16 · bsums` when it is not folded into `sumi`.
    f: f32,
}

/// Two f16 fields (e.g. `d`, `dmin`) to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x2(a: [u8; 2], b: [u8; 2]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(u32::from_le_bytes([a[0], a[1], b[0], b[1]]) as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// 32 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked above); the load is unaligned.
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

/// Each 16-bit lane shifted right by `n` (bits crossing into a byte are masked off by callers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn srl16(a: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(a, _mm_cvtsi32_si128(n as i32))
}

/// 16-bit scale vectors for the 8 chunks of 32 values, from 16 (or 8) scales in `s16`:
/// `per_chunk` = 1 (sub-blocks of 32: one scale per chunk) or 2 (sub-blocks of 16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_vectors(s16: __m256i, per_chunk: usize) -> [__m256i; 8] {
    // 32-bit lanes holding each scale twice: lo = s0..s3 | s8..s11, hi = s4..s7 | s12..s15
    let lo = _mm256_unpacklo_epi16(s16, s16);
    let hi = _mm256_unpackhi_epi16(s16, s16);
    let pick = |j: usize| -> (__m256i, i32) {
        let src = if (j / 4).is_multiple_of(2) { lo } else { hi };
        (src, (j % 4 + if j >= 8 { 4 } else { 0 }) as i32)
    };
    let mut out = [_mm256_setzero_si256(); 8];
    for (c, o) in out.iter_mut().enumerate() {
        if per_chunk == 1 {
            let (src, p) = pick(c);
            *o = _mm256_permutevar8x32_epi32(src, _mm256_set1_epi32(p));
        } else {
            let (src, p) = pick(2 * c);
            *o = _mm256_permutevar8x32_epi32(src, _mm256_setr_epi32(p, p, p, p, p + 1, p + 1, p + 1, p + 1));
        }
    }
    out
}

/// Adds `add` to the levels whose bit `bit` is set in the mask bytes `m` (high bits of
/// Q3_K/Q5_K).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_where_bit(lv: __m256i, m: __m256i, bit: usize, add: i8) -> __m256i {
    let b = _mm256_set1_epi8((1u8 << bit) as i8);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(m, b), b);
    _mm256_add_epi8(lv, _mm256_and_si256(set, _mm256_set1_epi8(add)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_scales(scales: &[u8; 12]) -> (__m256i, __m256i) {
    let sm = scales_mins_k4_bytes(scales);
    // SAFETY: `sm` is 16 readable bytes.
    let smv = unsafe { _mm_loadu_si128(sm.as_ptr() as *const __m128i) };
    // scales, and mins m0 m0 m1 m1 ... (one per group of 16 values, as the bsums)
    (_mm256_cvtepu8_epi16(smv), _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(smv, smv)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q4k(b: &BlockQ4K) -> Unpacked {
    let (s16, c16) = k4_scales(&b.scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut lv = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        let q = load32(&b.qs[32 * k..]);
        lv[2 * k] = _mm256_and_si256(q, m4);
        lv[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
    }
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv, sc: scale_vectors(s16, 1), c16, d, f: -dmin }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q5k(b: &BlockQ5K) -> Unpacked {
    let (s16, c16) = k4_scales(&b.scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let qh = load32(&b.qh);
    let mut lv = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        let q = load32(&b.qs[32 * k..]);
        lv[2 * k] = add_where_bit(_mm256_and_si256(q, m4), qh, 2 * k, 16);
        lv[2 * k + 1] = add_where_bit(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), qh, 2 * k + 1, 16);
    }
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv, sc: scale_vectors(s16, 1), c16, d, f: -dmin }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q6k(b: &BlockQ6K) -> Unpacked {
    // SAFETY: `scales` is 16 readable bytes.
    let s16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) });
    // value = d * sc * (level - 32): the offset is -32 * sc per group of 16, folded into sumi
    let c16 = _mm256_mullo_epi16(s16, _mm256_set1_epi16(-32));
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(3);
    let mut lv = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let ql = [load32(&b.ql[64 * h..]), load32(&b.ql[64 * h + 32..])];
        let qh = load32(&b.qh[32 * h..]);
        for quarter in 0..4 {
            let l = ql[quarter % 2];
            let low = if quarter < 2 { l } else { _mm256_srli_epi16::<4>(l) };
            let high = _mm256_and_si256(srl16(qh, 2 * quarter), m2);
            lv[4 * h + quarter] = _mm256_or_si256(_mm256_and_si256(low, m4), _mm256_slli_epi16::<4>(high));
        }
    }
    let d = f16x2(b.d, [0; 2]).0;
    Unpacked { lv, sc: scale_vectors(s16, 2), c16, d, f: 0.0 }
}

/// The 2-bit levels of Q2_K/Q3_K (`qs` has the same layout in both).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn levels_2bit(qs: &[u8; 64]) -> [__m256i; 8] {
    let m2 = _mm256_set1_epi8(3);
    let mut lv = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let q = load32(&qs[32 * h..]);
        for s in 0..4 {
            lv[4 * h + s] = _mm256_and_si256(srl16(q, 2 * s), m2);
        }
    }
    lv
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q2k(b: &BlockQ2K) -> Unpacked {
    // SAFETY: `scales` is 16 readable bytes.
    let s = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
    let s16 = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0x0F)));
    let c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F)));
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv: levels_2bit(&b.qs), sc: scale_vectors(s16, 2), c16, d, f: -dmin }
}

/// The 16 Q3_K scales (`sc - 32`) as bytes, as `types::q3_k::scales_q3k` computes them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q3k_scales(s: &[u8; 12]) -> __m128i {
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, hi) = (w(0), w(1), w(2));
    let v = _mm_set_epi32(
        (((b >> 4) & M4) | (((hi >> 6) & M2) << 4)) as i32,
        (((a >> 4) & M4) | (((hi >> 4) & M2) << 4)) as i32,
        ((b & M4) | (((hi >> 2) & M2) << 4)) as i32,
        ((a & M4) | ((hi & M2) << 4)) as i32,
    );
    _mm_sub_epi8(v, _mm_set1_epi8(32))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q3k(b: &BlockQ3K) -> Unpacked {
    let s16 = _mm256_cvtepi8_epi16(q3k_scales(&b.scales));
    // value = d * sc * (level - 4) with level = low 2 bits + 4 * high bit
    let c16 = _mm256_mullo_epi16(s16, _mm256_set1_epi16(-4));
    let mut lv = levels_2bit(&b.qs);
    let hm = load32(&b.hmask);
    for (c, l) in lv.iter_mut().enumerate() {
        *l = add_where_bit(*l, hm, c, 4);
    }
    let d = f16x2(b.d, [0; 2]).0;
    Unpacked { lv, sc: scale_vectors(s16, 2), c16, d, f: 0.0 }
}

/// Adds one block's result into the float accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate(acc: __m256, u: &Unpacked, a: &BlockQ8K, fold: bool) -> __m256 {
    let q8 = a.qs.as_ptr() as *const __m256i;
    let mut sumi = _mm256_setzero_si256();
    for k in 0..8 {
        // SAFETY: `qs` is 256 bytes, chunk k covers bytes 32k..32k+32; the load is unaligned.
        let x = unsafe { _mm256_loadu_si256(q8.add(k)) };
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(u.lv[k], x), u.sc[k]));
    }
    // SAFETY: `bsums` is 32 readable bytes.
    let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
    let g = _mm256_madd_epi16(u.c16, bs);
    let xd = a.d();
    if fold {
        sumi = _mm256_add_epi32(sumi, g);
    }
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(u.d * xd), acc);
    if fold {
        acc
    } else {
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(g), _mm256_set1_ps(u.f * xd), acc)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// This ISA's side of the shared K-quant loops (`isa::tiles`).
struct Avx2;

impl KquantIsa for Avx2 {
    type Unpacked = Unpacked;
    type Acc = __m256;
    const TOKENS: usize = TILE_TOKENS;
    const PREFETCH: bool = true;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn accumulate(acc: __m256, u: &Unpacked, a: &BlockQ8K, fold: bool) -> __m256 {
        unsafe { accumulate(acc, u, a, fold) }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m256) -> f32 {
        unsafe { hsum(acc) }
    }
}

macro_rules! unpack {
    ($($Block:ty => $unpack:ident),*) => {$(
        impl Unpack<$Block> for Avx2 {
            #[inline(always)]
            unsafe fn unpack(b: &$Block) -> Unpacked {
                unsafe { $unpack(b) }
            }
        }
    )*};
}
unpack!(BlockQ2K => unpack_q2k, BlockQ3K => unpack_q3k, BlockQ4K => unpack_q4k, BlockQ5K => unpack_q5k, BlockQ6K => unpack_q6k);

tiles::kquant_entry_points!(Avx2, "avx2,fma,f16c");

/// The tile kernel of one type, written out per type rather than through the shared
/// `tiles::gemm`: compiled from the shared loop, the AVX2 tiles spill more vector registers and
/// run measurably slower (see docs/benchmarks.md), while the AVX-512 ones do not.
macro_rules! kquant_tile {
    ($m:ident, $Block:ty, $unpack:ident, $fold:expr, $name:expr) => {
        mod $m {
            use super::*;

            /// `NC` tokens against rows `0..nr`: each weight block is unpacked once per row and
            /// used for all `NC` tokens.
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn tile<const NC: usize>(
                nb: usize,
                w: &[u8],
                w_stride: usize,
                nr: usize,
                x: &[u8],
                x_stride: usize,
                out: &mut [f32],
                out_stride: usize,
            ) {
                let xb: [&[BlockQ8K]; NC] = core::array::from_fn(|t| {
                    first_blocks::<BlockQ8K>(&x[t * x_stride..], nb, concat!($name, " gemm activations"))
                });
                for r in 0..nr {
                    let wb = first_blocks::<$Block>(&w[r * w_stride..], nb, concat!($name, " gemm weights"));
                    let mut acc = [_mm256_setzero_ps(); NC];
                    for (i, b) in wb.iter().enumerate() {
                        let u = $unpack(b);
                        for t in 0..NC {
                            acc[t] = accumulate(acc[t], &u, &xb[t][i], $fold);
                        }
                    }
                    for t in 0..NC {
                        out[t * out_stride + r] = hsum(acc[t]);
                    }
                }
            }

            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn gemm_tf(
                n: usize,
                w: &[u8],
                w_stride: usize,
                nr: usize,
                x: &[u8],
                x_stride: usize,
                nc: usize,
                out: &mut [f32],
                out_stride: usize,
            ) {
                let nb = n / QK_K;
                let mut c0 = 0;
                while c0 < nc {
                    let (xs, os) = (&x[c0 * x_stride..], &mut out[c0 * out_stride..]);
                    c0 += match nc - c0 {
                        4.. => {
                            tile::<4>(nb, w, w_stride, nr, xs, x_stride, os, out_stride);
                            4
                        }
                        2.. => {
                            tile::<2>(nb, w, w_stride, nr, xs, x_stride, os, out_stride);
                            2
                        }
                        _ => {
                            tile::<1>(nb, w, w_stride, nr, xs, x_stride, os, out_stride);
                            1
                        }
                    };
                }
            }

            pub fn gemm(t: Tile<'_>) {
                let Tile { n, w, w_stride, rows, x, x_stride, tokens, out, out_stride } = t;
                // SAFETY: installed only when AVX2, FMA and F16C are detected.
                unsafe { gemm_tf(n, w, w_stride, rows, x, x_stride, tokens, out, out_stride) }
            }
        }
    };
}

kquant_tile!(q2k, BlockQ2K, unpack_q2k, false, "Q2_K");
kquant_tile!(q3k, BlockQ3K, unpack_q3k, true, "Q3_K");
kquant_tile!(q4k, BlockQ4K, unpack_q4k, false, "Q4_K");
kquant_tile!(q5k, BlockQ5K, unpack_q5k, false, "Q5_K");
kquant_tile!(q6k, BlockQ6K, unpack_q6k, true, "Q6_K");

// ---------------------------------------------------------------------------------------------
// One-token kernel (`gemv`) for Q4_K, the most common K-quant: many rows against one token.
// With 32-byte vectors the natural order already suits the weights (`qs[32k..32k+32]` holds
// sub-block 2k as low nibbles, 2k + 1 as high nibbles, each a whole vector), so the Q8_K blocks
// are read as they are. What it saves over `vec_dot`: the scales and minimums are unpacked in
// vector registers (the scalar `scales_mins_k4_bytes` was ~17% of the time), each sub-block's
// scale is spread by one `vpshufb`, and there is no per-block `Unpacked` to build.
// ---------------------------------------------------------------------------------------------

use crate::isa::GemvFn;

pub fn gemv(t: WeightType) -> Option<GemvFn> {
    if !super::available() || t != WeightType::Q4_K {
        return None;
    }
    Some(gemv_q4k)
}

/// Q4_K scales then mins (16 bytes, as `scales_mins_k4_bytes`) from the 16 bytes `d, dmin,
/// scales` that start the block, in vector registers. Words a, b, c of the packed scales:
/// scales a & 0x3f.., (c & 0x0f..) | ((a >> 6) & 0x03..) << 4; mins b & 0x3f..,
/// ((c >> 4) & 0x0f..) | ((b >> 6) & 0x03..) << 4.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_scales_mins_v(b: &BlockQ4K) -> __m128i {
    // SAFETY: the first 16 bytes of the 144-byte block; the load is unaligned.
    let v = _mm_srli_si128::<4>(unsafe { _mm_loadu_si128(b as *const BlockQ4K as *const __m128i) });
    // lanes [a, c, b, c] and [-, a, -, b]
    let p = _mm_shuffle_epi32::<0b10_01_10_00>(v);
    let part1 = _mm_and_si128(
        _mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
        _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
    );
    let q = _mm_shuffle_epi32::<0b01_01_00_00>(v);
    let part2 = _mm_and_si128(_mm_srli_epi32::<6>(q), _mm_setr_epi32(0, 0x0303_0303, 0, 0x0303_0303));
    _mm_or_si128(part1, _mm_slli_epi32::<4>(part2))
}

fn gemv_q4k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q4_K gemv activations");
    // SAFETY: installed only when `super::available()` (all enabled features detected).
    unsafe { gemv_q4k_tf(nb, w, w_stride, nr, xb, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q4k_tf(nb: usize, w: &[u8], w_stride: usize, nr: usize, xb: &[BlockQ8K], out: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0F);
    // word j of every lane: scale byte j, zero-extended
    let ctl: [__m256i; 8] = core::array::from_fn(|j| _mm256_set1_epi16(0x8000u16 as i16 | j as i16));
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<BlockQ4K>(&w[r * w_stride..], nb, "Q4_K gemv weights");
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut accm = _mm256_setzero_ps();
        for (i, (b, a)) in wb.iter().zip(xb).enumerate() {
            crate::isa::prefetch_ahead(b);
            let smv = k4_scales_mins_v(b);
            let sb = _mm256_broadcastsi128_si256(smv);
            let mut s = [_mm256_setzero_si256(); 2];
            for k in 0..4 {
                let q = load32(&b.qs[32 * k..]);
                let x0 = load32(bytes_of(&a.qs[64 * k..]));
                let x1 = load32(bytes_of(&a.qs[64 * k + 32..]));
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_shuffle_epi8(sb, ctl[2 * k]));
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), _mm256_shuffle_epi8(sb, ctl[2 * k + 1]));
                s[k & 1] = _mm256_add_epi32(s[k & 1], _mm256_add_epi32(p0, p1));
            }
            // mins m0 m0 m1 m1 ... m7 m7: one per group of 16 values, as the bsums
            let c16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(smv, smv));
            // SAFETY: `bsums` is 32 readable bytes; the load is unaligned.
            let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
            let g = _mm256_madd_epi16(c16, bs);
            let dx = _mm_mul_ps(
                _mm_cvtph_ps(_mm_cvtsi32_si128(u32::from_le_bytes([b.d[0], b.d[1], b.dmin[0], b.dmin[1]]) as i32)),
                _mm_set1_ps(a.d()),
            );
            let sumi = _mm256_add_epi32(s[0], s[1]);
            acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_broadcastss_ps(dx), acc[i & 1]);
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(g), _mm256_broadcastss_ps(_mm_movehdup_ps(dx)), accm);
        }
        *o = hsum(_mm256_add_ps(acc[0], acc[1])) - hsum(accm);
    }
}

/// Q8_K quants as bytes (for `load32`).
#[inline]
fn bytes_of(q: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(q.as_ptr() as *const u8, q.len()) }
}
