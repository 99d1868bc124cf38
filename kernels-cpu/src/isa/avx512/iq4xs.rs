//! avx512 kernels for IQ4_XS weights against Q8_K activations (AVX-512 F/BW/VL with VNNI). The
//! many-token panel kernel is `kpanel`'s, with this file's `panel_unpack_row`.
//!
//! A block's 128 index bytes are two 64-byte halves of four sub-blocks each, 128-bit lane `k`
//! of a half holding sub-block `k`'s 16 bytes. Per half: the low and the high nibbles (values
//! 0..16 and 16..32 of each sub-block) become unsigned codes with one `vpshufb` each of the
//! codebook + 128 (`types::iq4_nl::UNSIGNED`); two `vshufi64x2` put the activations' 128 quants
//! in the same order; two `vpdpbusd` then give, per i32 lane (four per sub-block), exact sums
//! of code x quant. The 128 comes back exactly in the integer domain: the sums start at
//! `-128 * bsums` of the sub-block's two 16-value groups (its first two lanes). Then one
//! convert and one multiply-add by the lane's scale `d * (ls - 32) * d_x`: the scalar
//! specification's integer sums per sub-block, then the scales. The one-token kernels take
//! two blocks a step and decode both blocks' sixteen scales in one register (one F16C
//! conversion, one set of shifts and masks), which per block was nearly as many instructions
//! as one half's products.
//!
//! Installed only when AVX-512 F/BW/VL, AVX2/FMA and VNNI are all detected (`supported`),
//! which is what makes calling the `#[target_feature]` code sound.

// Tile loops index several register arrays by row and token on purpose.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use crate::isa::{prefetch_ahead, GemmTileFn, GemvFn, Tile, VecDotFn};
use crate::types::iq4_xs::BlockIQ4XS;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use crate::types::{f16_to_f32, WeightType};

fn supported() -> bool {
    super::vnni()
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    (supported() && t == WeightType::IQ4_XS).then_some(vec_dot_iq4xs as VecDotFn)
}

pub fn gemv(t: WeightType) -> Option<GemvFn> {
    (supported() && t == WeightType::IQ4_XS).then_some(gemv_iq4xs as GemvFn)
}

/// Tile shape: rows x tokens (each weight half unpacked once per tile, used for 4 tokens).
const TILE_ROWS: usize = 4;
const TILE_TOKENS: usize = 4;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    (supported() && t == WeightType::IQ4_XS).then_some((gemm_iq4xs as GemmTileFn, TILE_ROWS, TILE_TOKENS))
}

/// 64 bytes at `p`, any alignment (an all-ones masked load: a plain `vmovdqu`, see
/// `legacy::load64`).
///
/// # Safety
/// 64 bytes readable at `p`; the CPU has avx512bw (inlined into the kernels' features).
#[inline(always)]
unsafe fn load64(p: *const u8) -> __m512i {
    _mm512_maskz_loadu_epi8(u64::MAX, p as *const i8)
}

/// Per-lane shift counts: lane `l` of half `h` belongs to sub-block `4h + l / 4`, whose scale
/// bits sit at `bits * (4h + l / 4)` of the packed field.
const fn shifts(h: usize, bits: u32) -> [u32; 16] {
    let mut a = [0u32; 16];
    let mut l = 0;
    while l < 16 {
        a[l] = bits * (4 * h + l / 4) as u32;
        l += 1;
    }
    a
}
const SHIFT_L: [[u32; 16]; 2] = [shifts(0, 4), shifts(1, 4)];
const SHIFT_H: [[u32; 16]; 2] = [shifts(0, 2), shifts(1, 2)];

