//! avx512 kernels for the legacy 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 against
//! Q8_0 / Q8_1 activations), with AVX-512 VNNI (`vpdpbusd`: u8 x i8, four products per i32
//! lane, exact).
//!
//! Two blocks (64 values) per 512-bit register. The weights are made unsigned once per block
//! and row (nibbles are already 0..15 or 0..31; Q8_0 quants get +128), and the offset comes
//! back exactly in the integer domain: `dot(q - o, x) = dpbusd(q, x) - dpbusd(o, x)`, the
//! second term computed once per activation block and used for every row of the tile. Then per
//! (row, token) and block pair: one `vpdpbusd`, a convert, and a multiply-add by the product of
//! the two scales (lanes 0..8 = first block, 8..16 = second). The minimums of Q4_1/Q5_1 add
//! `m * s` (Q8_1's `s = d * sum(q)`) once per block.
//!
//! The tile kernel takes up to 4 rows x 4 tokens: each weight block is unpacked once per tile
//! and used for 4 tokens, each activation block loaded once per tile and used for 4 rows.
//! Installed only when AVX-512 F/BW/VL, VNNI and the avx2 set are detected (see `supported`),
//! which is what makes calling the `#[target_feature]` code sound.

use crate::isa::{GemmTileFn, QuantizeFn, VecDotFn};
use crate::types::WeightType;
use std::arch::x86_64::*;

fn supported() -> bool {
    super::available() && is_x86_feature_detected!("avx512vnni")
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q4_0 => q4_0::vec_dot,
        WeightType::Q4_1 => q4_1::vec_dot,
        WeightType::Q5_0 => q5_0::vec_dot,
        WeightType::Q5_1 => q5_1::vec_dot,
        WeightType::Q8_0 => q8_0::vec_dot,
        _ => return None,
    })
}

/// Tile shape: rows x tokens.
const TILE_ROWS: usize = 4;
const TILE_TOKENS: usize = 4;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    if !supported() {
        return None;
    }
    let f: GemmTileFn = match t {
        WeightType::Q4_0 => q4_0::gemm,
        WeightType::Q4_1 => q4_1::gemm,
        WeightType::Q5_0 => q5_0::gemm,
        WeightType::Q5_1 => q5_1::gemm,
        WeightType::Q8_0 => q8_0::gemm,
        _ => return None,
    };
    Some((f, TILE_ROWS, TILE_TOKENS))
}

pub fn quantize(_t: WeightType) -> Option<QuantizeFn> {
    None
}

/// Two consecutive blocks of a weight type as the kernel wants them.
trait WeightBlocks {
    /// Bytes per block.
    const BYTES: usize;
    /// What was added to make the quants unsigned (0 for the types with a minimum).
    const OFFSET: u8;
    /// Whether blocks carry a minimum (`value = d * q + m`).
    const HAS_MIN: bool;
    /// Quants of the blocks at `p` (and `p + BYTES` when `two`; else zeros) as 64 unsigned
    /// bytes, and their scales as f32 `[d0, d1, m0, m1]` (zeros for a missing second block).
    ///
    /// # Safety
    /// `p` must point at one readable block, two when `two`; the CPU must have AVX-512 F/BW/VL.
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128);
}

/// Two consecutive activation blocks (Q8_0 or Q8_1).
trait ActBlocks {
    const BYTES: usize;
    /// Offset of the 32 quants in a block.
    const QS: usize;
    /// The signed quants (zeros for a missing second block) and `[d0, d1, s0, s1]`.
    ///
    /// # Safety
    /// As `WeightBlocks::load`.
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rd16(p: *const u8) -> i16 {
    i16::from_le_bytes([*p, *p.add(1)])
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rd32(p: *const u8) -> u32 {
    u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)])
}

/// Four f16 (as raw i16 bits) to f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn halves(a: i16, b: i16, c: i16, d: i16) -> __m128 {
    _mm_cvtph_ps(_mm_setr_epi16(a, b, c, d, 0, 0, 0, 0))
}

/// 32 bytes at `p` and, when `two`, 32 bytes at `q`, as one register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two32(p: *const u8, q: *const u8, two: bool) -> __m512i {
    let lo = _mm512_castsi256_si512(_mm256_loadu_si256(p as *const __m256i));
    if two {
        _mm512_inserti64x4(lo, _mm256_loadu_si256(q as *const __m256i), 1)
    } else {
        _mm512_zextsi256_si512(_mm512_castsi512_si256(lo))
    }
}

