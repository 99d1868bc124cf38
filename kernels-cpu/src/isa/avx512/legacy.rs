//! avx512 kernels for the legacy 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL
//! against Q8_0 / Q8_1 activations), with AVX-512 VNNI (`vpdpbusd`: u8 x i8, four products per
//! i32 lane, exact) and VBMI (byte permutes to unpack nibbles and fifth bits).
//!
//! Two blocks (64 values) per 512-bit register. The weights are made unsigned once per block
//! and row (nibbles are already 0..15 or 0..31; Q8_0 quants get +128; IQ4_NL's nibbles become
//! their codebook value + 128 with one `vpshufb` of the 16-entry table), and the offset comes
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

// Tile loops index several register arrays by row and token on purpose.
#![allow(clippy::needless_range_loop)]

use crate::isa::{GemmTileFn, GemvFn, QuantizeFn, Tile, VecDotFn};
use crate::types::WeightType;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// VNNI for the products, VBMI for the byte permutes that unpack blocks (Ice Lake, Zen 4 and
/// later; elsewhere the avx2 kernels are used).
fn supported() -> bool {
    super::available() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi")
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    if let Some(f) = float::vec_dot(t) {
        return Some(f);
    }
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q4_0 => q4_0::vec_dot,
        WeightType::Q4_1 => q4_1::vec_dot,
        WeightType::Q5_0 => q5_0::vec_dot,
        WeightType::Q5_1 => q5_1::vec_dot,
        WeightType::Q8_0 => q8_0::vec_dot,
        WeightType::IQ4_NL => iq4_nl::vec_dot,
        _ => return None,
    })
}

/// How far ahead of the current block the weights are prefetched (bytes).
const PREFETCH: usize = crate::isa::PREFETCH_AHEAD;

/// Tile shape: rows x tokens.
const TILE_ROWS: usize = 4;
const TILE_TOKENS: usize = 4;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    if let Some(g) = float::gemm(t) {
        return Some(g);
    }
    if !supported() {
        return None;
    }
    let f: GemmTileFn = match t {
        WeightType::Q4_0 => q4_0::gemm,
        WeightType::Q4_1 => q4_1::gemm,
        WeightType::Q5_0 => q5_0::gemm,
        WeightType::Q5_1 => q5_1::gemm,
        WeightType::Q8_0 => q8_0::gemm,
        WeightType::IQ4_NL => iq4_nl::gemm,
        _ => return None,
    };
    Some((f, TILE_ROWS, TILE_TOKENS))
}

pub fn quantize(_t: WeightType) -> Option<QuantizeFn> {
    None
}

pub fn gemv(t: WeightType) -> Option<GemvFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q4_0 => q4_0::gemv,
        WeightType::Q4_1 => q4_1::gemv,
        WeightType::Q5_0 => q5_0::gemv,
        WeightType::Q5_1 => q5_1::gemv,
        WeightType::Q8_0 => q8_0::gemv,
        WeightType::IQ4_NL => iq4_nl::gemv,
        _ => return None,
    })
}

/// Two consecutive blocks of a weight type as the kernel wants them.
trait WeightBlocks {
    /// Bytes per block.
    const BYTES: usize;
    /// What was added to make the quants unsigned (0 for the types with a minimum).
    const OFFSET: u8;
    /// Whether blocks carry a minimum (`value = d * q + m`).
    const HAS_MIN: bool;
    /// Whether the nibbles index IQ4_NL's codebook (`codebook`) rather than being the quants.
    const CODEBOOK: bool = false;
    /// Quants of the blocks at `p` (and `p + BYTES` when `two`; else zeros) as 64 unsigned
    /// bytes, the scales in lanes (0..8: first block, 8..16: second) and the minimums in lanes
    /// 0 and 8 (zeros elsewhere and for types without one).
    ///
    /// # Safety
    /// `p` must point at one readable block, two when `two`; the CPU has the kernel's features.
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512);
}

/// Two consecutive activation blocks (Q8_0 or Q8_1).
trait ActBlocks {
    const BYTES: usize;
    /// The signed quants (zeros for a missing second block), the scales in lanes as for the
    /// weights, and the Q8_1 sums `s` in lanes (0..8 first block, 8..16 second).
    ///
    /// # Safety
    /// As `WeightBlocks::load`.
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512);
}

/// The first `n` bytes at `p` (n <= 64) in a register, zeros above; never reads past them
/// (masked-off bytes of an AVX-512 masked load do not fault).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn head(p: *const u8, n: usize) -> __m512i {
    let mask = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    _mm512_maskz_loadu_epi8(mask, p as *const i8)
}

/// The 16-bit words of two consecutive blocks of `bytes` bytes at `p` selected by `first` (bit
/// i = word i of the first block; the same words of the second block when `two`), zeros
/// elsewhere; reads only those words. For the scales of blocks whose quants are loaded
/// separately: a sparse mask keeps this one small load, where loading the whole 64 bytes lets
/// LLVM rebuild the separately loaded quants out of it with a chain of shuffles.
///
/// # Safety
/// The selected words are readable; the CPU has avx512bw (inlined into the kernels' features).
#[inline(always)]
unsafe fn words(p: *const u8, bytes: usize, first: u32, two: bool) -> __m512i {
    let mask = if two { first | first << (bytes / 2) } else { first };
    _mm512_maskz_loadu_epi16(mask, p as *const i16)
}

/// `vpermw` index: words 0..8 take word `w0`, words 8..16 word `w1`.
const fn pick_words(w0: usize, w1: usize) -> [u16; 32] {
    let mut a = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        a[i] = if i < 8 { w0 as u16 } else { w1 as u16 };
        i += 1;
    }
    a
}

/// `vpermb` index gathering each block's 16 quant bytes twice (see `nibbles`).
const fn nibble_bytes(qs: usize, bytes: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = (qs + (i / 32) * bytes + i % 16) as u8;
        i += 1;
    }
    a
}

/// `vpmultishiftqb` control: bits 0..8 of each byte for the first copy, 4..12 for the second.
const NIBBLE_SHIFTS: [u8; 64] = {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = ((i % 8) * 8 + if (i / 16) % 2 == 1 { 4 } else { 0 }) as u8;
        i += 1;
    }
    a
};

/// `vpermb` index putting, for each quant, the byte of `qh` holding its fifth bit.
const fn fifth_bytes(qh: usize, bytes: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = (qh + (i / 32) * bytes + (i % 32) / 8) as u8;
        i += 1;
    }
    a
}

/// The bit each quant tests in its `qh` byte.
const FIFTH_BITS: [u8; 64] = {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = 1 << (i % 8);
        i += 1;
    }
    a
};

