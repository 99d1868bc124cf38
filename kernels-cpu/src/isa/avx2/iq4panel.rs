//! avx2 panel kernel for IQ4_XS weights against Q8_K activations, for many tokens at once (see
//! `PanelFn`): the `kpanel` design (8-row ymm panels, the `lpanels` driver) with codebook codes.
//!
//! Each call unpacks its weight rows once, 8 rows at a time: per block of 256 values, 64 lines
//! of codes (line `g`: values `4g..4g+4` of each of the 8 rows, lane `r` = row `r`) holding the
//! codebook value + 128 (`types::iq4_nl::UNSIGNED`, one `vpshufb` per 32 values), 8 lines of
//! the signed sub-block scales `ls - 32` as i32, 8 lines of the same scales as two i16 per row,
//! and `d` as f32. Per block and token the micro-kernel (8 rows x 4 tokens) computes the scalar
//! specification's exact `sumi = sum_j scale_j * sum(value * x)`:
//!
//! - with AVX-VNNI, per 32-value sub-block eight `vpdpbusd` of code x activation, times the
//!   sub-block scale (`vpmulld`); the code offset comes back out as `128 * scale_j * (bsum pair
//!   of j)`, one `vpmaddwd` of the i16 scale pairs against the token's Q8_K group sums per
//!   sub-block;
//! - without it, `vpmaddubsw` cannot take codes up to 241 (its 16-bit pair sums would saturate),
//!   so the codes go back to signed values (one `vpxor` per line, shared by the tokens) and the
//!   product is `vpmaddubsw(|v|, sign(x, v))` (pair sums at most 2 * 127 * 127 < 2^15: the Q8_K
//!   quants are within -127..127), then one `vpmaddwd` by the i16 scale pairs straight into the
//!   i32 sum: no offset to correct.
//!
//! Then in f32 `acc += (d_w * d_x) * sumi`; only that float combination differs from the
//! scalar specification in rounding order.
//!
//! Installed only when AVX2/FMA/F16C are detected (and AVX-VNNI for the `vnni` variant).

#![allow(clippy::needless_range_loop)]

use super::legacy::{h2f, ld128, ld256};
use super::lpanel::{bcast4, q8k_steps, run_tile, store_rows, transpose8, Line};
use crate::isa::lpanels::Steps;
use crate::isa::{PanelFn, Tile};
use crate::types::iq4_xs::BlockIQ4XS;
use crate::types::q8_k::QK_K;
use crate::types::WeightType;
use std::arch::x86_64::*;

const ROWS: usize = 8;
const TOKENS: usize = 4;
/// Lines per packed block: codes, i32 scales, i16 scale pairs, `d`.
const CODE_LINES: usize = QK_K / 4;
const SCALE_LINE: usize = CODE_LINES;
const PAIR_LINE: usize = SCALE_LINE + 8;
const D_LINE: usize = PAIR_LINE + 8;
const LINES: usize = D_LINE + 1;
/// Bytes of one IQ4_XS block.
const BLOCK_BYTES: usize = core::mem::size_of::<BlockIQ4XS>();
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
    if t != WeightType::IQ4_XS || (vnni && !is_x86_feature_detected!("avxvnni")) {
        return None;
    }
    Some(if vnni { panel_entry::<true> } else { panel_entry::<false> })
}

