//! avx512 kernels for the K-quant types: AVX-512 F/BW/VL with VNNI (`vpdpwssd`).
//!
//! Every weight block is first *unpacked* into the form the integer dot product wants, in the
//! activations' order: four 64-byte vectors of unsigned levels (`lv`, 0..64), four vectors of
//! 16-bit sub-block scales, one per pair of values (`sc`, matching `vpmaddubsw`'s output), and
//! a 16-lane correction applied to the Q8_K group sums (`c16`: the minimums of Q2_K/Q4_K/Q5_K,
//! or the level offset of Q3_K/Q6_K times the scales). Then, for any type:
//! `sumi = Σ_k dpwssd(maddubs(lv[k], q8[k]), sc[k])` (exact, 32-bit), plus `c16 · bsums`
//! either folded into `sumi` (offsets: same factor `d`) or as a float term (minimums, `dmin`).
//! This is the scalar specification's arithmetic: integer sums per block, then scales.
//!
//! The loops (`vec_dot`, and the tile kernel, which unpacks each weight block once and uses it
//! for several tokens) are `isa::tiles`'s; this module supplies the unpacking and the
//! accumulation.
//!
//! A kernel here is installed only when AVX-512 F/BW/VL, AVX2/FMA and VNNI are all detected
//! (checked in the lookups below), which is what makes calling its `#[target_feature]` code sound.

use core::arch::x86_64::*;

use crate::isa::tiles::{self, KquantBlock, KquantIsa, Unpack};
use crate::isa::{prefetch_ahead, GemmTileFn, GemvFn, QuantizeFn, Tile, VecDotFn};
use crate::types::q2_k::BlockQ2K;
use crate::types::q3_k::BlockQ3K;
use crate::types::q4_k::BlockQ4K;
use crate::types::q5_k::BlockQ5K;
use crate::types::q6_k::BlockQ6K;
use crate::types::q8_k::{first_blocks, BlockQ8K, QK_K};
use crate::types::WeightType;

/// Everything these kernels need, detected at run time.
fn supported() -> bool {
    super::vnni()
}

pub fn vec_dot(t: WeightType) -> Option<VecDotFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q2_K => kquant_vec_dot::<BlockQ2K>,
        WeightType::Q3_K => kquant_vec_dot::<BlockQ3K>,
        WeightType::Q4_K => kquant_vec_dot::<BlockQ4K>,
        WeightType::Q5_K => kquant_vec_dot::<BlockQ5K>,
        WeightType::Q6_K => kquant_vec_dot::<BlockQ6K>,
        _ => return None,
    })
}

/// Rows handled per tile call (a plain loop: any number works) and tokens per tile.
const TILE_ROWS: usize = 16;
const TILE_TOKENS: usize = 8;

pub fn gemm(t: WeightType) -> Option<(GemmTileFn, usize, usize)> {
    if !supported() {
        return None;
    }
    let f: GemmTileFn = match t {
        WeightType::Q2_K => kquant_gemm::<BlockQ2K>,
        WeightType::Q3_K => kquant_gemm::<BlockQ3K>,
        WeightType::Q4_K => kquant_gemm::<BlockQ4K>,
        WeightType::Q5_K => kquant_gemm::<BlockQ5K>,
        WeightType::Q6_K => kquant_gemm::<BlockQ6K>,
        _ => return None,
    };
    Some((f, TILE_ROWS, TILE_TOKENS))
}

pub fn quantize(t: WeightType) -> Option<QuantizeFn> {
    if !supported() || t != WeightType::Q8_K {
        return None;
    }
    Some(quantize_q8_k)
}

/// Q8_K activations, byte for byte what the scalar `types::q8_k::quantize` (the reference's
/// rule) writes: the largest magnitude (first one on ties) maps to -127, values are rounded to
/// nearest even (`vcvtps2dq` under the default rounding mode, as `nearest_int` for |v| < 2^22),
/// clamped at 127.
fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(QK_K), "Q8_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = crate::types::q8_k::blocks_mut::<BlockQ8K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q8_K quantize: output too short");
    for (x, y) in src.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: installed only when `supported()` (all enabled features detected).
        unsafe { quantize_block_q8_k(x.try_into().expect("a block is 256 values"), y) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quantize_block_q8_k(x: &[f32; QK_K], y: &mut BlockQ8K) {
    // SAFETY: 16 x 16 floats inside `x`; the loads are unaligned.
    let v: [__m512; 16] = core::array::from_fn(|j| unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * j)) });
    let mut amax = _mm512_setzero_ps();
    for vj in &v {
        // a NaN in the first operand leaves the running maximum: the scalar loop skips NaNs too
        amax = _mm512_max_ps(_mm512_abs_ps(*vj), amax);
    }
    let amax = _mm512_reduce_max_ps(amax);
    if amax == 0.0 {
        *y = BlockQ8K { d: [0; 4], qs: [0; QK_K], bsums: [[0; 2]; QK_K / 16] };
        return;
    }
    let target = _mm512_set1_ps(amax);
    let first = (0..16)
        .find_map(|j| {
            let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v[j]), target);
            (m != 0).then(|| 16 * j + m.trailing_zeros() as usize)
        })
        .expect("the maximum magnitude is one of the values");
    let iscale = -127.0f32 / x[first];
    let s = _mm512_set1_ps(iscale);
    let top = _mm512_set1_epi32(127);
    for (j, vj) in v.iter().enumerate() {
        let p = _mm512_mul_ps(s, *vj);
        // NaN (from inf * 0) -> 0, as `nearest_int` gives for the default NaN
        let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p);
        let q = _mm512_min_epi32(_mm512_maskz_cvtps_epi32(ordered, p), top);
        // SAFETY: bytes 16j..16j+16 of the 256-byte `qs`; the store is unaligned.
        unsafe { _mm_storeu_si128(y.qs.as_mut_ptr().add(16 * j) as *mut __m128i, _mm512_cvtepi32_epi8(q)) };
        y.bsums[j] = (_mm512_reduce_add_epi32(q) as i16).to_le_bytes();
    }
    y.d = (1.0 / iscale).to_le_bytes();
}

