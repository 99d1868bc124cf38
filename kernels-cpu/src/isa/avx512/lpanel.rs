//! avx512 VNNI panel kernels for the legacy 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, IQ4_NL weights against Q8_0 / Q8_1 activations), for many tokens at once (see `PanelFn`).
//!
//! Each call repacks its weight rows once, 16 rows at a time, into a "panel": per block, eight
//! 64-byte lines, line `g` holding bytes `4g..4g+4` of each of the 16 rows (lane `r` = row
//! `r`), the quants made unsigned (nibbles as they are: Q4 0..15, Q5 0..31; Q8_0 `q + 128`),
//! then the 16 row scales as f32 and, for Q4_1/Q5_1, the 16 minimums. The activations are
//! used as they are stored: four consecutive quants of one token are one 32-bit broadcast, the
//! signed operand of `vpdpbusd`. So the micro-kernel, 16 rows x `TOKENS` tokens, does per block
//! and token eight `vpdpbusd` (one per 4-value group, 16 rows each, exact integer sums), then
//! one convert and two float operations: `acc += f32(sum) * (d_w * d_x)` over the 16 rows.
//! The offset of the unsigned codes comes back exactly in the integer domain: the sum starts at
//! `-offset * sum(x)` of the token's block (computed once per call and token), so it equals the
//! scalar specification's `sum((q - offset) * x)`. Q4_1/Q5_1 add `m * s` (Q8_1's `s`) per block.
//!
//! Rows, not tokens, are the vector lanes: the activations then need no transposing (only the
//! weights are repacked, once per call, and reused by every token), the broadcast folds into
//! `vpdpbusd`'s memory operand, and the results are already in the output's row order.
//! `TOKENS` = 8 measured faster than 12 (register pressure).
//!
//! Rows come out 16 per vector, which is the output layout (`out[c * os + r]`): one store per
//! token and panel, masked for a ragged last panel (padded with zero rows). The weight panel and
//! the per-token block data live in a thread-local scratch that grows once and is reused.
//! Installed only when AVX-512 F/BW/VL and VNNI (and the avx2 set) are detected (see
//! `supported`), which is what makes calling the `#[target_feature]` code sound.

// Micro-kernels index register arrays by token on purpose.
#![allow(clippy::needless_range_loop)]

use crate::isa::lpanels::{
    block_lines, run, with_scratch, Acts, Scratch, Steps, Weights, A8_0, A8_1, IQ4NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
};
use crate::isa::{PanelFn, Tile};
use crate::types::WeightType;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Tokens per micro-kernel: 2 * TOKENS vector registers hold the integer and float
/// accumulators, the rest the weight line, the scales and the minimums.
const TOKENS: usize = 8;

/// Rows per panel: one 512-bit vector of i32/f32 lanes.
const ROWS: usize = 16;

/// How far ahead of the block being packed each weight row is prefetched (bytes).
const PREFETCH: usize = 512;

/// Values per block (all the legacy types).
const QK: usize = 32;

/// VNNI for the products (the avx2 set, with FMA and F16C, comes with `available`).
fn supported() -> bool {
    super::vnni()
}

pub fn panel(t: WeightType) -> Option<PanelFn> {
    if !supported() {
        return None;
    }
    Some(match t {
        WeightType::Q4_0 => q4_0::panel,
        WeightType::Q4_1 => q4_1::panel,
        WeightType::Q5_0 => q5_0::panel,
        WeightType::Q5_1 => q5_1::panel,
        WeightType::Q8_0 => q8_0::panel,
        WeightType::IQ4_NL => iq4_nl::panel,
        _ => return None,
    })
}

/// One 64-byte line of the packed panel (aligned so the micro-kernel's loads are too).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    static SCRATCH: RefCell<Scratch<Line>> = const { RefCell::new(Scratch::new()) };
}

