//! avx512 panel kernels for the K-quant weight types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_XS
//! (codes = codebook value + 128, code offset 128, as Q6_K's 32) against Q8_K activations: an integer GEMM built on `vpdpbusd` (AVX-512 VNNI). See `PanelFn`.
//!
//! The algorithm (the one llama.cpp's "tiled" CPU path uses for K-quants; written here from its
//! description) has two steps per call:
//!
//! 1. **Unpack** the panel of weight rows once, 16 rows at a time, into plain unsigned byte
//!    codes (Q2_K 0..3, Q3_K 0..7 = level + 4, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 = level + 32)
//!    laid out `[k / 4][row 0..16][4 bytes]`, so that one 64-byte load holds 4 consecutive codes
//!    of each of 16 rows: exactly the unsigned operand of `vpdpbusd`. Beside them, per block of
//!    256 values, the 16 rows' sub-block scales as i32 (`[sub-block][row]`), a 16-bit
//!    correction per group of 16 values (`[pair of groups][row][2 x i16]`: the Q2_K/Q4_K/Q5_K
//!    minimums, or minus the code offset times the scale for Q3_K/Q6_K), and `d`, `dmin` as f32.
//! 2. **Multiply**: a micro-kernel of 16 rows x 8 tokens. Per 4 values: one 64-byte load of
//!    codes and, per token, one `vpdpbusd` whose signed operand is the token's 4 Q8_K bytes
//!    broadcast straight from the activation row (embedded broadcast: the activations need no
//!    repacking at all). Per sub-block, `s1 += scale * raw` (`vpmulld`; Q2_K instead stores its
//!    codes already multiplied by their 4-bit scales, at most 45); per block the
//!    corrections come from the Q8_K group sums (`bsums`, read in pairs as one dword) with one
//!    `vpdpwssd` per pair of groups, into `s1` (code offsets, same factor `d`) or `s2`
//!    (minimums, factor `dmin`); then in f32 `acc += d_x * (d_w * s1 - dmin_w * s2)`.
//!
//! The integer sums per block are exact and equal to the scalar specification's (`sumi`,
//! `summ` in `types::q*_k::vec_dot`); only the final f32 combination differs in rounding order.
//!
//! Installed only when AVX-512 F/BW/VL, AVX2/FMA and VNNI are all detected (`supported()`),
//! which is what makes calling the `#[target_feature]` functions below sound.
#![allow(clippy::too_many_arguments)]
#![allow(clippy::needless_range_loop)] // token t indexes several register arrays at once

use core::arch::x86_64::*;
use std::cell::RefCell;

use crate::isa::{PanelFn, Tile};
use crate::types::q3_k::scales_q3k;
use crate::types::q4_k::scales_mins_k4_bytes;
use crate::types::q8_k::QK_K;
use crate::types::WeightType;

/// Everything these kernels need, detected at run time (the same rule as `kquants.rs`).
fn supported() -> bool {
    super::vnni()
}

pub fn panel(t: WeightType) -> Option<PanelFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q2_K => run::<Q2>,
        WeightType::Q3_K => run::<Q3>,
        WeightType::Q4_K => run::<Q4>,
        WeightType::Q5_K => run::<Q5>,
        WeightType::Q6_K => run::<Q6>,
        WeightType::IQ4_XS => run::<IQ4XS>,
        _ => return None,
    })
}

// The weight type as a const generic parameter (one monomorphised kernel per type).
const Q2: u8 = 2;
const Q3: u8 = 3;
const Q4: u8 = 4;
const Q5: u8 = 5;
const Q6: u8 = 6;
/// IQ4_XS: not a K-quant, but the same shape (256-value blocks, 32-value sub-blocks with
/// signed scales, Q8_K activations); its block unpacking is `super::iq4xs::panel_unpack_row`.
const IQ4XS: u8 = 14;