/// `vpermd` index: lanes `4k`, `4k + 1` of half `h` take `bsums[8h + 2k]`, `[8h + 2k + 1]`
/// (the two 16-value groups of sub-block `4h + k`); the other lanes are masked to zero.
const fn bsum_index(h: usize) -> [u32; 16] {
    let mut a = [0u32; 16];
    let mut l = 0;
    while l < 16 {
        a[l] = (8 * h + 2 * (l / 4) + l % 4 % 2) as u32;
        l += 1;
    }
    a
}
const BSUM_IDX: [[u32; 16]; 2] = [bsum_index(0), bsum_index(1)];
const BSUM_LANES: u16 = 0x3333;

/// One half of a weight block: the codes of values 0..16 (`lo`) and 16..32 (`hi`) of its four
/// sub-blocks, and each lane's scale `d * (ls - 32)`.
#[derive(Clone, Copy)]
struct WHalf {
    lo: __m512i,
    hi: __m512i,
    s: __m512,
}

/// Half `h` of block `b`.
///
/// # Safety
/// The CPU has the kernels' features (inlined into their `#[target_feature]` entry points).
#[inline(always)]
unsafe fn weight_half(b: &BlockIQ4XS, h: usize) -> WHalf {
    let table =
        _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(u16::MAX, crate::types::iq4_nl::UNSIGNED.as_ptr() as *const i8));
    let m4 = _mm512_set1_epi8(0x0F);
    let q = load64(b.qs.as_ptr().add(64 * h));
    let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4));
    let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
    let sl = _mm512_set1_epi32(u32::from_le_bytes(b.scales_l) as i32);
    let sh = _mm512_set1_epi32(u16::from_le_bytes(b.scales_h) as i32);
    let ls_lo =
        _mm512_and_si512(_mm512_srlv_epi32(sl, load64(SHIFT_L[h].as_ptr() as *const u8)), _mm512_set1_epi32(0xF));
    let ls_hi = _mm512_and_si512(_mm512_srlv_epi32(sh, load64(SHIFT_H[h].as_ptr() as *const u8)), _mm512_set1_epi32(3));
    let ls = _mm512_sub_epi32(_mm512_or_si512(ls_lo, _mm512_slli_epi32::<4>(ls_hi)), _mm512_set1_epi32(32));
    let s = _mm512_mul_ps(_mm512_cvtepi32_ps(ls), _mm512_set1_ps(f16_to_f32(b.d)));
    WHalf { lo, hi, s }
}

/// One half of an activation block in the weights' order: quants 0..16 (`lo`) and 16..32
/// (`hi`) of the four sub-blocks, and `-128 * bsums` in each sub-block's first two lanes.
#[derive(Clone, Copy)]
struct XHalf {
    lo: __m512i,
    hi: __m512i,
    base: __m512i,
}

/// Half `h` of activation block `a`.
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn act_half(a: &BlockQ8K, h: usize) -> XHalf {
    let p = a.qs.as_ptr() as *const u8;
    let (a0, a1) = (load64(p.add(128 * h)), load64(p.add(128 * h + 64)));
    // lanes: sub-block k's quants 0..16 are 128-bit lane 2k % 4 of a0 (k < 2) or a1
    let lo = _mm512_shuffle_i64x2::<0x88>(a0, a1);
    let hi = _mm512_shuffle_i64x2::<0xDD>(a0, a1);
    let bs = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi8(u32::MAX, a.bsums.as_ptr() as *const i8));
    let picked = _mm512_maskz_permutexvar_epi32(BSUM_LANES, load64(BSUM_IDX[h].as_ptr() as *const u8), bs);
    let base = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(picked));
    XHalf { lo, hi, base }
}

/// `acc += f32(exact sums of half w x half x) * (scales * d_x)`.
#[inline(always)]
unsafe fn step(acc: __m512, w: &WHalf, x: &XHalf, dx: __m512) -> __m512 {
    let i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(x.base, w.lo, x.lo), w.hi, x.hi);
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w.s, dx), acc)
}