/// One weight block ready for the integer dot product (see the module comment).
#[derive(Clone, Copy)]
struct Unpacked {
    lv: [__m512i; 4],
    sc: [__m512i; 4],
    c16: __m256i,
    /// Factor of `sumi`.
    d: f32,
    /// Factor of `c16 · bsums` when it is not folded into `sumi`.
    f: f32,
    /// `lv` already holds level x scale (Q2_K: at most 3 x 15, a byte; Q3_K: offset by `off`):
    /// `sc` is unused and each chunk is one `vpdpbusd` (two with an offset).
    premul: bool,
    /// Byte added to every premultiplied value to make it unsigned; removed lane by lane.
    off: u8,
}

/// 16-bit lane `i` -> `i / 16` (sub-blocks of 32 values: two per 64-value chunk).
static IDX_SUB32: [i16; 32] = {
    let mut a = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        a[i] = (i / 16) as i16;
        i += 1;
    }
    a
};
/// 16-bit lane `i` -> `i / 8` (sub-blocks of 16 values: four per 64-value chunk).
static IDX_SUB16: [i16; 32] = {
    let mut a = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        a[i] = (i / 8) as i16;
        i += 1;
    }
    a
};

/// The scale vectors of the 4 chunks from 16 scales (16-bit) in `s16`, `per_chunk` scales per
/// 64-value chunk (2 for sub-blocks of 32, 4 for sub-blocks of 16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scale_vectors(s16: __m256i, per_chunk: i16) -> [__m512i; 4] {
    let base: &[i16; 32] = if per_chunk == 2 { &IDX_SUB32 } else { &IDX_SUB16 };
    // SAFETY: `base` is 64 readable bytes; the load is unaligned.
    let base = unsafe { _mm512_loadu_si512(base.as_ptr() as *const __m512i) };
    let s = _mm512_zextsi256_si512(s16);
    let mut out = [_mm512_setzero_si512(); 4];
    for (k, o) in out.iter_mut().enumerate() {
        let idx = _mm512_add_epi16(base, _mm512_set1_epi16(per_chunk * k as i16));
        *o = _mm512_permutexvar_epi16(idx, s);
    }
    out
}

/// Two f16 fields (e.g. `d`, `dmin`) to f32 with F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16x2(a: [u8; 2], b: [u8; 2]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(u32::from_le_bytes([a[0], a[1], b[0], b[1]]) as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// 32 bytes at `p`, copied into both halves of a 64-byte vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn broadcast32(p: &[u8]) -> __m512i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked above); the load is unaligned.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) })
}

/// Per-64-bit-lane shift counts: `lo` for the lower 32 bytes, `hi` for the upper 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn shifts(lo: i64, hi: i64) -> __m512i {
    _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
}

/// Byte mask vector: `lo` in the lower 32 bytes, `hi` in the upper 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bytes2(lo: u8, hi: u8) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_set1_epi8(lo as i8), _mm256_set1_epi8(hi as i8))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q4k(b: &BlockQ4K) -> Unpacked {
    let smv = k4_scales_mins(b);
    let s16 = _mm256_cvtepu8_epi16(smv);
    // mins m0 m0 m1 m1 ... m7 m7: one per group of 16 values, as the bsums
    let c16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(smv, smv));
    let m4 = _mm512_set1_epi8(0x0F);
    let sh = shifts(0, 4);
    let mut lv = [_mm512_setzero_si512(); 4];
    for (k, l) in lv.iter_mut().enumerate() {
        *l = _mm512_and_si512(_mm512_srlv_epi64(broadcast32(&b.qs[32 * k..]), sh), m4);
    }
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv, sc: scale_vectors(s16, 2), c16, d, f: -dmin, premul: false, off: 0 }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q5k(b: &BlockQ5K) -> Unpacked {
    let smv = k4_scales_mins(b);
    let s16 = _mm256_cvtepu8_epi16(smv);
    let c16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(smv, smv));
    let m4 = _mm512_set1_epi8(0x0F);
    let sixteen = _mm512_set1_epi8(16);
    let sh = shifts(0, 4);
    let qh = broadcast32(&b.qh);
    let mut lv = [_mm512_setzero_si512(); 4];
    for (k, l) in lv.iter_mut().enumerate() {
        let low = _mm512_and_si512(_mm512_srlv_epi64(broadcast32(&b.qs[32 * k..]), sh), m4);
        let high = _mm512_test_epi8_mask(qh, bytes2(1 << (2 * k), 1 << (2 * k + 1)));
        *l = _mm512_mask_add_epi8(low, high, low, sixteen);
    }
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv, sc: scale_vectors(s16, 2), c16, d, f: -dmin, premul: false, off: 0 }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q6k(b: &BlockQ6K) -> Unpacked {
    // SAFETY: `scales` is 16 readable bytes.
    let s16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) });
    // value = d * sc * (level - 32): the offset is -32 * sc per group of 16, folded into sumi
    let c16 = _mm256_mullo_epi16(s16, _mm256_set1_epi16(-32));
    let m4 = _mm512_set1_epi8(0x0F);
    let m2 = _mm512_set1_epi8(3);
    let mut lv = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        // SAFETY: `ql[64h..64h+64]` is inside the 128-byte array.
        let ql = unsafe { _mm512_loadu_si512(b.ql.as_ptr().add(64 * h) as *const __m512i) };
        let qh = broadcast32(&b.qh[32 * h..]);
        let lo0 = _mm512_and_si512(ql, m4);
        let lo1 = _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4);
        let hi0 = _mm512_and_si512(_mm512_srlv_epi64(qh, shifts(0, 2)), m2);
        let hi1 = _mm512_and_si512(_mm512_srlv_epi64(qh, shifts(4, 6)), m2);
        lv[2 * h] = _mm512_or_si512(lo0, _mm512_slli_epi16::<4>(hi0));
        lv[2 * h + 1] = _mm512_or_si512(lo1, _mm512_slli_epi16::<4>(hi1));
    }
    Unpacked { lv, sc: scale_vectors(s16, 4), c16, d: f16x2(b.d, [0; 2]).0, f: 0.0, premul: false, off: 0 }
}