/// Bytes of one weight block of 256 values.
const fn block_bytes(t: u8) -> usize {
    match t {
        Q2 => 84,
        Q3 => 110,
        Q4 => 144,
        Q5 => 176,
        IQ4XS => 136,
        _ => 210,
    }
}
/// Values per scale sub-block.
const fn sub_size(t: u8) -> usize {
    match t {
        Q4 | Q5 | IQ4XS => 32,
        _ => 16,
    }
}
/// Whether the type subtracts per-sub-block minimums (times `dmin`).
const fn has_min(t: u8) -> bool {
    matches!(t, Q2 | Q4 | Q5)
}

/// Bytes of one Q8_K block (`f32 d; i8 qs[256]; i16 bsums[16]`) and the field offsets.
const Q8K_BYTES: usize = 292;
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// How many blocks ahead `unpack_panel` prefetches each row.
const PREFETCH_BLOCKS: usize = 2;
/// Rows per unpacked group (the lanes of a 512-bit vector of i32) and tokens per micro-kernel.
const ROWS: usize = 16;
const TOKENS: usize = 8;

/// One 64-byte line; `Vec<Line>` gives the unpacked panel 64-byte alignment.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Lines of one unpacked (16 rows x 1 block) unit: 64 lines of codes (one per 4 values),
/// 16 lines of scales (one per sub-block; 8 used when sub-blocks are 32 values), then the
/// meta lines: 8 correction lines (one per pair of 16-value groups), `d`, `dmin`.
const CODE_LINES: usize = QK_K / 4;
const SCALE_LINE: usize = CODE_LINES;
const CORR_LINE: usize = SCALE_LINE + 16;
const D_LINE: usize = CORR_LINE + 8;
const DMIN_LINE: usize = D_LINE + 1;
const UNIT_LINES: usize = DMIN_LINE + 1;
/// Lines of the per-row staging area before the transpose: 4 code lines, 1 scale line and
/// 1 meta line per row, each kind as 16 consecutive rows.
const STAGE_LINES: usize = 6 * ROWS;