/// Lane `l` of half `h`: sub-block `4h + l / 4` (a `vpermps` index into `block_scales`).
const fn sub_index(h: usize) -> [u32; 16] {
    let mut a = [0u32; 16];
    let mut l = 0;
    while l < 16 {
        a[l] = (4 * h + l / 4) as u32;
        l += 1;
    }
    a
}
const SUB_IDX: [[u32; 16]; 2] = [sub_index(0), sub_index(1)];

/// Shift counts and masks of `block_scales`: lanes 0..8 the low 4 bits of scale `l` (from
/// `scales_l`), lanes 8..16 its top 2 bits (from `scales_h`).
const BLOCK_SHIFT: [u32; 16] = [0, 4, 8, 12, 16, 20, 24, 28, 0, 2, 4, 6, 8, 10, 12, 14];
const BLOCK_MASK: [u32; 16] = [0xF, 0xF, 0xF, 0xF, 0xF, 0xF, 0xF, 0xF, 3, 3, 3, 3, 3, 3, 3, 3];

/// The eight sub-block scales `(ls - 32) * d * dx` in lanes 0..8, decoded once per block (the
/// last block of an odd count in the one-token kernels, which take two blocks a step with
/// `pair_scales`; `weight_half` decodes per half, which the tile kernel spreads over its
/// tokens).
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn block_scales(b: &BlockIQ4XS, dx: f32) -> __m512 {
    let v = _mm512_inserti64x4::<1>(
        _mm512_set1_epi32(u32::from_le_bytes(b.scales_l) as i32),
        _mm256_set1_epi32(u16::from_le_bytes(b.scales_h) as i32),
    );
    let t = _mm512_and_si512(
        _mm512_srlv_epi32(v, load64(BLOCK_SHIFT.as_ptr() as *const u8)),
        load64(BLOCK_MASK.as_ptr() as *const u8),
    );
    let ls = _mm256_or_si256(_mm512_castsi512_si256(t), _mm256_slli_epi32::<4>(_mm512_extracti64x4_epi64::<1>(t)));
    // d by F16C (the `half` crate's conversion is not compiled with this code's features)
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(b.d) as i32));
    let dd = _mm256_broadcastss_ps(_mm_mul_ss(d, _mm_set_ss(dx)));
    let s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ls, _mm256_set1_epi32(32))), dd);
    _mm512_castps256_ps512(s)
}

/// A block's first 8 bytes as one u64: `d | scales_h << 16 | scales_l << 32`.
#[inline(always)]
fn head(b: &BlockIQ4XS) -> i64 {
    let [d0, d1] = b.d;
    let [h0, h1] = b.scales_h;
    let [l0, l1, l2, l3] = b.scales_l;
    i64::from_le_bytes([d0, d1, h0, h1, l0, l1, l2, l3])
}

/// One of the 16-lane tables below.
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn table(t: &[u32; 16]) -> __m512i {
    load64(t.as_ptr() as *const u8)
}

/// `pair_scales` tables, lane `l` holding sub-block `l % 8` of block `l / 8`: the `vpermd`
/// index of its block's `scales_l` dword and of its `d | scales_h << 16` dword (the two
/// heads as dwords 0..4), the right shifts that bring its low 4 bits to bits 0..4 and its
/// top 2 bits to bits 4..6, and the `vpermps` index of its block's `d` (halves 0 and 4).
const fn pair_table(what: u32) -> [u32; 16] {
    let mut a = [0u32; 16];
    let mut l = 0;
    while l < 16 {
        let (k, j) = ((l / 8) as u32, (l % 8) as u32);
        a[l] = match what {
            0 => 2 * k + 1,
            1 => 2 * k,
            2 => 4 * j,
            3 => 12 + 2 * j,
            _ => 4 * k,
        };
        l += 1;
    }
    a
}
const PAIR_SL: [u32; 16] = pair_table(0);
const PAIR_SH: [u32; 16] = pair_table(1);
const PAIR_SHIFT_L: [u32; 16] = pair_table(2);
const PAIR_SHIFT_H: [u32; 16] = pair_table(3);
const PAIR_D: [u32; 16] = pair_table(4);