/// 64 bytes at `p`, any alignment. The loads in this file are all-ones masked loads (LLVM
/// emits a plain `vmovdqu` for them) rather than `_mm512_loadu_si512` / `_mm256_loadu_si256`:
/// those are a `copy_nonoverlapping` into a stack temporary, which with debug assertions on
/// (the `ci` profile everything is tested and measured with) keeps a runtime overlap check, a
/// branch and a store/reload through the stack for every load in the hot loops.
///
/// # Safety
/// 64 bytes readable at `p`; the CPU has avx512bw (inlined into the kernels' features).
#[inline(always)]
unsafe fn load64(p: *const u8) -> __m512i {
    _mm512_maskz_loadu_epi8(u64::MAX, p as *const i8)
}

/// 32 bytes at `p`, any alignment (see `load64`).
///
/// # Safety
/// 32 bytes readable at `p`; the CPU has avx512bw/vl (inlined into the kernels' features).
#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    _mm256_maskz_loadu_epi8(u32::MAX, p as *const i8)
}

#[inline(always)]
unsafe fn ld<T>(a: &'static T) -> __m512i {
    debug_assert!(std::mem::size_of::<T>() == 64);
    load64(a as *const T as *const u8)
}

/// f16 words of `h` picked into f32 lanes: lane i (of 16) takes word `w0` for i < 8 and `w1`
/// for i >= 8; with `only_first`, lanes other than 0 and 8 are zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn half_lanes(h: __m512i, idx: &'static [u16; 32], only_first: bool) -> __m512 {
    let idx = ld(idx);
    let words =
        if only_first { _mm512_maskz_permutexvar_epi16(0x0101, idx, h) } else { _mm512_permutexvar_epi16(idx, h) };
    _mm512_cvtph_ps(_mm512_castsi512_si256(words))
}

/// Nibbles of the two blocks' 16 quant bytes (at byte `qs` of each block in `h`) as 64 bytes
/// 0..15: [block 0 low nibbles, block 0 high nibbles, block 1 low, block 1 high].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn nibbles(h: __m512i, idx: &'static [u8; 64]) -> __m512i {
    // Gather each block's 16 bytes twice (qwords: lo lo' lo lo' per block), then let
    // vpmultishiftqb take bits 0..8 of each byte for the first copy and bits 4..12 for the second.
    let v = _mm512_permutexvar_epi8(ld(idx), h);
    let v = _mm512_multishift_epi64_epi8(ld(&NIBBLE_SHIFTS), v);
    _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
}

/// IQ4_NL's codebook made unsigned (value + 128, see `types::iq4_nl::UNSIGNED`) in each
/// 128-bit lane: the table of a `vpshufb` from nibbles to codes.
#[inline(always)]
unsafe fn codebook() -> __m512i {
    _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(u16::MAX, crate::types::iq4_nl::UNSIGNED.as_ptr() as *const i8))
}

/// Adds 16 to each quant whose fifth bit (bit j of the block's u32 at byte `qh`) is set.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn fifth_bits(q: __m512i, h: __m512i, idx: &'static [u8; 64]) -> __m512i {
    let v = _mm512_permutexvar_epi8(ld(idx), h);
    let set = _mm512_test_epi8_mask(v, ld(&FIFTH_BITS));
    _mm512_mask_add_epi8(q, set, q, _mm512_set1_epi8(16))
}

/// 32 bytes at `p` and, when `two`, 32 bytes at `q`, as one register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn two32(p: *const u8, q: *const u8, two: bool) -> __m512i {
    let lo = load32(p);
    if two {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), load32(q), 1)
    } else {
        _mm512_zextsi256_si512(lo)
    }
}

/// A small block type whose pair fits in 64 bytes: (bytes, d, m or none, qh or none, qs).
macro_rules! small_weight {
    ($T:ident, $bytes:expr, $offset:expr, $m:expr, $qh:expr, $qs:expr $(, $codebook:literal)?) => {
        struct $T;
        impl WeightBlocks for $T {
            const BYTES: usize = $bytes;
            const OFFSET: u8 = $offset;
            const HAS_MIN: bool = { let m: Option<usize> = $m; m.is_some() };
            $(const CODEBOOK: bool = $codebook;)?
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
            unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
                const NIB: [u8; 64] = nibble_bytes($qs, $bytes);
                const D: [u16; 32] = pick_words(0, $bytes / 2);
                const QH: Option<[u8; 64]> = match { let o: Option<usize> = $qh; o } {
                    Some(qh) => Some(fifth_bytes(qh, $bytes)),
                    None => None,
                };
                const M: Option<[u16; 32]> = match { let o: Option<usize> = $m; o } {
                    Some(m) => Some(pick_words(m / 2, ($bytes + m) / 2)),
                    None => None,
                };
                let h = head(p, if two { 2 * $bytes } else { $bytes });
                let mut q = nibbles(h, &NIB);
                if let Some(qh) = &QH {
                    q = fifth_bits(q, h, qh);
                }
                if Self::CODEBOOK {
                    q = _mm512_shuffle_epi8(codebook(), q);
                }
                let d = half_lanes(h, &D, false);
                let m = match &M {
                    Some(m) => half_lanes(h, m, true),
                    None => _mm512_setzero_ps(),
                };
                (q, d, m)
            }
        }
    };
}

small_weight!(Q4_0, 18, 8, None, None, 2);
small_weight!(Q4_1, 20, 0, Some(2), None, 4);
small_weight!(Q5_0, 22, 16, None, Some(2), 6);
small_weight!(Q5_1, 24, 0, Some(2), Some(4), 8);
small_weight!(IQ4NL, 18, 128, None, None, 2, true);

struct Q8_0;
impl WeightBlocks for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: u8 = 128;
    const HAS_MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        let q = p.add(Self::BYTES);
        let h = words(p, Self::BYTES, 1, two);
        // +128 as a flip of the sign bit (a missing second block meets zero activations).
        let v = _mm512_xor_si512(two32(p.add(2), q.add(2), two), _mm512_set1_epi8(-128));
        const D: [u16; 32] = pick_words(0, 17);
        (v, half_lanes(h, &D, false), _mm512_setzero_ps())
    }
}

/// Q8_0 (`s` none) or Q8_1 (`s` at byte 2) activations with their quants at byte `qs`.
macro_rules! act {
    ($T:ident, $bytes:expr, $s:expr, $qs:expr) => {
        struct $T;
        impl ActBlocks for $T {
            const BYTES: usize = $bytes;
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
            unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
                // Word 0 (d) and, for Q8_1, the word holding `s`.
                const FIRST: u32 = match {
                    let o: Option<usize> = $s;
                    o
                } {
                    Some(s) => 1 | 1 << (s / 2),
                    None => 1,
                };
                let h = words(p, $bytes, FIRST, two);
                let v = two32(p.add($qs), p.add($bytes + $qs), two);
                const D: [u16; 32] = pick_words(0, $bytes / 2);
                const S: Option<[u16; 32]> = match {
                    let o: Option<usize> = $s;
                    o
                } {
                    Some(s) => Some(pick_words(s / 2, ($bytes + s) / 2)),
                    None => None,
                };
                let d = half_lanes(h, &D, false);
                let s = match &S {
                    Some(s) => half_lanes(h, s, false),
                    None => _mm512_setzero_ps(),
                };
                (v, d, s)
            }
        }
    };
}

