//! Matrix products on weights exactly as stored (the mmapped bytes): threading (rayon) and
//! tiling live here, no ISA code.
//!
//! Layout convention (ggml's): a weight matrix of `rows` x `cols` is `rows` rows, each `cols`
//! elements (`ne0 = cols`) stored as `WeightType::row_bytes(cols)` bytes. Activations are
//! row-major f32, one row of `cols` per token. `y[t * rows + r] = dot(W[r], x[t])`.
//!
//! How the work is cut:
//! - activations are first quantized into the weight type's `vec_dot_type` (once; several
//!   matrices of the same input can share it: `quantize_activations` + `matmul_quantized`);
//! - tokens are taken in chunks whose quantized rows fit in cache (`TOKEN_CHUNK_BYTES`);
//! - for each token chunk, the rows are cut into blocks (a few hundred KiB of weights, so a
//!   block stays in L2 while every token of the chunk passes over it) and rayon spreads the row
//!   blocks over the threads;
//! - inside a block, the ISA's `gemm` tile kernel (several rows x several tokens, each weight
//!   block loaded once per tile) when it has one, else one `vec_dot` per (row, token).
//!
//! Nothing here allocates once the `Scratch` has grown to the largest input seen.

use crate::isa::{kernels, Kernels, Tile, TypeKernels};
use crate::types::WeightType;
use rayon::prelude::*;

/// Quantized activations ready for `matmul_quantized`, and reusable buffers. Grows to the
/// largest size seen, never shrinks: after the first call of a given size, no allocation.
#[derive(Default)]
pub struct Scratch {
    /// `n_tokens` rows of `cols` values in `act_type`, each `act_type.row_bytes(cols)` bytes.
    pub quantized: Vec<u8>,
    /// What `quantized` holds: (activation type, cols, n_tokens); `None` before the first call.
    held: Option<(WeightType, usize, usize)>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }
    /// The activation format, row length and token count currently held, if any.
    pub fn held(&self) -> Option<(WeightType, usize, usize)> {
        self.held
    }
}

/// Token chunk budget: quantized activation bytes processed against the whole weight matrix
/// before moving to the next chunk (keeps them in L2/L3 while the weights stream past).
const TOKEN_CHUNK_BYTES: usize = 1 << 20;
/// The same budget when a `panel` kernel is used: it repacks its row block once per call, so
/// larger chunks amortise that over more tokens, and it reads only 8 tokens' activations at a
/// time (they need not stay in cache for the whole chunk).
const PANEL_CHUNK_BYTES: usize = 8 << 20;
/// Target weight bytes per row block (one rayon task; stays in L2 across a token chunk).
const ROW_BLOCK_BYTES: usize = 256 << 10;
/// Fewest tokens in a chunk for which a type's `panel` kernel (when it has one) is used instead
/// of its tile kernel: the panel repacks the weights once per call, which pays over many tokens
/// (at 8 tokens every panel type beats its tile kernel, at 4 the tile kernels win; figures in
/// docs/benchmarks.md).
pub const PANEL_MIN_TOKENS: usize = 8;
/// Rows of a row block are a multiple of this when the panel kernel is used (its micro-tile).
const PANEL_ROWS: usize = 16;
/// Largest tile a gemm kernel may declare (bounds the on-stack output tile).
pub const MAX_TILE: usize = 16;

/// Cuts `n` items into consecutive ranges of at most `max`, none shorter than `min` unless `n`
/// itself is: a short last range borrows from the one before it (when `2 * min > max` it cannot,
/// and the cuts are plain). The kernels pick their arithmetic by batch size (one token: `gemv`;
/// a few: `gemm` tiles; `PANEL_MIN_TOKENS` or more: the panel), so with every range at least
/// `PANEL_MIN_TOKENS` long a token's result does not depend on where the cuts fall.
pub fn balanced_chunks(n: usize, max: usize, min: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let max = max.max(1);
    let min = if 2 * min <= max { min } else { 1 };
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= n {
            return None;
        }
        let mut len = max.min(n - start);
        let rest = n - start - len;
        if rest > 0 && rest < min {
            len -= min - rest;
        }
        start += len;
        Some(start - len..start)
    })
}

