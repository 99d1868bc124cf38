//! CPU kernels for GGUF weight types.
//!
//! - `types`: one file per weight type (block layout, dequantize, quantize, scalar dot = the spec).
//! - `isa`: one module per instruction set, a kernel table chosen once at run time.
//! - `matmul`: `matvec` / `matmul` straight on the mmapped bytes, threaded with rayon.
//! - `ops`: f32 helpers (rmsnorm, softmax, rope, silu, gelu, ...).
//!
//! Of the project's crates it depends only on `ggml-types` (the weight-type table).

pub mod isa;
pub mod matmul;
pub mod ops;
pub mod types;

pub use isa::{kernels, Isa, Kernels};
pub use types::WeightType;