/// `block_scales` of two blocks at once, `b0`'s in lanes 0..8 and `b1`'s in lanes 8..16: one
/// decode and one F16C conversion for both (the same products, so the same values).
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn pair_scales(b0: &BlockIQ4XS, b1: &BlockIQ4XS, dx0: f32, dx1: f32) -> __m512 {
    let v = _mm512_castsi128_si512(_mm_set_epi64x(head(b1), head(b0)));
    let l = _mm512_srlv_epi32(_mm512_permutexvar_epi32(table(&PAIR_SL), v), table(&PAIR_SHIFT_L));
    let h = _mm512_srlv_epi32(_mm512_permutexvar_epi32(table(&PAIR_SH), v), table(&PAIR_SHIFT_H));
    let ls = _mm512_or_si512(_mm512_and_si512(l, _mm512_set1_epi32(0xF)), _mm512_and_si512(h, _mm512_set1_epi32(0x30)));
    let d = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm512_castsi512_si128(v)));
    let dx = _mm512_mask_mov_ps(_mm512_set1_ps(dx0), 0xFF00, _mm512_set1_ps(dx1));
    let dd = _mm512_mul_ps(_mm512_permutexvar_ps(table(&PAIR_D), d), dx);
    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ls, _mm512_set1_epi32(32))), dd)
}

/// Lane `l` of half `h` of block `k` of a pair: lane `8k + 4h + l / 4` of `pair_scales`.
const fn pair_sub_index(k: usize, h: usize) -> [u32; 16] {
    let mut a = [0u32; 16];
    let mut l = 0;
    while l < 16 {
        a[l] = (8 * k + 4 * h + l / 4) as u32;
        l += 1;
    }
    a
}
const PAIR_SUB_IDX: [[[u32; 16]; 2]; 2] =
    [[pair_sub_index(0, 0), pair_sub_index(0, 1)], [pair_sub_index(1, 0), pair_sub_index(1, 1)]];

/// Two blocks against their prepared activation blocks: `block_step` twice, with the scales
/// of both decoded at once.
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn pair_step(acc: &mut [__m512; 2], b: &[BlockIQ4XS; 2], p: &[Prep]) {
    let s = pair_scales(&b[0], &b[1], p[0].dx, p[1].dx);
    for k in 0..2 {
        for h in 0..2 {
            let (lo, hi) = half_codes(&b[k], h);
            let x = &p[k].halves[h];
            let i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(x.base, lo, x.lo), hi, x.hi);
            let sh = _mm512_permutexvar_ps(table(&PAIR_SUB_IDX[k][h]), s);
            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), sh, acc[h]);
        }
    }
}

/// The codes of values 0..16 and 16..32 of half `h`'s four sub-blocks (as `WHalf`'s).
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn half_codes(b: &BlockIQ4XS, h: usize) -> (__m512i, __m512i) {
    let table =
        _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(u16::MAX, crate::types::iq4_nl::UNSIGNED.as_ptr() as *const i8));
    let m4 = _mm512_set1_epi8(0x0F);
    let q = load64(b.qs.as_ptr().add(64 * h));
    let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4));
    let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
    (lo, hi)
}

/// One block against one prepared activation block (`dx` its scale): the one-token step.
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn block_step(acc: &mut [__m512; 2], b: &BlockIQ4XS, x: &[XHalf; 2], dx: f32) {
    let s = block_scales(b, dx);
    for h in 0..2 {
        let (lo, hi) = half_codes(b, h);
        let i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(x[h].base, lo, x[h].lo), hi, x[h].hi);
        let sh = _mm512_permutexvar_ps(load64(SUB_IDX[h].as_ptr() as *const u8), s);
        acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), sh, acc[h]);
    }
}

