//! Matrix products on weights exactly as stored (the mmapped bytes): threading (rayon) and
//! tiling live here, no ISA code.
//!
//! Layout convention (ggml's): a weight matrix of `rows` x `cols` is `rows` rows, each `cols`
//! elements (`ne0 = cols`) stored as `WeightType::row_bytes(cols)` bytes. Activations are
//! row-major f32, one row of `cols` per token. `y[t * rows + r] = dot(W[r], x[t])`.

use crate::types::WeightType;

/// Reusable buffers (quantized activations). Grows to the largest size seen, never shrinks:
/// after the first call of a given size, no allocation.
#[derive(Default)]
pub struct Scratch {
    pub quantized: Vec<u8>,
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
    let _ = (w, wtype, rows, cols, x, n_tokens, y, scratch);
    unimplemented!("kernels-cpu matmul: being written (issue 3)")
}

/// One token: y[rows] = W x.
pub fn matvec(w: &[u8], wtype: WeightType, rows: usize, cols: usize, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
    matmul(w, wtype, rows, cols, x, 1, y, scratch)
}