/// The 2-bit levels of Q2_K/Q3_K (`qs` has the same layout in both).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn levels_2bit(qs: &[u8; 64]) -> [__m512i; 4] {
    let m2 = _mm512_set1_epi8(3);
    let mut lv = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        let q = broadcast32(&qs[32 * h..]);
        lv[2 * h] = _mm512_and_si512(_mm512_srlv_epi64(q, shifts(0, 2)), m2);
        lv[2 * h + 1] = _mm512_and_si512(_mm512_srlv_epi64(q, shifts(4, 6)), m2);
    }
    lv
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q2k(b: &BlockQ2K) -> Unpacked {
    // SAFETY: `scales` is 16 readable bytes.
    let s = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
    let s16 = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0x0F)));
    let c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F)));
    let (d, dmin) = f16x2(b.d, b.dmin);
    Unpacked { lv: levels_2bit(&b.qs), sc: scale_vectors(s16, 4), c16, d, f: -dmin, premul: false, off: 0 }
}

/// Q2_K for the tile kernel, where the unpacking is shared by several tokens: scales applied
/// to the levels once, so each token's chunk is a single `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q2k_premul(b: &BlockQ2K) -> Unpacked {
    // SAFETY: `scales` is 16 readable bytes.
    let s = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
    let c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F)));
    // Level x scale fits a byte (<= 45), so the scales are applied by a table lookup: for
    // sub-block j, the bytes [0, s, 2s, 3s] = s * 0x03020100 (no carries), one 16-byte lane of a
    // chunk per sub-block, indexed by the 2-bit levels with `vpshufb`.
    let s32 = _mm512_cvtepu8_epi32(_mm_and_si128(s, _mm_set1_epi8(0x0F)));
    let tables = _mm512_mullo_epi32(s32, _mm512_set1_epi32(0x0302_0100));
    // SAFETY: `IDX_SUB16_32` is 64 readable bytes; the load is unaligned.
    let base = unsafe { _mm512_loadu_si512(IDX_SUB16_32.as_ptr() as *const __m512i) };
    let mut lv = levels_2bit(&b.qs);
    for (c, l) in lv.iter_mut().enumerate() {
        let t = _mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(4 * c as i32)), tables);
        *l = _mm512_shuffle_epi8(t, *l);
    }
    let (d, dmin) = f16x2(b.d, b.dmin);
    let z = _mm512_setzero_si512();
    Unpacked { lv, sc: [z; 4], c16, d, f: -dmin, premul: true, off: 0 }
}

/// 32-bit lane `i` -> `i / 4` (the 16-byte lane of a chunk holding sub-block `4c + i / 4`).
static IDX_SUB16_32: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];

/// The 16 Q3_K scales (`sc - 32`) as bytes, as `types::q3_k::scales_q3k` computes them, in
/// vector registers (a scalar version costs ~1 ns per block, a fifth of the matvec's time).
/// Words of the packed bytes: a = 0..4, b = 4..8, hi = 8..12; out word 0 = (a & 0x0f..) |
/// (hi & 0x03..) << 4, word 1 from b and hi >> 2, words 2/3 from a >> 4 / b >> 4 and hi >> 4/6.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q3k_scales(b: &BlockQ3K) -> __m128i {
    // the 16 bytes ending at the block's end (qs[62..64], scales, d)
    // SAFETY: bytes 94..110 of the 110-byte block; the load is unaligned.
    let v = unsafe { _mm_loadu_si128((b as *const BlockQ3K as *const u8).add(94) as *const __m128i) };
    // words [a, b, a, b] and [hi, hi, hi, hi] (the scales start at byte 2 of `v`)
    let ab = _mm_shuffle_epi8(v, _mm_setr_epi8(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9));
    let hi = _mm_shuffle_epi8(v, _mm_setr_epi8(10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13));
    let low = _mm_srlv_epi32(ab, _mm_setr_epi32(0, 0, 4, 4));
    let low = _mm_and_si128(low, _mm_set1_epi32(0x0f0f_0f0f));
    let high = _mm_srlv_epi32(hi, _mm_setr_epi32(0, 2, 4, 6));
    let high = _mm_slli_epi32::<4>(_mm_and_si128(high, _mm_set1_epi32(0x0303_0303)));
    _mm_sub_epi8(_mm_or_si128(low, high), _mm_set1_epi8(32))
}

/// Q4_K/Q5_K scales then mins (16 bytes, as `types::q4_k::scales_mins_k4_bytes`) from the 16
/// bytes `d, dmin, scales` that start both blocks (only for those two), in vector registers. Words a, b, c of the
/// packed scales: scales a & 0x3f.., (c & 0x0f..) | ((a >> 6) & 0x03..) << 4; mins b & 0x3f..,
/// ((c >> 4) & 0x0f..) | ((b >> 6) & 0x03..) << 4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_scales_mins<T: crate::types::Block>(b: &T) -> __m128i {
    assert!(std::mem::size_of::<T>() >= 16);
    // SAFETY: the first 16 bytes of the block (checked above); the load is unaligned.
    let v = _mm_srli_si128::<4>(unsafe { _mm_loadu_si128(b as *const T as *const __m128i) });
    // lanes [a, c, b, c] and [-, a, -, b]
    let p = _mm_shuffle_epi32::<0b10_01_10_00>(v);
    let part1 = _mm_and_si128(
        _mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
        _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
    );
    let q = _mm_shuffle_epi32::<0b01_01_00_00>(v);
    let part2 = _mm_and_si128(_mm_srli_epi32::<6>(q), _mm_setr_epi32(0, 0x0303_0303, 0, 0x0303_0303));
    _mm_or_si128(part1, _mm_slli_epi32::<4>(part2))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q3k(b: &BlockQ3K) -> Unpacked {
    let s16 = _mm256_cvtepi8_epi16(q3k_scales(b));
    // value = d * sc * (level - 4) with level = low 2 bits + 4 * high bit
    let c16 = _mm256_mullo_epi16(s16, _mm256_set1_epi16(-4));
    let mut lv = levels_2bit(&b.qs);
    let hm = broadcast32(&b.hmask);
    let four = _mm512_set1_epi8(4);
    for (c, l) in lv.iter_mut().enumerate() {
        let high = _mm512_test_epi8_mask(hm, bytes2(1 << (2 * c), 1 << (2 * c + 1)));
        *l = _mm512_mask_add_epi8(*l, high, *l, four);
    }
    Unpacked { lv, sc: scale_vectors(s16, 4), c16, d: f16x2(b.d, [0; 2]).0, f: 0.0, premul: false, off: 0 }
}

