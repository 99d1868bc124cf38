//! avx2 dot products of the IQ4 types: IQ4_NL against Q8_0 and IQ4_XS against Q8_K.
//!
//! 32 values at a time: the 16 index bytes of a block (IQ4_NL) or sub-block (IQ4_XS) become
//! 32 signed codebook values with one `vpshufb` of `types::iq4_nl::KVALUES` (low nibbles =
//! values 0..16, high = 16..32, the activations' order). `vpmaddubsw` needs one unsigned
//! operand: it takes `|v|` and the activations with `v`'s sign (`vpsignb`), pairs summed in 16
//! bits without saturation (2 * 127 * 127 < 2^15), then `vpmaddwd` sums pairs into i32 lanes
//! (by ones for IQ4_NL, by the sub-block scale `ls - 32` for IQ4_XS: exact integers as in the
//! scalar specification), and each block costs one convert and one multiply-add by its scales.
//! The one-token and many-token paths use these row by row (the `matmul` fallbacks).
//!
//! Installed only when `super::available()` (AVX2, FMA, F16C), which is what makes calling
//! the `#[target_feature]` code sound.

use super::legacy::{h2f, ld128, ld256};
use crate::isa::VecDotFn;
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
