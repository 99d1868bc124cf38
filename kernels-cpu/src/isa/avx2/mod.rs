//! avx2 kernels. Every ISA module has the same lookups (`vec_dot`, `gemm`, `gemv`, `quantize`,
//! `panel`); `None` = not provided here, and
//! `Kernels::for_isa` falls back to a lower ISA. The kernels themselves live in `legacy`
//! (F16/BF16/Q4_0..Q8_1), `kquants` (Q2_K..Q8_K), `iq4` and `iq4gemv` (IQ4_NL, IQ4_XS) and the panels; they are only
//! installed when `available()` is true, which is what makes calling their `#[target_feature]`
//! code sound.

use super::{GemmTileFn, GemvFn, PanelFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;

mod iq4;
mod iq4gemv;
mod iq4panel;
mod kpanel;
mod kquants;
mod legacy;
mod lpanel;

/// AVX2 + FMA + F16C.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    legacy::vec_dot(t).or_else(|| kquants::vec_dot(t)).or_else(|| iq4::vec_dot(t))
}

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    legacy::gemm(t).or_else(|| kquants::gemm(t)).or_else(|| iq4::gemm(t))
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    legacy::quantize(t).or_else(|| kquants::quantize(t))
}

/// Many rows against one token (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, IQ4_NL and IQ4_XS; others use
/// `vec_dot` row by row).
pub fn gemv(t: WeightType) -> Option<GemvFn> {
    legacy::gemv(t).or_else(|| kquants::gemv(t)).or_else(|| iq4::gemv(t))
}

/// Many tokens at once for the legacy types, Q4_K and IQ4_XS (see `lpanel`, `kpanel`,
/// `iq4panel`).
pub fn panel(t: WeightType) -> Option<PanelFn> {
    lpanel::panel(t).or_else(|| kpanel::panel(t)).or_else(|| iq4panel::panel(t))
}

/// f16 helpers for the KV cache (used by `ops`). Callers must have checked `available()`.
pub(crate) mod f16ops {
    use half::f16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`super::available()`), and `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len();
        let n16 = n / 16 * 16;
        let (pa, pb) = (a.as_ptr(), b.as_ptr() as *const u16);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n16 {
            // SAFETY: i + 16 <= n for both slices (equal lengths), unaligned loads.
            unsafe {
                let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
                let b1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8) as *const __m128i));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), b0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), b1, acc1);
            }
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        for j in n16..n {
            s += a[j] * b[j].to_f32();
        }
        s
    }

    /// # Safety
    /// As `dot_f32_f16`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
        let n = a.len();
        let n16 = n / 16 * 16;
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr() as *const u16);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n16 {
            // SAFETY: i + 16 <= n for both slices (equal lengths), unaligned loads.
            unsafe {
                let a0 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i) as *const __m128i));
                let a1 = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i + 8) as *const __m128i));
                let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
                let b1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8) as *const __m128i));
                acc0 = _mm256_fmadd_ps(a0, b0, acc0);
                acc1 = _mm256_fmadd_ps(a1, b1, acc1);
            }
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        for j in n16..n {
            s += a[j].to_f32() * b[j].to_f32();
        }
        s
    }

    /// `y += a * x`.
    /// # Safety
    /// As `dot_f32_f16` (`y.len() == x.len()`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len();
        let n8 = n / 8 * 8;
        let (py, px) = (y.as_mut_ptr(), x.as_ptr() as *const u16);
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n for both slices, unaligned loads and stores.
            unsafe {
                let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
                _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(py.add(i))));
            }
            i += 8;
        }
        for j in n8..n {
            y[j] += a * x[j].to_f32();
        }
    }

    /// # Safety
    /// As `dot_f32_f16` (`src.len() == dst.len()`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len();
        let n8 = n / 8 * 8;
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n for both slices, unaligned loads and stores.
            unsafe {
                let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(ps.add(i)));
                _mm_storeu_si128(pd.add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        for j in n8..n {
            dst[j] = f16::from_f32(src[j]);
        }
    }

    /// # Safety
    /// As `dot_f32_f16` (`src.len() == dst.len()`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len();
        let n8 = n / 8 * 8;
        let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n for both slices, unaligned loads and stores.
            unsafe { _mm256_storeu_ps(pd.add(i), _mm256_cvtph_ps(_mm_loadu_si128(ps.add(i) as *const __m128i))) };
            i += 8;
        }
        for j in n8..n {
            dst[j] = src[j].to_f32();
        }
    }

    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: only called from functions compiled with AVX enabled (inlined into them).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
}