/// Q3_K for the tile kernel: the signed products `sc * (level - 4)` lie in -124..=128 -- one
/// byte once offset by 124 -- so a `vpshufb` table per sub-block turns each 3-bit level into
/// `sc * (level - 4) + 124` (0..=252); each token's chunk is one `vpdpbusd` for the products and
/// one for `124 * x`, subtracted lane by lane (through the group sums instead, the offset would
/// cancel only across lanes, after the float conversion, and cost precision).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q3k_premul(b: &BlockQ3K) -> Unpacked {
    let s32 = _mm512_cvtepi8_epi32(q3k_scales(b));
    // bytes [124-4s, 124-3s, 124-2s, 124-s] and [124, 124+s, 124+2s, 124+3s]: no byte ever
    // leaves 0..=252 for |s| <= 32, so whole-word arithmetic never carries between bytes
    let base = _mm512_set1_epi32(0x7C7C_7C7C);
    let lo = _mm512_sub_epi32(base, _mm512_mullo_epi32(s32, _mm512_set1_epi32(0x0102_0304)));
    let hi = _mm512_add_epi32(base, _mm512_mullo_epi32(s32, _mm512_set1_epi32(0x0302_0100)));
    // SAFETY: `IDX_Q3K_TABLES` is 64 readable bytes; the load is unaligned.
    let idx = unsafe { _mm512_loadu_si512(IDX_Q3K_TABLES.as_ptr() as *const __m512i) };
    let mut lv = levels_2bit(&b.qs);
    let hm = broadcast32(&b.hmask);
    let four = _mm512_set1_epi8(4);
    for (c, l) in lv.iter_mut().enumerate() {
        let high = _mm512_test_epi8_mask(hm, bytes2(1 << (2 * c), 1 << (2 * c + 1)));
        let level = _mm512_mask_add_epi8(*l, high, *l, four);
        let t = _mm512_permutex2var_epi32(lo, _mm512_add_epi32(idx, _mm512_set1_epi32(4 * c as i32)), hi);
        *l = _mm512_shuffle_epi8(t, level);
    }
    let z = _mm512_setzero_si512();
    Unpacked { lv, sc: [z; 4], c16: _mm256_setzero_si256(), d: f16x2(b.d, [0; 2]).0, f: 0.0, premul: true, off: 124 }
}

/// For chunk 0: 16-byte lane `j` gets words [lo[j], hi[j]] (index 16 + j picks from `hi`);
/// chunk `c` adds `4c`.
static IDX_Q3K_TABLES: [i32; 16] = [0, 16, 0, 0, 1, 17, 1, 1, 2, 18, 2, 2, 3, 19, 3, 3];

/// Integer part of one block against one Q8_K block: `Σ sc * Σ lv * q8` (+ the folded offset).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn block_sumi(u: &Unpacked, a: &BlockQ8K, fold: bool) -> (__m512i, __m256i) {
    let q8 = a.qs.as_ptr() as *const __m512i;
    let mut sumi = _mm512_setzero_si512();
    let mut offset = _mm512_setzero_si512();
    for k in 0..4 {
        // SAFETY: `qs` is 256 bytes, chunk k covers bytes 64k..64k+64; the load is unaligned.
        let x = unsafe { _mm512_loadu_si512(q8.add(k)) };
        if u.premul {
            sumi = _mm512_dpbusd_epi32(sumi, u.lv[k], x);
            if u.off != 0 {
                offset = _mm512_dpbusd_epi32(offset, _mm512_set1_epi8(u.off as i8), x);
            }
        } else {
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(u.lv[k], x), u.sc[k]);
        }
    }
    if u.premul && u.off != 0 {
        // the offset leaves each lane exactly (same positions), so no lane ever holds more
        // than its own products: the float conversion stays as accurate as the spec's
        return (_mm512_sub_epi32(sumi, offset), _mm256_setzero_si256());
    }
    // SAFETY: `bsums` is 32 readable bytes.
    let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
    let g = _mm256_madd_epi16(u.c16, bs);
    if fold {
        sumi = _mm512_add_epi32(sumi, _mm512_zextsi256_si512(g));
    }
    (sumi, g)
}

/// Adds one block's result into the float accumulator.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn accumulate(acc: __m512, u: &Unpacked, a: &BlockQ8K, fold: bool) -> __m512 {
    let (sumi, g) = block_sumi(u, a, fold);
    let xd = a.d();
    let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(u.d * xd), acc);
    if fold {
        acc
    } else {
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(g)), _mm512_set1_ps(u.f * xd), acc)
    }
}

/// This ISA's side of the shared K-quant loops (`isa::tiles`).
struct Avx512;

impl KquantIsa for Avx512 {
    type Unpacked = Unpacked;
    type Acc = __m512;
    const TOKENS: usize = TILE_TOKENS;
    const PREFETCH: bool = false;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn accumulate(acc: __m512, u: &Unpacked, a: &BlockQ8K, fold: bool) -> __m512 {
        unsafe { accumulate(acc, u, a, fold) }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(acc) }
    }
}

