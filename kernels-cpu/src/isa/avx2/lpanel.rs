//! avx2 panel kernels for the legacy 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, and Q8_0
//! and IQ4_NL with AVX-VNNI), for many tokens at once (see `PanelFn`): the avx512 `lpanel` design on
//! 256-bit vectors.
//!
//! Each call repacks its weight rows once, 8 rows at a time, into a panel: per block, eight
//! 32-byte lines, line `g` holding values `4g..4g+4` of each of the 8 rows (lane `r` = row `r`)
//! as unsigned codes (nibbles as they are, Q8_0 `q + 128`), then the 8 row scales as f32 and,
//! for Q4_1/Q5_1, the 8 minimums. Four consecutive activation quants of one token are one
//! 32-bit broadcast. Per block and token, the micro-kernel (8 rows x 4 tokens) then does, with
//! AVX-VNNI, eight `vpdpbusd` (8 rows x 4 values each, exact) or, without, four `vpmaddubsw`
//! summed in 16 bits (codes <= 31: |sum| <= 4 * 2 * 31 * 128 < 2^15) then one `vpmaddwd`, twice;
//! then one convert and two float operations for the 8 rows. The offset of the unsigned codes
//! starts the integer sum as `-offset * sum(x)` of the token's block (exact), Q4_1/Q5_1 add
//! `m * s`. Q8_0 codes reach 255 (IQ4_NL's 241), too large for the 16-bit sums: without AVX-VNNI
//! IQ4_NL takes its codes back to signed values (`code ^ 0x80`, per line, shared by the tokens)
//! and multiplies `vpmaddubsw(|v|, sign(x, v))` (pair sums at most 2 * 127 * 127 < 2^15), one
//! `vpmaddwd` per line, no offset to correct; Q8_0 keeps the tile kernel.
//!
//! Rows are the vector lanes, so the activations need no transposing and the results come out
//! in the output's row order. Measured (`examples/bench`, LLAMAFILE_ISA=avx2, matmul of 512
//! tokens on 4096x14336, 2 threads, GFLOP/s), against the tile kernels: with AVX-VNNI Q4_0
//! 239-251 -> 571-583, Q4_1 180-185 -> 567-581, Q5_0 185-204 -> 527-576, Q8_0 247-249 ->
//! 527-583; without (plain AVX2) Q4_0 195 -> 455-473, Q4_1 169-180 -> 538-557, Q5_0 471-476,
//! Q5_1 543-560. Installed only when AVX2/FMA/F16C are detected (and AVX-VNNI for
//! the `vnni` variants), which is what makes calling the `#[target_feature]` code sound.

// Micro-kernels index register arrays by token on purpose.
#![allow(clippy::needless_range_loop)]

use super::legacy::{h2f, ld256};
use crate::isa::lpanels::{
    block_lines, run, with_scratch, Acts, Scratch, Steps, Weights, A8_0, A8_1, IQ4NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
};
use crate::isa::{PanelFn, Tile};
use crate::types::WeightType;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Tokens per micro-kernel (2 x 4 accumulators, the weight line, the scales, temporaries).
const TOKENS: usize = 4;
/// Rows per panel: one 256-bit vector of i32/f32 lanes.
const ROWS: usize = 8;
/// Values per block.
const QK: usize = 32;
/// How far ahead of the block being packed each weight row is prefetched (bytes).
const PREFETCH: usize = 512;

pub fn panel(t: WeightType) -> Option<PanelFn> {
    panel_with(t, is_x86_feature_detected!("avxvnni"))
}

/// The panel kernels with or without AVX-VNNI (`vnni` only where the CPU has it).
pub(super) fn panel_with(t: WeightType, vnni: bool) -> Option<PanelFn> {
    if vnni && !is_x86_feature_detected!("avxvnni") {
        return None;
    }
    Some(match t {
        WeightType::Q4_0 if vnni => q4_0::panel::<true>,
        WeightType::Q4_1 if vnni => q4_1::panel::<true>,
        WeightType::Q5_0 if vnni => q5_0::panel::<true>,
        WeightType::Q5_1 if vnni => q5_1::panel::<true>,
        WeightType::Q8_0 if vnni => q8_0::panel::<true>,
        WeightType::IQ4_NL if vnni => iq4_nl::panel::<true>,
        WeightType::Q4_0 => q4_0::panel::<false>,
        WeightType::Q4_1 => q4_1::panel::<false>,
        WeightType::Q5_0 => q5_0::panel::<false>,
        WeightType::Q5_1 => q5_1::panel::<false>,
        WeightType::IQ4_NL => iq4_nl::panel::<false>,
        _ => return None,
    })
}

