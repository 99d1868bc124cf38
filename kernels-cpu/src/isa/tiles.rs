//! The loops of the unpack-then-accumulate K-quant kernels, written once for every ISA.
//!
//! Each weight block is unpacked into the form the ISA's integer dot product wants
//! (`Unpack::unpack`), then accumulated against Q8_K activation blocks
//! (`KquantIsa::accumulate`): once per block in `vec_dot`, once per block and row for up to
//! `KquantIsa::TOKENS` tokens in `gemm`. An ISA supplies those vector operations as
//! `#[inline(always)]` functions, and `kquant_entry_points!` wraps `vec_dot` and `gemm` in its
//! `#[target_feature]` entry points: everything here is inlined into them, so each ISA's
//! kernels are compiled with its instruction set, as if written out in its module.

use super::Tile;
use crate::types::q2_k::BlockQ2K;
use crate::types::q3_k::BlockQ3K;
use crate::types::q4_k::BlockQ4K;
use crate::types::q5_k::BlockQ5K;
use crate::types::q6_k::BlockQ6K;
use crate::types::q8_k::{BlockQ8K, QK_K};
use crate::types::Block;
use std::mem::size_of;

/// A K-quant weight block: the facts the shared loops need.
pub(crate) trait KquantBlock: Block {
    /// The type's name, for error messages.
    const NAME: &'static str;
    /// Whether the correction of the Q8_K group sums is an offset of the levels, scaled by `d`
    /// like the sum itself (so it is folded into the integer sum), rather than minimums with
    /// their own factor `dmin` (a second float term).
    const FOLD: bool;
}

impl KquantBlock for BlockQ2K {
    const NAME: &'static str = "Q2_K";
    const FOLD: bool = false;
}
impl KquantBlock for BlockQ3K {
    const NAME: &'static str = "Q3_K";
    const FOLD: bool = true;
}
impl KquantBlock for BlockQ4K {
    const NAME: &'static str = "Q4_K";
    const FOLD: bool = false;
}
impl KquantBlock for BlockQ5K {
    const NAME: &'static str = "Q5_K";
    const FOLD: bool = false;
}
impl KquantBlock for BlockQ6K {
    const NAME: &'static str = "Q6_K";
    const FOLD: bool = true;
}

/// The vector operations of one ISA.
///
/// # Safety
/// Every method may be called only where the CPU has the features the implementing ISA's
/// entry points enable, and is meant to be inlined into those entry points.
pub(crate) trait KquantIsa {
    /// One weight block ready for the integer dot product.
    type Unpacked;
    /// A float accumulator (a vector of partial sums).
    type Acc: Copy;
    /// The most tokens a `gemm` tile handles in one pass (a power of two, 8 at most).
    const TOKENS: usize;
    /// Whether `vec_dot` prefetches `PREFETCH_AHEAD` bytes ahead of each weight block.
    const PREFETCH: bool;
    unsafe fn zero() -> Self::Acc;
    /// `acc` plus one block's products with the activation block `a`.
    unsafe fn accumulate(acc: Self::Acc, u: &Self::Unpacked, a: &BlockQ8K, fold: bool) -> Self::Acc;
    /// The sum of the accumulator's lanes.
    unsafe fn reduce(acc: Self::Acc) -> f32;
}

/// How one ISA unpacks weight blocks of type `B`.
///
/// # Safety
/// As `KquantIsa`.
pub(crate) trait Unpack<B>: KquantIsa {
    unsafe fn unpack(b: &B) -> Self::Unpacked;
    /// The unpacking used when the block serves several tokens (`gemm`), where a costlier
    /// form that makes each `accumulate` cheaper pays; the same as `unpack` unless overridden.
    unsafe fn unpack_tile(b: &B) -> Self::Unpacked {
        unsafe { Self::unpack(b) }
    }
}

/// Dot product of a row of `n` values of `B` with a row of Q8_K activations (`VecDotFn`).
///
/// # Safety
/// As `KquantIsa`: called only from `K`'s `#[target_feature]` entry points.
#[inline(always)]
pub(crate) unsafe fn vec_dot<K: Unpack<B>, B: KquantBlock>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, xb) = (nb * size_of::<B>(), nb * size_of::<BlockQ8K>());
    assert!(
        w.len() >= wb && x.len() >= xb,
        "{} vec_dot: {n} values need {wb} weight and {xb} activation bytes, got {} and {}",
        B::NAME,
        w.len(),
        x.len()
    );
    let mut acc = unsafe { K::zero() };
    for (b, a) in B::slice(&w[..wb]).iter().zip(BlockQ8K::slice(&x[..xb])) {
        if K::PREFETCH {
            super::prefetch_ahead(b);
        }
        acc = unsafe { K::accumulate(acc, &K::unpack(b), a, B::FOLD) };
    }
    unsafe { K::reduce(acc) }
}