act!(A8_0, 34, None, 2);
act!(A8_1, 36, Some(2), 4);

/// `R` rows x `C` tokens over `nb` blocks: `out[c * os + r] = dot(row r, token c)`.
///
/// # Safety
/// Rows `r < R` hold `nb` blocks at `w + r * ws`, tokens `c < C` hold `nb` blocks at
/// `x + c * xs`, `out + c * os + r` is writable; the CPU has the features enabled below.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile<W: WeightBlocks, A: ActBlocks, const R: usize, const C: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    x: *const u8,
    xs: usize,
    out: *mut f32,
    os: usize,
) {
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
            let p = w.add(r * ws + b * W::BYTES);
            // Stream the weights into cache ahead of use (a hint: never faults).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            (qw[r], dw[r], mw[r]) = W::load(p, two);
        }
        for c in 0..C {
            let (qx, dx, sx) = A::load(x.add(c * xs + b * A::BYTES), two);
            // -(offset * x) per lane: added back to every row's dpbusd below.
            let base =
                if W::OFFSET != 0 { _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, qx)) } else { zero };
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

/// One activation block pair prepared once for every row of a `gemv` call.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Prepared {
    q: __m512i,
    d: __m512,
    /// `-offset * x` per lane (zeros for types without an offset).
    base: __m512i,
    /// Q8_1 sums (zeros for Q8_0).
    s: __m512,
}

/// Activations are prepared in parts of this many block pairs (128 values x 64 = 8192 values;
/// 16 KiB of prepared data, which stays in L1 while every row of the part is read).
const GEMV_CHUNK_PAIRS: usize = 64;

/// `nr` rows (at `w + r * ws`) against one token `x`: `out[r] = dot(row r, x)`. The
/// activations are unpacked once per part of the row (quants, scales, offset correction) and
/// every row then costs only its own unpacking and the products; each row part is read as one
/// sequential stream.
///
/// # Safety
/// Rows `r < nr` hold `nb` blocks at `w + r * ws`, `x` holds `nb` blocks, `out[..nr]` is
/// writable; the CPU has the features enabled by the caller.
#[inline(always)]
unsafe fn gemv_rows<W: WeightBlocks, A: ActBlocks>(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    x: *const u8,
    out: *mut f32,
) {
    if nb == 0 {
        for r in 0..nr {
            *out.add(r) = 0.0;
        }
        return;
    }
    if nb <= 2 * GEMV_CHUNK_PAIRS {
        gemv_part::<W, A>(nb, w, ws, nr, x, out, false);
        return;
    }
    // Long rows: one row at a time with the activations unpacked as they are used. Preparing
    // them part by part (or interleaving rows part by part) stalls each row's stream from
    // DRAM between parts: measured about 1.7x slower than this.
    for r in 0..nr {
        *out.add(r) = dot_inline::<W, A>(nb, w.add(r * ws), x);
    }
}

/// One row against one token, activations unpacked as they are used, four accumulators.
///
/// # Safety
/// `nb` blocks readable at `w` and at `x`; the CPU has the caller's features.
#[inline(always)]
unsafe fn dot_inline<W: WeightBlocks, A: ActBlocks>(nb: usize, w: *const u8, x: *const u8) -> f32 {
    let (mut a0, mut a1, mut a2, mut a3) =
        (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
    let (mut m0, mut m1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    // Whole pairs only in the unrolled loop (no per-step test for a missing second block).
    while b + 8 <= nb {
        dot_step::<W, A>(w, x, b, true, &mut a0, &mut m0);
        dot_step::<W, A>(w, x, b + 2, true, &mut a1, &mut m1);
        dot_step::<W, A>(w, x, b + 4, true, &mut a2, &mut m0);
        dot_step::<W, A>(w, x, b + 6, true, &mut a3, &mut m1);
        b += 8;
    }
    while b < nb {
        dot_step::<W, A>(w, x, b, b + 1 < nb, &mut a0, &mut m0);
        b += 2;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    _mm512_reduce_add_ps(_mm512_add_ps(sum, _mm512_add_ps(m0, m1)))
}

// The per-block steps below are `#[inline(always)]` functions, not closures: a closure inside
// an `#[inline(always)]` helper does not get the target features of the `#[target_feature]`
// function it ends up in, so it was compiled as a separate baseline-x86-64 function in which
// every intrinsic (`vpdpbusd`, `vmulps`, the loads) was an out-of-line call. Everything from
// the `*_tf` entry points down is `#[inline(always)]` (or `#[inline]` with the same features),
// so all of it is compiled with the entry point's features.

/// One block pair (blocks `b`, and `b + 1` when `two`) of `dot_inline` into `acc` / `mins`.
///
/// # Safety
/// As `dot_inline`, with `b < nb` and `two` only if `b + 1 < nb`.
#[inline(always)]
unsafe fn dot_step<W: WeightBlocks, A: ActBlocks>(
    w: *const u8,
    x: *const u8,
    b: usize,
    two: bool,
    acc: &mut __m512,
    mins: &mut __m512,
) {
    let pw = w.add(b * W::BYTES);
    // Stream the weights into cache ahead of use (a hint: never faults).
    _mm_prefetch::<_MM_HINT_T0>(pw.wrapping_add(PREFETCH) as *const i8);
    let (qw, dw, mw) = W::load(pw, two);
    let (qx, dx, sx) = A::load(x.add(b * A::BYTES), two);
    let zero = _mm512_setzero_si512();
    let base = if W::OFFSET != 0 {
        _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(W::OFFSET as i8), qx))
    } else {
        zero
    };
    let i = _mm512_dpbusd_epi32(base, qw, qx);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, dx), *acc);
    if W::HAS_MIN {
        *mins = _mm512_fmadd_ps(mw, sx, *mins);
    }
}

/// One block pair (pair `p` of a row at `row`: blocks `2p`, and `2p + 1` when `two`) of
/// `gemv_part` against the prepared activations `a`, into `acc` / `mins`.
///
/// # Safety
/// As `gemv_part`, with `2p < nb` and `two` only if `2p + 1 < nb`.
#[inline(always)]
unsafe fn part_step<W: WeightBlocks>(
    row: *const u8,
    p: usize,
    two: bool,
    a: &Prepared,
    acc: &mut __m512,
    mins: &mut __m512,
) {
    let pw = row.add(2 * p * W::BYTES);
    // A hint: never faults.
    _mm_prefetch::<_MM_HINT_T0>(pw.wrapping_add(PREFETCH) as *const i8);
    let (qw, dw, mw) = W::load(pw, two);
    let i = _mm512_dpbusd_epi32(a.base, qw, a.q);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, a.d), *acc);
    if W::HAS_MIN {
        *mins = _mm512_fmadd_ps(mw, a.s, *mins);
    }
}