/// One 32-byte line of a packed panel.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Line(pub(super) [u8; 32]);

thread_local! {
    static SCRATCH: RefCell<Scratch<Line>> = const { RefCell::new(Scratch::new()) };
}

/// Packs rows `0..nr` (`nr <= 8`) into `nb` packed blocks at `dst`; rows `nr..8` are zeros.
///
/// # Safety
/// The rows are readable; `dst` has room for `nb * block_lines::<W>()` lines; AVX2/FMA/F16C.
#[inline(always)]
unsafe fn pack_panel<W: Weights>(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
    let lines = block_lines::<W>();
    for b in 0..nb {
        let mut r = [_mm256_setzero_si256(); 8];
        let mut d = [0f32; 8];
        let mut m = [0f32; 8];
        for i in 0..nr {
            let p = w.add(i * ws + b * W::BYTES);
            // 8 interleaved row streams from the mmap: ask for each PREFETCH ahead (a hint).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            r[i] = W::codes(p);
            d[i] = h2f(p);
            if W::HAS_MIN {
                m[i] = h2f(p.add(2));
            }
        }
        let out = dst.add(b * lines);
        transpose8(&r, out);
        _mm256_store_ps(out.add(8) as *mut f32, _mm256_loadu_ps(d.as_ptr()));
        if W::HAS_MIN {
            _mm256_store_ps(out.add(9) as *mut f32, _mm256_loadu_ps(m.as_ptr()));
        }
    }
}

/// One token's side data: `d` of each block at `sd[b]`, and `-offset * sum(q)` (i32) or Q8_1's
/// `s` (f32) at `sc[b]`.
///
/// # Safety
/// `nb` blocks readable at `x`; `sd`, `sc` have room for `nb` entries; AVX2.
#[inline(always)]
unsafe fn prepare_token<W: Weights, A: Acts>(nb: usize, x: *const u8, sd: *mut f32, sc: *mut u32) {
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    for b in 0..nb {
        let p = x.add(b * A::BYTES);
        *sd.add(b) = h2f(p);
        *sc.add(b) = if W::HAS_MIN {
            h2f(p.add(2)).to_bits()
        } else {
            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, ld256(p.add(A::QS))), ones16);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            (_mm_cvtsi128_si32(s).wrapping_mul(-W::OFFSET)) as u32
        };
    }
}

/// The 8x8 transpose of 32-bit groups: `r[i]` = row `i`; stores line `g` (group `g` of every
/// row, lane `i` = row `i`) at `dst + g`.
///
/// # Safety
/// `dst` has room for 8 aligned lines; AVX2.
#[inline(always)]
pub(super) unsafe fn transpose8(r: &[__m256i; 8], dst: *mut Line) {
    let t: [__m256i; 8] = core::array::from_fn(|k| {
        let (a, c) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
        if k % 2 == 0 {
            _mm256_unpacklo_epi32(a, c)
        } else {
            _mm256_unpackhi_epi32(a, c)
        }
    });
    // u[4h + j]: rows 4h..4h+4, group j (lanes 0..4) and group j + 4 (lanes 4..8)
    let u: [__m256i; 8] = core::array::from_fn(|k| {
        let (h, j) = (k / 4, k % 4);
        let (a, c) = (t[4 * h + j / 2], t[4 * h + 2 + j / 2]);
        if j % 2 == 0 {
            _mm256_unpacklo_epi64(a, c)
        } else {
            _mm256_unpackhi_epi64(a, c)
        }
    });
    for j in 0..4 {
        _mm256_store_si256(dst.add(j) as *mut __m256i, _mm256_permute2x128_si256::<0x20>(u[j], u[4 + j]));
        _mm256_store_si256(dst.add(j + 4) as *mut __m256i, _mm256_permute2x128_si256::<0x31>(u[j], u[4 + j]));
    }
}

/// The first `nr` (of 8) row results of each token's accumulator to `out[c * os + r]`.
///
/// # Safety
/// Those outputs are writable; AVX.
#[inline(always)]
pub(super) unsafe fn store_rows<const T: usize>(acc: &[__m256; T], out: *mut f32, os: usize, nr: usize) {
    for c in 0..T {
        if nr >= ROWS {
            _mm256_storeu_ps(out.add(c * os), acc[c]);
        } else {
            let mut tmp = [0f32; ROWS];
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc[c]);
            for r in 0..nr {
                *out.add(c * os + r) = tmp[r];
            }
        }
    }
}