/// 16 bytes of nibbles at `p` and (when `two`) at `q` as 64 bytes 0..15:
/// [p low nibbles, p high nibbles, q low, q high] (each block's elements in order).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two_nibbles(p: *const u8, q: *const u8, two: bool) -> __m512i {
    let a = _mm_loadu_si128(p as *const __m128i);
    let b = if two { _mm_loadu_si128(q as *const __m128i) } else { _mm_setzero_si128() };
    let ab = _mm512_castsi256_si512(_mm256_set_m128i(b, a));
    let v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), ab);
    let v = _mm512_mask_blend_epi64(0b1100_1100, v, _mm512_srli_epi16(v, 4));
    _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
}

/// Fifth bits (u32 little-endian at `p`, and at `q` when `two`) as 0x10 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two_fifth_bits(p: *const u8, q: *const u8, two: bool) -> __m512i {
    let m = rd32(p) as u64 | if two { (rd32(q) as u64) << 32 } else { 0 };
    _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(0x10))
}

struct Q4_0;
impl WeightBlocks for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: u8 = 8;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let d1 = if two { rd16(q) } else { 0 };
        (two_nibbles(p.add(2), q.add(2), two), halves(rd16(p), d1, 0, 0))
    }
}

struct Q4_1;
impl WeightBlocks for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let (d1, m1) = if two { (rd16(q), rd16(q.add(2))) } else { (0, 0) };
        (two_nibbles(p.add(4), q.add(4), two), halves(rd16(p), d1, rd16(p.add(2)), m1))
    }
}

struct Q5_0;
impl WeightBlocks for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: u8 = 16;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let d1 = if two { rd16(q) } else { 0 };
        let v = _mm512_or_si512(two_nibbles(p.add(6), q.add(6), two), two_fifth_bits(p.add(2), q.add(2), two));
        (v, halves(rd16(p), d1, 0, 0))
    }
}

struct Q5_1;
impl WeightBlocks for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let (d1, m1) = if two { (rd16(q), rd16(q.add(2))) } else { (0, 0) };
        let v = _mm512_or_si512(two_nibbles(p.add(8), q.add(8), two), two_fifth_bits(p.add(4), q.add(4), two));
        (v, halves(rd16(p), d1, rd16(p.add(2)), m1))
    }
}

struct Q8_0;
impl WeightBlocks for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: u8 = 128;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let d1 = if two { rd16(q) } else { 0 };
        // +128 as a flip of the sign bit; a missing second block must stay all zeros.
        let flip = if two { _mm512_set1_epi8(-128) } else { _mm512_zextsi256_si512(_mm256_set1_epi8(-128)) };
        (_mm512_xor_si512(two32(p.add(2), q.add(2), two), flip), halves(rd16(p), d1, 0, 0))
    }
}

struct A8_0;
impl ActBlocks for A8_0 {
    const BYTES: usize = 34;
    const QS: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let d1 = if two { rd16(q) } else { 0 };
        (two32(p.add(Self::QS), q.add(Self::QS), two), halves(rd16(p), d1, 0, 0))
    }
}

struct A8_1;
impl ActBlocks for A8_1 {
    const BYTES: usize = 36;
    const QS: usize = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m128) {
        let q = p.add(Self::BYTES);
        let (d1, s1) = if two { (rd16(q), rd16(q.add(2))) } else { (0, 0) };
        (two32(p.add(Self::QS), q.add(Self::QS), two), halves(rd16(p), d1, rd16(p.add(2)), s1))
    }
}

