//! avx2 kernels (AVX2 + FMA + F16C) for the legacy types: dot products of F32, F16, BF16,
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights, and the Q8_0 / Q8_1 activation quantizers
//! (byte-identical to the scalar specification, which is the reference's x86 rounding).
//!
//! Every kernel is an `unsafe fn` with `#[target_feature]` behind a safe wrapper that checks
//! the buffer lengths; the wrappers are handed out only by the lookups below, which
//! `Kernels::for_isa` calls only when `super::available()` is true.

// Tile loops index several register arrays by row and token on purpose.
#![allow(clippy::needless_range_loop)]

use crate::isa::{GemmTileFn, QuantizeFn, Tile, VecDotFn};
use crate::types::q4_0::BlockQ4_0;
use crate::types::q4_1::BlockQ4_1;
use crate::types::q5_0::BlockQ5_0;
use crate::types::q5_1::BlockQ5_1;
use crate::types::q8_0::BlockQ8_0;
use crate::types::q8_1::BlockQ8_1;
use crate::types::WeightType;
use std::arch::x86_64::*;

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    Some(match t {
        WeightType::F32 => dot_f32,
        WeightType::F16 => dot_f16,
        WeightType::BF16 => dot_bf16,
        WeightType::Q4_0 => dot_q4_0,
        WeightType::Q4_1 => dot_q4_1,
        WeightType::Q5_0 => dot_q5_0,
        WeightType::Q5_1 => dot_q5_1,
        WeightType::Q8_0 => dot_q8_0,
        _ => return None,
    })
}

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    gemm_with(t, is_x86_feature_detected!("avxvnni"))
}

/// The tile kernels, with AVX-VNNI (Alder Lake, Zen 5 and later) or without.
fn gemm_with(t: WeightType, vnni: bool) -> Option<(GemmTileFn, usize, usize)> {
    fn of<const V: bool>(t: WeightType) -> Option<GemmTileFn> {
        Some(match t {
            WeightType::Q4_0 => tiles::q4_0::<V>,
            WeightType::Q4_1 => tiles::q4_1::<V>,
            WeightType::Q5_0 => tiles::q5_0::<V>,
            WeightType::Q5_1 => tiles::q5_1::<V>,
            WeightType::Q8_0 => tiles::q8_0::<V>,
            _ => return None,
        })
    }
    let f = if vnni { of::<true>(t)? } else { of::<false>(t)? };
    Some((f, tiles::ROWS, tiles::TOKENS))
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    Some(match t {
        WeightType::Q8_0 => quantize_q8_0,
        WeightType::Q8_1 => quantize_q8_1,
        _ => return None,
    })
}

/// Checks that `w` and `x` hold `n` elements of the weight and activation types.
#[inline(always)]
fn check(n: usize, w: &[u8], wbs: usize, wts: usize, x: &[u8], xbs: usize, xts: usize) {
    assert!(
        n.is_multiple_of(wbs) && w.len() >= n / wbs * wts && x.len() >= n / xbs * xts,
        "vec_dot: {n} elements need {} weight and {} activation bytes, got {} and {}",
        n / wbs * wts,
        n / xbs * xts,
        w.len(),
        x.len()
    );
}

macro_rules! safe_dot {
    ($name:ident, $inner:ident, $wbs:expr, $wts:expr, $xbs:expr, $xts:expr) => {
        fn $name(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check(n, w, $wbs, $wts, x, $xbs, $xts);
            // SAFETY: installed only when AVX2/FMA/F16C were detected (module comment); the
            // lengths were just checked, and the kernel reads only `n` elements of each.
            unsafe { $inner(n, w.as_ptr(), x.as_ptr()) }
        }
    };
}

safe_dot!(dot_f32, dot_f32_k, 1, 4, 1, 4);
safe_dot!(dot_f16, dot_f16_k, 1, 2, 1, 2);
safe_dot!(dot_bf16, dot_bf16_k, 1, 2, 1, 2);
safe_dot!(dot_q4_0, dot_q4_0_k, 32, 18, 32, 34);
safe_dot!(dot_q4_1, dot_q4_1_k, 32, 20, 32, 36);
safe_dot!(dot_q5_0, dot_q5_0_k, 32, 22, 32, 34);
safe_dot!(dot_q5_1, dot_q5_1_k, 32, 24, 32, 36);
safe_dot!(dot_q8_0, dot_q8_0_k, 32, 34, 32, 34);

// ---- helpers (inlined into the target_feature functions that call them) ----

/// 32 bytes at `p`, any alignment. The loads in this file are all-ones masked loads, which
/// LLVM emits as plain `vmovdqu`/`vmovups`, rather than `_mm256_loadu_si256` & co.: those are
/// a `copy_nonoverlapping` into a stack temporary, which with debug assertions on (the `ci`
/// profile everything is tested and measured with) keeps a runtime overlap check, a branch and
/// a store to the stack for every load in the hot loops.
///
/// # Safety
/// 32 bytes readable at `p`; AVX2 (inlined into the kernels' features).
#[inline(always)]
pub(super) unsafe fn ld256<T>(p: *const T) -> __m256i {
    _mm256_maskload_epi32(p as *const i32, _mm256_set1_epi32(-1))
}