thread_local! {
    /// Each thread's unpacked panel (grows to the largest panel seen, then reused).
    static PANEL: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Checks the arguments (caller bugs panic with a message), then unpacks and multiplies.
fn run<const T: u8>(t: Tile<'_>) {
    let Tile { n, w, w_stride, rows: nr, x, x_stride, tokens: nc, out, out_stride } = t;
    assert!(n.is_multiple_of(QK_K), "K-quant panel: row of {n} values is not a whole number of blocks");
    if nr == 0 || nc == 0 {
        return;
    }
    let nb = n / QK_K;
    let (wrb, xrb) = (nb * block_bytes(T), nb * Q8K_BYTES);
    assert!(nr == 1 || w_stride >= wrb, "K-quant panel: weight stride {w_stride} < row of {wrb} bytes");
    assert!(w.len() >= (nr - 1) * w_stride + wrb, "K-quant panel: {} weight bytes for {nr} rows", w.len());
    assert!(nc == 1 || x_stride >= xrb, "K-quant panel: activation stride {x_stride} < row of {xrb} bytes");
    assert!(x.len() >= (nc - 1) * x_stride + xrb, "K-quant panel: {} activation bytes for {nc} tokens", x.len());
    assert!(nc == 1 || out_stride >= nr, "K-quant panel: output stride {out_stride} < {nr} rows");
    assert!(out.len() >= (nc - 1) * out_stride + nr, "K-quant panel: output of {} for {nr} x {nc}", out.len());
    if nb == 0 {
        for c in 0..nc {
            out[c * out_stride..c * out_stride + nr].fill(0.0);
        }
        return;
    }
    let groups = nr.div_ceil(ROWS);
    PANEL.with(|p| {
        let mut buf = p.borrow_mut();
        let need = groups * nb * UNIT_LINES;
        if buf.len() < need {
            buf.resize(need, Line([0; 64]));
        }
        // SAFETY: installed only when `supported()` (every enabled feature detected); the
        // weight rows (nr x nb blocks at w_stride), activation rows (nc x nb Q8_K blocks at
        // x_stride) and output entries (out[c * out_stride + r], r < nr, c < nc) were checked
        // to lie inside their slices just above, and `buf` holds `groups * nb` units.
        unsafe {
            unpack_panel::<T>(w.as_ptr(), w_stride, nr, nb, buf.as_mut_ptr());
            multiply::<T>(buf.as_ptr(), nr, nb, x.as_ptr(), x_stride, nc, out.as_mut_ptr(), out_stride);
        }
    });
}

/// Unpacks `nr` weight rows of `nb` blocks into `groups x nb` units (rows past `nr` in the last
/// group are zeros: codes, scales, corrections, `d` all 0, so they contribute exactly 0).
///
/// Safety: the CPU has the enabled features; `w` points at `nr` rows of `nb` blocks spaced
/// `w_stride` bytes; `dst` has room for `nr.div_ceil(16) * nb * UNIT_LINES` lines.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_panel<const T: u8>(w: *const u8, w_stride: usize, nr: usize, nb: usize, dst: *mut Line) {
    let mut stage = [Line([0; 64]); STAGE_LINES];
    let st = stage.as_mut_ptr();
    for g in 0..nr.div_ceil(ROWS) {
        let rows = ROWS.min(nr - g * ROWS);
        for b in 0..nb {
            for r in 0..ROWS {
                if r < rows && b + PREFETCH_BLOCKS < nb {
                    // The weights usually come from DRAM (the mmap): ask for this row's block
                    // a few steps ahead (16 interleaved streams defeat the hardware prefetcher).
                    let ahead = w.wrapping_add((g * ROWS + r) * w_stride + (b + PREFETCH_BLOCKS) * block_bytes(T));
                    for line in 0..block_bytes(T).div_ceil(64) + 1 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
                    }
                }
                if r < rows {
                    // SAFETY: row g*16+r < nr and block b < nb lie inside the weights (caller).
                    unsafe { unpack_row::<T>(w.add((g * ROWS + r) * w_stride + b * block_bytes(T)), st, r) };
                } else {
                    for k in 0..6 {
                        // SAFETY: line k*16+r < STAGE_LINES of the local stage.
                        unsafe { _mm512_store_si512(st.add(k * ROWS + r) as *mut _, _mm512_setzero_si512()) };
                    }
                }
            }
            // SAFETY: unit (g, b) lies inside `dst` (caller); the stage lines are local.
            unsafe {
                let unit = dst.add((g * nb + b) * UNIT_LINES);
                for q in 0..4 {
                    transpose16(st.add(q * ROWS), unit.add(16 * q), 16);
                }
                // (Q2_K: the scales are folded into the codes)
                transpose16(st.add(4 * ROWS), unit.add(SCALE_LINE), if T == Q2 { 0 } else { QK_K / sub_size(T) });
                transpose16(st.add(5 * ROWS), unit.add(CORR_LINE), UNIT_LINES - CORR_LINE);
            }
        }
    }
}

/// Transposes 16 lines of 16 dwords (`src[i]` is row `i`) so that output
/// line `j` holds dword `j` of every row in lane order; stores the first `n_out` output lines.
///
/// Safety: `src` has 16 readable lines and `dst` room for `n_out` (<= 16) lines, both 64-byte
/// aligned; the CPU has the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn transpose16(src: *const Line, dst: *mut Line, n_out: usize) {
    // SAFETY: 16 aligned lines readable (caller).
    let r: [__m512i; 16] = core::array::from_fn(|i| unsafe { _mm512_load_si512(src.add(i) as *const _) });
    // Stage 1: pairs of rows interleaved by dword; stage 2: by qword (4 rows per 128-bit lane,
    // lane L of u[4g + c] = rows 4g..4g+4 at column c + 4L); stages 3-4 move the lanes.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a0, b0);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a0, b0);
        u[4 * g + 2] = _mm512_unpacklo_epi64(a1, b1);
        u[4 * g + 3] = _mm512_unpackhi_epi64(a1, b1);
    }
    let mut o = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xDD>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_i32x4::<0xDD>(u[8 + c], u[12 + c]);
        o[c] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        o[c + 8] = _mm512_shuffle_i32x4::<0xDD>(v0, w0);
        o[c + 4] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        o[c + 12] = _mm512_shuffle_i32x4::<0xDD>(v1, w1);
    }
    for (j, v) in o.iter().enumerate().take(n_out) {
        // SAFETY: j < n_out lines of room (caller).
        unsafe { _mm512_store_si512(dst.add(j) as *mut _, *v) };
    }
}