/// `R` rows x `C` tokens over `nb` blocks: `out[c * os + r] = dot(row r, token c)`.
///
/// # Safety
/// Rows `r < R` hold `nb` blocks at `w + r * ws`, tokens `c < C` hold `nb` blocks at
/// `x + c * xs`, `out + c * os + r` is writable; the CPU has the features enabled below.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<W: WeightBlocks, A: ActBlocks, const R: usize, const C: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    x: *const u8,
    xs: usize,
    out: *mut f32,
    os: usize,
) {
    // Lane patterns: lanes 0..8 take element 0 of a [e0, e1, e2, e3] vector, lanes 8..16
    // element 1; the minimum / sum terms go to lanes 0 and 8 only (once per block).
    let pick_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let pick_m = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let offset = _mm512_set1_epi8(W::OFFSET as i8);
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let mut qw = [zero; R];
        let mut dw = [_mm512_setzero_ps(); R];
        let mut mw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let (q, s) = W::load(w.add(r * ws + b * W::BYTES), two);
            let s = _mm512_castps128_ps512(s);
            qw[r] = q;
            dw[r] = _mm512_permutexvar_ps(pick_d, s);
            if W::HAS_MIN {
                mw[r] = _mm512_maskz_permutexvar_ps(0x0101, pick_m, s);
            }
        }
        for c in 0..C {
            let (qx, s) = A::load(x.add(c * xs + b * A::BYTES), two);
            let s = _mm512_castps128_ps512(s);
            let dx = _mm512_permutexvar_ps(pick_d, s);
            // -(offset * x) per lane: added back to every row's dpbusd below.
            let base = if W::OFFSET != 0 { _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, qx)) } else { zero };
            let sx = if W::HAS_MIN { _mm512_permutexvar_ps(pick_m, s) } else { _mm512_setzero_ps() };
            for r in 0..R {
                let i = _mm512_dpbusd_epi32(base, qw[r], qx);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw[r], dx), acc[r][c]);
                if W::HAS_MIN {
                    acc[r][c] = _mm512_fmadd_ps(mw[r], sx, acc[r][c]);
                }
            }
        }
        b += 2;
    }
    for r in 0..R {
        for c in 0..C {
            *out.add(c * os + r) = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
}

macro_rules! legacy_kernels {
    ($m:ident, $W:ty, $A:ty, $name:expr) => {
        mod $m {
            use super::*;

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn vec_dot_tf(nb: usize, w: *const u8, x: *const u8) -> f32 {
                let mut out = 0f32;
                tile::<$W, $A, 1, 1>(nb, w, 0, x, 0, &mut out, 0);
                out
            }

            pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
                let nb = n / 32;
                assert!(
                    n % 32 == 0 && w.len() >= nb * <$W>::BYTES && x.len() >= nb * <$A>::BYTES,
                    concat!($name, " vec_dot: {} elements, {} weight and {} activation bytes"),
                    n,
                    w.len(),
                    x.len()
                );
                // SAFETY: installed only when `supported()`; both buffers hold `nb` blocks.
                unsafe { vec_dot_tf(nb, w.as_ptr(), x.as_ptr()) }
            }

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn gemm_tf(nb: usize, w: *const u8, ws: usize, nr: usize, x: *const u8, xs: usize, nc: usize, out: *mut f32, os: usize) {
                macro_rules! by_c {
                    ($r:literal) => {
                        match nc {
                            1 => tile::<$W, $A, $r, 1>(nb, w, ws, x, xs, out, os),
                            2 => tile::<$W, $A, $r, 2>(nb, w, ws, x, xs, out, os),
                            3 => tile::<$W, $A, $r, 3>(nb, w, ws, x, xs, out, os),
                            _ => tile::<$W, $A, $r, 4>(nb, w, ws, x, xs, out, os),
                        }
                    };
                }
                match nr {
                    1 => by_c!(1),
                    2 => by_c!(2),
                    3 => by_c!(3),
                    _ => by_c!(4),
                }
            }

            #[allow(clippy::too_many_arguments)]
            pub fn gemm(
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
                let nb = n / 32;
                assert!(
                    n % 32 == 0
                        && (1..=TILE_ROWS).contains(&nr)
                        && (1..=TILE_TOKENS).contains(&nc)
                        && w.len() >= (nr - 1) * w_stride + nb * <$W>::BYTES
                        && x.len() >= (nc - 1) * x_stride + nb * <$A>::BYTES
                        && out.len() > (nc - 1) * out_stride + nr - 1,
                    concat!($name, " gemm: tile {}x{} of {} elements does not fit its buffers"),
                    nr,
                    nc,
                    n
                );
                // SAFETY: installed only when `supported()`; every row, token and output the
                // tile touches was just checked to be inside the slices.
                unsafe { gemm_tf(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), x_stride, nc, out.as_mut_ptr(), out_stride) }
            }
        }
    };
}

legacy_kernels!(q4_0, Q4_0, A8_0, "Q4_0");
legacy_kernels!(q4_1, Q4_1, A8_1, "Q4_1");
legacy_kernels!(q5_0, Q5_0, A8_0, "Q5_0");
legacy_kernels!(q5_1, Q5_1, A8_1, "Q5_1");
legacy_kernels!(q8_0, Q8_0, A8_0, "Q8_0");