/// The 16x8 transpose of 32-bit groups: `vpermt2d` indices for three stages, each pairing
/// registers that differ in one bit of their index. Before stage `s`, bit `s` of a register's
/// index is a row bit; after it, bit `s` of the group index `g` (selected from both sources).
/// Input register `i` holds rows `2i` (lanes 0..8) and `2i + 1` (lanes 8..16), group `g` in
/// lane `g`; output register `g` holds group `g` of row `r` in lane `r`. Computed by following
/// the (row, group) label of every lane; within a register, labels are kept sorted, so that the
/// last stage leaves lane `r` = row `r`.
const TRANSPOSE: [[[u32; 16]; 8]; 3] = {
    // labels[reg][lane] = row * 8 + group
    let mut labels = [[0u32; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut l = 0;
        while l < 16 {
            labels[i][l] = ((2 * i + l / 8) * 8 + l % 8) as u32;
            l += 1;
        }
        i += 1;
    }
    let mut idx = [[[0u32; 16]; 8]; 3];
    let mut s = 0;
    while s < 3 {
        let mut next = [[0u32; 16]; 8];
        let mut j = 0;
        while j < 8 {
            let bit = (j >> s) & 1;
            let a = j & !(1 << s);
            let b = j | (1 << s);
            // Pick the labels of both sources whose group bit `s` is `bit`, in label order.
            let mut n = 0;
            let mut want = 0u32;
            while want < 128 {
                if ((want as usize % 8) >> s) & 1 == bit {
                    let mut l = 0;
                    while l < 32 {
                        let lab = if l < 16 { labels[a][l] } else { labels[b][l - 16] };
                        if lab == want {
                            idx[s][j][n] = l as u32;
                            next[j][n] = want;
                            n += 1;
                        }
                        l += 1;
                    }
                }
                want += 1;
            }
            assert!(n == 16, "transpose stage does not select 16 lanes");
            j += 1;
        }
        labels = next;
        s += 1;
    }
    // The result is the transpose: register g, lane r = (r, g).
    let mut g = 0;
    while g < 8 {
        let mut r = 0;
        while r < 16 {
            assert!(labels[g][r] == (r * 8 + g) as u32, "transpose network is wrong");
            r += 1;
        }
        g += 1;
    }
    idx
};

/// Whether the 16 row offsets of a panel with row stride `ws` fit a gather's i32 indices.
fn can_gather(ws: usize) -> bool {
    ws <= i32::MAX as usize / ROWS
}

/// Packs rows `0..nr` (`nr <= 16`, at `w + r * ws`, `nb` blocks each) into `nb` packed blocks
/// at `dst` (see the module comment); rows `nr..16` are zeros. `gather`: read the scales with
/// one gather per block (needs `16 * ws` to fit an i32, see `can_gather`), else row by row.
///
/// # Safety
/// The rows are readable; `dst` has room for `nb * block_lines::<W>()` lines; the CPU has the
/// kernel's features.
#[inline(always)]
unsafe fn pack_panel<W: Weights>(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line, gather: bool) {
    let lines = block_lines::<W>();
    let zero = _mm256_setzero_si256();
    let rows = if nr >= ROWS { u16::MAX } else { (1u16 << nr) - 1 };
    // The scales (and the minimums, in the same 32 bits) of the 16 rows by one gather, when
    // the row offsets fit its 32-bit indices (any real matrix); else one row at a time.
    let gather = gather && can_gather(ws);
    let offsets = _mm512_mullo_epi32(
        _mm512_set1_epi32(if gather { ws as i32 } else { 0 }),
        lanes(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
    );
    for b in 0..nb {
        let mut regs = [_mm512_setzero_si512(); 8];
        for i in 0..8 {
            let (r0, r1) = (2 * i, 2 * i + 1);
            let c0 = if r0 < nr { W::codes(w.add(r0 * ws + b * W::BYTES)) } else { zero };
            let c1 = if r1 < nr { W::codes(w.add(r1 * ws + b * W::BYTES)) } else { zero };
            // The weights usually come from DRAM (the mmap), in 16 interleaved row streams that
            // the hardware prefetchers follow poorly: ask for each row PREFETCH bytes ahead (a
            // hint: never faults, past the row's end too).
            if PREFETCH > 0 {
                for r in [r0, r1] {
                    if r < nr {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(r * ws + b * W::BYTES + PREFETCH) as *const i8);
                    }
                }
            }
            regs[i] = _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1);
        }
        let heads = if gather {
            // Masked-off rows are not read and come back as zeros.
            _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), rows, offsets, w.add(b * W::BYTES) as *const i32)
        } else {
            let mut h = [0u32; ROWS];
            for r in 0..nr {
                let (d, m) = W::scales(w.add(r * ws + b * W::BYTES));
                h[r] = d as u32 | (m as u32) << 16;
            }
            lanes(&h)
        };
        for s in 0..3 {
            let mut next = regs;
            for j in 0..8 {
                let a = regs[j & !(1 << s)];
                let c = regs[j | (1 << s)];
                let idx = _mm512_maskz_loadu_epi32(u16::MAX, TRANSPOSE[s][j].as_ptr() as *const i32);
                next[j] = _mm512_permutex2var_epi32(a, idx, c);
            }
            regs = next;
        }
        let out = dst.add(b * lines);
        for g in 0..8 {
            _mm512_store_si512(out.add(g) as *mut __m512i, regs[g]);
        }
        let dv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(heads));
        _mm512_store_ps(out.add(8) as *mut f32, dv);
        if W::HAS_MIN {
            let mv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(heads, 16)));
            _mm512_store_ps(out.add(9) as *mut f32, mv);
        }
    }
}