/// 0, 1, .., 31 as the 16-bit words of a vector.
#[repr(C, align(64))]
struct WordIndex([i16; 32]);
impl WordIndex {
    const fn new() -> WordIndex {
        let mut w = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            w[i] = i as i16;
            i += 1;
        }
        WordIndex(w)
    }
}
static WORD_INDEX: WordIndex = WordIndex::new();

/// Bytes `lo` in the low 256 bits and `hi` in the high 256 bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn halves_epi8(lo: i8, hi: i8) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_set1_epi8(lo), _mm256_set1_epi8(hi))
}
/// Words `lo` in the low 256 bits and `hi` in the high 256 bits (per-half shift counts).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn halves_epi16(lo: i16, hi: i16) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi))
}

/// Unpacks one weight block of one row into the stage: code lines `st[16q + r]` (values
/// 64q..64q+64 in order), the scale line `st[64 + r]` (i32 per sub-block) and the meta line
/// `st[80 + r]` (dwords 0..8: corrections for the Q8_K group-sum pairs as two i16; dword 8:
/// `d`; dword 9: `dmin`).
///
/// Safety: `blk` points at one whole block of type `T`; `st` at the stage; the CPU has the
/// enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack_row<const T: u8>(blk: *const u8, st: *mut Line, r: usize) {
    let m4 = _mm512_set1_epi8(0x0F);
    let code = |q: usize| st.wrapping_add(q * ROWS + r) as *mut __m512i;
    let scale = st.wrapping_add(4 * ROWS + r) as *mut __m512i;
    let meta = st.wrapping_add(5 * ROWS + r) as *mut u8;
    // SAFETY (whole body): every read is inside the block (offsets from the ggml layouts in
    // types/q*_k.rs: Q2_K scales 0, qs 16, d 80, dmin 82; Q3_K hmask 0, qs 32, scales 96,
    // d 108; Q4_K d 0, dmin 2, scales 4, qs 16; Q5_K d 0, dmin 2, scales 4, qh 16, qs 48;
    // Q6_K ql 0, qh 128, scales 192, d 208); every write is one of this row's stage lines;
    // `WORD_INDEX` is a 64-byte aligned static of 64 bytes.
    unsafe {
        let f16 = |off: usize| {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((blk.add(off) as *const u16).read_unaligned() as i32)))
        };
        let (d, dmin);
        match T {
            Q4 | Q5 => {
                let qs = if T == Q4 { 16 } else { 48 };
                let qh = if T == Q5 {
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(16) as *const _))
                } else {
                    _mm512_setzero_si512()
                };
                for half in 0..2 {
                    let v = _mm512_loadu_si512(blk.add(qs + 64 * half) as *const _);
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    // values 64q..64q+32: low nibbles of group q; 64q+32..64q+64: high nibbles
                    let mut c0 = _mm512_shuffle_i64x2::<0x44>(lo, hi);
                    let mut c1 = _mm512_shuffle_i64x2::<0xEE>(lo, hi);
                    if T == Q5 {
                        // fifth bit of sub-block j, value l: bit j of qh[l]
                        let bit = |q: usize| halves_epi8((1u8 << (2 * q)) as i8, (1u8 << (2 * q + 1)) as i8);
                        let sixteen = _mm512_set1_epi8(16);
                        let k0 = _mm512_test_epi8_mask(qh, bit(2 * half));
                        let k1 = _mm512_test_epi8_mask(qh, bit(2 * half + 1));
                        c0 = _mm512_or_si512(c0, _mm512_maskz_mov_epi8(k0, sixteen));
                        c1 = _mm512_or_si512(c1, _mm512_maskz_mov_epi8(k1, sixteen));
                    }
                    _mm512_store_si512(code(2 * half), c0);
                    _mm512_store_si512(code(2 * half + 1), c1);
                }
                let sm = scales_mins_k4_bytes(&*(blk.add(4) as *const [u8; 12]));
                let smv = _mm_loadu_si128(sm.as_ptr() as *const _);
                _mm512_store_si512(scale, _mm512_cvtepu8_epi32(smv));
                // one minimum per 32 values: the same for both group sums of a pair
                let m = _mm_cvtepu8_epi16(_mm_srli_si128::<8>(smv));
                let pairs = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
                _mm256_storeu_si256(meta as *mut _, pairs);
                (d, dmin) = (f16(0), f16(2));
            }
            Q6 => {
                for half in 0..2 {
                    let l = _mm512_loadu_si512(blk.add(64 * half) as *const _);
                    let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * half) as *const _));
                    let top = |shift: __m512i| {
                        _mm512_and_si512(_mm512_slli_epi16::<4>(_mm512_srlv_epi16(h, shift)), _mm512_set1_epi8(0x30))
                    };
                    let lo = _mm512_or_si512(_mm512_and_si512(l, m4), top(halves_epi16(0, 2)));
                    let hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), m4), top(halves_epi16(4, 6)));
                    _mm512_store_si512(code(2 * half), lo);
                    _mm512_store_si512(code(2 * half + 1), hi);
                }
                let sc = _mm_loadu_si128(blk.add(192) as *const _);
                _mm512_store_si512(scale, _mm512_cvtepi8_epi32(sc));
                // levels are codes - 32: scale * (raw - 32 * bsum)
                let corr = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(sc), _mm256_set1_epi16(-32));
                _mm256_storeu_si256(meta as *mut _, corr);
                (d, dmin) = (f16(208), 0.0);
            }
            Q2 | Q3 => {
                let qs = if T == Q2 { 16 } else { 32 };
                let hm = if T == Q3 {
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(blk as *const _))
                } else {
                    _mm512_setzero_si512()
                };
                for q in 0..4 {
                    // value 64q + l: bits 2s..2s+2 of qs[32 * (q / 2) + l % 32], s = 2 (q % 2) + l / 32
                    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(qs + 32 * (q / 2)) as *const _));
                    let sh = 4 * (q as i16 % 2);
                    let mut c = _mm512_and_si512(_mm512_srlv_epi16(v, halves_epi16(sh, sh + 2)), _mm512_set1_epi8(3));
                    if T == Q2 {
                        // Q2_K codes (0..3) times their 4-bit scales fit a byte (<= 45): store
                        // the products and skip the per-sub-block vpmulld. 16-bit multiplies:
                        // both bytes of a word share a sub-block and the low product (< 256)
                        // cannot carry into the high byte.
                        let sc16 = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(
                            _mm_loadu_si128(blk as *const _),
                            _mm_set1_epi8(0x0F),
                        )));
                        // word w of code line q is in sub-block 4q + w / 8
                        let idx = _mm512_add_epi16(
                            _mm512_set1_epi16(4 * q as i16),
                            _mm512_srli_epi16::<3>(_mm512_load_si512(WORD_INDEX.0.as_ptr() as *const _)),
                        );
                        c = _mm512_mullo_epi16(c, _mm512_permutexvar_epi16(idx, sc16));
                    }
                    if T == Q3 {
                        // hmask bit (64q + l) / 32 set: level = low, else low - 4; code = level + 4
                        let k =
                            _mm512_test_epi8_mask(hm, halves_epi8((1u8 << (2 * q)) as i8, (1u8 << (2 * q + 1)) as i8));
                        c = _mm512_or_si512(c, _mm512_maskz_mov_epi8(k, _mm512_set1_epi8(4)));
                    }
                    _mm512_store_si512(code(q), c);
                }
                if T == Q2 {
                    let s = _mm_loadu_si128(blk as *const _);
                    let m4x = _mm_set1_epi8(0x0F);
                    _mm512_store_si512(scale, _mm512_cvtepu8_epi32(_mm_and_si128(s, m4x)));
                    let mins = _mm_and_si128(_mm_srli_epi16::<4>(s), m4x);
                    _mm256_storeu_si256(meta as *mut _, _mm256_cvtepu8_epi16(mins));
                    (d, dmin) = (f16(80), f16(82));
                } else {
                    let sc = scales_q3k(&*(blk.add(96) as *const [u8; 12]));
                    let scv = _mm_loadu_si128(sc.as_ptr() as *const _);
                    _mm512_store_si512(scale, _mm512_cvtepi8_epi32(scv));
                    // levels are codes - 4: scale * (raw - 4 * bsum)
                    let corr = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(scv), _mm256_set1_epi16(-4));
                    _mm256_storeu_si256(meta as *mut _, corr);
                    (d, dmin) = (f16(108), 0.0);
                }
            }
            IQ4XS => {
                let code: [*mut __m512i; 4] = core::array::from_fn(code);
                (d, dmin) = (super::iq4xs::panel_unpack_row(blk, code, scale, meta), 0.0);
            }
            _ => unreachable!("not a K-quant panel type"),
        }
        (meta.add(32) as *mut f32).write(d);
        (meta.add(36) as *mut f32).write(dmin);
    }
}

