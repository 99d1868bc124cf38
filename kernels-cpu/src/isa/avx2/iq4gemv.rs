//! avx2 one-token kernels (`gemv`) of the IQ4 types: IQ4_NL against Q8_0, IQ4_XS against Q8_K.
//!
//! 64 values per step from one 32-byte register of index nibbles: its low nibbles and its high
//! nibbles each become 32 signed codebook values with one `vpshufb` of `KVALUES` (IQ4_XS: 32
//! index bytes are sub-blocks `2k` and `2k + 1`, 128-bit lane `i` holding sub-block `2k + i`'s
//! values 0..16 in the low nibbles and 16..32 in the high ones; IQ4_NL: two blocks, one per
//! lane, loaded as two 16-byte halves). The activations are put in that order once per call
//! (`prepare_*`, into a per-thread buffer: rows of 14336 values take 18 KiB (IQ4_XS) or 28 KiB
//! (IQ4_NL), in L1 or L2 while the rows stream past), so a row costs no activation shuffles.
//! Products: `vpmaddubsw` of `|v|` and the activations with `v`'s sign (`vpsignb`), pairs
//! exact in 16 bits (2 * 127 * 127 < 2^15), then `vpmaddwd` by the sub-block scales `ls - 32`
//! (IQ4_XS, per lane: eight scales decoded per block with vector operations and one `vpshufb`
//! per sub-block pair) or by ones (IQ4_NL): exact i32 sums as in the scalar specification,
//! then one convert and one multiply-add per block (IQ4_XS) or block pair (IQ4_NL, four pairs
//! a step into two accumulators). Rows stream one after the other, prefetched ahead.
//!
//! With AVX-VNNI (`V`, chosen at run time) the codes are unsigned instead (codebook + 128,
//! `types::iq4_nl::UNSIGNED`) and two `vpdpbusd` give exact i32 sums of code x quant per 64
//! values, no sign trick; the 128 comes back exactly in the integer domain from sums of the
//! activations prepared once per call (`-128 * sum(x)` per sub-block; IQ4_NL: per i32 lane of
//! the `vpdpbusd` pair, which needs no horizontal sums and keeps the step exact). IQ4_XS then
//! reduces each sub-block's four lanes with three `vphaddd` per block (sub-blocks in the order
//! 0, 2, 4, 6, 1, 3, 5, 7, which its scales are decoded in) and applies the scales with one
//! `vpmulld`: the scalar specification's integer sum per block.
//!
//! Called only from `iq4::gemv`, installed when `super::available()` (AVX2, FMA, F16C), which
//! is what makes calling the `#[target_feature]` code sound.

use super::legacy::{h2f, ld128, ld256};
use crate::isa::{prefetch_ahead, PREFETCH_AHEAD};
use crate::types::iq4_nl::{BlockIQ4NL, KVALUES, QK, UNSIGNED};
use crate::types::iq4_xs::BlockIQ4XS;
use crate::types::q8_0::BlockQ8_0;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The codebook (`V`: made unsigned) in both 128-bit lanes (for `vpshufb`).
#[inline(always)]
unsafe fn codebook<const V: bool>() -> __m256i {
    _mm256_broadcastsi128_si256(if V { ld128(UNSIGNED.as_ptr()) } else { ld128(KVALUES.as_ptr()) })
}