/// `vpermt2d` indices adding neighbours: `PAIRS[0]` picks lanes `4k, 4k + 1` (k = lane / 2,
/// lane parity the second), `PAIRS[1]` lanes `4k + 2, 4k + 3`; `PAIRS[2]` / `PAIRS[3]` lanes
/// `2k` / `2k + 1` (32 source lanes: the first register, then the second).
const PAIRS: [[u32; 16]; 4] = {
    let mut a = [[0u32; 16]; 4];
    let mut k = 0;
    while k < 16 {
        a[0][k] = (4 * (k / 2) + k % 2) as u32;
        a[1][k] = (4 * (k / 2) + k % 2 + 2) as u32;
        a[2][k] = (2 * k) as u32;
        a[3][k] = (2 * k + 1) as u32;
        k += 1;
    }
    a
};

/// 16 i32 or u32 lanes of a constant table.
///
/// # Safety
/// The CPU has avx512f (inlined into the kernels' features).
#[inline(always)]
unsafe fn lanes(a: &[u32; 16]) -> __m512i {
    _mm512_maskz_loadu_epi32(u16::MAX, a.as_ptr() as *const i32)
}

/// Fills the side planes for one token's `nb` activation blocks at `x` (`d` at `sd[b]`, the
/// offset term or `s` at `sc[b]`), 16 blocks per step: the scales (and Q8_1's `s`) by one
/// gather of each block's first 32 bits, the quant sums by `vpsadbw` (sums of `q + 128` over
/// 8 bytes) and an adding tree.
///
/// # Safety
/// `nb` blocks readable at `x`; `sd` and `sc` have room for `nb` entries; the CPU has the
/// kernel's features.
#[inline(always)]
unsafe fn prepare_token<W: Weights, A: Acts>(nb: usize, x: *const u8, sd: *mut f32, sc: *mut u32) {
    let step = _mm512_mullo_epi32(
        _mm512_set1_epi32(A::BYTES as i32),
        lanes(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
    );
    let flip = _mm512_set1_epi8(-128);
    let mut b = 0;
    while b < nb {
        let n = (nb - b).min(16);
        let mask = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
        let p = x.add(b * A::BYTES);
        // The masked-off lanes are not read (no fault), and come back as zeros.
        let head = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, step, p as *const i32);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
        _mm512_mask_storeu_ps(sd.add(b), mask, d);
        if W::HAS_MIN {
            let s = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16)));
            _mm512_mask_storeu_ps(sc.add(b) as *mut f32, mask, s);
        } else {
            // Per block pair: 8 partial sums (4 per block) of q + 128, as 32-bit lanes; four
            // blocks per register, then neighbours added twice over to one sum per block.
            let mut z = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                let mut half = [_mm256_setzero_si256(); 2];
                for h in 0..2 {
                    let k = 4 * j + 2 * h;
                    let q0 = _mm256_maskz_loadu_epi8(
                        if k < n { u32::MAX } else { 0 },
                        p.add(k * A::BYTES + A::QS) as *const i8,
                    );
                    let q1 = _mm256_maskz_loadu_epi8(
                        if k + 1 < n { u32::MAX } else { 0 },
                        p.add((k + 1) * A::BYTES + A::QS) as *const i8,
                    );
                    let q = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1), flip);
                    half[h] = _mm512_cvtepi64_epi32(_mm512_sad_epu8(q, _mm512_setzero_si512()));
                }
                z[j] = _mm512_inserti64x4(_mm512_castsi256_si512(half[0]), half[1], 1);
            }
            let (e, o) = (lanes(&PAIRS[0]), lanes(&PAIRS[1]));
            let u0 =
                _mm512_add_epi32(_mm512_permutex2var_epi32(z[0], e, z[1]), _mm512_permutex2var_epi32(z[0], o, z[1]));
            let u1 =
                _mm512_add_epi32(_mm512_permutex2var_epi32(z[2], e, z[3]), _mm512_permutex2var_epi32(z[2], o, z[3]));
            let (e, o) = (lanes(&PAIRS[2]), lanes(&PAIRS[3]));
            let sum = _mm512_add_epi32(_mm512_permutex2var_epi32(u0, e, u1), _mm512_permutex2var_epi32(u0, o, u1));
            // Missing blocks summed zeros (not 128s): masked off by the store.
            let sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(32 * 128));
            let term = _mm512_mullo_epi32(sum, _mm512_set1_epi32(-W::OFFSET));
            _mm512_mask_storeu_epi32(sc.add(b) as *mut i32, mask, term);
        }
        b += 16;
    }
}