/// 16 bytes at `p`, any alignment (see `ld256`).
///
/// # Safety
/// 16 bytes readable at `p`; AVX2.
#[inline(always)]
pub(super) unsafe fn ld128<T>(p: *const T) -> __m128i {
    _mm_maskload_epi32(p as *const i32, _mm_set1_epi32(-1))
}

/// 8 f32 at `p`, any alignment (see `ld256`).
///
/// # Safety
/// 32 bytes readable at `p`; AVX.
#[inline(always)]
unsafe fn ld_ps(p: *const f32) -> __m256 {
    _mm256_maskload_ps(p, _mm256_set1_epi32(-1))
}

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Every f16 as f32 (256 KiB, built at compile time): a scalar scale costs one load, where
/// F16C needs a move into a vector register, a conversion and a move back.
static F16_TO_F32: [f32; 65536] = {
    let mut t = [0f32; 65536];
    let mut i = 0;
    while i < 65536 {
        t[i] = half::f16::from_bits(i as u16).to_f32_const();
        i += 1;
    }
    t
};

/// An f16 stored at `p` (little-endian, any alignment) as f32.
#[inline(always)]
pub(super) unsafe fn h2f(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    // SAFETY (of the unchecked index): a u16 is always < 65536.
    *F16_TO_F32.get_unchecked(h as usize)
}

/// 16 bytes of nibbles at `p` as 32 bytes: low nibbles first (elements 0..16), then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = ld128(p);
    let lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0f));
    _mm256_set_m128i(hi, lo)
}

/// The 32 bits of the little-endian u32 at `p` as 32 bytes: 0x10 where the bit is set.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    // Byte k of the bits goes to bytes 8k..8k+8, then each byte tests its own bit.
    let rep = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
    );
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(rep, sel), sel);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Sum over pairs of `u8 * i8` products into 8 i32 lanes, as f32 (`u` ≤ 128 so no saturation).
#[inline(always)]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Signed x signed bytes: |a| times b with a's sign moved onto b.
#[inline(always)]
unsafe fn dot_i8_i8(a: __m256i, b: __m256i) -> __m256 {
    dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// `sum over blocks b < nb of d_b * v_b` (lane-wise, then summed) where `f(b) = (d_b, v_b)`,
/// with two accumulators for even and odd blocks: a single chain of FMAs would be bound by
/// their latency. `f` is called at one place only: with several call sites LLVM kept the
/// closure out of line (a call per block, its vectors passed through memory).
#[inline(always)]
unsafe fn sum_blocks(nb: usize, mut f: impl FnMut(usize) -> (__m256, __m256)) -> f32 {
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for b in 0..nb {
        let (d, v) = f(b);
        a0 = _mm256_fmadd_ps(d, v, a0);
        // The next block goes into the other accumulator (register renaming, no data moved).
        std::mem::swap(&mut a0, &mut a1);
    }
    hsum(_mm256_add_ps(a0, a1))
}

// ---- float types ----

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const f32, x as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let n32 = n / 32 * 32;
    let mut i = 0;
    while i < n32 {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(ld_ps(w.add(i + 8 * k)), ld_ps(x.add(i + 8 * k)), *a);
        }
        i += 32;
    }
    let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += w.add(i).read_unaligned() * x.add(i).read_unaligned();
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let n32 = n / 32 * 32;
    let mut i = 0;
    while i < n32 {
        for (k, a) in acc.iter_mut().enumerate() {
            let o = 2 * (i + 8 * k);
            let wv = _mm256_cvtph_ps(ld128(w.add(o)));
            let xv = _mm256_cvtph_ps(ld128(x.add(o)));
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
        i += 32;
    }
    let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += h2f(w.add(2 * i)) * h2f(x.add(2 * i));
        i += 1;
    }
    s
}

/// 8 bf16 at `p` as f32 (shift each into the top half of a 32-bit lane).
#[inline(always)]
unsafe fn bf16x8(p: *const u8) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(p)), 16))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let n32 = n / 32 * 32;
    let mut i = 0;
    while i < n32 {
        for (k, a) in acc.iter_mut().enumerate() {
            let o = 2 * (i + 8 * k);
            *a = _mm256_fmadd_ps(bf16x8(w.add(o)), bf16x8(x.add(o)), *a);
        }
        i += 32;
    }
    let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        let f = |p: *const u8| f32::from_bits((u16::from_le_bytes([*p, *p.add(1)]) as u32) << 16);
        s += f(w.add(2 * i)) * f(x.add(2 * i));
        i += 1;
    }
    s
}

