//! avx2 panel kernel for Q4_K weights against Q8_K activations (the most common K-quant), for
//! many tokens at once (see `PanelFn`): the avx512 `kpanel` algorithm on 8-row ymm panels.
//!
//! Each call unpacks its weight rows once, 8 rows at a time: per block of 256 values, 64 lines
//! of codes (line `4`-value group `g`: values `4g..4g+4` of each of the 8 rows, lane `r` = row
//! `r`, the nibbles 0..15 as they are), 8 lines of sub-block scales (i32 per row), 4 lines of
//! sub-block minimums in pairs (two i16 per row), and `d`, `dmin` as f32. Per block and token the
//! micro-kernel (8 rows x 4 tokens) sums each 32-value sub-block's products exactly (eight
//! `vpdpbusd` with AVX-VNNI; else eight `vpmaddubsw` summed in 16 bits -- 8 * 2 * 15 * 128 <
//! 2^15 -- and one `vpmaddwd`), multiplies by the sub-block scale (`vpmulld`), takes the
//! minimums against the Q8_K group sums (`bsums`, pairwise) with four `vpmaddwd`, and finishes
//! in f32: `acc += d_x * (d_w * s1 - dmin_w * s2)`, the scalar specification's `sumi` and
//! `summ` exactly, only the float combination differs in rounding order.
//!
//! It more than doubles the prompt matmul over the tile kernel, with or without AVX-VNNI
//! (`examples/bench`; figures in docs/benchmarks.md). The other K-quants keep the tiles (the same design would carry over: Q5_K adds a fifth bit,
//! Q2_K/Q3_K/Q6_K have 16-value sub-blocks and code offsets, as in the avx512 `kpanel`).
//!
//! Installed only when AVX2/FMA/F16C are detected (and AVX-VNNI for the `vnni` variant).

#![allow(clippy::needless_range_loop)]

use super::legacy::{h2f, ld256};
use super::lpanel::{bcast4, q8k_steps, run_tile, store_rows, transpose8, Line};
use crate::isa::lpanels::Steps;
use crate::isa::{PanelFn, Tile};
use crate::types::q4_k::{scales_mins_k4_bytes, BlockQ4K};
use crate::types::q8_k::QK_K;
use crate::types::WeightType;
use std::arch::x86_64::*;

const ROWS: usize = 8;
const TOKENS: usize = 4;
/// Lines per packed block: codes, scales, minimum pairs, `d`, `dmin`.
const CODE_LINES: usize = QK_K / 4;
const SCALE_LINE: usize = CODE_LINES;
const MIN_LINE: usize = SCALE_LINE + 8;
const D_LINE: usize = MIN_LINE + 4;
const LINES: usize = D_LINE + 2;
/// Q8_K: `f32 d; i8 qs[256]; i16 bsums[16]`.
const Q8K_BYTES: usize = 292;
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;
/// How far ahead of the block being packed each weight row is prefetched (bytes).
const PREFETCH: usize = 512;

pub fn panel(t: WeightType) -> Option<PanelFn> {
    panel_with(t, is_x86_feature_detected!("avxvnni"))
}

/// With or without AVX-VNNI (`vnni` only where the CPU has it).
pub(super) fn panel_with(t: WeightType, vnni: bool) -> Option<PanelFn> {
    if t != WeightType::Q4_K || (vnni && !is_x86_feature_detected!("avxvnni")) {
        return None;
    }
    Some(if vnni { panel_entry::<true> } else { panel_entry::<false> })
}

/// Packs rows `0..nr` (`nr <= 8`) into `nb` packed blocks at `dst`; rows `nr..8` are zeros.
///
/// # Safety
/// The rows are readable; `dst` has room for `nb * LINES` lines; AVX2/FMA/F16C.
#[inline(always)]
unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
    let m4 = _mm256_set1_epi8(0x0f);
    for b in 0..nb {
        // chunk c (values 32c..32c+32) of every row
        let mut chunks = [[_mm256_setzero_si256(); ROWS]; 8];
        let mut sc = [[0i32; ROWS]; 8];
        let mut mins = [[0u32; ROWS]; 4];
        let (mut d, mut dmin) = ([0f32; ROWS], [0f32; ROWS]);
        for i in 0..nr {
            let p = w.add(i * ws + b * 144);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 128) as *const i8);
            let blk = &*(p as *const BlockQ4K);
            for k in 0..4 {
                let q = ld256(blk.qs.as_ptr().add(32 * k));
                chunks[2 * k][i] = _mm256_and_si256(q, m4);
                chunks[2 * k + 1][i] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            }
            let sm = scales_mins_k4_bytes(&blk.scales);
            for j in 0..8 {
                sc[j][i] = sm[j] as i32;
            }
            for pr in 0..4 {
                mins[pr][i] = sm[8 + 2 * pr] as u32 | (sm[9 + 2 * pr] as u32) << 16;
            }
            d[i] = h2f(blk.d.as_ptr());
            dmin[i] = h2f(blk.dmin.as_ptr());
        }
        let out = dst.add(b * LINES);
        for c in 0..8 {
            transpose8(&chunks[c], out.add(8 * c));
        }
        for j in 0..8 {
            _mm256_store_si256(out.add(SCALE_LINE + j) as *mut __m256i, ld256(sc[j].as_ptr()));
        }
        for pr in 0..4 {
            _mm256_store_si256(out.add(MIN_LINE + pr) as *mut __m256i, ld256(mins[pr].as_ptr()));
        }
        _mm256_store_ps(out.add(D_LINE) as *mut f32, _mm256_loadu_ps(d.as_ptr()));
        _mm256_store_ps(out.add(D_LINE + 1) as *mut f32, _mm256_loadu_ps(dmin.as_ptr()));
    }
}

