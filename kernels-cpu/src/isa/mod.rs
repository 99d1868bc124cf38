//! Instruction sets. One module per ISA, each exposing the same lookup functions; the table is
//! chosen once at run time (`is_x86_feature_detected!`), and every kernel an ISA lacks falls back
//! to the next lower ISA and finally to `scalar` (the specification).
//!
//! `LLAMAFILE_ISA=scalar|avx2|avx512` forces a lower set (never a higher one than the CPU has),
//! so tests can cover every module on one machine.

use crate::types::WeightType;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
mod lpanels;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod tiles;

/// Dot product of one weight row with one activation row, both `n` elements long.
/// `w` holds `n / block_size` blocks of the weight type; `x` holds `n` elements in the weight
/// type's `vec_dot_type` (e.g. Q8_K blocks for Q4_K weights, f32 for F32 weights).
pub type VecDotFn = fn(n: usize, w: &[u8], x: &[u8]) -> f32;

/// The arguments of a many-token kernel (`GemmTileFn`, `PanelFn`): `rows` weight rows (row `r`
/// at `w[r * w_stride..]`) against `tokens` activation rows (token `c` at `x[c * x_stride..]`),
/// each `n` elements long, `w` in the weight type and `x` in its `vec_dot_type`. The kernel
/// writes `out[c * out_stride + r]` for every `r < rows`, `c < tokens`, and nothing else.
pub struct Tile<'a> {
    pub n: usize,
    pub w: &'a [u8],
    pub w_stride: usize,
    pub rows: usize,
    pub x: &'a [u8],
    pub x_stride: usize,
    pub tokens: usize,
    pub out: &'a mut [f32],
    pub out_stride: usize,
}

impl Tile<'_> {
    /// Whether every row, token and output the tile names lies inside its slices, with weight
    /// rows of `w_bytes` and activation rows of `x_bytes` (and, for several tokens, no two
    /// tokens' outputs overlapping). The check the kernels that read through raw pointers make
    /// before they start; an empty tile fits.
    pub fn fits(&self, w_bytes: usize, x_bytes: usize) -> bool {
        let (nr, nc) = (self.rows, self.tokens);
        // `len` holds `count` items `stride` apart, the last `last` long (no overflow: sizes
        // that wrap around would pass a wrapping check and let the kernels read anywhere)
        let holds = |len: usize, count: usize, stride: usize, last: usize| {
            (count - 1).checked_mul(stride).and_then(|v| v.checked_add(last)).is_some_and(|need| len >= need)
        };
        nr == 0
            || nc == 0
            || ((nc == 1 || nr <= self.out_stride)
                && holds(self.w.len(), nr, self.w_stride, w_bytes)
                && holds(self.x.len(), nc, self.x_stride, x_bytes)
                && holds(self.out.len(), nc, self.out_stride, nr))
    }

    /// Blocks of `block` values per row, after checking that `n` is a whole number of them and
    /// that the tile `fits` rows of such blocks (`w_block` weight, `x_block` activation bytes
    /// each); a caller's bug panics with a message naming `what` (e.g. "Q4_K panel").
    pub fn blocks(&self, block: usize, w_block: usize, x_block: usize, what: &str) -> usize {
        let nb = self.n / block;
        let bytes = |b: usize| nb.saturating_mul(b);
        assert!(
            self.n.is_multiple_of(block) && self.fits(bytes(w_block), bytes(x_block)),
            "{what}: {} rows x {} tokens of {} values do not fit their buffers",
            self.rows,
            self.tokens,
            self.n
        );
        nb
    }
}