// ---- quantized types (32-element blocks against Q8_0 / Q8_1) ----

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ4_0, x as *const BlockQ8_0);
    sum_blocks(n / 32, |b| {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        crate::isa::prefetch_ahead(wb);
        let y = ld256(xb.qs.as_ptr());
        // (q - 8) . y as q . y - 8 . y on 16-bit pair sums (|sum| <= 15*128*2: no overflow).
        let p16 = _mm256_sub_epi16(
            _mm256_maddubs_epi16(nibbles(wb.qs.as_ptr()), y),
            _mm256_maddubs_epi16(_mm256_set1_epi8(8), y),
        );
        let i = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        (_mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr())), _mm256_cvtepi32_ps(i))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ4_1, x as *const BlockQ8_1);
    let mut mins = 0f32;
    let dots = sum_blocks(n / 32, |b| {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        crate::isa::prefetch_ahead(wb);
        let y = ld256(xb.qs.as_ptr());
        mins += h2f(wb.m.as_ptr()) * h2f(xb.s.as_ptr());
        (_mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr())), dot_u8_i8(nibbles(wb.qs.as_ptr()), y))
    });
    dots + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ5_0, x as *const BlockQ8_0);
    sum_blocks(n / 32, |b| {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        crate::isa::prefetch_ahead(wb);
        let q = _mm256_or_si256(nibbles(wb.qs.as_ptr()), fifth_bits(wb.qh.as_ptr()));
        let y = ld256(xb.qs.as_ptr());
        // (q - 16) . y as q . y - 16 . y on 16-bit pair sums (|sum| <= 31*128*2: no overflow).
        let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(_mm256_set1_epi8(16), y));
        let i = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        (_mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr())), _mm256_cvtepi32_ps(i))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ5_1, x as *const BlockQ8_1);
    let mut mins = 0f32;
    let dots = sum_blocks(n / 32, |b| {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        crate::isa::prefetch_ahead(wb);
        let q = _mm256_or_si256(nibbles(wb.qs.as_ptr()), fifth_bits(wb.qh.as_ptr()));
        let y = ld256(xb.qs.as_ptr());
        mins += h2f(wb.m.as_ptr()) * h2f(xb.s.as_ptr());
        (_mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr())), dot_u8_i8(q, y))
    });
    dots + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ8_0, x as *const BlockQ8_0);
    sum_blocks(n / 32, |b| {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        crate::isa::prefetch_ahead(wb);
        let q = ld256(wb.qs.as_ptr());
        let y = ld256(xb.qs.as_ptr());
        (_mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr())), dot_i8_i8(q, y))
    })
}

// ---- activation quantizers ----

/// Quantize 32 floats at `x` with the reference's x86 rule; returns (d, sum of the quants) and
/// stores the 32 quants at `q`.
#[inline(always)]
unsafe fn quantize_block_q8(x: *const f32, q: *mut u8) -> (f32, i32) {
    let v = [ld_ps(x), ld_ps(x.add(8)), ld_ps(x.add(16)), ld_ps(x.add(24))];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut i = [_mm256_setzero_si256(); 4];
    for k in 0..4 {
        let r = _mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        i[k] = _mm256_cvtps_epi32(r);
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    // Saturating packs (32 -> 16 -> 8 bits) interleave 128-bit lanes; the permute restores order.
    let p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q as *mut __m256i, p);
    (d, _mm_cvtsi128_si32(s4))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_0_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = quantize_block_q8(x.as_ptr(), b.as_mut_ptr().add(2));
        b[..2].copy_from_slice(&crate::types::f32_to_f16(d));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_1_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = quantize_block_q8(x.as_ptr(), b.as_mut_ptr().add(4));
        b[..2].copy_from_slice(&crate::types::f32_to_f16(d));
        b[2..4].copy_from_slice(&crate::types::f32_to_f16(d * sum as f32));
    }
}

fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    assert!(
        src.len().is_multiple_of(32) && dst.len() == src.len() / 32 * 34,
        "Q8_0 quantize: {} values into {} bytes",
        src.len(),
        dst.len()
    );
    // SAFETY: installed only when AVX2/FMA/F16C were detected; whole blocks, lengths checked.
    unsafe { quantize_q8_0_k(src, dst) }
}

fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    assert!(
        src.len().is_multiple_of(32) && dst.len() == src.len() / 32 * 36,
        "Q8_1 quantize: {} values into {} bytes",
        src.len(),
        dst.len()
    );
    // SAFETY: installed only when AVX2/FMA/F16C were detected; whole blocks, lengths checked.
    unsafe { quantize_q8_1_k(src, dst) }
}

/// Tile kernels (3 rows x 4 tokens) for the 32-element block types: each weight block is
/// unpacked once per tile and used for 4 tokens, each activation block loaded once and used
/// for 3 rows. Unsigned levels (nibbles, fifth bits) go straight into `vpmaddubsw` (no
/// saturation: 31 * 127 * 2 < 2^15) and the level offset comes back in the integer domain once
/// per activation block (`-offset * sum(x)` per lane); Q8_0 weights use the sign trick
/// (|w| and x with w's sign), |w| taken once per block. With AVX-VNNI (Alder Lake, Zen 5 and
/// later; chosen at run time) each (row, token, block) is one `vpdpbusd` onto the offset term
/// instead of `vpmaddubsw` + `vpmaddwd` + add (Q8_0 weights made unsigned by a sign-bit flip,
/// offset 128), which is faster for every type (`examples/bench`; figures in docs/benchmarks.md).
mod tiles {
    use super::*;

    pub const ROWS: usize = 3;
    pub const TOKENS: usize = 4;