/// 16 packed rows x `T` tokens over `nb` blocks: `out[c * os + r] = dot(row r, token c)` for
/// `r < nr`.
///
/// # Safety
/// `panel` holds `nb` packed blocks of `W`; tokens `c < T` hold `nb` blocks at `x + c * xs`
/// and their side data at `sd + c * nb`, `sc + c * nb`; `out + c * os + r` is writable for
/// `r < nr <= 16`;
/// the CPU has the kernel's features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<W: Weights, A: Acts, const T: usize>(
    nb: usize,
    panel: *const Line,
    x: *const u8,
    xs: usize,
    sd: *const f32,
    sc: *const u32,
    out: *mut f32,
    os: usize,
    nr: usize,
) {
    let lines = block_lines::<W>();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let wl = panel.add(b * lines);
        let xb = x.add(b * A::BYTES + A::QS);
        let mut sum = [_mm512_setzero_si512(); T];
        if W::OFFSET != 0 {
            for c in 0..T {
                sum[c] = _mm512_set1_epi32(*sc.add(c * nb + b) as i32);
            }
        }
        for g in 0..8 {
            let wv = _mm512_load_si512(wl.add(g) as *const __m512i);
            for c in 0..T {
                let xv = std::ptr::read_unaligned(xb.add(c * xs + 4 * g) as *const i32);
                sum[c] = _mm512_dpbusd_epi32(sum[c], wv, _mm512_set1_epi32(xv));
            }
        }
        let dw = _mm512_load_ps(wl.add(8) as *const f32);
        for c in 0..T {
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(*sd.add(c * nb + b)));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[c]), d, acc[c]);
        }
        if W::HAS_MIN {
            let mw = _mm512_load_ps(wl.add(9) as *const f32);
            for c in 0..T {
                acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32::from_bits(*sc.add(c * nb + b))), acc[c]);
            }
        }
    }
    let mask = if nr >= ROWS { u16::MAX } else { (1u16 << nr) - 1 };
    for c in 0..T {
        _mm512_mask_storeu_ps(out.add(c * os), mask, acc[c]);
    }
}