/// Packs rows `0..nr` (`nr <= 8`) into `nb` packed blocks at `dst`; rows `nr..8` are zeros
/// (codes, scales and `d`: they add exactly 0).
///
/// # Safety
/// The rows are readable; `dst` has room for `nb * LINES` lines; AVX2/FMA/F16C.
#[inline(always)]
unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
    let m4 = _mm_set1_epi8(0x0f);
    let t = ld128(crate::types::iq4_nl::UNSIGNED.as_ptr());
    let table = _mm256_set_m128i(t, t);
    for b in 0..nb {
        // sub-block j (values 32j..32j+32) of every row
        let mut chunks = [[_mm256_setzero_si256(); ROWS]; 8];
        let mut sc = [[0i32; ROWS]; 8];
        let mut pairs = [[0u32; ROWS]; 8];
        let mut d = [0f32; ROWS];
        for i in 0..nr {
            let p = w.add(i * ws + b * BLOCK_BYTES);
            for k in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64 * k) as *const i8);
            }
            let blk = &*(p as *const BlockIQ4XS);
            for j in 0..8 {
                let v = ld128(blk.qs.as_ptr().add(16 * j));
                let idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(v), m4), _mm_and_si128(v, m4));
                chunks[j][i] = _mm256_shuffle_epi8(table, idx);
                let s = blk.scale(j);
                sc[j][i] = s;
                pairs[j][i] = (s as u16 as u32) * 0x1_0001;
            }
            d[i] = h2f(blk.d.as_ptr());
        }
        let out = dst.add(b * LINES);
        for j in 0..8 {
            transpose8(&chunks[j], out.add(8 * j));
            _mm256_store_si256(out.add(SCALE_LINE + j) as *mut __m256i, ld256(sc[j].as_ptr()));
            _mm256_store_si256(out.add(PAIR_LINE + j) as *mut __m256i, ld256(pairs[j].as_ptr()));
        }
        _mm256_store_ps(out.add(D_LINE) as *mut f32, _mm256_loadu_ps(d.as_ptr()));
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
    let flip = _mm256_set1_epi8(-128);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let wl = panel.add(b * LINES);
        let xb: [*const u8; T] = core::array::from_fn(|c| x.add(c * xs + b * Q8K_BYTES));
        let mut s1 = [_mm256_setzero_si256(); T];
        for j in 0..8 {
            let pair = _mm256_load_si256(wl.add(PAIR_LINE + j) as *const __m256i);
            if V {
                let mut raw = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let wv = _mm256_load_si256(wl.add(8 * j + g) as *const __m256i);
                    for c in 0..T {
                        raw[c] = _mm256_dpbusd_avx_epi32(raw[c], wv, bcast4(xb[c].add(Q8K_QS + 32 * j + 4 * g)));
                    }
                }
                let scale = _mm256_load_si256(wl.add(SCALE_LINE + j) as *const __m256i);
                for c in 0..T {
                    // scale * (sum(code * x) - 128 * sum(x)) over the sub-block
                    let off = _mm256_madd_epi16(pair, bcast4(xb[c].add(Q8K_BSUMS + 4 * j)));
                    s1[c] = _mm256_add_epi32(s1[c], _mm256_mullo_epi32(raw[c], scale));
                    s1[c] = _mm256_sub_epi32(s1[c], _mm256_slli_epi32::<7>(off));
                }
            } else {
                for g in 0..8 {
                    let v = _mm256_xor_si256(_mm256_load_si256(wl.add(8 * j + g) as *const __m256i), flip);
                    let a = _mm256_sign_epi8(v, v);
                    for c in 0..T {
                        let xv = _mm256_sign_epi8(bcast4(xb[c].add(Q8K_QS + 32 * j + 4 * g)), v);
                        s1[c] = _mm256_add_epi32(s1[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, xv), pair));
                    }
                }
            }
        }
        let dw = _mm256_load_ps(wl.add(D_LINE) as *const f32);
        for c in 0..T {
            let dx = _mm256_set1_ps(std::ptr::read_unaligned(xb[c] as *const f32));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[c]), _mm256_mul_ps(dw, dx), acc[c]);
        }
    }
    store_rows(&acc, out, os, nr);
}

q8k_steps!();

/// The entry point, with (`V`) or without AVX-VNNI.
fn panel_entry<const V: bool>(t: Tile<'_>) {
    let nb = t.blocks(QK_K, BLOCK_BYTES, Q8K_BYTES, "IQ4_XS panel");
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
        let t = WeightType::IQ4_XS;
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