/// A tile of dot products (see `Tile`). Lets an ISA reuse each loaded weight block for several
/// tokens. `rows`/`tokens` are at most the sizes the ISA reports in `TypeKernels::gemm`.
pub type GemmTileFn = fn(Tile<'_>);

/// Several weight rows against one token: `out[r] = dot(W[r], x)` for `r < nr`, row `r` at
/// `w[r * w_stride..]`, each `n` elements; `x` in the weight type's `vec_dot_type`. Lets an
/// ISA unpack the activations once for all the rows (the one-token case of `matmul`).
pub type GemvFn = fn(n: usize, w: &[u8], w_stride: usize, nr: usize, x: &[u8], out: &mut [f32]);

/// A whole block of a matrix product: a `Tile` of any size. For kernels that repack a panel of
/// weights (and the tokens) once into a form an integer GEMM micro-kernel streams best, which
/// pays only when it is reused over many tokens: `matmul` calls it for token chunks of at least
/// `PANEL_MIN_TOKENS` and keeps the tile kernel for fewer.
pub type PanelFn = GemmTileFn;

/// Quantize `src.len()` f32 values (a multiple of the block size) into `dst` in this format.
pub type QuantizeFn = fn(src: &[f32], dst: &mut [u8]);

/// How far ahead of the current weight block the one-token kernels prefetch (bytes). The
/// hardware prefetchers stop at 4 KiB pages, and mmapped weights sit in 4 KiB pages: without
/// this, every page boundary of the stream is a stall. 8 KiB ahead is a little faster than 4 KiB
/// for the K-quants (`examples/bench`, one-token matvec; figures in docs/benchmarks.md).
pub(crate) const PREFETCH_AHEAD: usize = 8192;

/// Prefetch every cache line of the block `PREFETCH_AHEAD` bytes after `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(b: &T) {
    let p = (b as *const T as *const i8).wrapping_add(PREFETCH_AHEAD);
    let mut o = 0;
    while o < core::mem::size_of::<T>() + 63 {
        // SAFETY: a prefetch is only a hint: any address is allowed, none is dereferenced
        // (wrapping_add: no overflow UB either).
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(o)) }
        o += 64;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
    /// The best set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                return Isa::Avx512;
            }
            if avx2::available() {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
    /// `detect()`, lowered by `LLAMAFILE_ISA` if set.
    pub fn from_env() -> Isa {
        let best = Isa::detect();
        match std::env::var("LLAMAFILE_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => best.min(Isa::Avx2),
            Some("avx512") => best.min(Isa::Avx512),
            _ => best,
        }
    }
    /// Every set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| *i <= best).collect()
    }
}

/// The kernels for one type, resolved with fallbacks.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    pub vec_dot: VecDotFn,
    /// Optional tiled kernel with the tile shape (rows, cols) it handles at most.
    pub gemm: Option<(GemmTileFn, usize, usize)>,
    /// Quantizer into this type (used for activations in the `vec_dot_type`).
    pub quantize: Option<QuantizeFn>,
    /// Optional many-rows-one-token kernel (else `matmul` calls `vec_dot` row by row).
    pub gemv: Option<GemvFn>,
    /// Optional whole-block kernel for many tokens (see `PanelFn`).
    pub panel: Option<PanelFn>,
}

pub struct Kernels {
    pub isa: Isa,
    table: Vec<(WeightType, TypeKernels)>,
}