/// Raw output pointers of a group of `TOKENS` tokens (the last group repeats its last valid
/// token; those lanes are computed but not stored).
#[derive(Clone, Copy)]
struct Tokens {
    x: [*const u8; TOKENS],
    valid: usize,
}

/// All tokens against all row groups of the unpacked panel: token groups outside, row groups
/// inside (the 8 tokens' activations stay in L1/L2 while the panel streams from L2).
///
/// Safety: `panel` holds `nr.div_ceil(16) * nb` units from `unpack_panel`; `x` `nc` Q8_K rows
/// of `nb` blocks at `x_stride`; `out[c * out_stride + r]` writable for r < nr, c < nc.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn multiply<const T: u8>(
    panel: *const Line,
    nr: usize,
    nb: usize,
    x: *const u8,
    x_stride: usize,
    nc: usize,
    out: *mut f32,
    out_stride: usize,
) {
    for c0 in (0..nc).step_by(TOKENS) {
        let valid = TOKENS.min(nc - c0);
        let tokens = Tokens { x: core::array::from_fn(|t| x.wrapping_add((c0 + t.min(valid - 1)) * x_stride)), valid };
        for g in 0..nr.div_ceil(ROWS) {
            let rows = ROWS.min(nr - g * ROWS);
            let mask: __mmask16 = if rows == ROWS { 0xFFFF } else { (1u16 << rows) - 1 };
            // SAFETY: group g's units and the 8 token rows exist (caller); output rows g*16..
            // g*16+rows of tokens c0..c0+valid are inside `out` (caller).
            unsafe {
                micro::<T>(
                    panel.add(g * nb * UNIT_LINES),
                    nb,
                    tokens,
                    out.add(c0 * out_stride + g * ROWS),
                    out_stride,
                    mask,
                )
            };
        }
    }
}

