//! avx2 one-token kernels (`gemv`) of the IQ4 types: IQ4_NL against Q8_0, IQ4_XS against Q8_K.
//!
//! 64 values per step from one 32-byte register of index nibbles: its low nibbles and its high
//! nibbles each become 32 signed codebook values with one `vpshufb` of `KVALUES` (IQ4_XS: 32
//! index bytes are sub-blocks `2k` and `2k + 1`, 128-bit lane `i` holding sub-block `2k + i`'s
//! values 0..16 in the low nibbles and 16..32 in the high ones; IQ4_NL: two blocks, one per
//! lane, loaded as two 16-byte halves). The activations are put in that order once per call
//! (`prepare_*`, per thread, on the stack, `CHUNK_*` blocks at a time), so a row costs no
//! activation shuffles. Products: `vpmaddubsw` of `|v|` and the activations with `v`'s sign
//! (`vpsignb`), pairs exact in 16 bits (2 * 127 * 127 < 2^15), then `vpmaddwd` by the
//! sub-block scales `ls - 32` (IQ4_XS, per lane: eight scales decoded per block with vector
//! operations and one `vpshufb` per sub-block pair) or by ones (IQ4_NL): exact i32 sums as in
//! the scalar specification, then one convert and one multiply-add per block (IQ4_XS) or block
//! pair (IQ4_NL). Rows stream one after the other, prefetched ahead.
//!
//! Called only from `iq4::gemv`, installed when `super::available()` (AVX2, FMA, F16C), which
//! is what makes calling the `#[target_feature]` code sound.

use super::legacy::{h2f, ld128, ld256};
use crate::isa::{prefetch_ahead, PREFETCH_AHEAD};
use crate::types::iq4_nl::{BlockIQ4NL, KVALUES, QK};
use crate::types::iq4_xs::BlockIQ4XS;
use crate::types::q8_0::BlockQ8_0;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The codebook in both 128-bit lanes (for `vpshufb`).
#[inline(always)]
unsafe fn codebook() -> __m256i {
    _mm256_broadcastsi128_si256(ld128(KVALUES.as_ptr()))
}

/// Sums of `v * x` over byte pairs (16 lanes of i16, exact): the sign trick.
#[inline(always)]
unsafe fn pair_products(v: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(x, v))
}

/// The signed values of the low and the high nibbles of `q`.
#[inline(always)]
unsafe fn nibble_values(q: __m256i, table: __m256i) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let lo = _mm256_and_si256(q, m4);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
    (_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi))
}

// ---- IQ4_XS ----

/// One Q8_K block in the weights' order: `q[2k]` the values 0..16 of sub-blocks `2k`, `2k + 1`
/// (one per 128-bit lane), `q[2k + 1]` their values 16..32; `d` the block's scale.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct XsPrep {
    q: [__m256i; 8],
    d: f32,
}

/// Blocks prepared at a time (16384 values, 18 KiB on the stack: in L1 while the rows stream
/// past); longer rows are done in several passes over the rows.
const CHUNK_XS: usize = 64;

#[inline(always)]
unsafe fn prepare_xs(a: &BlockQ8K) -> XsPrep {
    let mut q = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        let x0 = ld256(a.qs.as_ptr().add(64 * k));
        let x1 = ld256(a.qs.as_ptr().add(64 * k + 32));
        q[2 * k] = _mm256_permute2x128_si256::<0x20>(x0, x1);
        q[2 * k + 1] = _mm256_permute2x128_si256::<0x31>(x0, x1);
    }
    XsPrep { q, d: a.d() }
}

/// `vpshufb` controls: word `l` of 128-bit lane `i` takes scale `2k + i` (of the eight i16
/// scales in each lane).
const fn scale_ctl(k: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    let mut b = 0;
    while b < 32 {
        let j = 2 * k + b / 16;
        a[b] = (2 * j + b % 2) as u8;
        b += 1;
    }
    a
}
const SCALE_CTL: [[u8; 32]; 4] = [scale_ctl(0), scale_ctl(1), scale_ctl(2), scale_ctl(3)];

/// `vpshufb` control: word `j` = byte `j / 2` (zero-extended) of the low scale bits.
const LOW_CTL: [u8; 16] = [0, 0x80, 0, 0x80, 1, 0x80, 1, 0x80, 2, 0x80, 2, 0x80, 3, 0x80, 3, 0x80];
/// Word `j` multiplier moving bits `2j..2j+2` of `scales_h` to the top of the word.
const HIGH_MUL: [i16; 8] = [1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1];