/// 8 packed rows x `T` tokens over `nb` blocks: `out[c * os + r]` for `r < nr`.
///
/// # Safety
/// `panel` holds `nb` packed blocks; tokens `c < T` hold `nb` Q8_K blocks at `x + c * xs`; the
/// outputs are writable; AVX2/FMA/F16C (and AVX-VNNI when `V`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const T: usize, const V: bool>(
    nb: usize,
    panel: *const Line,
    x: *const u8,
    xs: usize,
    out: *mut f32,
    os: usize,
    nr: usize,
) {
    let ones16 = _mm256_set1_epi16(1);
    let pair_idx = [0, 1, 4, 5];
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let wl = panel.add(b * LINES);
        let xb: [*const u8; T] = core::array::from_fn(|c| x.add(c * xs + b * Q8K_BYTES));
        let mut s1 = [_mm256_setzero_si256(); T];
        for j in 0..8 {
            let mut raw = [_mm256_setzero_si256(); T];
            if V {
                for g in 0..8 {
                    let wv = _mm256_load_si256(wl.add(8 * j + g) as *const __m256i);
                    for c in 0..T {
                        raw[c] = _mm256_dpbusd_avx_epi32(raw[c], wv, bcast4(xb[c].add(Q8K_QS + 32 * j + 4 * g)));
                    }
                }
            } else {
                let mut p16 = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let wv = _mm256_load_si256(wl.add(8 * j + g) as *const __m256i);
                    for c in 0..T {
                        p16[c] = _mm256_add_epi16(
                            p16[c],
                            _mm256_maddubs_epi16(wv, bcast4(xb[c].add(Q8K_QS + 32 * j + 4 * g))),
                        );
                    }
                }
                for c in 0..T {
                    raw[c] = _mm256_madd_epi16(p16[c], ones16);
                }
            }
            let scale = _mm256_load_si256(wl.add(SCALE_LINE + j) as *const __m256i);
            for c in 0..T {
                s1[c] = _mm256_add_epi32(s1[c], _mm256_mullo_epi32(raw[c], scale));
            }
        }
        let dw = _mm256_load_ps(wl.add(D_LINE) as *const f32);
        let dmw = _mm256_load_ps(wl.add(D_LINE + 1) as *const f32);
        for c in 0..T {
            // sub-block sums of the activations (pairs of 16-value group sums), as i16 pairs
            let ms = _mm256_madd_epi16(ld256(xb[c].add(Q8K_BSUMS)), ones16);
            let packed = _mm256_packs_epi32(ms, ms);
            let mut s2 = _mm256_setzero_si256();
            for pr in 0..4 {
                let m = _mm256_load_si256(wl.add(MIN_LINE + pr) as *const __m256i);
                let xs2 = _mm256_permutevar8x32_epi32(packed, _mm256_set1_epi32(pair_idx[pr]));
                s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(m, xs2));
            }
            let dx = _mm256_set1_ps(std::ptr::read_unaligned(xb[c] as *const f32));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[c]), _mm256_mul_ps(dw, dx), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(s2), _mm256_mul_ps(dmw, dx), acc[c]);
        }
    }
    store_rows(&acc, out, os, nr);
}

q8k_steps!();

/// The entry point, with (`V`) or without AVX-VNNI.
fn panel_entry<const V: bool>(t: Tile<'_>) {
    let nb = t.blocks(QK_K, 144, Q8K_BYTES, "Q4_K panel");
    // SAFETY: installed only when AVX2/FMA/F16C were detected (and AVX-VNNI for `V`, see
    // `panel_with`); `nb` is from `Tile::blocks`.
    unsafe { run_tile::<Kernel<V>, V>(t, nb) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::q8_k::test_util::check_many_tokens;

    /// With and without AVX-VNNI (where the CPU has it), ragged row and token counts around the
    /// 8-row panel and the 4-token group, strided rows and tokens, against the scalar `vec_dot`.
    #[test]
    fn panel_matches_scalar_vec_dot() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let t = WeightType::Q4_K;
        let shapes: [(usize, usize, usize); 6] = [(1, 8, 1), (8, 8, 2), (7, 9, 3), (17, 13, 4), (9, 3, 16), (3, 1, 1)];
        for vnni in [false, true] {
            let Some(f) = panel_with(t, vnni) else { continue };
            for (si, &(nr, nc, nb)) in shapes.iter().enumerate() {
                let tol = |want: f32| 1e-5 * (nb as f32) * (1.0 + want.abs()) + 1e-4 * want.abs();
                check_many_tokens(&format!("vnni {vnni}"), t, f, nb * QK_K, nr, nc, (40, 44), 10 * si as u64, tol);
            }
        }
    }
}
