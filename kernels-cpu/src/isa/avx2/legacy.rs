//! avx2 kernels (AVX2 + FMA + F16C) for the legacy types: dot products of F32, F16, BF16,
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights, and the Q8_0 / Q8_1 activation quantizers
//! (byte-identical to the scalar specification, which is the reference's x86 rounding).
//!
//! Every kernel is an `unsafe fn` with `#[target_feature]` behind a safe wrapper that checks
//! the buffer lengths; the wrappers are handed out only by the lookups below, which
//! `Kernels::for_isa` calls only when `super::available()` is true.

use crate::isa::{GemmTileFn, QuantizeFn, VecDotFn};
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

pub fn gemm(_t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    None
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
        n % wbs == 0 && w.len() >= n / wbs * wts && x.len() >= n / xbs * xts,
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

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// An f16 stored at `p` (little-endian, any alignment) as f32, with F16C.
#[inline(always)]
unsafe fn h2f(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// 16 bytes of nibbles at `p` as 32 bytes: low nibbles first (elements 0..16), then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
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

// ---- float types ----

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const f32, x as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let n32 = n / 32 * 32;
    let mut i = 0;
    while i < n32 {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i + 8 * k)), _mm256_loadu_ps(x.add(i + 8 * k)), *a);
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
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.add(o) as *const __m128i));
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.add(o) as *const __m128i));
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
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
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
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        let q = _mm256_sub_epi8(nibbles(wb.qs.as_ptr()), _mm256_set1_epi8(8));
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr()));
        acc = _mm256_fmadd_ps(d, dot_i8_i8(q, y), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ4_1, x as *const BlockQ8_1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for b in 0..n / 32 {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr()));
        acc = _mm256_fmadd_ps(d, dot_u8_i8(nibbles(wb.qs.as_ptr()), y), acc);
        mins += h2f(wb.m.as_ptr()) * h2f(xb.s.as_ptr());
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ5_0, x as *const BlockQ8_0);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        let q = _mm256_or_si256(nibbles(wb.qs.as_ptr()), fifth_bits(wb.qh.as_ptr()));
        let q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr()));
        acc = _mm256_fmadd_ps(d, dot_i8_i8(q, y), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ5_1, x as *const BlockQ8_1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for b in 0..n / 32 {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        let q = _mm256_or_si256(nibbles(wb.qs.as_ptr()), fifth_bits(wb.qh.as_ptr()));
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr()));
        acc = _mm256_fmadd_ps(d, dot_u8_i8(q, y), acc);
        mins += h2f(wb.m.as_ptr()) * h2f(xb.s.as_ptr());
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_k(n: usize, w: *const u8, x: *const u8) -> f32 {
    let (w, x) = (w as *const BlockQ8_0, x as *const BlockQ8_0);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (wb, xb) = (&*w.add(b), &*x.add(b));
        let q = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(h2f(wb.d.as_ptr()) * h2f(xb.d.as_ptr()));
        acc = _mm256_fmadd_ps(d, dot_i8_i8(q, y), acc);
    }
    hsum(acc)
}

// ---- activation quantizers ----

/// Quantize 32 floats at `x` with the reference's x86 rule; returns (d, sum of the quants) and
/// stores the 32 quants at `q`.
#[inline(always)]
unsafe fn quantize_block_q8(x: *const f32, q: *mut u8) -> (f32, i32) {
    let v = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))];
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
    assert!(src.len() % 32 == 0 && dst.len() == src.len() / 32 * 34, "Q8_0 quantize: {} values into {} bytes", src.len(), dst.len());
    // SAFETY: installed only when AVX2/FMA/F16C were detected; whole blocks, lengths checked.
    unsafe { quantize_q8_0_k(src, dst) }
}

fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    assert!(src.len() % 32 == 0 && dst.len() == src.len() / 32 * 36, "Q8_1 quantize: {} values into {} bytes", src.len(), dst.len());
    // SAFETY: installed only when AVX2/FMA/F16C were detected; whole blocks, lengths checked.
    unsafe { quantize_q8_1_k(src, dst) }
}