/// One part of `gemv_rows`: `nb <= 2 * GEMV_CHUNK_PAIRS` blocks; adds into `out` when `add`.
///
/// # Safety
/// As `gemv_rows`.
#[inline(always)]
unsafe fn gemv_part<W: WeightBlocks, A: ActBlocks>(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    x: *const u8,
    out: *mut f32,
    add: bool,
) {
    let npairs = nb.div_ceil(2);
    debug_assert!(npairs <= GEMV_CHUNK_PAIRS);
    let mut prep = [const { MaybeUninit::<Prepared>::uninit() }; GEMV_CHUNK_PAIRS];
    let offset = _mm512_set1_epi8(W::OFFSET as i8);
    let zero = _mm512_setzero_si512();
    for (p, slot) in prep[..npairs].iter_mut().enumerate() {
        let b = 2 * p;
        let (q, d, s) = A::load(x.add(b * A::BYTES), b + 1 < nb);
        let base = if W::OFFSET != 0 { _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, q)) } else { zero };
        slot.write(Prepared { q, d, base, s });
    }
    // SAFETY: the first `npairs` slots were all written just above.
    let prep = std::slice::from_raw_parts(prep.as_ptr() as *const Prepared, npairs);
    for r in 0..nr {
        let row = w.add(r * ws);
        // Four independent accumulators (pairs p, p+1, p+2, p+3), minimum terms in two more:
        // a single chain of multiply-adds would wait on each other's latency.
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut m0, mut m1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut p = 0;
        // Whole pairs only in the unrolled loop (no per-step test for a missing second block).
        while 2 * (p + 4) <= nb {
            part_step::<W>(row, p, true, &prep[p], &mut a0, &mut m0);
            part_step::<W>(row, p + 1, true, &prep[p + 1], &mut a1, &mut m1);
            part_step::<W>(row, p + 2, true, &prep[p + 2], &mut a2, &mut m0);
            part_step::<W>(row, p + 3, true, &prep[p + 3], &mut a3, &mut m1);
            p += 4;
        }
        while p < npairs {
            part_step::<W>(row, p, 2 * p + 1 < nb, &prep[p], &mut a0, &mut m0);
            p += 1;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        let v = _mm512_reduce_add_ps(_mm512_add_ps(sum, _mm512_add_ps(m0, m1)));
        *out.add(r) = if add { *out.add(r) + v } else { v };
    }
}

/// The one-token entry point of a legacy type: `gemv_rows` (two blocks per step), or with
/// `quad` the four-block kernel of the nibble types (`quad`).
macro_rules! legacy_gemv {
    ($W:ty, $A:ty, $name:expr) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
        unsafe fn gemv_tf(nb: usize, w: *const u8, ws: usize, nr: usize, x: *const u8, out: *mut f32) {
            gemv_rows::<$W, $A>(nb, w, ws, nr, x, out)
        }

        pub fn gemv(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
            let nb = gemv_check::<$W, $A>($name, n, w, w_stride, nr, x, out);
            // SAFETY: installed only when `supported()`; every row, the activations and the
            // outputs were checked to be inside the slices.
            unsafe { gemv_tf(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), out.as_mut_ptr()) }
        }
    };
    ($W:ty, $A:ty, $name:expr, quad) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn gemv_tf(
            nb: usize,
            w: *const u8,
            ws: usize,
            nr: usize,
            x: *const u8,
            out: *mut f32,
            qx: *mut quad::QuadX,
            sx: *mut quad::QuadScales,
        ) {
            quad::gemv::<$W, $A>(nb, w, ws, nr, x, out, qx, sx)
        }

        pub fn gemv(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
            let nb = gemv_check::<$W, $A>($name, n, w, w_stride, nr, x, out);
            // SAFETY: installed only when `supported()`; every row, the activations and the
            // outputs were checked to be inside the slices; the buffers hold `nb / 4` quads.
            quad::with_buffers(nb / 4, |qx, sx| unsafe {
                gemv_tf(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), out.as_mut_ptr(), qx, sx)
            })
        }
    };
}

/// The bounds a `gemv` call must meet (`nr` rows of `n` values at stride `w_stride`, one
/// token); returns the number of blocks.
fn gemv_check<W: WeightBlocks, A: ActBlocks>(
    name: &str,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    x: &[u8],
    out: &[f32],
) -> usize {
    let nb = n / 32;
    assert!(
        n.is_multiple_of(32)
            && out.len() >= nr
            && (nr == 0 || w.len() >= (nr - 1) * w_stride + nb * W::BYTES)
            && x.len() >= nb * A::BYTES,
        "{name} gemv: {nr} rows of {n} elements do not fit their buffers"
    );
    nb
}

macro_rules! legacy_kernels {
    ($m:ident, $W:ty, $A:ty, $name:expr $(, $quad:ident)?) => {
        mod $m {
            use super::*;

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
            unsafe fn vec_dot_tf(nb: usize, w: *const u8, x: *const u8) -> f32 {
                dot_inline::<$W, $A>(nb, w, x)
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

            legacy_gemv!($W, $A, $name $(, $quad)?);

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
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

            pub fn gemm(t: Tile<'_>) {
                let (n, nr, nc) = (t.n, t.rows, t.tokens);
                let nb = n / 32;
                assert!(
                    n % 32 == 0
                        && (1..=TILE_ROWS).contains(&nr)
                        && (1..=TILE_TOKENS).contains(&nc)
                        && t.fits(nb * <$W>::BYTES, nb * <$A>::BYTES),
                    concat!($name, " gemm: tile {}x{} of {} elements does not fit its buffers"),
                    nr,
                    nc,
                    n
                );
                let Tile { w, w_stride, x, x_stride, out, out_stride, .. } = t;
                // SAFETY: installed only when `supported()`; every row, token and output the
                // tile touches was just checked to be inside the slices.
                unsafe { gemm_tf(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), x_stride, nc, out.as_mut_ptr(), out_stride) }
            }
        }
    };
}

legacy_kernels!(q4_0, Q4_0, A8_0, "Q4_0", quad);
legacy_kernels!(q4_1, Q4_1, A8_1, "Q4_1", quad);
legacy_kernels!(q5_0, Q5_0, A8_0, "Q5_0", quad);
legacy_kernels!(q5_1, Q5_1, A8_1, "Q5_1", quad);
legacy_kernels!(q8_0, Q8_0, A8_0, "Q8_0");
legacy_kernels!(iq4_nl, IQ4NL, A8_0, "IQ4_NL", quad);