/// 16 rows (one unpacked group) x 8 tokens over all `nb` blocks; stores the `mask`ed rows of
/// the valid tokens at `out[t * out_stride + r]`.
///
/// Safety: `units` points at `nb` units; each `tokens.x[t]` at a Q8_K row of `nb` blocks; the
/// stored outputs are writable; the CPU has the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn micro<const T: u8>(
    units: *const Line,
    nb: usize,
    tokens: Tokens,
    out: *mut f32,
    out_stride: usize,
    mask: __mmask16,
) {
    let sub = sub_size(T);
    let groups_per_sub = sub / 4;
    let n_sub = QK_K / sub;
    let mut acc = [_mm512_setzero_ps(); TOKENS];
    for b in 0..nb {
        // SAFETY (block body): unit b and block b of every token row exist (caller); the
        // activation reads are the 4-byte groups, bsum pairs and d of that Q8_K block.
        unsafe {
            let u = units.add(b * UNIT_LINES);
            let xb: [*const u8; TOKENS] = core::array::from_fn(|t| tokens.x[t].add(b * Q8K_BYTES));
            let act = |t: usize, off: usize| _mm512_set1_epi32((xb[t].add(off) as *const i32).read_unaligned());
            let mut s1 = [_mm512_setzero_si512(); TOKENS];
            if T == Q2 {
                // codes already carry their scales (see `unpack_row`)
                for kg in 0..CODE_LINES {
                    let codes = _mm512_load_si512(u.add(kg) as *const _);
                    for t in 0..TOKENS {
                        s1[t] = _mm512_dpbusd_epi32(s1[t], codes, act(t, Q8K_QS + 4 * kg));
                    }
                }
            }
            for j in 0..if T == Q2 { 0 } else { n_sub } {
                let mut raw = [_mm512_setzero_si512(); TOKENS];
                for k in 0..groups_per_sub {
                    let kg = j * groups_per_sub + k;
                    let codes = _mm512_load_si512(u.add(kg) as *const _);
                    for t in 0..TOKENS {
                        raw[t] = _mm512_dpbusd_epi32(raw[t], codes, act(t, Q8K_QS + 4 * kg));
                    }
                }
                let sc = _mm512_load_si512(u.add(SCALE_LINE + j) as *const _);
                for t in 0..TOKENS {
                    s1[t] = _mm512_add_epi32(s1[t], _mm512_mullo_epi32(raw[t], sc));
                }
            }
            let dw = _mm512_load_ps(u.add(D_LINE) as *const f32);
            if has_min(T) {
                let mut s2 = [_mm512_setzero_si512(); TOKENS];
                for p in 0..8 {
                    let corr = _mm512_load_si512(u.add(CORR_LINE + p) as *const _);
                    for t in 0..TOKENS {
                        s2[t] = _mm512_dpwssd_epi32(s2[t], corr, act(t, Q8K_BSUMS + 4 * p));
                    }
                }
                let dmin = _mm512_load_ps(u.add(DMIN_LINE) as *const f32);
                for t in 0..TOKENS {
                    let dx = _mm512_set1_ps((xb[t] as *const f32).read_unaligned());
                    let v =
                        _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(s2[t]), _mm512_mul_ps(dw, _mm512_cvtepi32_ps(s1[t])));
                    acc[t] = _mm512_fmadd_ps(v, dx, acc[t]);
                }
            } else {
                for p in 0..8 {
                    let corr = _mm512_load_si512(u.add(CORR_LINE + p) as *const _);
                    for t in 0..TOKENS {
                        s1[t] = _mm512_dpwssd_epi32(s1[t], corr, act(t, Q8K_BSUMS + 4 * p));
                    }
                }
                for t in 0..TOKENS {
                    let dx = _mm512_set1_ps((xb[t] as *const f32).read_unaligned());
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_cvtepi32_ps(s1[t])), dx, acc[t]);
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate().take(tokens.valid) {
        // SAFETY: token t < valid, rows in `mask`: inside the output (caller).
        unsafe { _mm512_mask_storeu_ps(out.add(t * out_stride), mask, *a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::q8_k::test_util::Rng;
    use crate::types::{quantize_row, TYPES};

    /// Weight rows whose magnitudes vary over 1e3 from block to block (extreme sub-block
    /// scales and minimums), some all-zero blocks and some rows of one sign (large minimums).
    fn weights(t: WeightType, rows: usize, n: usize, r: &mut Rng) -> Vec<u8> {
        let wrb = t.row_bytes(n);
        let mut w = vec![0u8; rows * wrb];
        for (i, dst) in w.chunks_exact_mut(wrb).enumerate() {
            let src: Vec<f32> = (0..n)
                .map(|k| {
                    let blk = k / QK_K;
                    let mag = [1.0, 30.0, 0.03, 1000.0, 0.0][(blk + i) % 5] * (1.0 + ((k / 16) % 4) as f32);
                    let v = r.gauss() * mag;
                    if i % 3 == 2 {
                        v.abs() + 0.5 * mag
                    } else {
                        v
                    }
                })
                .collect();
            quantize_row(t, &src, dst);
        }
        w
    }

    /// The scale of a dot product, for its rounding tolerance: sum of |w_i x_i| over the
    /// dequantized values.
    fn dot_abs(t: WeightType, w: &[u8], x: &[u8], n: usize) -> f64 {
        let (mut wd, mut xd) = (vec![0f32; n], vec![0f32; n]);
        crate::types::dequantize_row(t, w, &mut wd);
        crate::types::dequantize_row(WeightType::Q8_K, x, &mut xd);
        wd.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum()
    }

    /// The panel kernel against the scalar `vec_dot` for every (row, token), for every K-quant
    /// type and IQ4_XS, ragged row and token counts and several row lengths, with strided rows and a
    /// strided output (entries outside the written rows must stay untouched).
    #[test]
    fn panel_matches_scalar_vec_dot_for_every_k_quant() {
        if !supported() {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let mut r = Rng(0x5EED_1234_ABCD_0001);
        for t in [
            WeightType::Q2_K,
            WeightType::Q3_K,
            WeightType::Q4_K,
            WeightType::Q5_K,
            WeightType::Q6_K,
            WeightType::IQ4_XS,
        ] {
            let f = panel(t).expect("a panel kernel for every K-quant and IQ4_XS");
            let scalar = TYPES.iter().find(|i| i.ty == t).expect("listed").vec_dot;
            for (nr, nc, nb) in [(1, 16, 1), (16, 16, 2), (17, 23, 3), (40, 50, 1), (8, 17, 60), (33, 16, 5), (5, 9, 2)]
            {
                let n = nb * QK_K;
                let (wrb, xrb) = (t.row_bytes(n), WeightType::Q8_K.row_bytes(n));
                // strides larger than a row: the kernel must use them, not the row size
                let (ws, xs, os) = (wrb + 7, xrb + 13, nr + 3);
                let wpacked = weights(t, nr, n, &mut r);
                let mut w = vec![0xA5u8; nr * ws];
                for i in 0..nr {
                    w[i * ws..i * ws + wrb].copy_from_slice(&wpacked[i * wrb..(i + 1) * wrb]);
                }
                let mut x = vec![0x5Au8; nc * xs];
                for c in 0..nc {
                    let scale = [1.0, 100.0, 0.001, 7.0][c % 4];
                    let xf: Vec<f32> = (0..n).map(|_| r.gauss() * scale).collect();
                    quantize_row(WeightType::Q8_K, &xf, &mut x[c * xs..c * xs + xrb]);
                }
                let mut out = vec![f32::NAN; nc * os];
                f(Tile {
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
                for c in 0..nc {
                    for i in 0..os {
                        let got = out[c * os + i];
                        if i >= nr {
                            assert!(got.is_nan(), "{} {nr}x{nc}x{nb}: wrote outside row range at ({c}, {i})", t.name());
                            continue;
                        }
                        let want = scalar(n, &w[i * ws..i * ws + wrb], &x[c * xs..c * xs + xrb]);
                        let tol = 1e-5 * dot_abs(t, &w[i * ws..i * ws + wrb], &x[c * xs..c * xs + xrb], n);
                        assert!(
                            (got - want).abs() as f64 <= tol,
                            "{} {nr} rows x {nc} tokens x {nb} blocks, ({c}, {i}): panel {got} vs scalar {want}",
                            t.name()
                        );
                    }
                }
            }
        }
    }
}
