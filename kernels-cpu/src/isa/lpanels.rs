//! What the legacy-type panel kernels of every ISA share (`avx512/lpanel.rs`, `avx2/lpanel.rs`):
//! the activation block layouts, the per-thread scratch, and the driver that packs the weight
//! panels, prepares each token's side data, and runs the micro-kernel over every (token group,
//! panel) pair. The ISA-specific steps come in through `Steps`.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::thread::LocalKey;

/// A legacy weight type as the panel kernels pack it: 32 unsigned codes per block, a scale
/// and (Q4_1/Q5_1) a minimum. AVX2 intrinsics only, inlined into both ISAs' entry points.
pub(crate) trait Weights {
    /// Bytes per block.
    const BYTES: usize;
    /// What the unsigned codes hold above the signed quants (0 for the types with a minimum).
    const OFFSET: i32;
    /// Whether blocks carry a minimum (`value = d * q + m`), against Q8_1 activations.
    const HAS_MIN: bool;
    /// The block's 32 unsigned codes in value order.
    ///
    /// # Safety
    /// One block readable at `p`; the CPU has AVX2.
    unsafe fn codes(p: *const u8) -> __m256i;
    /// The scale and (for types with one) the minimum, as f16 bits.
    ///
    /// # Safety
    /// As `codes`.
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (u16, u16) {
        (half(p), if Self::HAS_MIN { half(p.add(2)) } else { 0 })
    }
}

/// The f16 at `p` (little-endian, any alignment).
///
/// # Safety
/// Two bytes readable at `p`.
#[inline(always)]
pub(crate) unsafe fn half(p: *const u8) -> u16 {
    u16::from_le_bytes(std::ptr::read_unaligned(p as *const [u8; 2]))
}

/// 16 nibble bytes at `p` as 32 codes: the low nibbles (values 0..16), then the high ones.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // a masked load (a plain `vmovdqu`): `_mm_loadu_si128` keeps a copy through the stack in
    // the `ci` profile (debug assertions)
    let v = _mm_maskload_epi32(p as *const i32, _mm_set1_epi32(-1));
    let m = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
}

/// 0x10 where bit `j` of the little-endian u32 at `p` is set (Q5's fifth bits).
#[inline(always)]
unsafe fn fifth(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes(std::ptr::read_unaligned(p as *const [u8; 4]));
    let rep = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
    );
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(rep, sel), sel), _mm256_set1_epi8(0x10))
}

macro_rules! nibble_weights {
    ($T:ident, $bytes:expr, $offset:expr, $min:expr, $qh:expr, $qs:expr) => {
        pub(crate) struct $T;
        impl Weights for $T {
            const BYTES: usize = $bytes;
            const OFFSET: i32 = $offset;
            const HAS_MIN: bool = $min;
            #[inline(always)]
            unsafe fn codes(p: *const u8) -> __m256i {
                let c = nibbles(p.add($qs));
                match {
                    let o: Option<usize> = $qh;
                    o
                } {
                    Some(qh) => _mm256_or_si256(c, fifth(p.add(qh))),
                    None => c,
                }
            }
        }
    };
}

// (bytes, offset, minimum, fifth bits at, nibbles at)
nibble_weights!(Q4_0, 18, 8, false, None, 2);
nibble_weights!(Q4_1, 20, 0, true, None, 4);
nibble_weights!(Q5_0, 22, 16, false, Some(2), 6);
nibble_weights!(Q5_1, 24, 0, true, Some(4), 8);

pub(crate) struct Q8_0;
impl Weights for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: i32 = 128;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // +128 as a flip of the sign bit
        let q = _mm256_maskload_epi32(p.add(2) as *const i32, _mm256_set1_epi32(-1));
        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
    }
}

/// IQ4_NL: Q4_0's layout, the nibbles index the codebook; its codes are the codebook values
/// + 128 (one `vpshufb`), reaching 241 like Q8_0's.
pub(crate) struct IQ4NL;
impl Weights for IQ4NL {
    const BYTES: usize = 18;
    const OFFSET: i32 = 128;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        let t = _mm_maskload_epi32(crate::types::iq4_nl::UNSIGNED.as_ptr() as *const i32, _mm_set1_epi32(-1));
        _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles(p.add(2)))
    }
}

/// Lines per packed block: 8 of codes, the scales, the minimums.
pub(crate) const fn block_lines<W: Weights>() -> usize {
    if W::HAS_MIN {
        10
    } else {
        9
    }
}

/// The activation formats: Q8_0 (`d`, 32 quants) and Q8_1 (`d`, `s`, 32 quants).
pub(crate) trait Acts {
    const BYTES: usize;
    /// Where the quants start in a block.
    const QS: usize;
}
pub(crate) struct A8_0;
impl Acts for A8_0 {
    const BYTES: usize = 34;
    const QS: usize = 2;
}
pub(crate) struct A8_1;
impl Acts for A8_1 {
    const BYTES: usize = 36;
    const QS: usize = 4;
}