/// The four bytes at `p` in every 32-bit lane (a function, not a closure: closures do not
/// inherit the `#[target_feature]`s of the code they are inlined into).
#[inline(always)]
pub(super) unsafe fn bcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// 8 packed rows x `T` tokens over `nb` blocks: `out[c * os + r]` for `r < nr`.
///
/// # Safety
/// `panel` holds `nb` packed blocks of `W`; tokens `c < T` hold `nb` blocks at `x + c * xs`
/// and side data at `sd + c * nb`, `sc + c * nb`; the outputs are writable; AVX2/FMA/F16C (and
/// AVX-VNNI when `V`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<W: Weights, A: Acts, const T: usize, const V: bool>(
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
    let ones16 = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let wl = panel.add(b * lines);
        let xb = x.add(b * A::BYTES + A::QS);
        let mut sum = [_mm256_setzero_si256(); T];
        // Without VNNI, codes above 127 are multiplied as signed values (see the module comment).
        let signed = !V && W::OFFSET == 128;
        if W::OFFSET != 0 && !signed {
            for c in 0..T {
                sum[c] = _mm256_set1_epi32(*sc.add(c * nb + b) as i32);
            }
        }
        if V {
            for g in 0..8 {
                let wv = _mm256_load_si256(wl.add(g) as *const __m256i);
                for c in 0..T {
                    sum[c] = _mm256_dpbusd_avx_epi32(sum[c], wv, bcast4(xb.add(c * xs + 4 * g)));
                }
            }
        } else if signed {
            let flip = _mm256_set1_epi8(-128);
            for g in 0..8 {
                let v = _mm256_xor_si256(_mm256_load_si256(wl.add(g) as *const __m256i), flip);
                let a = _mm256_sign_epi8(v, v);
                for c in 0..T {
                    let xv = _mm256_sign_epi8(bcast4(xb.add(c * xs + 4 * g)), v);
                    sum[c] = _mm256_add_epi32(sum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, xv), ones16));
                }
            }
        } else {
            for half in 0..2 {
                let mut p16 = [_mm256_setzero_si256(); T];
                for g in 4 * half..4 * half + 4 {
                    let wv = _mm256_load_si256(wl.add(g) as *const __m256i);
                    for c in 0..T {
                        p16[c] = _mm256_add_epi16(p16[c], _mm256_maddubs_epi16(wv, bcast4(xb.add(c * xs + 4 * g))));
                    }
                }
                for c in 0..T {
                    sum[c] = _mm256_add_epi32(sum[c], _mm256_madd_epi16(p16[c], ones16));
                }
            }
        }
        let dw = _mm256_load_ps(wl.add(8) as *const f32);
        for c in 0..T {
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(*sd.add(c * nb + b)));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[c]), d, acc[c]);
        }
        if W::HAS_MIN {
            let mw = _mm256_load_ps(wl.add(9) as *const f32);
            for c in 0..T {
                acc[c] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f32::from_bits(*sc.add(c * nb + b))), acc[c]);
            }
        }
    }
    store_rows(&acc, out, os, nr);
}

/// The kernel for one weight type and activation format, with (`V`) or without AVX-VNNI (the
/// driver is `lpanels::run`).
struct Kernel<W, A, const V: bool>(std::marker::PhantomData<(W, A)>);

impl<W: Weights, A: Acts, const V: bool> Steps for Kernel<W, A, V> {
    type Line = Line;
    const ROWS: usize = ROWS;
    const TOKENS: usize = TOKENS;
    const LINES: usize = block_lines::<W>();
    #[inline(always)]
    unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
        pack_panel::<W>(nb, w, ws, nr, dst)
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
        match tc {
            1 => micro::<W, A, 1, V>(nb, pl, xc, xs, sd, sc, o, os, n),
            2 => micro::<W, A, 2, V>(nb, pl, xc, xs, sd, sc, o, os, n),
            3 => micro::<W, A, 3, V>(nb, pl, xc, xs, sd, sc, o, os, n),
            _ => micro::<W, A, TOKENS, V>(nb, pl, xc, xs, sd, sc, o, os, n),
        }
    }
}