/// The one-token kernel of the nibble types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL): four blocks (128
/// values) per step instead of two.
///
/// Two blocks per 512-bit register (`gemv_rows`) cost a convert and two float multiplies per
/// 64 values, on top of the unpacking: with four blocks spread over two registers so that
/// i32 lane `i` collects 8 values of block `i % 4` (values `4 (i / 4) + t` from the first
/// register, `16 +` those from the second), two `vpdpbusd` into one accumulator leave one
/// convert and one multiply-add per 128 values, and the four blocks' quants, scales and
/// minimums are each gathered by a single two-register permute (`vpermi2b` / `vpermi2w`) out of
/// two overlapping 64-byte loads. The activations are rearranged to match once per call
/// (`prepare`), into a per-thread buffer (rows of 14336 values: 25 KiB, within L1 while the
/// rows stream past). Measured (`examples/gemv_hot`, 128 x 14336, one thread, ns per block):
/// Q4_0 0.63 -> 0.44, Q4_1 0.85 -> 0.52, Q5_0 0.80 -> 0.47, Q5_1 1.03 -> 0.57.
mod quad {
    use super::*;
    use std::cell::RefCell;

    /// A nibble type's layout within its block (`WeightBlocks` gives size, offset, minimum).
    pub(super) trait Layout: WeightBlocks {
        /// Byte of the 16 quant bytes.
        const QS: usize;
        /// Byte of the 4 fifth-bit bytes (Q5_0 / Q5_1).
        const QH: Option<usize>;
        /// Byte of the f16 minimum (Q4_1 / Q5_1; `HAS_MIN`).
        const M: usize;
        // The permute indices, computed at compile time from the above.
        const QUANTS: [u8; 64] = quant_index(Self::BYTES, Self::QS);
        const FIFTH_LO: [u8; 64] = fifth_index(
            Self::BYTES,
            match Self::QH {
                Some(q) => q,
                None => 0,
            },
            false,
        );
        const FIFTH_HI: [u8; 64] = fifth_index(
            Self::BYTES,
            match Self::QH {
                Some(q) => q,
                None => 0,
            },
            true,
        );
        const SCALES: [u16; 32] = half_index(Self::BYTES, 0);
        const MINS: [u16; 32] = half_index(Self::BYTES, Self::M);
    }

    /// Q8_0 / Q8_1 activations (quants in the last 32 bytes of a block) in the quad layout.
    pub(super) trait ActLayout: ActBlocks {
        /// `vpermi2b` indices for values 0..16 (from bytes `0..128` of four blocks) and values
        /// 16..32 (from bytes `4 BYTES - 128 .. 4 BYTES`).
        const LO: [u8; 64] = act_index(Self::BYTES, false);
        const HI: [u8; 64] = act_index(Self::BYTES, true);
        /// `vpermi2w` index: words 0..4 the four blocks' `d`, words 4..8 their `s` (Q8_1).
        const HALVES: [u16; 32] = {
            let mut a = [0u16; 32];
            let mut i = 0;
            while i < 8 {
                a[i] = ((i % 4) * Self::BYTES / 2 + i / 4) as u16;
                i += 1;
            }
            a
        };
    }
    impl ActLayout for A8_0 {}
    impl ActLayout for A8_1 {}

    const fn act_index(bytes: usize, high: bool) -> [u8; 64] {
        let qs = bytes - 32;
        let base = if high { 4 * bytes - 128 } else { 0 };
        let mut a = [0u8; 64];
        let mut p = 0;
        while p < 64 {
            let (b, v) = slot(p);
            a[p] = (b * bytes + qs + v + if high { 16 } else { 0 } - base) as u8;
            p += 1;
        }
        a
    }
    impl Layout for Q4_0 {
        const QS: usize = 2;
        const QH: Option<usize> = None;
        const M: usize = 0;
    }
    impl Layout for Q4_1 {
        const QS: usize = 4;
        const QH: Option<usize> = None;
        const M: usize = 2;
    }
    impl Layout for Q5_0 {
        const QS: usize = 6;
        const QH: Option<usize> = Some(2);
        const M: usize = 0;
    }
    impl Layout for Q5_1 {
        const QS: usize = 8;
        const QH: Option<usize> = Some(4);
        const M: usize = 2;
    }
    impl Layout for IQ4NL {
        const QS: usize = 2;
        const QH: Option<usize> = None;
        const M: usize = 0;
    }

    /// Byte `q` of a run of four `bytes`-byte blocks as an index into the register pair
    /// (bytes `0..64`, bytes `4 bytes - 64 .. 4 bytes`) that `load_pair` returns.
    const fn pair_index(q: usize, bytes: usize) -> usize {
        if q < 64 {
            q
        } else {
            64 + q - (4 * bytes - 64)
        }
    }

    /// Block and value of byte `p` of the first register of a quad (the second holds value
    /// `16 +` the same): lane `i = p / 4` belongs to block `i % 4`, values `4 (i / 4) + p % 4`.
    const fn slot(p: usize) -> (usize, usize) {
        let i = p / 4;
        (i % 4, 4 * (i / 4) + p % 4)
    }

    /// `vpermi2b` index gathering the quant bytes of four blocks of `bytes` with quants at `qs`
    /// (value v < 16 is the low nibble of quant byte v, value 16 + v its high nibble).
    const fn quant_index(bytes: usize, qs: usize) -> [u8; 64] {
        let mut a = [0u8; 64];
        let mut p = 0;
        while p < 64 {
            let (b, v) = slot(p);
            a[p] = pair_index(b * bytes + qs + v, bytes) as u8;
            p += 1;
        }
        a
    }

    /// `vpermi2b` index putting the `qh` byte that holds each quant's fifth bit (`high`: for
    /// the second register, values 16..32).
    const fn fifth_index(bytes: usize, qh: usize, high: bool) -> [u8; 64] {
        let mut a = [0u8; 64];
        let mut p = 0;
        while p < 64 {
            let (b, v) = slot(p);
            a[p] = pair_index(b * bytes + qh + v / 8 + if high { 2 } else { 0 }, bytes) as u8;
            p += 1;
        }
        a
    }

    /// The bit of that byte (the same for both registers).
    const FIFTH_BIT: [u8; 64] = {
        let mut a = [0u8; 64];
        let mut p = 0;
        while p < 64 {
            a[p] = 1 << (slot(p).1 % 8);
            p += 1;
        }
        a
    };