/// Whether the CPU has AVX-VNNI (the `V` variants).
pub(super) fn vnni() -> bool {
    is_x86_feature_detected!("avxvnni")
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

thread_local! {
    /// Each thread's prepared activations (grown to the longest row, then reused: the token
    /// loop allocates nothing).
    static PREP_XS: RefCell<Vec<XsPrep>> = const { RefCell::new(Vec::new()) };
    static PREP_NL: RefCell<Vec<NlPrep>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with room for `n` entries of this thread's buffer `cell`. (The borrow is taken
/// here, outside the `#[target_feature]` code: a closure inside it would be compiled without
/// those features.)
fn with_prep<T: Copy, R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    n: usize,
    f: impl FnOnce(*mut T) -> R,
) -> R {
    cell.with(|c| {
        let mut v = c.borrow_mut();
        if v.len() < n {
            // SAFETY: `T` is `XsPrep` or `NlPrep`: SIMD vectors and numbers, for which all
            // zero bits are a valid value.
            v.resize(n, unsafe { core::mem::zeroed() });
        }
        f(v.as_mut_ptr())
    })
}

// ---- IQ4_XS ----

/// One Q8_K block in the weights' order: `q[2k]` the values 0..16 of sub-blocks `2k`, `2k + 1`
/// (one per 128-bit lane), `q[2k + 1]` their values 16..32; `corr` the sub-blocks' `-128 *
/// sum(x)` in the order 0, 2, 4, 6, 1, 3, 5, 7 (for `V`); `d` the block's scale.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct XsPrep {
    q: [__m256i; 8],
    corr: [i32; 8],
    d: f32,
}

/// Sub-block of each slot of the `V` order (see the module text).
const SLOT_SUB: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

#[inline(always)]
unsafe fn prepare_xs(a: &BlockQ8K) -> XsPrep {
    let mut q = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        let x0 = ld256(a.qs.as_ptr().add(64 * k));
        let x1 = ld256(a.qs.as_ptr().add(64 * k + 32));
        q[2 * k] = _mm256_permute2x128_si256::<0x20>(x0, x1);
        q[2 * k + 1] = _mm256_permute2x128_si256::<0x31>(x0, x1);
    }
    let corr = core::array::from_fn(|p| {
        let j = SLOT_SUB[p];
        -128 * (a.bsum(2 * j) + a.bsum(2 * j + 1))
    });
    XsPrep { q, corr, d: a.d() }
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
/// As `LOW_CTL` and `HIGH_MUL` for the `V` order (slot `p` = sub-block `SLOT_SUB[p]`).
const LOW_CTL_V: [u8; 16] = [0, 0x80, 1, 0x80, 2, 0x80, 3, 0x80, 0, 0x80, 1, 0x80, 2, 0x80, 3, 0x80];
const HIGH_MUL_V: [i16; 8] = [1 << 14, 1 << 10, 1 << 6, 1 << 2, 1 << 12, 1 << 8, 1 << 4, 1];

/// The eight sub-block scales `ls - 32` of `b` as i16, in sub-block order or (`V`) in the `V`
/// order.
#[inline(always)]
unsafe fn xs_scales<const V: bool>(b: &BlockIQ4XS) -> __m128i {
    let (ctl, mul) = if V { (LOW_CTL_V, HIGH_MUL_V) } else { (LOW_CTL, HIGH_MUL) };
    let w = _mm_shuffle_epi8(_mm_cvtsi32_si128(u32::from_le_bytes(b.scales_l) as i32), ld128(ctl.as_ptr()));
    // even sub-blocks: the byte's low nibble; odd ones: its high one
    let (lo, hi) = (_mm_and_si128(w, _mm_set1_epi16(0xF)), _mm_srli_epi16::<4>(w));
    let low = if V { _mm_blend_epi16::<0xF0>(lo, hi) } else { _mm_blend_epi16::<0xAA>(lo, hi) };
    let h = _mm_set1_epi16(u16::from_le_bytes(b.scales_h) as i16);
    let high = _mm_srli_epi16::<14>(_mm_mullo_epi16(h, ld128(mul.as_ptr())));
    let ls = _mm_or_si128(low, _mm_slli_epi16::<4>(high));
    _mm_sub_epi16(ls, _mm_set1_epi16(32))
}