/// Activation block `a` in the weights' order.
///
/// # Safety
/// As `weight_half`.
#[inline(always)]
unsafe fn prep(a: &BlockQ8K) -> Prep {
    Prep { halves: [act_half(a, 0), act_half(a, 1)], dx: a.d() }
}

/// One row against one token.
///
/// # Safety
/// The CPU has the features of the caller's `#[target_feature]`.
#[inline(always)]
unsafe fn dot(wb: &[BlockIQ4XS], xb: &[BlockQ8K]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 2];
    let pairs = wb.chunks_exact(2);
    let tail = pairs.remainder();
    for (b, a) in pairs.zip(xb.chunks_exact(2)) {
        let b: &[BlockIQ4XS; 2] = b.try_into().expect("a pair");
        prefetch_ahead(b);
        pair_step(&mut acc, b, &[prep(&a[0]), prep(&a[1])]);
    }
    if let [b] = tail {
        let p = prep(&xb[wb.len() - 1]);
        block_step(&mut acc, b, &p.halves, p.dx);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn vec_dot_tf(wb: &[BlockIQ4XS], xb: &[BlockQ8K]) -> f32 {
    // SAFETY: this function's features are the ones `dot` needs.
    unsafe { dot(wb, xb) }
}

fn vec_dot_iq4xs(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, xb) = (
        first_blocks::<BlockIQ4XS>(w, nb, "IQ4_XS vec_dot weights"),
        first_blocks::<BlockQ8K>(x, nb, "IQ4_XS vec_dot activations"),
    );
    // SAFETY: installed only when `supported()` (all enabled features detected).
    unsafe { vec_dot_tf(wb, xb) }
}

/// An activation block in the weights' order (`gemv`: prepared once per call for every row).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Prep {
    halves: [XHalf; 2],
    dx: f32,
}