/// The eight sub-block scales `ls - 32` of `b` as i16, in both 128-bit lanes.
#[inline(always)]
unsafe fn xs_scales(b: &BlockIQ4XS) -> __m256i {
    let w = _mm_shuffle_epi8(_mm_cvtsi32_si128(u32::from_le_bytes(b.scales_l) as i32), ld128(LOW_CTL.as_ptr()));
    // even j: the byte's low nibble; odd j: its high one
    let low = _mm_blend_epi16::<0xAA>(_mm_and_si128(w, _mm_set1_epi16(0xF)), _mm_srli_epi16::<4>(w));
    let h = _mm_set1_epi16(u16::from_le_bytes(b.scales_h) as i16);
    let high = _mm_srli_epi16::<14>(_mm_mullo_epi16(h, ld128(HIGH_MUL.as_ptr())));
    let ls = _mm_or_si128(low, _mm_slli_epi16::<4>(high));
    _mm256_broadcastsi128_si256(_mm_sub_epi16(ls, _mm_set1_epi16(32)))
}

/// One IQ4_XS row against prepared activations.
#[inline(always)]
unsafe fn row_xs(wb: &[BlockIQ4XS], prep: &[XsPrep]) -> f32 {
    let table = codebook();
    let ctl: [__m256i; 4] = core::array::from_fn(|k| ld256(SCALE_CTL[k].as_ptr()));
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, (b, p)) in wb.iter().zip(prep).enumerate() {
        prefetch_ahead(b);
        let sc = xs_scales(b);
        let mut s = [_mm256_setzero_si256(); 2];
        for k in 0..4 {
            let (lo, hi) = nibble_values(ld256(b.qs.as_ptr().add(32 * k)), table);
            let sk = _mm256_shuffle_epi8(sc, ctl[k]);
            let p0 = _mm256_madd_epi16(pair_products(lo, p.q[2 * k]), sk);
            let p1 = _mm256_madd_epi16(pair_products(hi, p.q[2 * k + 1]), sk);
            s[k & 1] = _mm256_add_epi32(s[k & 1], _mm256_add_epi32(p0, p1));
        }
        let d = _mm256_set1_ps(h2f(b.d.as_ptr()) * p.d);
        acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1])), d, acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_xs_tf(nb: usize, w: &[u8], ws: usize, nr: usize, xb: &[BlockQ8K], out: &mut [f32]) {
    let mut buf = [const { MaybeUninit::<XsPrep>::uninit() }; CHUNK_XS];
    let mut b0 = 0;
    while b0 < nb {
        let m = CHUNK_XS.min(nb - b0);
        for (slot, a) in buf.iter_mut().zip(&xb[b0..b0 + m]) {
            // SAFETY: this function's features are the ones `prepare_xs` needs.
            slot.write(unsafe { prepare_xs(a) });
        }
        // SAFETY: the first `m` slots were all written just above.
        let prep = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const XsPrep, m) };
        for (r, o) in out[..nr].iter_mut().enumerate() {
            let wb = first_blocks::<BlockIQ4XS>(&w[r * ws..], nb, "IQ4_XS gemv weights");
            // SAFETY: this function's features are the ones `row_xs` needs.
            let v = unsafe { row_xs(&wb[b0..b0 + m], prep) };
            *o = if b0 == 0 { v } else { *o + v };
        }
        b0 += m;
    }
}

/// `nr` IQ4_XS rows (`ws` bytes apart) against one Q8_K token.
pub(super) fn gemv_iq4xs(n: usize, w: &[u8], ws: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let xb = first_blocks::<BlockQ8K>(x, nb, "IQ4_XS gemv activations");
    assert!(out.len() >= nr, "IQ4_XS gemv: {} outputs for {nr} rows", out.len());
    // SAFETY: installed only when `super::available()`; every block is bounds-checked.
    unsafe { gemv_xs_tf(nb, w, ws, nr, xb, out) }
}

// ---- IQ4_NL ----