/// One IQ4_XS row against prepared activations, with AVX-VNNI (see the module text).
#[inline(always)]
unsafe fn row_xs_vnni(wb: &[BlockIQ4XS], prep: &[XsPrep]) -> f32 {
    let table = codebook::<true>();
    let mut acc = _mm256_setzero_ps();
    for (b, p) in wb.iter().zip(prep) {
        prefetch_ahead(b);
        let t: [__m256i; 4] = core::array::from_fn(|k| {
            let (lo, hi) = nibble_values(ld256(b.qs.as_ptr().add(32 * k)), table);
            let z = _mm256_setzero_si256();
            _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(z, lo, p.q[2 * k]), hi, p.q[2 * k + 1])
        });
        // per sub-block (V order): sum(code * x) - 128 * sum(x) = sum(value * x), exact
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(t[0], t[1]), _mm256_hadd_epi32(t[2], t[3]));
        let h = _mm256_add_epi32(h, ld256(p.corr.as_ptr()));
        let sumi = _mm256_mullo_epi32(h, _mm256_cvtepi16_epi32(xs_scales::<true>(b)));
        let d = _mm256_set1_ps(h2f(b.d.as_ptr()) * p.d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), d, acc);
    }
    hsum(acc)
}

/// One IQ4_XS row against prepared activations.
#[inline(always)]
unsafe fn row_xs<const V: bool>(wb: &[BlockIQ4XS], prep: &[XsPrep]) -> f32 {
    if V {
        return row_xs_vnni(wb, prep);
    }
    let table = codebook::<false>();
    let ctl: [__m256i; 4] = core::array::from_fn(|k| ld256(SCALE_CTL[k].as_ptr()));
    let mut acc = _mm256_setzero_ps();
    for (b, p) in wb.iter().zip(prep) {
        prefetch_ahead(b);
        let sc = _mm256_broadcastsi128_si256(xs_scales::<false>(b));
        let mut s = [_mm256_setzero_si256(); 2];
        for k in 0..4 {
            let (lo, hi) = nibble_values(ld256(b.qs.as_ptr().add(32 * k)), table);
            let sk = _mm256_shuffle_epi8(sc, ctl[k]);
            let p0 = _mm256_madd_epi16(pair_products(lo, p.q[2 * k]), sk);
            let p1 = _mm256_madd_epi16(pair_products(hi, p.q[2 * k + 1]), sk);
            s[k & 1] = _mm256_add_epi32(s[k & 1], _mm256_add_epi32(p0, p1));
        }
        let d = _mm256_set1_ps(h2f(b.d.as_ptr()) * p.d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1])), d, acc);
    }
    hsum(acc)
}