/// Quantize `x` (`n_tokens` rows of `cols` f32) into `wtype`'s activation format, into
/// `scratch`, with the process-wide kernel table.
pub fn quantize_activations(wtype: WeightType, x: &[f32], n_tokens: usize, cols: usize, scratch: &mut Scratch) {
    quantize_activations_with(kernels(), wtype, x, n_tokens, cols, scratch)
}

/// `quantize_activations` with an explicit kernel table (tests use one per ISA).
pub fn quantize_activations_with(
    k: &Kernels,
    wtype: WeightType,
    x: &[f32],
    n_tokens: usize,
    cols: usize,
    scratch: &mut Scratch,
) {
    let at = wtype.vec_dot_type();
    assert!(
        cols.is_multiple_of(at.block_size()),
        "{} activations: row of {cols} is not a whole number of blocks",
        at.name()
    );
    assert_eq!(x.len(), n_tokens * cols, "activations: {} values for {n_tokens} x {cols}", x.len());
    let rb = at.row_bytes(cols);
    let need = rb * n_tokens;
    if scratch.quantized.len() < need {
        scratch.quantized.resize(need, 0);
    }
    let quantize = k.get(at).and_then(|t| t.quantize).unwrap_or(crate::types::info(at).quantize);
    let dst = &mut scratch.quantized[..need];
    if rb == 0 {
        // Rows of zero columns: nothing to quantize.
    } else if n_tokens >= 4 && need >= (64 << 10) {
        // Several tokens: in parallel, one token row per task at least.
        dst.par_chunks_mut(rb).zip(x.par_chunks(cols)).with_min_len(1).for_each(|(d, s)| quantize(s, d));
    } else {
        for (d, s) in dst.chunks_exact_mut(rb).zip(x.chunks_exact(cols)) {
            quantize(s, d);
        }
    }
    scratch.held = Some((at, cols, n_tokens));
}

/// y[n_tokens x rows] = x[n_tokens x cols] * W^T. Quantizes `x` into the weight type's
/// `vec_dot_type` first (into `scratch`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    w: &[u8],
    wtype: WeightType,
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    matmul_with(kernels(), w, wtype, rows, cols, x, n_tokens, y, scratch)
}

/// One token: y[rows] = W x.
pub fn matvec(w: &[u8], wtype: WeightType, rows: usize, cols: usize, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
    matmul(w, wtype, rows, cols, x, 1, y, scratch)
}

/// `matmul` with an explicit kernel table.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    k: &Kernels,
    w: &[u8],
    wtype: WeightType,
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    quantize_activations_with(k, wtype, x, n_tokens, cols, scratch);
    matmul_quantized_with(k, w, wtype, rows, cols, scratch, y)
}

/// y[n_tokens x rows] = W * (the activations `scratch` holds), which must have been quantized
/// for a weight type with the same `vec_dot_type` and the same `cols` (e.g. Q4_K and Q6_K
/// matrices share Q8_K activations; q, k and v share one quantization of the normed input).
pub fn matmul_quantized(w: &[u8], wtype: WeightType, rows: usize, cols: usize, scratch: &Scratch, y: &mut [f32]) {
    matmul_quantized_with(kernels(), w, wtype, rows, cols, scratch, y)
}