/// `Unpack` for each type: its unpacker, and for several tokens the premultiplied form where
/// the type has one.
macro_rules! unpack {
    ($($Block:ty => $unpack:ident, $unpack_tile:ident);*) => {$(
        impl Unpack<$Block> for Avx512 {
            #[inline(always)]
            unsafe fn unpack(b: &$Block) -> Unpacked {
                unsafe { $unpack(b) }
            }
            #[inline(always)]
            unsafe fn unpack_tile(b: &$Block) -> Unpacked {
                unsafe { $unpack_tile(b) }
            }
        }
    )*};
}
unpack!(
    BlockQ2K => unpack_q2k, unpack_q2k_premul;
    BlockQ3K => unpack_q3k, unpack_q3k_premul;
    BlockQ4K => unpack_q4k, unpack_q4k;
    BlockQ5K => unpack_q5k, unpack_q5k;
    BlockQ6K => unpack_q6k, unpack_q6k
);

tiles::kquant_entry_points!(Avx512, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c", gemm);

// ---------------------------------------------------------------------------------------------
// One-token kernels (`gemv`): many rows against one token.
//
// The activations are prepared once per call (a block of rows) in the order the weights load
// best, so each weight block is unpacked with whole 64-byte loads, shifts and masks only:
// - Q4_K: `qs[64h..64h+64]` gives, as low nibbles, values 128h+0..32 and 128h+64..96, as high
//   nibbles 128h+32..64 and 128h+96..128; the activations are permuted to match.
// - Q2_K: `qs[0..64] >> 2s` gives values 32s..32s+32 and 128+32s..128+32s+32; same idea.
// - Q5_K reads like Q4_K, Q3_K like Q2_K, plus their high bits from a broadcast `qh`/`hmask`.
// - Q6_K: loads in natural order already; it reads the Q8_K blocks as they are.
// The sub-block scales are spread over their lanes with one `vpshufb` per 64 values from a
// broadcast of the packed scale bytes (zero- or sign-extended words), instead of cross-lane
// permutes. Each row is one sequential stream; two float accumulators per row.
// ---------------------------------------------------------------------------------------------

/// A Q8_K block of activations rearranged for one weight type (see above).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Prep {
    qs: [i8; QK_K],
    /// Q4_K: sums of 32 values (pairs of `bsums`) in 0..8; Q2_K: the 16 `bsums`.
    bs: [i16; 16],
    d: f32,
}

/// Blocks prepared at most (rows of up to 16384 values, 20 KiB on the stack); longer rows
/// use `vec_dot` row by row.
const PREP_MAX: usize = 64;

pub fn gemv(t: WeightType) -> Option<GemvFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q2_K => gemv_q2k,
        WeightType::Q3_K => gemv_q3k,
        WeightType::Q4_K => gemv_q4k,
        WeightType::Q5_K => gemv_q5k,
        WeightType::Q6_K => gemv_q6k,
        _ => return None,
    })
}

/// `bsums[j]` of a Q8_K block.
#[inline]
fn bsum(a: &BlockQ8K, j: usize) -> i16 {
    i16::from_le_bytes(a.bsums[j])
}

/// The activations for Q4_K (`pair_sums`, halves 64 apart) or Q2_K (halves 128 apart).
/// Uninitialised room for the prepared blocks (only the `nb` used are written: no memset).
type PrepBuf = [core::mem::MaybeUninit<Prep>; PREP_MAX];

/// The activations for Q4_K/Q5_K (`q4k`: pair sums, halves 64 apart) or Q2_K/Q3_K (halves 128
/// apart), into the first `xb.len()` (at most `PREP_MAX`) entries of `buf`.
fn prepare<'a>(xb: &[BlockQ8K], buf: &'a mut PrepBuf, q4k: bool) -> &'a [Prep] {
    assert!(xb.len() <= PREP_MAX);
    for (a, slot) in xb.iter().zip(buf.iter_mut()) {
        let mut p = Prep { qs: [0; QK_K], bs: [0; 16], d: a.d() };
        for c in 0..4 {
            let (base, gap) = if q4k { (128 * (c / 2) + 32 * (c % 2), 64) } else { (32 * c, 128) };
            p.qs[64 * c..64 * c + 32].copy_from_slice(&a.qs[base..base + 32]);
            p.qs[64 * c + 32..64 * c + 64].copy_from_slice(&a.qs[base + gap..base + gap + 32]);
        }
        for j in 0..16 {
            p.bs[j] = if !q4k {
                bsum(a, j)
            } else if j < 8 {
                bsum(a, 2 * j) + bsum(a, 2 * j + 1)
            } else {
                0
            };
        }
        slot.write(p);
    }
    // SAFETY: the first `xb.len()` entries were just written (the loop above covers them all,
    // `xb.len() <= PREP_MAX` was checked), and `MaybeUninit<Prep>` has `Prep`'s layout.
    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const Prep, xb.len()) }
}

/// `vpshufb` control: in 16-byte lane `l`, every word takes byte `idx[l]` (zero-extended when
/// `sign` is false; else bytes `2 idx[l]`, `2 idx[l] + 1`: the low word of a 32-bit lane).
const fn word_ctl(idx: [u8; 4], sign: bool) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let j = idx[i / 16];
        a[i] = if sign {
            if i % 2 == 0 {
                4 * j
            } else {
                4 * j + 1
            }
        } else if i % 2 == 0 {
            j
        } else {
            0x80
        };
        i += 1;
    }
    a
}

/// Q4_K: scale byte (0..8) of each 16-byte lane of the four 64-value vectors.
static CTL_Q4K: [[u8; 64]; 4] = [
    word_ctl([0, 0, 2, 2], false),
    word_ctl([1, 1, 3, 3], false),
    word_ctl([4, 4, 6, 6], false),
    word_ctl([5, 5, 7, 7], false),
];
/// Q2_K: scale byte (0..16) of each 16-byte lane (one sub-block of 16 values each).
static CTL_Q2K: [[u8; 64]; 4] = [
    word_ctl([0, 1, 8, 9], false),
    word_ctl([2, 3, 10, 11], false),
    word_ctl([4, 5, 12, 13], false),
    word_ctl([6, 7, 14, 15], false),
];
/// Q6_K: 32-bit lane `k` of every 16-byte lane (the transposed scales, see `gemv_q6k_tf`).
static CTL_Q6K: [[u8; 64]; 4] = [
    word_ctl([0, 0, 0, 0], true),
    word_ctl([1, 1, 1, 1], true),
    word_ctl([2, 2, 2, 2], true),
    word_ctl([3, 3, 3, 3], true),
];

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ctl4(c: &[[u8; 64]; 4]) -> [__m512i; 4] {
    // SAFETY: each row is 64 readable bytes; the loads are unaligned.
    core::array::from_fn(|k| unsafe { _mm512_loadu_si512(c[k].as_ptr() as *const __m512i) })
}