/// The scratch of one thread: the packed weight panels and the per-token block data ("side":
/// two planes of `nc * nb` words, token `c` block `b` at `c * nb + b`: the activation scales
/// `d` as f32, then either `-offset * sum(q)` as i32 (weights with an offset) or Q8_1's `s`
/// as f32).
pub(crate) struct Scratch<L> {
    lines: Vec<L>,
    side: Vec<u32>,
}
impl<L> Scratch<L> {
    pub(crate) const fn new() -> Scratch<L> {
        Scratch { lines: Vec::new(), side: Vec::new() }
    }
}

/// Grows the thread's scratch `key` to `lines` packed lines (new ones `zero`) and `sides` side
/// entries (once: later calls of the same or smaller size reuse it) and hands its buffers to
/// `f`. Called outside the `#[target_feature]` code: a closure does not inherit its caller's
/// features, so the kernels must not run inside one.
pub(crate) fn with_scratch<L: Copy + 'static, R>(
    key: &'static LocalKey<RefCell<Scratch<L>>>,
    lines: usize,
    sides: usize,
    zero: L,
    f: impl FnOnce(*mut L, *mut u32) -> R,
) -> R {
    key.with(|s| {
        let mut s = s.borrow_mut();
        let s = &mut *s;
        if s.lines.len() < lines {
            s.lines.resize(lines, zero);
        }
        if s.side.len() < sides {
            s.side.resize(sides, 0);
        }
        f(s.lines.as_mut_ptr(), s.side.as_mut_ptr())
    })
}

/// One ISA's panel kernel for one weight type and activation format.
pub(crate) trait Steps {
    /// One packed line.
    type Line;
    /// Rows per panel (the lanes of a vector) and tokens per micro-kernel call.
    const ROWS: usize;
    const TOKENS: usize;
    /// Packed lines per block of a panel.
    const LINES: usize;
    /// Packs rows `0..nr` (`nr <= ROWS`, at `w + r * ws`) into `nb` packed blocks at `dst`.
    ///
    /// # Safety
    /// The rows are readable, `dst` has room for `nb * LINES` lines; the CPU has the features.
    unsafe fn pack(nb: usize, w: *const u8, ws: usize, nr: usize, dst: *mut Self::Line);
    /// One token's side data (`d` at `sd[b]`, the offset term or `s` at `sc[b]`).
    ///
    /// # Safety
    /// `nb` blocks readable at `x`, room for `nb` entries at `sd` and `sc`; the CPU has the
    /// features.
    unsafe fn prepare(nb: usize, x: *const u8, sd: *mut f32, sc: *mut u32);
    /// `tc <= TOKENS` tokens (at `x + c * xs`, side data at `sd + c * nb`, `sc + c * nb`)
    /// against one packed panel: `out[c * os + r]` for `r < nr`.
    ///
    /// # Safety
    /// As the arguments say; the CPU has the features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro(
        tc: usize,
        nb: usize,
        panel: *const Self::Line,
        x: *const u8,
        xs: usize,
        sd: *const f32,
        sc: *const u32,
        out: *mut f32,
        os: usize,
        nr: usize,
    );
}

/// The whole call: pack the rows, prepare the tokens, then every (token group, panel) pair.
///
/// # Safety
/// Rows `r < nr` hold `nb` blocks at `w + r * ws`, tokens `c < nc` hold `nb` blocks at
/// `x + c * xs`, `out + c * os + r` is writable for those; `lp` has room for
/// `nr.div_ceil(S::ROWS) * nb * S::LINES` lines and `sp` for `2 * nc * nb` words; the CPU has
/// the kernel's features (this is inlined into its `#[target_feature]` entry point).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run<S: Steps>(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    x: *const u8,
    xs: usize,
    nc: usize,
    out: *mut f32,
    os: usize,
    lp: *mut S::Line,
    sp: *mut u32,
) {
    let panels = nr.div_ceil(S::ROWS);
    for p in 0..panels {
        let r0 = p * S::ROWS;
        S::pack(nb, w.add(r0 * ws), ws, (nr - r0).min(S::ROWS), lp.add(p * nb * S::LINES));
    }
    for c in 0..nc {
        S::prepare(nb, x.add(c * xs), sp.add(c * nb) as *mut f32, sp.add((nc + c) * nb));
    }
    let mut c0 = 0;
    while c0 < nc {
        let tc = (nc - c0).min(S::TOKENS);
        let (xc, oc) = (x.add(c0 * xs), out.add(c0 * os));
        let (sd, sc) = (sp.add(c0 * nb) as *const f32, sp.add((nc + c0) * nb) as *const u32);
        for p in 0..panels {
            let r0 = p * S::ROWS;
            S::micro(tc, nb, lp.add(p * nb * S::LINES), xc, xs, sd, sc, oc.add(r0), os, (nr - r0).min(S::ROWS));
        }
        c0 += tc;
    }
}