/// Runs panel kernel `K` over a tile of `nb` blocks per row: what every avx2 panel shares (the
/// per-thread scratch and the `lpanels::run` driver compiled for AVX2/FMA/F16C, and AVX-VNNI
/// for `V`).
///
/// # Safety
/// AVX2/FMA/F16C were detected, and AVX-VNNI for `V`; `nb` is what `Tile::blocks` returned for
/// this tile and `K`'s block sizes, so every row, token and output touched is inside the slices
/// (outputs `c * out_stride + r`, r < nr <= out_stride, never overlap).
pub(super) unsafe fn run_tile<K: Steps<Line = Line>, const V: bool>(t: Tile<'_>, nb: usize) {
    let Tile { w, w_stride, rows: nr, x, x_stride, tokens: nc, out, out_stride, .. } = t;
    if nr == 0 || nc == 0 {
        return;
    }
    // SAFETY: the caller's promises; the scratch is grown to what `run` uses.
    with_scratch(&SCRATCH, nr.div_ceil(ROWS) * nb * K::LINES, 2 * nc * nb, Line([0; 32]), |lp, sp| unsafe {
        let tf = if V { run_vnni::<K> } else { run_plain::<K> };
        tf(nb, w.as_ptr(), w_stride, nr, x.as_ptr(), x_stride, nc, out.as_mut_ptr(), out_stride, lp, sp)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_plain<K: Steps<Line = Line>>(
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
    run::<K>(nb, w, ws, nr, x, xs, nc, out, os, lp, sp)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_vnni<K: Steps<Line = Line>>(
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
    run::<K>(nb, w, ws, nr, x, xs, nc, out, os, lp, sp)
}

/// The `Steps` of a panel kernel over Q8_K activations (no per-token side data: the Q8_K blocks
/// carry it): `struct Kernel<const V: bool>` for a module with `pack`, `micro::<T, V>`, `ROWS`,
/// `TOKENS` and `LINES` (the Q4_K and IQ4_XS panels).
macro_rules! q8k_steps {
    () => {
        struct Kernel<const V: bool>;

        impl<const V: bool> Steps for Kernel<V> {
            type Line = Line;
            const ROWS: usize = ROWS;
            const TOKENS: usize = TOKENS;
            const LINES: usize = LINES;
            #[inline(always)]
            unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Line) {
                pack(nb, w, ws, nr, dst)
            }
            #[inline(always)]
            unsafe fn prepare(_nb: usize, _x: *const u8, _sd: *mut f32, _sc: *mut u32) {}
            #[inline(always)]
            unsafe fn micro(
                tc: usize,
                nb: usize,
                pl: *const Line,
                xc: *const u8,
                xs: usize,
                _sd: *const f32,
                _sc: *const u32,
                o: *mut f32,
                os: usize,
                n: usize,
            ) {
                match tc {
                    1 => micro::<1, V>(nb, pl, xc, xs, o, os, n),
                    2 => micro::<2, V>(nb, pl, xc, xs, o, os, n),
                    3 => micro::<3, V>(nb, pl, xc, xs, o, os, n),
                    _ => micro::<TOKENS, V>(nb, pl, xc, xs, o, os, n),
                }
            }
        }
    };
}
pub(super) use q8k_steps;

macro_rules! panel_kernel {
    ($m:ident, $W:ident, $A:ident, $name:expr) => {
        mod $m {
            use super::*;

            /// The entry point, with (`V`) or without AVX-VNNI (then the nibble types only:
            /// see the module text).
            pub fn panel<const V: bool>(t: Tile<'_>) {
                assert!(V || $W::OFFSET < 32 || $W::OFFSET == 128, "16-bit sums need codes below 32 or signed ones");
                let nb = t.blocks(QK, $W::BYTES, $A::BYTES, concat!($name, " panel"));
                // SAFETY: installed only when AVX2/FMA/F16C were detected (and AVX-VNNI for
                // `V`, see `panel_with`); `nb` is from `Tile::blocks`.
                unsafe { run_tile::<Kernel<$W, $A, V>, V>(t, nb) }
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
    use crate::types::q8_k::test_util::check_many_tokens;

    /// Every legacy type with and without AVX-VNNI (where the CPU has it), ragged row and
    /// token counts around the 8-row panel and the 4-token group, strided rows and tokens,
    /// against the scalar `vec_dot` per (row, token).
    #[test]
    fn panel_matches_scalar_vec_dot() {
        if !super::super::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        use WeightType::*;
        let shapes: [(usize, usize, usize); 7] =
            [(1, 8, 1), (8, 8, 2), (7, 9, 3), (17, 13, 8), (9, 3, 37), (24, 16, 64), (3, 1, 4)];
        for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL] {
            for vnni in [false, true] {
                let Some(f) = panel_with(t, vnni) else { continue };
                for (si, &(nr, nc, nb)) in shapes.iter().enumerate() {
                    let n = nb * QK;
                    let tol = |want: f32| 1e-4 * (n as f32).sqrt() * want.abs().max(1.0);
                    check_many_tokens(&format!("{t:?} vnni {vnni}"), t, f, n, nr, nc, (34, 36), 10 * si as u64, tol);
                }
            }
        }
    }
}