/// `[d * xd, dmin * xd, 0, 0]` from the two f16 fields.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dx2(d: [u8; 2], dmin: [u8; 2], xd: f32) -> __m128 {
    let bits = u32::from_le_bytes([d[0], d[1], dmin[0], dmin[1]]);
    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)), _mm_set1_ps(xd))
}

/// Rows longer than `PREP_MAX` blocks: the plain dot product row by row.
fn gemv_fallback(vec_dot: VecDotFn, n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    for (r, o) in out[..nr].iter_mut().enumerate() {
        *o = vec_dot(n, &w[r * w_stride..], x);
    }
}

/// The blocks sharing Q4_K's scales and nibble layout (Q5_K adds a fifth bit).
trait K4Block: crate::types::Block {
    const NAME: &'static str;
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]);
    fn qs(&self) -> &[u8; QK_K / 2];
    /// Q5_K's high bits (`None` for Q4_K).
    fn qh(&self) -> Option<&[u8; QK_K / 8]>;
}

impl K4Block for BlockQ4K {
    const NAME: &'static str = "Q4_K";
    #[inline]
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]) {
        (self.d, self.dmin)
    }
    #[inline]
    fn qs(&self) -> &[u8; QK_K / 2] {
        &self.qs
    }
    #[inline]
    fn qh(&self) -> Option<&[u8; QK_K / 8]> {
        None
    }
}

impl K4Block for BlockQ5K {
    const NAME: &'static str = "Q5_K";
    #[inline]
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]) {
        (self.d, self.dmin)
    }
    #[inline]
    fn qs(&self) -> &[u8; QK_K / 2] {
        &self.qs
    }
    #[inline]
    fn qh(&self) -> Option<&[u8; QK_K / 8]> {
        Some(&self.qh)
    }
}

fn gemv_q4k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    gemv_k4::<BlockQ4K>(kquant_vec_dot::<BlockQ4K>, n, w, w_stride, nr, x, out)
}

fn gemv_q5k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    gemv_k4::<BlockQ5K>(kquant_vec_dot::<BlockQ5K>, n, w, w_stride, nr, x, out)
}

#[inline]
fn gemv_k4<B: K4Block>(vec_dot: VecDotFn, n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    if nb > PREP_MAX {
        return gemv_fallback(vec_dot, n, w, w_stride, nr, x, out);
    }
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q8_K gemv activations");
    let mut buf: PrepBuf = [const { core::mem::MaybeUninit::uninit() }; PREP_MAX];
    let prep = prepare(xb, &mut buf, true);
    // SAFETY: installed only when `supported()` (all enabled features detected).
    unsafe { gemv_k4_tf::<B>(nb, w, w_stride, nr, prep, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv_k4_tf<B: K4Block>(nb: usize, w: &[u8], w_stride: usize, nr: usize, prep: &[Prep], out: &mut [f32]) {
    let ctl = ctl4(&CTL_Q4K);
    let m4 = _mm512_set1_epi8(0x0F);
    let ctl_min = _mm_setr_epi8(8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14, -128, 15, -128);
    // Q5_K: the fifth bit of vector c's halves is bit 4 (c / 2) + c % 2 of `qh` / that + 2
    let hbit = [bytes2(1, 4), bytes2(2, 8), bytes2(16, 64), bytes2(32, 128)];
    let sixteen = _mm512_set1_epi8(16);
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<B>(&w[r * w_stride..], nb, B::NAME);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut accm = _mm_setzero_ps();
        for (i, (b, p)) in wb.iter().zip(prep).enumerate() {
            prefetch_ahead(b);
            let smv = k4_scales_mins(b);
            let sb = _mm512_broadcast_i32x4(smv);
            // SAFETY: `qs` is 128 readable bytes; `p.qs` 256 (64-byte aligned).
            let (q0, q1, xv) = unsafe {
                let q = b.qs().as_ptr() as *const __m512i;
                let xp = p.qs.as_ptr() as *const __m512i;
                (
                    _mm512_loadu_si512(q),
                    _mm512_loadu_si512(q.add(1)),
                    [
                        _mm512_load_si512(xp),
                        _mm512_load_si512(xp.add(1)),
                        _mm512_load_si512(xp.add(2)),
                        _mm512_load_si512(xp.add(3)),
                    ],
                )
            };
            let mut lv = [
                _mm512_and_si512(q0, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q0), m4),
                _mm512_and_si512(q1, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q1), m4),
            ];
            if let Some(qh) = b.qh() {
                let qh = broadcast32(qh);
                for (l, hb) in lv.iter_mut().zip(hbit) {
                    *l = _mm512_mask_add_epi8(*l, _mm512_test_epi8_mask(qh, hb), *l, sixteen);
                }
            }
            let mut s = _mm512_setzero_si512();
            for k in 0..4 {
                s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(lv[k], xv[k]), _mm512_shuffle_epi8(sb, ctl[k]));
            }
            // SAFETY: `bs` is 32 readable bytes (64-byte aligned struct, offset 256).
            let bs = unsafe { _mm_load_si128(p.bs.as_ptr() as *const __m128i) };
            let g = _mm_madd_epi16(_mm_shuffle_epi8(smv, ctl_min), bs);
            let (d, dmin) = b.d_dmin();
            let dx = dx2(d, dmin, p.d);
            acc[i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_broadcastss_ps(dx), acc[i & 1]);
            accm = _mm_fmadd_ps(_mm_cvtepi32_ps(g), _mm_permute_ps::<0b01_01_01_01>(dx), accm);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - hsum128(accm);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

fn gemv_q2k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    if nb > PREP_MAX {
        return gemv_fallback(kquant_vec_dot::<BlockQ2K>, n, w, w_stride, nr, x, out);
    }
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q2_K gemv activations");
    let mut buf: PrepBuf = [const { core::mem::MaybeUninit::uninit() }; PREP_MAX];
    let prep = prepare(xb, &mut buf, false);
    // SAFETY: installed only when `supported()` (all enabled features detected).
    unsafe { gemv_q2k_tf(nb, w, w_stride, nr, prep, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv_q2k_tf(nb: usize, w: &[u8], w_stride: usize, nr: usize, prep: &[Prep], out: &mut [f32]) {
    let ctl = ctl4(&CTL_Q2K);
    let m2 = _mm512_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<BlockQ2K>(&w[r * w_stride..], nb, "Q2_K gemv weights");
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut accm = _mm256_setzero_ps();
        for (i, (b, p)) in wb.iter().zip(prep).enumerate() {
            prefetch_ahead(b);
            // SAFETY: `scales` 16 and `qs` 64 readable bytes; `p.qs` 256 and `p.bs` 32
            // (64-byte aligned struct).
            let (sc, q, xv, bs) = unsafe {
                let xp = p.qs.as_ptr() as *const __m512i;
                (
                    _mm_loadu_si128(b.scales.as_ptr() as *const __m128i),
                    _mm512_loadu_si512(b.qs.as_ptr() as *const __m512i),
                    [
                        _mm512_load_si512(xp),
                        _mm512_load_si512(xp.add(1)),
                        _mm512_load_si512(xp.add(2)),
                        _mm512_load_si512(xp.add(3)),
                    ],
                    _mm256_load_si256(p.bs.as_ptr() as *const __m256i),
                )
            };
            let sb = _mm512_broadcast_i32x4(_mm_and_si128(sc, m4));
            let lv = [
                _mm512_and_si512(q, m2),
                _mm512_and_si512(_mm512_srli_epi16::<2>(q), m2),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), m2),
                _mm512_and_si512(_mm512_srli_epi16::<6>(q), m2),
            ];
            let mut s = _mm512_setzero_si512();
            for k in 0..4 {
                s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(lv[k], xv[k]), _mm512_shuffle_epi8(sb, ctl[k]));
            }
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
            let g = _mm256_madd_epi16(mins, bs);
            let dx = dx2(b.d, b.dmin, p.d);
            acc[i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_broadcastss_ps(dx), acc[i & 1]);
            accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(g), _mm256_broadcastss_ps(_mm_movehdup_ps(dx)), accm);
        }
        let m = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps::<1>(accm));
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - hsum128(m);
    }
}