/// Blocks prepared at most (rows of up to 16384 values: 28 KiB on the stack, in L1 while the
/// rows stream past); longer rows unpack the activations again for every row.
const PREP_MAX: usize = 64;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv_tf(nb: usize, w: &[u8], w_stride: usize, nr: usize, xb: &[BlockQ8K], out: &mut [f32]) {
    if nb > PREP_MAX {
        for (r, o) in out[..nr].iter_mut().enumerate() {
            let wb = first_blocks::<BlockIQ4XS>(&w[r * w_stride..], nb, "IQ4_XS gemv weights");
            // SAFETY: this function's features are the ones `dot` needs.
            *o = unsafe { dot(wb, xb) };
        }
        return;
    }
    let mut buf = [const { core::mem::MaybeUninit::<Prep>::uninit() }; PREP_MAX];
    for (slot, a) in buf.iter_mut().zip(xb) {
        // SAFETY: this function's features are the ones `act_half` needs.
        slot.write(unsafe { prep(a) });
    }
    // SAFETY: the first `nb` slots were all written just above.
    let prep = unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const Prep, nb) };
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<BlockIQ4XS>(&w[r * w_stride..], nb, "IQ4_XS gemv weights");
        let mut acc = [_mm512_setzero_ps(); 2];
        let pairs = wb.chunks_exact(2);
        let tail = pairs.remainder();
        for (b, p) in pairs.zip(prep.chunks_exact(2)) {
            let b: &[BlockIQ4XS; 2] = b.try_into().expect("a pair");
            prefetch_ahead(b);
            // SAFETY: this function's features are the ones `pair_step` needs.
            unsafe { pair_step(&mut acc, b, p) };
        }
        if let ([b], Some(p)) = (tail, prep.last()) {
            // SAFETY: as above.
            unsafe { block_step(&mut acc, b, &p.halves, p.dx) };
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

/// Rows one after the other, each one sequential stream, against activations prepared once.
fn gemv_iq4xs(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let xb = first_blocks::<BlockQ8K>(x, nb, "IQ4_XS gemv activations");
    assert!(out.len() >= nr, "IQ4_XS gemv: {} outputs for {nr} rows", out.len());
    // SAFETY: installed only when `supported()`; rows and activations are bounds-checked slices.
    unsafe { gemv_tf(nb, w, w_stride, nr, xb, out) }
}

/// `R` rows x `C` tokens, `out[c * os + r]`.
///
/// # Safety
/// As `dot`; every row holds `nb` blocks at `w[r * ws..]`, every token at `x[c * xs..]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const C: usize>(
    nb: usize,
    w: &[u8],
    ws: usize,
    x: &[u8],
    xs: usize,
    out: &mut [f32],
    os: usize,
) {
    let rows: [&[BlockIQ4XS]; R] =
        core::array::from_fn(|r| first_blocks::<BlockIQ4XS>(&w[r * ws..], nb, "IQ4_XS gemm weights"));
    let toks: [&[BlockQ8K]; C] =
        core::array::from_fn(|c| first_blocks::<BlockQ8K>(&x[c * xs..], nb, "IQ4_XS gemm activations"));
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for b in 0..nb {
        for h in 0..2 {
            let mut wh = [WHalf { lo: _mm512_setzero_si512(), hi: _mm512_setzero_si512(), s: _mm512_setzero_ps() }; R];
            for r in 0..R {
                if h == 0 {
                    prefetch_ahead(&rows[r][b]);
                }
                wh[r] = weight_half(&rows[r][b], h);
            }
            for c in 0..C {
                let a = &toks[c][b];
                let (xh, dx) = (act_half(a, h), _mm512_set1_ps(a.d()));
                for r in 0..R {
                    acc[r][c] = step(acc[r][c], &wh[r], &xh, dx);
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            out[c * os + r] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn gemm_tf(nb: usize, w: &[u8], ws: usize, nr: usize, x: &[u8], xs: usize, nc: usize, out: &mut [f32], os: usize) {
    macro_rules! by_c {
        ($r:literal) => {
            // SAFETY: this function's features are the ones `tile` needs; slices are checked.
            unsafe {
                match nc {
                    1 => tile::<$r, 1>(nb, w, ws, x, xs, out, os),
                    2 => tile::<$r, 2>(nb, w, ws, x, xs, out, os),
                    3 => tile::<$r, 3>(nb, w, ws, x, xs, out, os),
                    _ => tile::<$r, 4>(nb, w, ws, x, xs, out, os),
                }
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

fn gemm_iq4xs(t: Tile<'_>) {
    let Tile { n, w, w_stride, rows: nr, x, x_stride, tokens: nc, out, out_stride } = t;
    assert!(
        (1..=TILE_ROWS).contains(&nr) && (1..=TILE_TOKENS).contains(&nc) && out.len() > (nc - 1) * out_stride + nr - 1,
        "IQ4_XS gemm: tile {nr}x{nc} does not fit its output"
    );
    // SAFETY: installed only when `supported()`; rows and tokens are bounds-checked slices.
    unsafe { gemm_tf(n / QK_K, w, w_stride, nr, x, x_stride, nc, out, out_stride) }
}

/// One IQ4_XS block of one row unpacked for the panel kernel (`kpanel`): `code[q]` gets values
/// 64q..64q+64 in order as unsigned codes (codebook value + 128), `scale` the eight signed
/// sub-block scales `ls - 32` as i32, `meta` (dwords 0..8) per pair of Q8_K group sums the
/// correction `-128 * scale` twice as i16 (a sub-block is two groups of 16), which takes the
/// code offset back out exactly: `scale * (sum(code * x) - 128 * sum(x))`. Returns `d`.
///
/// # Safety
/// One whole block readable at `blk`; `code[q]` and `scale` 64-byte aligned and writable,
/// 32 bytes writable at `meta`; the CPU has the kernels' features (inlined into `kpanel`'s).
#[inline(always)]
pub(super) unsafe fn panel_unpack_row(
    blk: *const u8,
    code: [*mut __m512i; 4],
    scale: *mut __m512i,
    meta: *mut u8,
) -> f32 {
    let b = &*(blk as *const BlockIQ4XS);
    let table =
        _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(u16::MAX, crate::types::iq4_nl::UNSIGNED.as_ptr() as *const i8));
    let m4 = _mm512_set1_epi8(0x0F);
    for h in 0..2 {
        // 128-bit lane k: sub-block 4h + k; low nibbles its values 0..16, high ones 16..32
        let q = load64(b.qs.as_ptr().add(64 * h));
        let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4));
        let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
        // [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1]: sub-blocks 4h, 4h + 1 in value order
        let c0 = _mm512_shuffle_i64x2::<0x44>(lo, hi);
        let c1 = _mm512_shuffle_i64x2::<0xEE>(lo, hi);
        _mm512_store_si512(code[2 * h], _mm512_shuffle_i64x2::<0xD8>(c0, c0));
        _mm512_store_si512(code[2 * h + 1], _mm512_shuffle_i64x2::<0xD8>(c1, c1));
    }
    let mut sc = [0i32; 16];
    let mut corr = [0i16; 16];
    for j in 0..8 {
        sc[j] = b.scale(j);
        corr[2 * j] = (-128 * sc[j]) as i16;
        corr[2 * j + 1] = corr[2 * j];
    }
    _mm512_store_si512(scale, load64(sc.as_ptr() as *const u8));
    core::ptr::copy_nonoverlapping(corr.as_ptr() as *const u8, meta, 32);
    f16_to_f32(b.d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::q8_k::test_util::check_many_tokens;

    /// The one-token kernel with prepared activations (up to `PREP_MAX` blocks) and without
    /// (longer rows), strided rows, against the scalar specification.
    #[test]
    fn gemv_matches_scalar_vec_dot_around_the_prepared_limit() {
        if !supported() {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let t = WeightType::IQ4_XS;
        let scalar = crate::isa::scalar::vec_dot(t).unwrap();
        for (nr, nb) in [(1, 1), (5, 3), (3, PREP_MAX), (2, PREP_MAX + 1)] {
            let n = nb * QK_K;
            let (w, ws) = crate::types::q8_k::test_util::strided_rows(t, n, nr, 136, 3 * nb as u64);
            let (x, _) = crate::types::q8_k::test_util::strided_rows(WeightType::Q8_K, n, 1, 0, 99);
            let mut out = vec![f32::NAN; nr];
            gemv_iq4xs(n, &w, ws, nr, &x, &mut out);
            for r in 0..nr {
                let want = scalar(n, &w[r * ws..], &x);
                assert!(
                    (out[r] - want).abs() <= 1e-5 * (n as f32).sqrt() * want.abs().max(1.0),
                    "{nr}x{nb} row {r}: {} vs {want}",
                    out[r]
                );
            }
        }
    }

    /// The tile kernel on every tile shape, with strides longer than a row, against the scalar
    /// specification (`check_many_tokens`); the gemv and vec_dot are covered for every type by
    /// tests/kernels.rs.
    #[test]
    fn tile_matches_scalar_vec_dot() {
        if !supported() {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let t = WeightType::IQ4_XS;
        for nr in 1..=TILE_ROWS {
            for nc in 1..=TILE_TOKENS {
                for nb in [1, 3] {
                    let n = nb * QK_K;
                    let tol = |want: f32| 1e-5 * (n as f32).sqrt() * want.abs().max(1.0);
                    check_many_tokens(
                        "IQ4_XS tile",
                        t,
                        gemm_iq4xs,
                        n,
                        nr,
                        nc,
                        (136, 292),
                        7 * nr as u64 + nc as u64,
                        tol,
                    );
                }
            }
        }
    }
}