/// Raw output pointer shared by the row-block tasks: each task writes only the `y` entries of
/// its own rows, so the writes never overlap.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: used only to write disjoint elements (distinct rows) from different threads while the
// `&mut [f32]` it came from is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// `matmul_quantized` with an explicit kernel table.
pub fn matmul_quantized_with(
    k: &Kernels,
    w: &[u8],
    wtype: WeightType,
    rows: usize,
    cols: usize,
    scratch: &Scratch,
    y: &mut [f32],
) {
    let at = wtype.vec_dot_type();
    let (held_type, held_cols, n_tokens) = scratch.held.expect("matmul_quantized: no activations quantized yet");
    assert!(
        held_type == at && held_cols == cols,
        "matmul_quantized: {} weights of {cols} columns need {} activations of {cols}, scratch holds {} of {held_cols}",
        wtype.name(),
        at.name(),
        held_type.name()
    );
    let wrb = wtype.row_bytes(cols);
    let xrb = at.row_bytes(cols);
    assert!(cols.is_multiple_of(wtype.block_size()), "{}: row of {cols} is not a whole number of blocks", wtype.name());
    assert!(
        w.len() >= wrb * rows,
        "{} weights: {} bytes for {rows} x {cols} ({} needed)",
        wtype.name(),
        w.len(),
        wrb * rows
    );
    assert!(y.len() >= n_tokens * rows, "matmul output: {} values for {n_tokens} x {rows}", y.len());
    if rows == 0 || n_tokens == 0 {
        return;
    }
    if cols == 0 {
        y[..n_tokens * rows].fill(0.0);
        return;
    }
    let tk = *k.get(wtype).unwrap_or_else(|| panic!("no dot product for {} weights", wtype.name()));
    let x = &scratch.quantized[..xrb * n_tokens];

    // Row blocks: about ROW_BLOCK_BYTES of weights, but enough of them to keep every thread
    // busy (4 per thread for load balance), and a whole number of gemm row tiles.
    let threads = rayon::current_num_threads().max(1);
    let use_panel = tk.panel.is_some() && n_tokens >= PANEL_MIN_TOKENS;
    let tile_r = if n_tokens == 1 {
        1
    } else if use_panel {
        PANEL_ROWS
    } else {
        tk.gemm.map(|g| g.1).unwrap_or(1)
    };
    let mut block_rows = (ROW_BLOCK_BYTES / wrb.max(1)).max(1);
    block_rows = block_rows.min(rows.div_ceil(4 * threads)).max(1);
    block_rows = block_rows.div_ceil(tile_r) * tile_r;
    let n_blocks = rows.div_ceil(block_rows);

    let chunk_bytes = if use_panel { PANEL_CHUNK_BYTES } else { TOKEN_CHUNK_BYTES };
    let chunk_tokens = (chunk_bytes / xrb.max(1)).clamp(1, n_tokens);
    let out = OutPtr(y.as_mut_ptr());
    for chunk in balanced_chunks(n_tokens, chunk_tokens, PANEL_MIN_TOKENS) {
        let (t0, nt) = (chunk.start, chunk.len());
        let xs = &x[t0 * xrb..(t0 + nt) * xrb];
        let run = |b: usize| {
            let r0 = b * block_rows;
            let nr = block_rows.min(rows - r0);
            row_block(&tk, cols, &w[r0 * wrb..(r0 + nr) * wrb], wrb, nr, xs, xrb, nt, out, rows, t0, r0);
        };
        if n_blocks == 1 || threads == 1 {
            (0..n_blocks).for_each(run);
        } else {
            (0..n_blocks).into_par_iter().for_each(run);
        }
    }
}