impl Kernels {
    /// Build the table for `isa`: each kernel from `isa`, else the next lower one, else scalar.
    /// `isa` is lowered to what this CPU has: asking for more is never unsound, only ignored.
    pub fn for_isa(isa: Isa) -> Kernels {
        let isa = isa.min(Isa::detect());
        let mut table = Vec::new();
        for info in crate::types::TYPES {
            let t = info.ty;
            let mut vec_dot = scalar::vec_dot(t);
            let mut gemm = scalar::gemm(t);
            let mut quantize = scalar::quantize(t);
            let mut gemv = scalar::gemv(t);
            let mut panel: Option<PanelFn> = None;
            #[cfg(target_arch = "x86_64")]
            {
                if isa >= Isa::Avx2 {
                    vec_dot = avx2::vec_dot(t).or(vec_dot);
                    gemm = avx2::gemm(t).or(gemm);
                    quantize = avx2::quantize(t).or(quantize);
                    gemv = avx2::gemv(t).or(gemv);
                    panel = avx2::panel(t).or(panel);
                }
                if isa >= Isa::Avx512 {
                    vec_dot = avx512::vec_dot(t).or(vec_dot);
                    gemm = avx512::gemm(t).or(gemm);
                    quantize = avx512::quantize(t).or(quantize);
                    gemv = avx512::gemv(t).or(gemv);
                    panel = avx512::panel(t).or(panel);
                }
            }
            if let Some(vec_dot) = vec_dot {
                table.push((t, TypeKernels { vec_dot, gemm, quantize, gemv, panel }));
            }
        }
        Kernels { isa, table }
    }
    /// The ISA with the optional extensions its kernels use, e.g. `avx512 (vnni, vbmi, bf16)`
    /// or `avx2 (avx-vnni)` (for `--info` / `--verbose`).
    pub fn describe(&self) -> String {
        let mut ext: Vec<&str> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512 {
            for (name, on) in [
                ("vnni", is_x86_feature_detected!("avx512vnni")),
                ("vbmi", is_x86_feature_detected!("avx512vbmi")),
                ("bf16", is_x86_feature_detected!("avx512bf16")),
            ] {
                if on {
                    ext.push(name);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 && is_x86_feature_detected!("avxvnni") {
            ext.push("avx-vnni");
        }
        if ext.is_empty() {
            self.isa.name().to_string()
        } else {
            format!("{} ({})", self.isa.name(), ext.join(", "))
        }
    }

    /// Kernels for a weight type; `None` if no dot product exists for it.
    pub fn get(&self, t: WeightType) -> Option<&TypeKernels> {
        self.table.iter().find(|(ty, _)| *ty == t).map(|(_, k)| k)
    }
}

/// The process-wide table, chosen once (`Isa::from_env()`).
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| Kernels::for_isa(Isa::from_env()))
}

#[cfg(test)]
mod tests {
    use super::Tile;

    /// A tile of `rows` x `tokens` over buffers of the given lengths (strides 10 and 20).
    fn fits(rows: usize, tokens: usize, w_len: usize, x_len: usize, out: usize, out_stride: usize) -> bool {
        let (w, x, mut o) = (vec![0u8; w_len], vec![0u8; x_len], vec![0f32; out]);
        let t = Tile { n: 32, w: &w, w_stride: 10, rows, x: &x, x_stride: 20, tokens, out: &mut o, out_stride };
        t.fits(8, 16)
    }

    #[test]
    fn a_tile_fits_exactly_its_last_row_token_and_output() {
        // 3 rows: 2 strides + 8 bytes; 2 tokens: 1 stride + 16 bytes; outputs 1 * 4 + 3
        assert!(fits(3, 2, 28, 36, 7, 4));
        assert!(!fits(3, 2, 27, 36, 7, 4), "a weight byte short");
        assert!(!fits(3, 2, 28, 35, 7, 4), "an activation byte short");
        assert!(!fits(3, 2, 28, 36, 6, 4), "an output short");
        assert!(!fits(3, 2, 28, 36, 7, 2), "tokens' outputs overlapping");
        assert!(fits(3, 1, 28, 16, 3, 0), "one token: any output stride");
        assert!(fits(0, 2, 0, 0, 0, 0) && fits(3, 0, 0, 0, 0, 0), "an empty tile");
    }

    #[test]
    fn sizes_that_overflow_do_not_fit() {
        let (w, x, mut o) = (vec![0u8; 64], vec![0u8; 64], vec![0f32; 8]);
        let t = Tile {
            n: 32,
            w: &w,
            w_stride: usize::MAX / 2 + 1,
            rows: 3,
            x: &x,
            x_stride: 0,
            tokens: 1,
            out: &mut o,
            out_stride: 8,
        };
        assert!(!t.fits(8, 16), "(rows - 1) * stride wraps around to 0");
    }
}
