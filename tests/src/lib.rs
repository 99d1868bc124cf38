//! Helpers for the end-to-end tests: the workspace's test support (where the built binaries, the
//! shared fixtures and the real models are; recorded skips; the HTTP client), and the GPU
//! reference backend.

pub use test_support::*;

/// The CPU reference GPU backend (a cdylib dev-dependency of these tests).
pub fn reference_lib() -> std::path::PathBuf {
    cdylib("llamafile_gpu_reference")
}
