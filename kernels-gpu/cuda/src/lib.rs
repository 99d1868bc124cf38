//! The CUDA backend of the GPU offload ABI (`kernels_gpu::abi`).
//!
//! Needs only the NVIDIA driver on the user's machine: libcuda and libnvrtc are loaded at run
//! time (cudarc's dynamic loading), the kernels are CUDA C embedded in this library
//! ([`kernels`]), compiled by NVRTC for the device's architecture at first use and the PTX cached
//! (`~/.cache/llamafile-rs/ptx/`), so later starts skip the compiler. No toolkit, no nvcc. When
//! NVRTC was loadable at build time, build.rs also embeds PTX for compute_61, which the driver
//! JIT-compiles: then the driver alone is enough.
//!
//! Weight types with a matrix kernel: those of the `ggml-types` table with a
//! `DEFINE_MATMUL(matmul_<type>, ...)` line in `kernels/matmul.cu` ([`kernels::weight_types`]);
//! the runtime keeps the model on the CPU when a tensor has another type (e.g. Q3_K).
//!
//! Built with the `cuda` feature (default). Without it the library exports no backend symbol,
//! and the runtime says so and runs on the CPU.

pub mod kernels;

#[cfg(feature = "cuda")]
pub mod device;

#[cfg(feature = "cuda")]
kernels_gpu::export_backend!(device::Cuda);