#[inline(always)]
unsafe fn gemv_xs<const V: bool>(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    xb: &[BlockQ8K],
    out: &mut [f32],
    prep: *mut XsPrep,
) {
    for (i, a) in xb.iter().enumerate() {
        prep.add(i).write(prepare_xs(a));
    }
    // the first `nb` entries were all written just above
    let prep = core::slice::from_raw_parts(prep, nb);
    for (r, o) in out[..nr].iter_mut().enumerate() {
        *o = row_xs::<V>(first_blocks::<BlockIQ4XS>(&w[r * ws..], nb, "IQ4_XS gemv weights"), prep);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
///
/// # Safety
/// `prep` has room for the prepared activations (`with_prep`).
unsafe fn gemv_xs_plain(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    xb: &[BlockQ8K],
    out: &mut [f32],
    prep: *mut XsPrep,
) {
    gemv_xs::<false>(nb, w, ws, nr, xb, out, prep)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
///
/// # Safety
/// `prep` has room for the prepared activations (`with_prep`).
unsafe fn gemv_xs_vnni(nb: usize, w: &[u8], ws: usize, nr: usize, xb: &[BlockQ8K], out: &mut [f32], prep: *mut XsPrep) {
    gemv_xs::<true>(nb, w, ws, nr, xb, out, prep)
}

/// `nr` IQ4_XS rows (`ws` bytes apart) against one Q8_K token, with (`V`) or without AVX-VNNI.
pub(super) fn gemv_iq4xs<const V: bool>(n: usize, w: &[u8], ws: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let xb = first_blocks::<BlockQ8K>(x, nb, "IQ4_XS gemv activations");
    assert!(out.len() >= nr, "IQ4_XS gemv: {} outputs for {nr} rows", out.len());
    // SAFETY: installed only when `super::available()`, `V` only when `vnni()` too; every
    // block is bounds-checked.
    with_prep(&PREP_XS, nb, |prep| unsafe {
        if V {
            gemv_xs_vnni(nb, w, ws, nr, xb, out, prep)
        } else {
            gemv_xs_plain(nb, w, ws, nr, xb, out, prep)
        }
    })
}

// ---- IQ4_NL ----

/// Two Q8_0 blocks in the weights' order: `lo` their values 0..16 (one block per 128-bit
/// lane), `hi` their values 16..32, `d` the two blocks' scales (then two zeros), `base`
/// (for `V`) per i32 lane `-128 *` the sum of the eight activations that lane's `vpdpbusd`
/// pair takes (four of `lo`, four of `hi`). A missing second block is zeros.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct NlPrep {
    lo: __m256i,
    hi: __m256i,
    base: __m256i,
    d: __m128,
}

/// Vector operations only: this runs once per block pair for every call (a block of rows),
/// so a scalar sum of the activations here costs as much as several rows' worth of steps.
#[inline(always)]
unsafe fn prepare_nl<const V: bool>(a: &BlockQ8_0, b: Option<&BlockQ8_0>) -> NlPrep {
    let x0 = ld256(a.qs.as_ptr());
    let (x1, d1) = match b {
        Some(b) => (ld256(b.qs.as_ptr()), h2f(b.d.as_ptr())),
        None => (_mm256_setzero_si256(), 0.0),
    };
    let lo = _mm256_permute2x128_si256::<0x20>(x0, x1);
    let hi = _mm256_permute2x128_si256::<0x31>(x0, x1);
    let z = _mm256_setzero_si256();
    let base = if V {
        // 128 * (sum of four activations) per pair of `vpdpbusd`s, exact, then negated
        let c = _mm256_set1_epi8(-128);
        _mm256_sub_epi32(z, _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(z, c, lo), c, hi))
    } else {
        z
    };
    NlPrep { base, lo, hi, d: _mm_setr_ps(h2f(a.d.as_ptr()), d1, 0.0, 0.0) }
}

/// One IQ4_NL row against prepared activations (`prep[i]`: blocks `2i`, `2i + 1`).
#[inline(always)]
unsafe fn row_nl<const V: bool>(wb: &[BlockIQ4NL], prep: &[NlPrep]) -> f32 {
    // two accumulators, named (an indexed pair is kept in memory: a store-to-load chain)
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let eights = wb.chunks_exact(8);
    let tail = eights.remainder();
    for (w, p) in eights.zip(prep.chunks_exact(4)) {
        // eight blocks are 144 bytes: prefetches 64 bytes apart (then 16 to the next step's)
        // touch every line of the row once or twice, as Q4_K's per-block ones (a hint: never
        // faults)
        let pf = (w.as_ptr() as *const i8).wrapping_add(PREFETCH_AHEAD);
        _mm_prefetch::<_MM_HINT_T0>(pf);
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64));
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(128));
        step_nl::<V>(&mut acc0, &p[0], &w[0], Some(&w[1]));
        step_nl::<V>(&mut acc1, &p[1], &w[2], Some(&w[3]));
        step_nl::<V>(&mut acc0, &p[2], &w[4], Some(&w[5]));
        step_nl::<V>(&mut acc1, &p[3], &w[6], Some(&w[7]));
    }
    // the last 0..8 blocks (their lines prefetched by the steps above or the row before)
    for (pair, p) in tail.chunks(2).zip(&prep[wb.len() / 8 * 4..]) {
        step_nl::<V>(&mut acc0, p, &pair[0], pair.get(1));
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// A block pair's products and scales into `acc`; `b` None: one block (the other lanes zeros).
/// (A function, not a closure: closures are compiled without the caller's features.)
#[inline(always)]
unsafe fn step_nl<const V: bool>(acc: &mut __m256, p: &NlPrep, a: &BlockIQ4NL, b: Option<&BlockIQ4NL>) {
    let table = codebook::<V>();
    let ones = _mm256_set1_epi16(1);
    let (q, db) = match b {
        Some(b) => (_mm256_set_m128i(ld128(b.qs.as_ptr()), ld128(a.qs.as_ptr())), u16::from_le_bytes(b.d)),
        None => (_mm256_zextsi128_si256(ld128(a.qs.as_ptr())), 0),
    };
    // both f16 scales converted and multiplied by the activations' at once, then each spread
    // over its lane's four floats
    let dd = _mm_cvtsi32_si128(u16::from_le_bytes(a.d) as i32 | (db as i32) << 16);
    let d = _mm_mul_ps(_mm_cvtph_ps(dd), p.d);
    let d = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    let (lo, hi) = nibble_values(q, table);
    let s = if V {
        // sum(code * x) - 128 * sum(x) = sum(value * x), exact
        _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(p.base, lo, p.lo), hi, p.hi)
    } else {
        _mm256_add_epi32(
            _mm256_madd_epi16(pair_products(lo, p.lo), ones),
            _mm256_madd_epi16(pair_products(hi, p.hi), ones),
        )
    };
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, *acc);
}