    /// One weight block: the 32 levels, the scale, the minimum (0 without), as the kernel wants.
    trait W {
        const BYTES: usize;
        /// Subtracted from the levels (0 for types with a minimum and for Q8_0).
        const OFFSET: i8;
        const SIGNED: bool;
        const HAS_MIN: bool;
        /// # Safety
        /// One block readable at `p`; AVX2/FMA/F16C.
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32);
    }

    struct Q4_0;
    impl W for Q4_0 {
        const BYTES: usize = 18;
        const OFFSET: i8 = 8;
        const SIGNED: bool = false;
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
            (nibbles(p.add(2)), h2f(p), 0.0)
        }
    }
    struct Q4_1;
    impl W for Q4_1 {
        const BYTES: usize = 20;
        const OFFSET: i8 = 0;
        const SIGNED: bool = false;
        const HAS_MIN: bool = true;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
            (nibbles(p.add(4)), h2f(p), h2f(p.add(2)))
        }
    }
    struct Q5_0;
    impl W for Q5_0 {
        const BYTES: usize = 22;
        const OFFSET: i8 = 16;
        const SIGNED: bool = false;
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
            (_mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2))), h2f(p), 0.0)
        }
    }
    struct Q5_1;
    impl W for Q5_1 {
        const BYTES: usize = 24;
        const OFFSET: i8 = 0;
        const SIGNED: bool = false;
        const HAS_MIN: bool = true;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
            (_mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4))), h2f(p), h2f(p.add(2)))
        }
    }
    struct Q8_0;
    impl W for Q8_0 {
        const BYTES: usize = 34;
        const OFFSET: i8 = 0;
        const SIGNED: bool = true;
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
            (ld256(p.add(2)), h2f(p), 0.0)
        }
    }

    /// `R` rows x `C` tokens of `nb` blocks against Q8_0 (`XB` = 34, `XQ` = 2) or Q8_1
    /// (36, 4, with `s` at 2) activations.
    ///
    /// # Safety
    /// Rows `r < R` hold `nb` blocks at `w + r * ws`, tokens `c < C` at `x + c * xs`,
    /// `out + c * os + r` is writable; AVX2/FMA/F16C.
    #[inline(always)]
    unsafe fn tile<T: W, const XB: usize, const XQ: usize, const R: usize, const C: usize, const V: bool>(
        nb: usize,
        w: *const u8,
        ws: usize,
        x: *const u8,
        xs: usize,
        out: *mut f32,
        os: usize,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut mins = [[0f32; C]; R];
        for b in 0..nb {
            let mut qw = [_mm256_setzero_si256(); R];
            let mut dw = [0f32; R];
            let mut mw = [0f32; R];
            for r in 0..R {
                let p = w.add(r * ws + b * T::BYTES);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(768) as *const i8);
                let (q, d, m) = T::load(p);
                qw[r] = match (T::SIGNED, V) {
                    // AVX-VNNI: signed quants + 128 (a sign-bit flip), the 128 taken back below
                    (true, true) => _mm256_xor_si256(q, _mm256_set1_epi8(-128)),
                    (true, false) => _mm256_sign_epi8(q, q),
                    (false, _) => q,
                };
                dw[r] = d;
                mw[r] = m;
            }
            for c in 0..C {
                let xp = x.add(c * xs + b * XB);
                let qx = ld256(xp.add(XQ));
                let dx = h2f(xp);
                let offset: u8 = if T::SIGNED && V { 128 } else { T::OFFSET as u8 };
                let base = if offset == 0 {
                    _mm256_setzero_si256()
                } else if V {
                    let s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(offset as i8), qx);
                    _mm256_sub_epi32(_mm256_setzero_si256(), s)
                } else {
                    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(offset as i8), qx), ones);
                    _mm256_sub_epi32(_mm256_setzero_si256(), s)
                };
                for r in 0..R {
                    if V {
                        // one instruction for the 32 products, added to the offset term
                        let i = _mm256_dpbusd_avx_epi32(base, qw[r], qx);
                        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(dw[r] * dx), acc[r][c]);
                        if T::HAS_MIN {
                            mins[r][c] += mw[r] * h2f(xp.add(2));
                        }
                        continue;
                    }
                    let y = if T::SIGNED {
                        // Reload the signed weights' sign from the original quants.
                        let q = ld256(w.add(r * ws + b * T::BYTES + 2));
                        _mm256_sign_epi8(qx, q)
                    } else {
                        qx
                    };
                    let i = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(qw[r], y), ones), base);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(dw[r] * dx), acc[r][c]);
                    if T::HAS_MIN {
                        mins[r][c] += mw[r] * h2f(xp.add(2));
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(c * os + r) = hsum(acc[r][c]) + mins[r][c];
            }
        }
    }

    macro_rules! tile_fn {
        ($name:ident, $T:ty, $xb:literal, $xq:literal, $label:expr) => {
            /// The tile kernel, with (`V`) or without AVX-VNNI.
            pub fn $name<const V: bool>(t: Tile<'_>) {
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn go(
                    nb: usize,
                    w: *const u8,
                    ws: usize,
                    nr: usize,
                    x: *const u8,
                    xs: usize,
                    nc: usize,
                    out: *mut f32,
                    os: usize,
                ) {
                    tile_shapes!($T, $xb, $xq, false, nb, w, ws, nr, x, xs, nc, out, os)
                }
                #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn go_vnni(
                    nb: usize,
                    w: *const u8,
                    ws: usize,
                    nr: usize,
                    x: *const u8,
                    xs: usize,
                    nc: usize,
                    out: *mut f32,
                    os: usize,
                ) {
                    tile_shapes!($T, $xb, $xq, true, nb, w, ws, nr, x, xs, nc, out, os)
                }
                let nb = check_tile(&t, <$T>::BYTES, $xb, concat!($label, " gemm"));
                let go = if V { go_vnni } else { go };
                let Tile { w, w_stride, rows, x, x_stride, tokens, out, out_stride, .. } = t;
                // SAFETY: installed only when AVX2/FMA/F16C were detected (and AVX-VNNI for
                // `V`, see `gemm_with`); every row, token and output the tile touches was just
                // checked to be inside the slices.
                unsafe {
                    go(nb, w.as_ptr(), w_stride, rows, x.as_ptr(), x_stride, tokens, out.as_mut_ptr(), out_stride)
                }
            }
        };
    }

    /// The tile kernel instantiated for the tile's shape (`nr` x `nc`).
    macro_rules! tile_shapes {
        ($T:ty, $xb:literal, $xq:literal, $v:literal, $nb:ident, $w:ident, $ws:ident, $nr:ident, $x:ident, $xs:ident, $nc:ident, $out:ident, $os:ident) => {{
            macro_rules! by_c {
                ($r:literal) => {
                    match $nc {
                        1 => tile::<$T, $xb, $xq, $r, 1, $v>($nb, $w, $ws, $x, $xs, $out, $os),
                        2 => tile::<$T, $xb, $xq, $r, 2, $v>($nb, $w, $ws, $x, $xs, $out, $os),
                        3 => tile::<$T, $xb, $xq, $r, 3, $v>($nb, $w, $ws, $x, $xs, $out, $os),
                        _ => tile::<$T, $xb, $xq, $r, 4, $v>($nb, $w, $ws, $x, $xs, $out, $os),
                    }
                };
            }
            match $nr {
                1 => by_c!(1),
                2 => by_c!(2),
                _ => by_c!(3),
            }
        }};
    }

    /// The bounds a tile call must meet (blocks of `wb` weight and `xb` activation bytes);
    /// returns the number of blocks. `what` names the kernel in a failure.
    fn check_tile(t: &Tile<'_>, wb: usize, xb: usize, what: &str) -> usize {
        let (nr, nc) = (t.rows, t.tokens);
        assert!((1..=ROWS).contains(&nr) && (1..=TOKENS).contains(&nc), "{what}: tile {nr}x{nc} is too large or empty");
        t.blocks(32, wb, xb, what)
    }

    tile_fn!(q4_0, Q4_0, 34, 2, "Q4_0");
    tile_fn!(q4_1, Q4_1, 36, 4, "Q4_1");
    tile_fn!(q5_0, Q5_0, 34, 2, "Q5_0");
    tile_fn!(q5_1, Q5_1, 36, 4, "Q5_1");
    tile_fn!(q8_0, Q8_0, 34, 2, "Q8_0");
}