/// A tile of `B` weight rows against Q8_K tokens (`GemmTileFn`), `K::TOKENS` tokens at a time.
///
/// # Safety
/// As `vec_dot`.
#[inline(always)]
pub(crate) unsafe fn gemm<K: Unpack<B>, B: KquantBlock>(t: Tile<'_>) {
    let nb = t.blocks(QK_K, size_of::<B>(), size_of::<BlockQ8K>(), B::NAME);
    let Tile { w, w_stride, rows, x, x_stride, tokens: nc, out, out_stride, .. } = t;
    let mut c0 = 0;
    while c0 < nc {
        let (x, out) = (&x[c0 * x_stride..], &mut out[c0 * out_stride..]);
        // SAFETY: as this function's.
        c0 += unsafe {
            match nc - c0 {
                8.. if K::TOKENS >= 8 => tokens::<K, B, 8>(nb, w, w_stride, rows, x, x_stride, out, out_stride),
                4.. => tokens::<K, B, 4>(nb, w, w_stride, rows, x, x_stride, out, out_stride),
                2.. => tokens::<K, B, 2>(nb, w, w_stride, rows, x, x_stride, out, out_stride),
                _ => tokens::<K, B, 1>(nb, w, w_stride, rows, x, x_stride, out, out_stride),
            }
        };
    }
}

/// `rows` weight rows (`nb` blocks each) against the first `NC` tokens of `x`, into the first
/// `NC` output rows; returns `NC`. Each weight block is unpacked once per row and used for all
/// `NC` tokens.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tokens<K: Unpack<B>, B: KquantBlock, const NC: usize>(
    nb: usize,
    w: &[u8],
    w_stride: usize,
    rows: usize,
    x: &[u8],
    x_stride: usize,
    out: &mut [f32],
    out_stride: usize,
) -> usize {
    let (wb, xb) = (nb * size_of::<B>(), nb * size_of::<BlockQ8K>());
    let x: [&[BlockQ8K]; NC] = core::array::from_fn(|c| BlockQ8K::slice(&x[c * x_stride..][..xb]));
    for r in 0..rows {
        let w = B::slice(&w[r * w_stride..][..wb]);
        // SAFETY (all three blocks): as this function's.
        let mut acc = [unsafe { K::zero() }; NC];
        for (i, b) in w.iter().enumerate() {
            // one token (matvec): the unpacking that is cheapest for a single use
            let u = unsafe {
                if NC == 1 {
                    K::unpack(b)
                } else {
                    K::unpack_tile(b)
                }
            };
            for c in 0..NC {
                acc[c] = unsafe { K::accumulate(acc[c], &u, &x[c][i], B::FOLD) };
            }
        }
        for (c, a) in acc.iter().enumerate() {
            out[c * out_stride + r] = unsafe { K::reduce(*a) };
        }
    }
    NC
}

/// The kernels of one ISA (`$isa`, implementing `Unpack<B>` for each K-quant block `B`):
/// `kquant_vec_dot::<B>` (a `VecDotFn`) and, with `gemm`, `kquant_gemm::<B>` (a `GemmTileFn`),
/// the loops above compiled inside `#[target_feature(enable = $features)]` functions. The
/// module's lookups must install them only where all of `$features` are detected, which is
/// what makes calling them sound.
macro_rules! kquant_entry_points {
    ($isa:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        fn vec_dot_tf<B: KquantBlock>(n: usize, w: &[u8], x: &[u8]) -> f32
        where
            $isa: Unpack<B>,
        {
            // SAFETY: this function has the features the ISA's operations need.
            unsafe { $crate::isa::tiles::vec_dot::<$isa, B>(n, w, x) }
        }

        fn kquant_vec_dot<B: KquantBlock>(n: usize, w: &[u8], x: &[u8]) -> f32
        where
            $isa: Unpack<B>,
        {
            // SAFETY: installed only where the features are detected (the lookups check).
            unsafe { vec_dot_tf::<B>(n, w, x) }
        }
    };
    ($isa:ident, $features:literal, gemm) => {
        $crate::isa::tiles::kquant_entry_points!($isa, $features);

        #[target_feature(enable = $features)]
        fn gemm_tf<B: KquantBlock>(t: Tile<'_>)
        where
            $isa: Unpack<B>,
        {
            // SAFETY: as in `vec_dot_tf`.
            unsafe { $crate::isa::tiles::gemm::<$isa, B>(t) }
        }

        fn kquant_gemm<B: KquantBlock>(t: Tile<'_>)
        where
            $isa: Unpack<B>,
        {
            // SAFETY: as in `kquant_vec_dot`.
            unsafe { gemm_tf::<B>(t) }
        }
    };
}
pub(crate) use kquant_entry_points;