#[inline(always)]
unsafe fn gemv_nl<const V: bool>(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    xb: &[BlockQ8_0],
    out: &mut [f32],
    prep: *mut NlPrep,
) {
    let np = nb.div_ceil(2);
    for (i, pair) in xb.chunks(2).enumerate() {
        prep.add(i).write(prepare_nl::<V>(&pair[0], pair.get(1)));
    }
    // the first `np` entries were all written just above
    let prep = core::slice::from_raw_parts(prep, np);
    for (r, o) in out[..nr].iter_mut().enumerate() {
        *o = row_nl::<V>(first_blocks::<BlockIQ4NL>(&w[r * ws..], nb, "IQ4_NL gemv weights"), prep);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
///
/// # Safety
/// `prep` has room for the prepared activations (`with_prep`).
unsafe fn gemv_nl_plain(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    xb: &[BlockQ8_0],
    out: &mut [f32],
    prep: *mut NlPrep,
) {
    gemv_nl::<false>(nb, w, ws, nr, xb, out, prep)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
///
/// # Safety
/// `prep` has room for the prepared activations (`with_prep`).
unsafe fn gemv_nl_vnni(
    nb: usize,
    w: &[u8],
    ws: usize,
    nr: usize,
    xb: &[BlockQ8_0],
    out: &mut [f32],
    prep: *mut NlPrep,
) {
    gemv_nl::<true>(nb, w, ws, nr, xb, out, prep)
}

/// `nr` IQ4_NL rows (`ws` bytes apart) against one Q8_0 token, with (`V`) or without AVX-VNNI.
pub(super) fn gemv_iq4nl<const V: bool>(n: usize, w: &[u8], ws: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK;
    let xb = first_blocks::<BlockQ8_0>(x, nb, "IQ4_NL gemv activations");
    assert!(out.len() >= nr, "IQ4_NL gemv: {} outputs for {nr} rows", out.len());
    // SAFETY: installed only when `super::available()`, `V` only when `vnni()` too; every
    // block is bounds-checked.
    with_prep(&PREP_NL, nb.div_ceil(2), |prep| unsafe {
        if V {
            gemv_nl_vnni(nb, w, ws, nr, xb, out, prep)
        } else {
            gemv_nl_plain(nb, w, ws, nr, xb, out, prep)
        }
    })
}