    /// `vpermi2w` index: word `i < 16` takes the f16 at byte `field` of block `i % 4`.
    const fn half_index(bytes: usize, field: usize) -> [u16; 32] {
        let mut a = [0u16; 32];
        let mut i = 0;
        while i < 16 {
            let q = (i % 4) * bytes + field;
            a[i] = if q + 2 <= 64 { q / 2 } else { 32 + (q - (4 * bytes - 64)) / 2 } as u16;
            i += 1;
        }
        a
    }

    /// The activations of four blocks in the weights' arrangement.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(super) struct QuadX {
        q: [[i8; 64]; 2],
    }

    /// The four blocks' activation scales `d`, and `s`: Q8_1's `d * sum(q)` (f32, for the
    /// weights' minimums) or, for the types with an offset, the i32 `-offset * sum(q)`, which
    /// starts lanes 0..4 (blocks 0..4) of the integer sums: exact, and no extra ALU operation
    /// (a 16-byte load zero-extends). A 64-byte correction per lane instead costs a cache line
    /// per quad (measured: streaming 10% slower); in floats, a multiply-add per quad (15% more
    /// compute).
    #[derive(Clone, Copy, Default)]
    #[repr(C, align(32))]
    pub(super) struct QuadScales {
        d: [f32; 4],
        s: [f32; 4],
    }

    thread_local! {
        /// Each thread's prepared activations (grow to the longest row, then reused: the
        /// token loop allocates nothing).
        static PREP: RefCell<(Vec<QuadX>, Vec<QuadScales>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Calls `f` with this thread's buffers for `nq` prepared quads. (The borrow is taken
    /// here, outside the `#[target_feature]` code: a closure inside it would be compiled
    /// without those features.)
    pub(super) fn with_buffers(nq: usize, f: impl FnOnce(*mut QuadX, *mut QuadScales)) {
        PREP.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (qx, sx) = &mut *guard;
            if qx.len() < nq {
                qx.resize(nq, QuadX { q: [[0; 64]; 2] });
                sx.resize(nq, QuadScales::default());
            }
            f(qx.as_mut_ptr(), sx.as_mut_ptr())
        })
    }

    /// `nr` rows against one token (see the module text); the blocks after the last whole
    /// quad go through `dot_step`.
    ///
    /// # Safety
    /// As `gemv_rows`, and `qx` / `sx` hold room for `nb / 4` entries (`with_buffers`); the
    /// CPU has the features enabled on the caller.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemv<W: Layout, A: ActLayout>(
        nb: usize,
        w: *const u8,
        ws: usize,
        nr: usize,
        x: *const u8,
        out: *mut f32,
        qx: *mut QuadX,
        sx: *mut QuadScales,
    ) {
        let nq = nb / 4;
        for q in 0..nq {
            prepare::<W, A>(x.add(4 * q * A::BYTES), &mut *qx.add(q), &mut *sx.add(q));
        }
        let (qx, sx) = (std::slice::from_raw_parts(qx, nq), std::slice::from_raw_parts(sx, nq));
        for r in 0..nr {
            *out.add(r) = row::<W, A>(nb, w.add(r * ws), x, qx, sx);
        }
    }

    /// Two 64-byte loads covering `4 * bytes` bytes at `p` (overlapping for `bytes < 32`).
    #[inline(always)]
    unsafe fn load_pair(p: *const u8, bytes: usize) -> (__m512i, __m512i) {
        (load64(p), load64(p.add(4 * bytes - 64)))
    }

    /// Four activation blocks at `x` into the quad layout.
    #[inline(always)]
    unsafe fn prepare<W: Layout, A: ActLayout>(x: *const u8, qx: &mut QuadX, sx: &mut QuadScales) {
        let lo_idx = A::LO;
        let hi_idx = A::HI;
        let (a0, a1) = (load64(x), load64(x.add(64)));
        let hb = x.add(4 * A::BYTES - 128);
        let (b0, b1) = (load64(hb), load64(hb.add(64)));
        let q1 = _mm512_permutex2var_epi8(a0, load64(lo_idx.as_ptr()), a1);
        let q2 = _mm512_permutex2var_epi8(b0, load64(hi_idx.as_ptr()), b1);
        _mm512_store_si512(qx.q[0].as_mut_ptr() as *mut __m512i, q1);
        _mm512_store_si512(qx.q[1].as_mut_ptr() as *mut __m512i, q2);
        // d (and Q8_1's s) of the four blocks: all within the first 128 bytes
        let halves = A::HALVES;
        let ds = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
            a0,
            load64(halves.as_ptr() as *const u8),
            a1,
        )));
        let d = _mm256_castps256_ps128(ds);
        let s = if W::OFFSET != 0 {
            // each block's sum of quants, times -offset (exact)
            let (z, ones) = (_mm512_setzero_si512(), _mm512_set1_epi8(1));
            let t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, ones, q1), ones, q2);
            let t = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64::<1>(t));
            let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
            _mm_castsi128_ps(_mm_mullo_epi32(t, _mm_set1_epi32(-(W::OFFSET as i32))))
        } else {
            _mm256_extractf128_ps::<1>(ds)
        };
        _mm_store_ps(sx.d.as_mut_ptr(), d);
        _mm_store_ps(sx.s.as_mut_ptr(), s);
    }

    /// One row: the whole quads, then the tail pairs.
    #[inline(always)]
    unsafe fn row<W: Layout, A: ActLayout>(
        nb: usize,
        w: *const u8,
        x: *const u8,
        qx: &[QuadX],
        sx: &[QuadScales],
    ) -> f32 {
        let (quants, scales, mins_idx) = (W::QUANTS, W::SCALES, W::MINS);
        let (fifth_lo, fifth_hi) = (W::FIFTH_LO, W::FIFTH_HI);
        let qidx = load64(quants.as_ptr());
        let didx = load64(scales.as_ptr() as *const u8);
        let midx = load64(mins_idx.as_ptr() as *const u8);
        let (h1idx, h2idx, hbit) = (load64(fifth_lo.as_ptr()), load64(fifth_hi.as_ptr()), load64(FIFTH_BIT.as_ptr()));
        let m4 = _mm512_set1_epi8(0x0f);
        let sixteen = _mm512_set1_epi8(16);
        // one named accumulator of each kind: an indexed pair (`acc[q & 1]`) is kept on the
        // stack, a store-to-load chain through every step; a quad's work covers the latency
        let mut acc = _mm512_setzero_ps();
        let mut mins = _mm512_setzero_ps();
        for (q, (a, s)) in qx.iter().zip(sx).enumerate() {
            let p = w.add(4 * q * W::BYTES);
            // PREFETCH ahead, the lines of the quad's first byte and of 64 bytes on: with the
            // next quad's two (quads are 72..96 bytes) every line of the row (hints: never fault).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64) as *const i8);
            let (h1, h2) = load_pair(p, W::BYTES);
            let qs = _mm512_permutex2var_epi8(h1, qidx, h2);
            let mut v1 = _mm512_and_si512(qs, m4);
            let mut v2 = _mm512_and_si512(_mm512_srli_epi16::<4>(qs), m4);
            if W::QH.is_some() {
                let f1 = _mm512_test_epi8_mask(_mm512_permutex2var_epi8(h1, h1idx, h2), hbit);
                let f2 = _mm512_test_epi8_mask(_mm512_permutex2var_epi8(h1, h2idx, h2), hbit);
                v1 = _mm512_mask_add_epi8(v1, f1, v1, sixteen);
                v2 = _mm512_mask_add_epi8(v2, f2, v2, sixteen);
            }
            if W::CODEBOOK {
                v1 = _mm512_shuffle_epi8(codebook(), v1);
                v2 = _mm512_shuffle_epi8(codebook(), v2);
            }
            let xp = a.q.as_ptr() as *const __m512i;
            let sv = _mm_load_ps(s.s.as_ptr());
            let base =
                if W::OFFSET != 0 { _mm512_zextsi128_si512(_mm_castps_si128(sv)) } else { _mm512_setzero_si512() };
            let i = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(base, v1, _mm512_load_si512(xp)),
                v2,
                _mm512_load_si512(xp.add(1)),
            );
            let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(h1, didx, h2)));
            let dx = _mm512_broadcast_f32x4(_mm_load_ps(s.d.as_ptr()));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, dx), acc);
            if W::HAS_MIN {
                // minimum x s; lanes 0..4 are blocks 0..4 (the other lanes repeat them)
                let mw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(h1, midx, h2)));
                mins = _mm512_mask3_fmadd_ps(mw, _mm512_broadcast_f32x4(sv), mins, 0x000f);
            }
        }
        let mut b = 4 * qx.len();
        while b < nb {
            let (a, m) = (&mut acc, &mut mins);
            dot_step::<W, A>(w, x, b, b + 1 < nb, a, m);
            b += 2;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc, mins))
    }
}

