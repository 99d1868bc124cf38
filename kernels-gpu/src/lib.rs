//! The GPU offload ABI: a versioned C function table that a backend shared library
//! exports and the runtime loads at run time.
//!
//! - [`abi`]: the `#[repr(C)]` table, its structures, `ABI_VERSION`, status codes; backends and the runtime are built against it, so it changes only with `ABI_VERSION`.
//! - [`export`]: the backend side: implement [`export::Device`], then `export_backend!(Type)`;
//!   every entry point catches panics and reports errors as codes + a message.
//! - [`client`]: the runtime side: load a library, check symbol/version/size, call it safely.
//!
//! The backends themselves are separate cdylib crates: `kernels-gpu/reference` (the CPU, with
//! kernels-cpu: tests the whole offload path on machines without a GPU) and `kernels-gpu/cuda`
//! (NVIDIA, via cudarc with the driver and NVRTC loaded at run time).

pub mod abi;
pub mod client;
pub mod export;