/// The kernel for one weight type and activation format (the driver is `lpanels::run`).
struct Kernel<W, A>(std::marker::PhantomData<(W, A)>);

impl<W: Weights, A: Acts> Steps for Kernel<W, A> {
    type Line = Line;
    const ROWS: usize = ROWS;
    const TOKENS: usize = TOKENS;
    const LINES: usize = block_lines::<W>();
    #[inline(always)]
    unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
        pack_panel::<W>(nb, w, ws, nr, dst, true)
    }
    #[inline(always)]
    unsafe fn prepare(nb: usize, x: *const u8, sd: *mut f32, sc: *mut u32) {
        prepare_token::<W, A>(nb, x, sd, sc)
    }
    #[inline(always)]
    unsafe fn micro(
        tc: usize,
        nb: usize,
        pl: *const Line,
        xc: *const u8,
        xs: usize,
        sd: *const f32,
        sc: *const u32,
        o: *mut f32,
        os: usize,
        n: usize,
    ) {
        macro_rules! by_tokens {
            ($($t:literal)*) => {
                match tc {
                    $($t => micro::<W, A, $t>(nb, pl, xc, xs, sd, sc, o, os, n),)*
                    _ => micro::<W, A, TOKENS>(nb, pl, xc, xs, sd, sc, o, os, n),
                }
            };
        }
        by_tokens!(1 2 3 4 5 6 7);
    }
}

macro_rules! panel_kernel {
    ($m:ident, $W:ident, $A:ident, $name:expr) => {
        mod $m {
            use super::*;

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn panel_tf(
                nb: usize,
                w: *const u8,
                ws: usize,
                nr: usize,
                x: *const u8,
                xs: usize,
                nc: usize,
                out: *mut f32,
                os: usize,
                lp: *mut Line,
                sp: *mut u32,
            ) {
                run::<Kernel<$W, $A>>(nb, w, ws, nr, x, xs, nc, out, os, lp, sp)
            }

            pub fn panel(t: Tile<'_>) {
                let nb = t.blocks(QK, $W::BYTES, $A::BYTES, concat!($name, " panel"));
                let Tile { w, w_stride, rows: nr, x, x_stride, tokens: nc, out, out_stride, .. } = t;
                if nr == 0 || nc == 0 {
                    return;
                }
                // SAFETY: installed only on CPUs with these features (`panel` checks
                // `supported`, and `for_isa` lowers the ISA to the CPU's); every row, token
                // and output the kernel touches was just checked to be inside the slices
                // (outputs `c * out_stride + r` for r < nr <= out_stride never overlap); the
                // scratch was grown to what `run` uses.
                with_scratch(
                    &SCRATCH,
                    nr.div_ceil(ROWS) * nb * block_lines::<$W>(),
                    2 * nc * nb,
                    Line([0; 64]),
                    |lp, sp| unsafe {
                        panel_tf(
                            nb,
                            w.as_ptr(),
                            w_stride,
                            nr,
                            x.as_ptr(),
                            x_stride,
                            nc,
                            out.as_mut_ptr(),
                            out_stride,
                            lp,
                            sp,
                        )
                    },
                )
            }
        }
    };
}