// ---- one token against many rows (Q4_0, Q4_1, Q5_0, Q5_1) ----

/// The one-token kernels of the nibble types: two blocks per step, with the activations
/// rearranged once per call so that the two blocks' 16-value halves share registers.
///
/// Row by row (`vec_dot`), every block costs the nibble unpacking, two `vpmaddubsw` (one of
/// them for the offset), a `vpmaddwd`, a convert, two scale lookups, a multiply and a
/// multiply-add, and every row redoes the activation side. Here the block pair's quants are one
/// 32-byte register ([block 0 | block 1] bytes), its low and high nibbles meet the matching
/// activation halves in two `vpmaddubsw` whose 16-bit sums add without overflow (at most
/// 2 * 31 * 127 each), then one `vpmaddwd`, one convert and one multiply-add serve both blocks
/// (lanes 0..4 block 0, 4..8 block 1); the offset comes from the prepared activations as an
/// exact i32 per lane, the scales (and minimums) of both blocks from one `vcvtph2ps`.
/// Measured (`examples/gemv_hot` with LLAMAFILE_ISA=avx2, 128 x 14336, ns per block): Q4_0
/// 0.98 -> 0.80, Q4_1 1.39 -> 0.81, Q5_0 1.21 -> 1.05, Q5_1 1.47 -> 1.02.
mod pairs {
    use super::*;
    use crate::isa::GemvFn;
    use std::cell::RefCell;