fn gemv_q3k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    if nb > PREP_MAX {
        return gemv_fallback(kquant_vec_dot::<BlockQ3K>, n, w, w_stride, nr, x, out);
    }
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q3_K gemv activations");
    let mut buf: PrepBuf = [const { core::mem::MaybeUninit::uninit() }; PREP_MAX];
    let prep = prepare(xb, &mut buf, false);
    // SAFETY: installed only when `supported()` (all enabled features detected).
    unsafe { gemv_q3k_tf(nb, w, w_stride, nr, prep, out) }
}

/// Q3_K scales (sub-blocks of 16) to 32-bit lanes: 16-byte lane `l` of vector `s` (Q2_K
/// order) holds sub-block `[2s, 2s + 1, 8 + 2s, 9 + 2s][l]`, taken from 32-bit lane `s`.
static Q3K_SCALE_ORDER: [u8; 16] = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv_q3k_tf(nb: usize, w: &[u8], w_stride: usize, nr: usize, prep: &[Prep], out: &mut [f32]) {
    let ctl = ctl4(&CTL_Q6K);
    // SAFETY: 16 readable bytes; the load is unaligned.
    let order = unsafe { _mm_loadu_si128(Q3K_SCALE_ORDER.as_ptr() as *const __m128i) };
    let m2 = _mm512_set1_epi8(3);
    let four = _mm512_set1_epi8(4);
    // the high bit of vector s's halves: bit s / 4 + s of `hmask`
    let hbit = [bytes2(1, 16), bytes2(2, 32), bytes2(4, 64), bytes2(8, 128)];
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<BlockQ3K>(&w[r * w_stride..], nb, "Q3_K gemv weights");
        let mut acc = [_mm512_setzero_ps(); 2];
        for (i, (b, p)) in wb.iter().zip(prep).enumerate() {
            prefetch_ahead(b);
            // SAFETY: `qs` 64 readable bytes; `p.qs` 256 and `p.bs` 32 (64-byte aligned struct).
            let (q, xv, bs) = unsafe {
                let xp = p.qs.as_ptr() as *const __m512i;
                (
                    _mm512_loadu_si512(b.qs.as_ptr() as *const __m512i),
                    [
                        _mm512_load_si512(xp),
                        _mm512_load_si512(xp.add(1)),
                        _mm512_load_si512(xp.add(2)),
                        _mm512_load_si512(xp.add(3)),
                    ],
                    _mm256_load_si256(p.bs.as_ptr() as *const __m256i),
                )
            };
            let sc = q3k_scales(b);
            let st = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, order));
            let hm = broadcast32(&b.hmask);
            // two chains of products: measured 4.24 -> 4.02 ns per block against one chain
            let mut sk = [_mm512_setzero_si512(); 2];
            for k in 0..4 {
                let l = _mm512_and_si512(_mm512_srlv_epi16(q, _mm512_set1_epi16(2 * k as i16)), m2);
                let l = _mm512_mask_add_epi8(l, _mm512_test_epi8_mask(hm, hbit[k]), l, four);
                sk[k & 1] =
                    _mm512_dpwssd_epi32(sk[k & 1], _mm512_maddubs_epi16(l, xv[k]), _mm512_shuffle_epi8(st, ctl[k]));
            }
            let mut s = _mm512_add_epi32(sk[0], sk[1]);
            // value = d * sc * (level - 4): -4 * Σ sc * bsums, folded into the integer sum
            let g = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bs);
            s = _mm512_sub_epi32(s, _mm512_zextsi256_si512(_mm256_slli_epi32::<2>(g)));
            let dx = dx2(b.d, [0; 2], p.d);
            acc[i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_broadcastss_ps(dx), acc[i & 1]);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