panel_kernel!(q4_0, Q4_0, A8_0, "Q4_0");
panel_kernel!(q4_1, Q4_1, A8_1, "Q4_1");
panel_kernel!(q5_0, Q5_0, A8_0, "Q5_0");
panel_kernel!(q5_1, Q5_1, A8_1, "Q5_1");
panel_kernel!(q8_0, Q8_0, A8_0, "Q8_0");
panel_kernel!(iq4_nl, IQ4NL, A8_0, "IQ4_NL");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::quantize_row;

    /// Deterministic values in [-1, 1) times `scale`, with a few 8x larger ones (splitmix64).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::types::q8_k::test_util::spiky_values(n, seed, scale)
    }

    /// Every legacy type, ragged row and token counts (around the 16-row panel and the token
    /// group), short and long rows, row and token strides longer than a row, weights of tiny
    /// and huge scale (and all-zero rows), against the scalar `vec_dot` per (row, token).
    #[test]
    fn panel_matches_scalar_vec_dot() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        use WeightType::*;
        // (rows, tokens, blocks); matmul calls with >= 16 tokens, but any count must work.
        let shapes: [(usize, usize, usize); 11] = [
            (1, 16, 1),
            (16, 16, 2),
            (7, 17, 3),
            (17, 23, 8),
            (33, 31, 5),
            (40, 50, 100),
            (8, 24, 64),
            (32, 16, 129),
            (23, 41, 37),
            (3, 1, 4),
            (18, 9, 2),
        ];
        for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL] {
            let at = t.vec_dot_type();
            let scalar = crate::isa::scalar::vec_dot(t).unwrap();
            let f = panel(t).unwrap();
            for (si, &(nr, nc, nb)) in shapes.iter().enumerate() {
                let n = nb * QK;
                let (wrb, xrb) = (t.row_bytes(n), at.row_bytes(n));
                // Strides longer than a row, the gaps filled with bytes that decode as a
                // plausible block: reading past a row changes the result.
                let (ws, xs) = (wrb + 22, xrb + 36);
                let mut w = vec![0x3cu8; ws * nr];
                for r in 0..nr {
                    let scale = match (r + si) % 5 {
                        0 => 1e-4,
                        1 => 3e3,
                        2 => 0.0,
                        _ => 1.0,
                    };
                    quantize_row(t, &values(n, 1 + r as u64 + 100 * si as u64, scale), &mut w[r * ws..r * ws + wrb]);
                }
                let mut x = vec![0x3cu8; xs * nc];
                for c in 0..nc {
                    let scale = if c % 7 == 3 { 50.0 } else { 1.0 };
                    quantize_row(
                        at,
                        &values(n, 5000 + c as u64 + 100 * si as u64, scale),
                        &mut x[c * xs..c * xs + xrb],
                    );
                }
                // An output stride above nr, the gaps poisoned: the kernel must not write them.
                let os = nr + 3;
                let mut out = vec![f32::NAN; os * nc];
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
                    for r in 0..nr {
                        let want = scalar(n, &w[r * ws..r * ws + wrb], &x[c * xs..c * xs + xrb]);
                        let got = out[c * os + r];
                        // Same quantized operands and exact integer block sums: only the float
                        // combination of the blocks differs (order, fused multiply-adds). Bound
                        // it by the sum of the block terms' magnitudes.
                        let mag = scalar_magnitude(t, n, &w[r * ws..r * ws + wrb], &x[c * xs..c * xs + xrb]);
                        let tol = 1e-5 * (nb as f32).sqrt() * mag + f32::MIN_POSITIVE;
                        assert!(
                            (got - want).abs() <= tol,
                            "{t:?} {nr}x{nc}x{nb} row {r} token {c}: panel {got} vs scalar {want} (tol {tol})"
                        );
                    }
                    for r in nr..os {
                        assert!(
                            out[c * os + r].is_nan(),
                            "{t:?} {nr}x{nc}x{nb}: wrote outside the rows at token {c} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// `sum over blocks of |d_w d_x sum(q_w q_x)| + |m s|`: the scale of the rounding error of any
    /// order of the per-block float operations (from the dequantized values).
    fn scalar_magnitude(t: WeightType, n: usize, w: &[u8], x: &[u8]) -> f32 {
        let at = t.vec_dot_type();
        let mut wf = vec![0f32; n];
        let mut xf = vec![0f32; n];
        crate::types::dequantize_row(t, w, &mut wf);
        crate::types::dequantize_row(at, x, &mut xf);
        wf.chunks(QK).zip(xf.chunks(QK)).map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p * q).abs()).sum::<f32>()).sum()
    }

    /// The two ways of reading the row scales while packing (one gather, or row by row for
    /// strides too long for its 32-bit offsets) give the same panel, ragged rows included.
    #[test]
    fn pack_gathered_and_row_by_row_agree() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn pack<W: Weights>(nb: usize, w: &[u8], ws: usize, nr: usize, gather: bool) -> Vec<[u8; 64]> {
            let mut dst = vec![Line([0xee; 64]); nb * block_lines::<W>()];
            pack_panel::<W>(nb, w.as_ptr(), ws, nr, dst.as_mut_ptr(), gather);
            dst.iter().map(|l| l.0).collect()
        }
        fn check<W: Weights>(t: WeightType) {
            let (nb, nr) = (5, 11);
            let n = nb * QK;
            let ws = t.row_bytes(n) + 6;
            let mut w = vec![0x5au8; ws * nr];
            for r in 0..nr {
                quantize_row(t, &values(n, 40 + r as u64, 1.0 + r as f32), &mut w[r * ws..r * ws + t.row_bytes(n)]);
            }
            // SAFETY: the CPU has the features (checked above); `nr` rows of `nb` blocks lie in `w`.
            let (a, b) = unsafe { (pack::<W>(nb, &w, ws, nr, true), pack::<W>(nb, &w, ws, nr, false)) };
            assert!(a == b, "{t:?}: gathered and row-by-row scales pack differently");
            // Scale lines: rows 0..nr nonzero, padding rows zero.
            let d = &a[8];
            assert!(
                d[..4 * nr].chunks(4).all(|c| c != [0; 4]) && d[4 * nr..].iter().all(|&v| v == 0),
                "{t:?}: scale line {d:?}"
            );
        }
        check::<Q4_0>(WeightType::Q4_0);
        check::<Q4_1>(WeightType::Q4_1);
        check::<Q5_0>(WeightType::Q5_0);
        check::<Q5_1>(WeightType::Q5_1);
        check::<Q8_0>(WeightType::Q8_0);
        check::<IQ4NL>(WeightType::IQ4_NL);
    }

    /// Calling again with other shapes reuses and grows the scratch without mixing up calls:
    /// a large call, then a small one, then the large one again gives the same numbers.
    #[test]
    fn scratch_reuse_is_consistent() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
        let t = WeightType::Q5_0;
        let at = t.vec_dot_type();
        let f = panel(t).unwrap();
        let run = |nr: usize, nc: usize, nb: usize| {
            let n = nb * QK;
            let (wrb, xrb) = (t.row_bytes(n), at.row_bytes(n));
            let mut w = vec![0u8; wrb * nr];
            for r in 0..nr {
                quantize_row(t, &values(n, 7 + r as u64, 1.0), &mut w[r * wrb..(r + 1) * wrb]);
            }
            let mut x = vec![0u8; xrb * nc];
            for c in 0..nc {
                quantize_row(at, &values(n, 900 + c as u64, 1.0), &mut x[c * xrb..(c + 1) * xrb]);
            }
            let mut out = vec![0f32; nr * nc];
            f(Tile {
                n,
                w: &w,
                w_stride: wrb,
                rows: nr,
                x: &x,
                x_stride: xrb,
                tokens: nc,
                out: &mut out,
                out_stride: nr,
            });
            out
        };
        let big = run(48, 40, 20);
        let small = run(16, 16, 3);
        assert_eq!(run(48, 40, 20), big);
        assert_eq!(run(16, 16, 3), small);
        assert!(big.iter().any(|v| *v != 0.0));
    }
}