    /// A nibble type's block layout and its activation type's.
    pub(super) trait Layout {
        const BYTES: usize;
        const QS: usize;
        const QH: Option<usize>;
        /// Byte of the f16 minimum (Q4_1, Q5_1).
        const M: Option<usize>;
        /// What the quants were offset by (Q4_0: 8, Q5_0: 16; 0 with a minimum).
        const OFFSET: i32;
        /// Activation block: Q8_0 (34 bytes, quants at 2) or Q8_1 (36 bytes, `s` at 2, quants at 4).
        const X_BYTES: usize = if Self::M.is_some() { 36 } else { 34 };
        /// The row-by-row kernel (for a last odd block).
        const DOT: unsafe fn(usize, *const u8, *const u8) -> f32;
    }
    pub(super) struct Q40;
    pub(super) struct Q41;
    pub(super) struct Q50;
    pub(super) struct Q51;
    impl Layout for Q40 {
        const BYTES: usize = 18;
        const QS: usize = 2;
        const QH: Option<usize> = None;
        const M: Option<usize> = None;
        const OFFSET: i32 = 8;
        const DOT: unsafe fn(usize, *const u8, *const u8) -> f32 = dot_q4_0_k;
    }
    impl Layout for Q41 {
        const BYTES: usize = 20;
        const QS: usize = 4;
        const QH: Option<usize> = None;
        const M: Option<usize> = Some(2);
        const OFFSET: i32 = 0;
        const DOT: unsafe fn(usize, *const u8, *const u8) -> f32 = dot_q4_1_k;
    }
    impl Layout for Q50 {
        const BYTES: usize = 22;
        const QS: usize = 6;
        const QH: Option<usize> = Some(2);
        const M: Option<usize> = None;
        const OFFSET: i32 = 16;
        const DOT: unsafe fn(usize, *const u8, *const u8) -> f32 = dot_q5_0_k;
    }
    impl Layout for Q51 {
        const BYTES: usize = 24;
        const QS: usize = 8;
        const QH: Option<usize> = Some(4);
        const M: Option<usize> = Some(2);
        const OFFSET: i32 = 0;
        const DOT: unsafe fn(usize, *const u8, *const u8) -> f32 = dot_q5_1_k;
    }

    /// Two activation blocks: values 0..16 of both, values 16..32 of both, then per lane the
    /// i32 `-offset * sum(x)` (offset types) or, in lanes 0..4 as f32, `[0, 0, s0, s1]` (Q8_1
    /// sums, against `[d0, d1, m0, m1]`), then the scales `[d0 x 4, d1 x 4]`.
    #[derive(Clone, Copy)]
    #[repr(C, align(32))]
    pub(super) struct PairX {
        y: [[i8; 32]; 2],
        extra: [u32; 8],
        d: [f32; 8],
    }