/// F32, F16 and BF16 weights (against activations of the same type): 16 values per step
/// converted to f32 (F16C's `vcvtph2ps`, a shift for BF16) and multiply-added, or for BF16 on
/// CPUs with AVX512-BF16, `vdpbf16ps` (32 pairs of bf16 products per instruction, exact
/// products, f32 sums). Tiles of 4 rows x 6 tokens: 24 accumulators in registers.
mod float {
    use super::*;

    const ROWS: usize = 4;
    const TOKENS: usize = 6;

    fn has_bf16() -> bool {
        is_x86_feature_detected!("avx512bf16")
    }

    pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
        // The F16/F32 kernels need only the base avx512 set (checked by `super::super`).
        Some(match t {
            WeightType::F32 => f32k::vec_dot,
            WeightType::F16 => f16k::vec_dot,
            WeightType::BF16 if has_bf16() => bf16dp::vec_dot,
            WeightType::BF16 => bf16k::vec_dot,
            _ => return None,
        })
    }

    pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
        let f: GemmTileFn = match t {
            WeightType::F32 => f32k::gemm,
            WeightType::F16 => f16k::gemm,
            WeightType::BF16 if has_bf16() => bf16dp::gemm,
            WeightType::BF16 => bf16k::gemm,
            _ => return None,
        };
        Some((f, ROWS, TOKENS))
    }

    /// A float element type: how `n <= LANES` values at `p` become f32 lanes (zeros above).
    trait Floats {
        const BYTES: usize;
        /// Values consumed per step.
        const LANES: usize;
        /// # Safety
        /// `n` values are readable at `p`; the CPU has avx512f/bw and F16C.
        unsafe fn load(p: *const u8, n: usize) -> __m512;
        /// `acc + dot(w, x)` lane-wise over one step (for the bf16 pair instruction, two
        /// values per lane). The default multiplies converted f32 lanes.
        #[inline(always)]
        unsafe fn madd(acc: __m512, w: __m512, x: __m512) -> __m512 {
            _mm512_fmadd_ps(w, x, acc)
        }
    }

    struct F32;
    impl Floats for F32 {
        const BYTES: usize = 4;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const u8, n: usize) -> __m512 {
            if n >= 16 {
                _mm512_castsi512_ps(load64(p))
            } else {
                _mm512_maskz_loadu_ps((1u16 << n).wrapping_sub(1), p as *const f32)
            }
        }
    }

    struct F16;
    impl Floats for F16 {
        const BYTES: usize = 2;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const u8, n: usize) -> __m512 {
            let h = if n >= 16 {
                load32(p)
            } else {
                _mm256_maskz_loadu_epi16((1u16 << n).wrapping_sub(1), p as *const i16)
            };
            _mm512_cvtph_ps(h)
        }
    }

    struct BF16;
    impl Floats for BF16 {
        const BYTES: usize = 2;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const u8, n: usize) -> __m512 {
            let h = if n >= 16 {
                load32(p)
            } else {
                _mm256_maskz_loadu_epi16((1u16 << n).wrapping_sub(1), p as *const i16)
            };
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }

    /// BF16 with `vdpbf16ps`: 32 values per step, kept as raw bf16 pairs in the f32 lanes.
    struct BF16Pairs;
    impl Floats for BF16Pairs {
        const BYTES: usize = 2;
        const LANES: usize = 32;
        #[inline(always)]
        unsafe fn load(p: *const u8, n: usize) -> __m512 {
            let v = if n >= 32 {
                load64(p)
            } else {
                _mm512_maskz_loadu_epi16((1u32 << n).wrapping_sub(1), p as *const i16)
            };
            _mm512_castsi512_ps(v)
        }
        #[inline(always)]
        unsafe fn madd(acc: __m512, w: __m512, x: __m512) -> __m512 {
            // SAFETY (of the transmutes): __m512 and __m512bh are both 64-byte vectors of plain
            // bits; the lanes hold bf16 pairs as loaded.
            _mm512_dpbf16_ps(
                acc,
                std::mem::transmute::<__m512, __m512bh>(w),
                std::mem::transmute::<__m512, __m512bh>(x),
            )
        }
    }

    /// `R` rows x `C` tokens of `n` values: `out[c * os + r] = dot(row r, token c)`.
    ///
    /// # Safety
    /// Rows `r < R` hold `n` values at `w + r * ws`, tokens `c < C` at `x + c * xs`,
    /// `out + c * os + r` is writable; the CPU has the features enabled by the caller.
    #[inline(always)]
    unsafe fn tile<T: Floats, const R: usize, const C: usize>(
        n: usize,
        w: *const u8,
        ws: usize,
        x: *const u8,
        xs: usize,
        out: *mut f32,
        os: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut k = 0;
        while k < n {
            let m = T::LANES.min(n - k);
            let mut wv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let p = w.add(r * ws + k * T::BYTES);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                wv[r] = T::load(p, m);
            }
            for c in 0..C {
                let xv = T::load(x.add(c * xs + k * T::BYTES), m);
                for r in 0..R {
                    acc[r][c] = T::madd(acc[r][c], wv[r], xv);
                }
            }
            k += T::LANES;
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(c * os + r) = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
    }

    /// One row against one token with four accumulators (a single chain of multiply-adds
    /// would be bound by their latency).
    ///
    /// # Safety
    /// `n` values readable at `w` and at `x`; the CPU has the caller's features.
    #[inline(always)]
    unsafe fn dot<T: Floats>(n: usize, w: *const u8, x: *const u8) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let l = T::LANES;
        let mut k = 0;
        while k + 4 * l <= n {
            // Every cache line of this step's weights (128 bytes for F16, 256 for F32 and
            // the bf16 pairs): one prefetch per step left half or more of them to the
            // hardware prefetchers, which stop at 4 KiB pages.
            let pw = w.add(k * T::BYTES).wrapping_add(PREFETCH);
            let mut o = 0;
            while o < 4 * l * T::BYTES {
                _mm_prefetch::<_MM_HINT_T0>(pw.wrapping_add(o) as *const i8);
                o += 64;
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let o = (k + j * l) * T::BYTES;
                *a = T::madd(*a, T::load(w.add(o), l), T::load(x.add(o), l));
            }
            k += 4 * l;
        }
        while k < n {
            let m = l.min(n - k);
            let o = k * T::BYTES;
            acc[0] = T::madd(acc[0], T::load(w.add(o), m), T::load(x.add(o), m));
            k += l;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    macro_rules! float_kernels {
        ($m:ident, $T:ty, $bytes:expr, $features:literal, $name:expr) => {
            mod $m {
                use super::*;

                #[target_feature(enable = $features)]
                unsafe fn vec_dot_tf(n: usize, w: *const u8, x: *const u8) -> f32 {
                    dot::<$T>(n, w, x)
                }

                pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
                    assert!(
                        w.len() >= n * $bytes && x.len() >= n * $bytes,
                        concat!($name, " vec_dot: {} values, {} and {} bytes"),
                        n,
                        w.len(),
                        x.len()
                    );
                    // SAFETY: installed only on CPUs with these features (`for_isa` lowers the ISA
                    // to the CPU's; the bf16 pair kernel is picked only after detecting
                    // avx512bf16); both buffers hold `n` values.
                    unsafe { vec_dot_tf(n, w.as_ptr(), x.as_ptr()) }
                }

                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn gemm_tf(
                    n: usize,
                    w: *const u8,
                    ws: usize,
                    nr: usize,
                    x: *const u8,
                    xs: usize,
                    nc: usize,
                    out: *mut f32,
                    os: usize,
                ) {
                    macro_rules! by_c {
                        ($r:literal) => {
                            match nc {
                                1 => tile::<$T, $r, 1>(n, w, ws, x, xs, out, os),
                                2 => tile::<$T, $r, 2>(n, w, ws, x, xs, out, os),
                                3 => tile::<$T, $r, 3>(n, w, ws, x, xs, out, os),
                                4 => tile::<$T, $r, 4>(n, w, ws, x, xs, out, os),
                                5 => tile::<$T, $r, 5>(n, w, ws, x, xs, out, os),
                                _ => tile::<$T, $r, 6>(n, w, ws, x, xs, out, os),
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

                pub fn gemm(t: Tile<'_>) {
                    let (n, nr, nc) = (t.n, t.rows, t.tokens);
                    assert!(
                        (1..=ROWS).contains(&nr) && (1..=TOKENS).contains(&nc) && t.fits(n * $bytes, n * $bytes),
                        concat!($name, " gemm: tile {}x{} of {} values does not fit its buffers"),
                        nr,
                        nc,
                        n
                    );
                    let Tile { w, w_stride, x, x_stride, out, out_stride, .. } = t;
                    // SAFETY: as `vec_dot`; every row, token and output the tile touches was just
                    // checked to be inside the slices.
                    unsafe {
                        gemm_tf(n, w.as_ptr(), w_stride, nr, x.as_ptr(), x_stride, nc, out.as_mut_ptr(), out_stride)
                    }
                }
            }
        };
    }

    float_kernels!(f32k, F32, 4, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", "F32");
    float_kernels!(f16k, F16, 2, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", "F16");
    float_kernels!(bf16k, BF16, 2, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", "BF16");
    float_kernels!(bf16dp, BF16Pairs, 2, "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c", "BF16");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::quantize_row;

    /// Deterministic values in [-1, 1) with a few large ones (splitmix64).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::types::q8_k::test_util::spiky_values(n, seed, 1.0)
    }

    /// The one-token kernel and `vec_dot` against the scalar specification for every block
    /// count parity: for Q8_0 both `gemv_rows` paths (rows prepared in one part, and rows
    /// longer than a part streamed one at a time), for the nibble types the four-block `quad`
    /// kernel with no whole quad (1..3 blocks), whole quads only, and quads followed by 1..3
    /// tail blocks (odd counts end in a half pair); the per-thread buffers grow and shrink in use.
    #[test]
    fn gemv_and_vec_dot_match_scalar_for_odd_and_long_rows() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI/VBMI");
            return;
        }
        use WeightType::*;
        for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
            let at = t.vec_dot_type();
            let scalar = crate::isa::scalar::vec_dot(t).unwrap();
            for nb in [1usize, 2, 3, 7, 8, 9, 17, 127, 128, 129, 2 * GEMV_CHUNK_PAIRS + 3, 448] {
                let n = nb * 32;
                let rows = 5;
                let wrb = t.row_bytes(n);
                // A row stride longer than a row (rows need not be contiguous), the gaps making
                // plausible blocks: reading past a row's end changes the result.
                let (w, ws) = crate::types::q8_k::test_util::strided_rows(t, n, rows, 34, 1 + 10 * nb as u64);
                let mut x = vec![0u8; at.row_bytes(n)];
                quantize_row(at, &values(n, 1000 + nb as u64), &mut x);
                let mut out = vec![f32::NAN; rows];
                gemv(t).unwrap()(n, &w, ws, rows, &x, &mut out);
                for r in 0..rows {
                    let row = &w[r * ws..r * ws + wrb];
                    let want = scalar(n, row, &x);
                    let dot = vec_dot(t).unwrap()(n, row, &x);
                    // Same quantized operands, only the summation order differs.
                    let tol = 1e-4 * (n as f32).sqrt() * want.abs().max(1.0);
                    assert!((out[r] - want).abs() <= tol, "{t:?} nb {nb} row {r}: gemv {} vs scalar {want}", out[r]);
                    assert!((dot - want).abs() <= tol, "{t:?} nb {nb} row {r}: vec_dot {dot} vs scalar {want}");
                }
            }
        }
    }
}