/// 4x4 byte transpose: lane `l` of the result holds bytes `l, 4 + l, 8 + l, 12 + l`.
static TRANSPOSE4X4: [u8; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

fn gemv_q6k(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]) {
    let nb = n / QK_K;
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q6_K gemv activations");
    // SAFETY: installed only when `supported()` (all enabled features detected).
    unsafe { gemv_q6k_tf(nb, w, w_stride, nr, xb, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv_q6k_tf(nb: usize, w: &[u8], w_stride: usize, nr: usize, xb: &[BlockQ8K], out: &mut [f32]) {
    let ctl = ctl4(&CTL_Q6K);
    // SAFETY: 16 readable bytes; the load is unaligned.
    let tr = unsafe { _mm_loadu_si128(TRANSPOSE4X4.as_ptr() as *const __m128i) };
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    for (r, o) in out[..nr].iter_mut().enumerate() {
        let wb = first_blocks::<BlockQ6K>(&w[r * w_stride..], nb, "Q6_K gemv weights");
        let mut acc = [_mm512_setzero_ps(); 2];
        for (i, (b, a)) in wb.iter().zip(xb).enumerate() {
            prefetch_ahead(b);
            // SAFETY: `ql` 128, `qh` 64, `scales` 16, `qs` 256 and `bsums` 32 readable bytes;
            // the loads are unaligned.
            let (sc, xv, bs) = unsafe {
                let xp = a.qs.as_ptr() as *const __m512i;
                (
                    _mm_loadu_si128(b.scales.as_ptr() as *const __m128i),
                    [
                        _mm512_loadu_si512(xp),
                        _mm512_loadu_si512(xp.add(1)),
                        _mm512_loadu_si512(xp.add(2)),
                        _mm512_loadu_si512(xp.add(3)),
                    ],
                    _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i),
                )
            };
            // 16-byte lane l holds scales l, 4 + l, 8 + l, 12 + l as 32-bit lanes: vector k
            // (values 64k..64k+64, sub-blocks 4k..4k+4) takes 32-bit lane k of every lane
            let st = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, tr));
            let mut s = _mm512_setzero_si512();
            for h in 0..2 {
                // SAFETY: `ql[64h..64h+64]` and `qh[32h..32h+32]` are inside the arrays.
                let (ql, qh) = unsafe {
                    (_mm512_loadu_si512(b.ql.as_ptr().add(64 * h) as *const __m512i), broadcast32(&b.qh[32 * h..]))
                };
                // high bits in place (bits 4..6): qh << 4 / << 2 for values 0..32 / 32..64 of
                // the first vector, qh / qh >> 2 for the second
                let h0 = _mm512_sllv_epi64(qh, shifts(4, 2));
                let h1 = _mm512_srlv_epi64(qh, shifts(0, 2));
                let lo0 = _mm512_and_si512(ql, m4);
                let lo1 = _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4);
                // lo | (h & m30) in one vpternlog
                let l0 = _mm512_ternarylogic_epi32::<0xF8>(lo0, h0, m30);
                let l1 = _mm512_ternarylogic_epi32::<0xF8>(lo1, h1, m30);
                s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(l0, xv[2 * h]), _mm512_shuffle_epi8(st, ctl[2 * h]));
                s = _mm512_dpwssd_epi32(
                    s,
                    _mm512_maddubs_epi16(l1, xv[2 * h + 1]),
                    _mm512_shuffle_epi8(st, ctl[2 * h + 1]),
                );
            }
            // value = d * sc * (level - 32): -32 * Σ sc * bsums, folded into the integer sum
            let g = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bs);
            s = _mm512_sub_epi32(s, _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(g)));
            let dx = dx2(b.d, [0; 2], a.d());
            acc[i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_broadcastss_ps(dx), acc[i & 1]);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{quantize_row, TYPES};

    /// Every K-quant gemv against the scalar dot product, row by row, for row lengths around
    /// the prepared-activation limit (64 blocks: prepared; 65: the fallback) and a wide range
    /// of scales (so a wrong sub-block scale, minimum or high bit shows).
    #[test]
    fn gemv_matches_scalar_vec_dot_for_every_k_quant() {
        if !supported() {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for t in [WeightType::Q2_K, WeightType::Q3_K, WeightType::Q4_K, WeightType::Q5_K, WeightType::Q6_K] {
            let gemv = super::gemv(t).expect("a gemv for every K-quant");
            let scalar = TYPES.iter().find(|i| i.ty == t).expect("listed").vec_dot;
            for (rows, nb) in [(1, 1), (5, 3), (3, 64), (2, 65)] {
                let n = nb * QK_K;
                // rows with block-to-block and value-to-value magnitudes varying over 1e3
                let wf: Vec<f32> = (0..rows * n).map(|i| rand() * (1.0 + 30.0 * ((i / 97) % 7) as f32)).collect();
                let xf: Vec<f32> = (0..n).map(|i| rand() * (1.0 + ((i / 61) % 5) as f32)).collect();
                let wrb = t.row_bytes(n);
                let mut w = vec![0u8; rows * wrb];
                for (src, dst) in wf.chunks_exact(n).zip(w.chunks_exact_mut(wrb)) {
                    quantize_row(t, src, dst);
                }
                let mut x = vec![0u8; WeightType::Q8_K.row_bytes(n)];
                quantize_row(WeightType::Q8_K, &xf, &mut x);
                let mut out = vec![f32::NAN; rows];
                gemv(n, &w, wrb, rows, &x, &mut out);
                for r in 0..rows {
                    let want = scalar(n, &w[r * wrb..(r + 1) * wrb], &x);
                    let tol = 1e-5 * (nb as f32) * (1.0 + want.abs());
                    assert!(
                        (out[r] - want).abs() <= tol,
                        "{} gemv {rows}x{nb} blocks, row {r}: {} vs scalar {want}",
                        t.name(),
                        out[r]
                    );
                }
            }
        }
    }
}