    thread_local! {
        /// Each thread's prepared activations (grow to the longest row, then reused).
        static PREP: RefCell<Vec<PairX>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn gemv(t: WeightType) -> Option<GemvFn> {
        if is_x86_feature_detected!("avxvnni") {
            gemv_with::<true>(t)
        } else {
            gemv_with::<false>(t)
        }
    }

    /// The kernels with (`V`) or without AVX-VNNI; `V` only where the CPU has it.
    pub(super) fn gemv_with<const V: bool>(t: WeightType) -> Option<GemvFn> {
        if V && !is_x86_feature_detected!("avxvnni") {
            return None;
        }
        Some(match t {
            WeightType::Q4_0 => gemv_safe::<Q40, V>,
            WeightType::Q4_1 => gemv_safe::<Q41, V>,
            WeightType::Q5_0 => gemv_safe::<Q50, V>,
            WeightType::Q5_1 => gemv_safe::<Q51, V>,
            _ => return None,
        })
    }

    fn gemv_safe<L: Layout, const V: bool>(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
        let nb = n / 32;
        assert!(
            n.is_multiple_of(32)
                && out.len() >= nr
                && (nr == 0 || w.len() >= (nr - 1) * w_stride + nb * L::BYTES)
                && x.len() >= nb * L::X_BYTES,
            "gemv: {nr} rows of {n} elements do not fit their buffers"
        );
        // The borrow is taken here, outside the `#[target_feature]` code (a closure inside it
        // would be compiled without those features).
        PREP.with(|cell| {
            let mut prep = cell.borrow_mut();
            if prep.len() < nb / 2 {
                prep.resize(nb / 2, PairX { y: [[0; 32]; 2], extra: [0; 8], d: [0.0; 8] });
            }
            // SAFETY: installed only when AVX2/FMA/F16C were detected (and AVX-VNNI for the
            // second); every row, the activations and the outputs were checked to be inside the
            // slices, and `prep` holds `nb / 2` pairs.
            unsafe {
                if V {
                    gemv_k_vnni::<L>(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), out.as_mut_ptr(), prep.as_mut_ptr())
                } else {
                    gemv_k::<L>(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), out.as_mut_ptr(), prep.as_mut_ptr())
                }
            }
        })
    }

    /// # Safety
    /// AVX2/FMA/F16C; rows `r < nr` hold `nb` blocks at `w + r * ws`, `x` holds `nb`
    /// activation blocks, `out[..nr]` is writable, `prep` has room for `nb / 2` pairs.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gemv_k<L: Layout>(
        nb: usize,
        w: *const u8,
        ws: usize,
        nr: usize,
        x: *const u8,
        out: *mut f32,
        prep: *mut PairX,
    ) {
        gemv_body::<L, false>(nb, w, ws, nr, x, out, prep)
    }

    /// `gemv_k` with AVX-VNNI: the two products of a pair are two `vpdpbusd` onto the offset
    /// term (instead of two `vpmaddubsw`, an add, a `vpmaddwd` and an add).
    ///
    /// # Safety
    /// As `gemv_k`, and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn gemv_k_vnni<L: Layout>(
        nb: usize,
        w: *const u8,
        ws: usize,
        nr: usize,
        x: *const u8,
        out: *mut f32,
        prep: *mut PairX,
    ) {
        gemv_body::<L, true>(nb, w, ws, nr, x, out, prep)
    }

    #[inline(always)]
    unsafe fn gemv_body<L: Layout, const V: bool>(
        nb: usize,
        w: *const u8,
        ws: usize,
        nr: usize,
        x: *const u8,
        out: *mut f32,
        prep: *mut PairX,
    ) {
        let np = nb / 2;
        let xq = L::X_BYTES - 32;
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        for p in 0..np {
            let (xa, xb) = (x.add(2 * p * L::X_BYTES), x.add((2 * p + 1) * L::X_BYTES));
            let y1 = _mm256_set_m128i(ld128(xb.add(xq)), ld128(xa.add(xq)));
            let y2 = _mm256_set_m128i(ld128(xb.add(xq + 16)), ld128(xa.add(xq + 16)));
            let slot = &mut *prep.add(p);
            _mm256_store_si256(slot.y[0].as_mut_ptr() as *mut __m256i, y1);
            _mm256_store_si256(slot.y[1].as_mut_ptr() as *mut __m256i, y2);
            if L::OFFSET != 0 {
                let sum = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, y1), _mm256_maddubs_epi16(ones8, y2));
                let base = _mm256_mullo_epi32(_mm256_madd_epi16(sum, ones16), _mm256_set1_epi32(-L::OFFSET));
                _mm256_store_si256(slot.extra.as_mut_ptr() as *mut __m256i, base);
            } else {
                slot.extra = [0, 0, h2f(xa.add(2)).to_bits(), h2f(xb.add(2)).to_bits(), 0, 0, 0, 0];
            }
            let (da, db) = (h2f(xa), h2f(xb));
            slot.d = [da, da, da, da, db, db, db, db];
        }
        let prep = std::slice::from_raw_parts(prep as *const PairX, np);
        for r in 0..nr {
            *out.add(r) = row::<L, V>(nb, w.add(r * ws), x, prep);
        }
    }

    /// f16 at `p` (little-endian, any alignment) as its bits.
    #[inline(always)]
    unsafe fn half_bits(p: *const u8) -> u64 {
        u16::from_le_bytes([*p, *p.add(1)]) as u64
    }

    /// 32 bytes: 0x10 where the fifth bit of the quant at that place (in the pair's register
    /// layout; `high`: values 16..32) is set. `rep` holds block 0's `qh` u32 in every 32-bit
    /// lane of the low half, block 1's in the high half.
    #[inline(always)]
    unsafe fn fifth(rep: __m256i, high: bool) -> __m256i {
        let ctl = if high {
            _mm256_setr_epi64x(
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            )
        } else {
            _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0, 0x0101_0101_0101_0101)
        };
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(rep, ctl), sel), sel);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// One row: whole pairs, then a last odd block through the row-by-row kernel.
    #[inline(always)]
    unsafe fn row<L: Layout, const V: bool>(nb: usize, w: *const u8, x: *const u8, prep: &[PairX]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0f);
        let ones16 = _mm256_set1_epi16(1);
        let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut mins = _mm_setzero_ps();
        for (p, a) in prep.iter().enumerate() {
            let pa = w.add(2 * p * L::BYTES);
            let pb = pa.add(L::BYTES);
            // Prefetch hint (never faults): a pair is at most 48 bytes, so one per pair
            // reaches every line.
            _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(crate::isa::PREFETCH_AHEAD) as *const i8);
            let q = _mm256_set_m128i(ld128(pb.add(L::QS)), ld128(pa.add(L::QS)));
            let mut v1 = _mm256_and_si256(q, m4);
            let mut v2 = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if let Some(qh) = L::QH {
                let ha = u32::from_le_bytes([*pa.add(qh), *pa.add(qh + 1), *pa.add(qh + 2), *pa.add(qh + 3)]);
                let hb = u32::from_le_bytes([*pb.add(qh), *pb.add(qh + 1), *pb.add(qh + 2), *pb.add(qh + 3)]);
                let rep = _mm256_set_m128i(_mm_set1_epi32(hb as i32), _mm_set1_epi32(ha as i32));
                v1 = _mm256_or_si256(v1, fifth(rep, false));
                v2 = _mm256_or_si256(v2, fifth(rep, true));
            }
            let y = a.y.as_ptr() as *const __m256i;
            let base = if L::OFFSET != 0 {
                _mm256_load_si256(a.extra.as_ptr() as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let i = if V {
                _mm256_dpbusd_avx_epi32(
                    _mm256_dpbusd_avx_epi32(base, v1, _mm256_load_si256(y)),
                    v2,
                    _mm256_load_si256(y.add(1)),
                )
            } else {
                let p16 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(v1, _mm256_load_si256(y)),
                    _mm256_maddubs_epi16(v2, _mm256_load_si256(y.add(1))),
                );
                let i = _mm256_madd_epi16(p16, ones16);
                if L::OFFSET != 0 {
                    _mm256_add_epi32(i, base)
                } else {
                    i
                }
            };
            // [d0, d1, m0, m1] of the weights in one conversion
            let mut bits = half_bits(pa) | half_bits(pb) << 16;
            if let Some(m) = L::M {
                bits |= half_bits(pa.add(m)) << 32 | half_bits(pb.add(m)) << 48;
            }
            let h = _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64));
            let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(h), spread);
            let dd = _mm256_mul_ps(dw, _mm256_load_ps(a.d.as_ptr()));
            acc[p & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), dd, acc[p & 1]);
            if L::M.is_some() {
                mins = _mm_fmadd_ps(h, _mm_load_ps(a.extra.as_ptr() as *const f32), mins);
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc[0], acc[1]));
        let m = _mm_add_ps(mins, _mm_movehl_ps(mins, mins));
        sum += _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
        if nb % 2 == 1 {
            // the last block alone, through the row-by-row kernel
            let b = nb - 1;
            let (wl, xl) = (w.add(b * L::BYTES), x.add(b * L::X_BYTES));
            sum += (L::DOT)(32, wl, xl);
        }
        sum
    }
}