/// Two Q8_0 blocks in the weights' order: `lo` their values 0..16 (one block per 128-bit
/// lane), `hi` their values 16..32, `d` each block's scale in its lane's four floats. A missing
/// second block is zeros.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct NlPrep {
    lo: __m256i,
    hi: __m256i,
    d: __m256,
}

/// Block pairs prepared at a time (8192 values, 24 KiB on the stack).
const CHUNK_NL: usize = 128;

#[inline(always)]
unsafe fn prepare_nl(a: &BlockQ8_0, b: Option<&BlockQ8_0>) -> NlPrep {
    let x0 = ld256(a.qs.as_ptr());
    let (x1, d1) = match b {
        Some(b) => (ld256(b.qs.as_ptr()), h2f(b.d.as_ptr())),
        None => (_mm256_setzero_si256(), 0.0),
    };
    NlPrep {
        lo: _mm256_permute2x128_si256::<0x20>(x0, x1),
        hi: _mm256_permute2x128_si256::<0x31>(x0, x1),
        d: _mm256_set_m128(_mm_set1_ps(d1), _mm_set1_ps(h2f(a.d.as_ptr()))),
    }
}

/// One IQ4_NL row against prepared activations (`prep[i]`: blocks `2i`, `2i + 1`).
#[inline(always)]
unsafe fn row_nl(wb: &[BlockIQ4NL], prep: &[NlPrep]) -> f32 {
    let table = codebook();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, p) in prep.iter().enumerate() {
        let a = &wb[2 * i];
        // one line every 36 bytes: with the pairs' starts under 64 bytes apart, every line of
        // the row (a hint: never faults)
        _mm_prefetch::<_MM_HINT_T0>((a as *const BlockIQ4NL as *const i8).wrapping_add(PREFETCH_AHEAD));
        let (q, dw) = match wb.get(2 * i + 1) {
            Some(b) => (
                _mm256_set_m128i(ld128(b.qs.as_ptr()), ld128(a.qs.as_ptr())),
                _mm256_set_m128(_mm_set1_ps(h2f(b.d.as_ptr())), _mm_set1_ps(h2f(a.d.as_ptr()))),
            ),
            None => {
                (_mm256_zextsi128_si256(ld128(a.qs.as_ptr())), _mm256_zextps128_ps256(_mm_set1_ps(h2f(a.d.as_ptr()))))
            }
        };
        let (lo, hi) = nibble_values(q, table);
        let s = _mm256_add_epi32(
            _mm256_madd_epi16(pair_products(lo, p.lo), ones),
            _mm256_madd_epi16(pair_products(hi, p.hi), ones),
        );
        acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, p.d), acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_nl_tf(nb: usize, w: &[u8], ws: usize, nr: usize, xb: &[BlockQ8_0], out: &mut [f32]) {
    let mut buf = [const { MaybeUninit::<NlPrep>::uninit() }; CHUNK_NL];
    let mut b0 = 0;
    while b0 < nb {
        let m = (2 * CHUNK_NL).min(nb - b0);
        let x = &xb[b0..b0 + m];
        for (slot, pair) in buf.iter_mut().zip(x.chunks(2)) {
            // SAFETY: this function's features are the ones `prepare_nl` needs.
            slot.write(unsafe { prepare_nl(&pair[0], pair.get(1)) });
        }
        // SAFETY: the first `m.div_ceil(2)` slots were all written just above.
        let prep = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const NlPrep, m.div_ceil(2)) };
        for (r, o) in out[..nr].iter_mut().enumerate() {
            let wb = first_blocks::<BlockIQ4NL>(&w[r * ws..], nb, "IQ4_NL gemv weights");
            // SAFETY: this function's features are the ones `row_nl` needs.
            let v = unsafe { row_nl(&wb[b0..b0 + m], prep) };
            *o = if b0 == 0 { v } else { *o + v };
        }
        b0 += m;
    }
}

/// `nr` IQ4_NL rows (`ws` bytes apart) against one Q8_0 token.
pub(super) fn gemv_iq4nl(n: usize, w: &[u8], ws: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let xb = first_blocks::<BlockQ8_0>(x, nb, "IQ4_NL gemv activations");
    assert!(out.len() >= nr, "IQ4_NL gemv: {} outputs for {nr} rows", out.len());
    // SAFETY: installed only when `super::available()`; every block is bounds-checked.
    unsafe { gemv_nl_tf(nb, w, ws, nr, xb, out) }
}