thread_local! {
    /// Each thread's output block for `panel` kernels (grows to the largest block, then reused).
    static PANEL_OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task: rows `r0..r0+nr` (their bytes in `w`) against tokens `t0..t0+nt` (in `x`).
#[allow(clippy::too_many_arguments)]
#[inline]
fn row_block(
    tk: &TypeKernels,
    cols: usize,
    w: &[u8],
    wrb: usize,
    nr: usize,
    x: &[u8],
    xrb: usize,
    nt: usize,
    out: OutPtr,
    rows: usize,
    t0: usize,
    r0: usize,
) {
    let put = |t: usize, r: usize, v: f32| {
        // SAFETY: t < n_tokens and r < rows (callers stay inside the chunk and block), so the
        // index is inside `y`, whose length was checked; each (t, r) belongs to exactly one
        // task because row blocks do not overlap.
        unsafe { *out.0.add((t0 + t) * rows + r0 + r) = v }
    };
    if nt == 1 {
        if let Some(gemv) = tk.gemv {
            // SAFETY: rows r0..r0+nr of token t0 are this task's alone (row blocks do not
            // overlap) and lie inside `y`, whose length was checked.
            let ys = unsafe { std::slice::from_raw_parts_mut(out.0.add(t0 * rows + r0), nr) };
            gemv(cols, w, wrb, nr, x, ys);
            return;
        }
    }
    if nt >= PANEL_MIN_TOKENS {
        if let Some(panel) = tk.panel {
            PANEL_OUT.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < nr * nt {
                    buf.resize(nr * nt, 0.0);
                }
                let out = &mut buf[..nr * nt];
                panel(Tile { n: cols, w, w_stride: wrb, rows: nr, x, x_stride: xrb, tokens: nt, out, out_stride: nr });
                for t in 0..nt {
                    for r in 0..nr {
                        put(t, r, buf[t * nr + r]);
                    }
                }
            });
            return;
        }
    }
    // One token: one row at a time (`vec_dot`), so each row is a single sequential stream,
    // which the hardware prefetchers follow best (measured: up to 2x the GB/s of 4-row tiles
    // when the weights come from DRAM).
    let gemm = if nt == 1 { None } else { tk.gemm };
    match gemm {
        Some((gemm, tr, tc)) => {
            let (tr, tc) = (tr.min(MAX_TILE), tc.min(MAX_TILE));
            let mut tile = [0f32; MAX_TILE * MAX_TILE];
            for c0 in (0..nt).step_by(tc) {
                let nc = tc.min(nt - c0);
                let xt = &x[c0 * xrb..(c0 + nc) * xrb];
                for rr in (0..nr).step_by(tr) {
                    let n_r = tr.min(nr - rr);
                    let wt = &w[rr * wrb..(rr + n_r) * wrb];
                    gemm(Tile {
                        n: cols,
                        w: wt,
                        w_stride: wrb,
                        rows: n_r,
                        x: xt,
                        x_stride: xrb,
                        tokens: nc,
                        out: &mut tile,
                        out_stride: n_r,
                    });
                    for c in 0..nc {
                        for r in 0..n_r {
                            put(c0 + c, rr + r, tile[c * n_r + r]);
                        }
                    }
                }
            }
        }
        None => {
            for t in 0..nt {
                let xt = &x[t * xrb..(t + 1) * xrb];
                for r in 0..nr {
                    put(t, r, (tk.vec_dot)(cols, &w[r * wrb..(r + 1) * wrb], xt));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::balanced_chunks;

    fn cuts(n: usize, max: usize, min: usize) -> Vec<usize> {
        balanced_chunks(n, max, min).map(|r| r.len()).collect()
    }

    #[test]
    fn chunks_cover_everything_in_order_and_none_is_short() {
        for max in [1, 7, 16, 64, 128, 512] {
            for min in [1, 8, 64] {
                for n in 0..1100 {
                    let rs: Vec<_> = balanced_chunks(n, max, min).collect();
                    let mut next = 0;
                    for r in &rs {
                        assert_eq!(r.start, next, "n {n} max {max} min {min}: {rs:?}");
                        assert!(!r.is_empty() && r.len() <= max, "n {n} max {max} min {min}: {rs:?}");
                        if 2 * min <= max && n >= min {
                            assert!(r.len() >= min, "n {n} max {max} min {min}: {rs:?}");
                        }
                        next = r.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
        assert_eq!(cuts(130, 128, 8), [122, 8]);
        assert_eq!(cuts(515, 512, 64), [451, 64]);
        assert_eq!(cuts(1024, 512, 64), [512, 512]);
        assert_eq!(cuts(5, 128, 8), [5]);
        // min above max / 2: plain cuts.
        assert_eq!(cuts(70, 64, 64), [64, 6]);
    }
}