/// Many rows against one token (the nibble types; see `pairs`).
pub fn gemv(t: WeightType) -> Option<crate::isa::GemvFn> {
    pairs::gemv(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::q8_k::test_util::strided_rows;
    use crate::types::quantize_row;

    /// The tile kernels, with and without AVX-VNNI (where the CPU has it), against the scalar
    /// specification for every tile shape, odd and even block counts, strided rows and tokens.
    #[test]
    fn tiles_with_and_without_vnni_match_scalar() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let variants: &[bool] = if is_x86_feature_detected!("avxvnni") { &[false, true] } else { &[false] };
        if variants.len() == 1 {
            eprintln!("note: no AVX-VNNI here, only the plain AVX2 tiles are checked");
        }
        use WeightType::*;
        for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
            let at = t.vec_dot_type();
            let scalar = crate::isa::scalar::vec_dot(t).unwrap();
            for &vnni in variants {
                let (tile, rows, tokens) = gemm_with(t, vnni).unwrap();
                for nb in [1usize, 2, 7, 64] {
                    let n = nb * 32;
                    let (wrb, xrb) = (t.row_bytes(n), at.row_bytes(n));
                    let (w, ws) = strided_rows(t, n, rows, 34, 3 + 10 * nb as u64);
                    let (x, xs) = strided_rows(at, n, tokens, 36, 500 + 10 * nb as u64);
                    for nr in 1..=rows {
                        for nc in 1..=tokens {
                            let os = rows + 1;
                            let mut out = vec![f32::NAN; os * tokens];
                            tile(Tile {
                                n,
                                w: &w,
                                w_stride: ws,
                                rows: nr,
                                x: &x,
                                x_stride: xs,
                                tokens: nc,
                                out: &mut out,
                                out_stride: os,
                            });
                            for r in 0..nr {
                                for c in 0..nc {
                                    let want = scalar(n, &w[r * ws..r * ws + wrb], &x[c * xs..c * xs + xrb]);
                                    let got = out[c * os + r];
                                    let tol = 1e-4 * (n as f32).sqrt() * want.abs().max(1.0);
                                    assert!(
                                        (got - want).abs() <= tol,
                                        "{t:?} vnni {vnni} nb {nb} tile {nr}x{nc} ({r}, {c}): {got} vs scalar {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The one-token kernels of the nibble types (with and without AVX-VNNI, where the CPU has
    /// it) against the scalar specification: odd and even block counts (a last block alone), a
    /// single block, long rows, and a row stride longer than a row with plausible blocks in the
    /// gaps (reading past a row changes the result).
    #[test]
    fn gemv_matches_scalar_for_odd_even_and_long_rows() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        use WeightType::*;
        for t in [Q4_0, Q4_1, Q5_0, Q5_1] {
            let at = t.vec_dot_type();
            let scalar = crate::isa::scalar::vec_dot(t).unwrap();
            for nb in [1usize, 2, 3, 8, 9, 127, 448] {
                let n = nb * 32;
                let rows = 4;
                let wrb = t.row_bytes(n);
                let (w, ws) = strided_rows(t, n, rows, 34, 7 + 10 * nb as u64);
                let mut x = vec![0u8; at.row_bytes(n)];
                quantize_row(at, &crate::types::q8_k::test_util::spiky_values(n, 99 + nb as u64, 1.0), &mut x);
                let mut out = vec![f32::NAN; rows];
                let variants = [pairs::gemv_with::<false>(t), pairs::gemv_with::<true>(t)];
                for (vnni, g) in variants.iter().enumerate() {
                    let Some(g) = g else { continue };
                    g(n, &w, ws, rows, &x, &mut out);
                    for r in 0..rows {
                        let want = scalar(n, &w[r * ws..r * ws + wrb], &x);
                        let tol = 1e-4 * (n as f32).sqrt() * want.abs().max(1.0);
                        assert!(
                            (out[r] - want).abs() <= tol,
                            "{t:?} vnni {vnni} nb {nb} row {r}: gemv {} vs scalar {want}",
                            out[r]
                        );
                    }
                }
            }
        }
    }
}
