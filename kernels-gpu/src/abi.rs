//! The versioned C ABI between the runtime and a dynamically loaded GPU backend. Backends (CUDA,
//! the CPU reference, a future Metal one) and the runtime are built separately and meet only
//! here, so every type is `#[repr(C)]` and every function `extern "C"`. Weight types are named
//! by their ggml ids; their facts (block size, bytes) come from the `ggml-types` table, which
//! has no dependencies, so this crate links no kernels.
//!
//! A backend is a shared library exporting one symbol, [`ENTRY_SYMBOL`], of type [`EntryFn`]:
//! it returns a pointer to a static [`GpuApi`] table. The runtime checks `abi_version` (must equal
//! [`ABI_VERSION`]) and `struct_size` (at least the size it knows) before calling anything else.
//!
//! Conventions, for every function of the table:
//! - The return value is a status: [`OK`] or one of the `ERR_*` codes. On failure, the message is
//!   read with `last_error` on the same thread (it is thread-local in the backend, like `errno`).
//!   Backends never unwind across the boundary: a panic becomes [`ERR_PANIC`].
//! - Device memory is named by opaque `u64` buffer handles (0 is never a valid buffer), and a
//!   place in it by a [`View`] (handle + byte offset). Activations are f32, row-major, one row per
//!   token. Weights are in their GGUF/ggml layout (a [`Weight`]), uploaded as they lie in the mmap.
//! - Operations are queued on a stream (`*mut c_void`, created by `stream_create`): a stream runs its
//!   operations in order; different streams may run concurrently and must not write the same
//!   memory. `upload` returns once the host memory may be reused; `download` waits for the stream.
//! - Output views may equal an input view (in-place) where the function says so; other overlaps
//!   are not allowed.

use std::ffi::{c_char, c_void};

/// The weight types, by ggml id (`WeightType::id`, `WeightType::from_ggml`).
pub use ggml_types::WeightType;

/// Bumped on any incompatible change of [`GpuApi`] or the structures it takes.
pub const ABI_VERSION: u32 = 3;

/// The one symbol a backend library exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"llamafile_gpu_backend\0";

/// The type of [`ENTRY_SYMBOL`]: returns the backend's static table (never null for a working
/// library; null means the library cannot describe itself at all).
pub type EntryFn = unsafe extern "C" fn() -> *const GpuApi;

// ---- status codes ----
pub const OK: i32 = 0;
/// A bad argument: unknown buffer, view out of bounds, inconsistent shapes.
pub const ERR_INVALID_ARGUMENT: i32 = 1;
/// The operation or weight type is not implemented by this backend.
pub const ERR_UNSUPPORTED: i32 = 2;
/// Device memory exhausted.
pub const ERR_OUT_OF_MEMORY: i32 = 3;
/// The device or its driver failed (launch failure, lost device...).
pub const ERR_DEVICE: i32 = 4;
/// No usable device, or the driver / compiler library is not installed.
pub const ERR_NO_DEVICE: i32 = 5;
/// The backend panicked; the message says where.
pub const ERR_PANIC: i32 = 6;
/// Anything else.
pub const ERR_INTERNAL: i32 = 7;

/// A readable name for a status code.
pub fn status_name(code: i32) -> &'static str {
    match code {
        OK => "ok",
        ERR_INVALID_ARGUMENT => "invalid argument",
        ERR_UNSUPPORTED => "unsupported",
        ERR_OUT_OF_MEMORY => "out of device memory",
        ERR_DEVICE => "device error",
        ERR_NO_DEVICE => "no device",
        ERR_PANIC => "backend panicked",
        _ => "internal error",
    }
}

// ---- enumerations passed as u32 ----
/// ggml type ids (the same numbers as in GGUF tensor infos) used for buffers of activations and
/// KV caches; weights may be any type the backend's `supports_type` accepts.
pub const TYPE_F32: u32 = WeightType::F32.id();
pub const TYPE_F16: u32 = WeightType::F16.id();

/// RoPE layouts: `NORMAL` rotates adjacent pairs (x[2i], x[2i+1]) (llama, Mistral); `NEOX`
/// rotates (x[i], x[i + n_rot/2]) (Qwen2, Gemma).
pub const ROPE_NORMAL: u32 = 0;
pub const ROPE_NEOX: u32 = 2;

/// Gated activations for `glu`: out = act(gate) * up.
pub const GLU_SILU: u32 = 0;
/// GELU with the tanh approximation (Gemma).
pub const GLU_GELU_TANH: u32 = 1;

/// Bits of [`DeviceInfo::flags`].
/// The device reads host memory directly (unified memory: Apple silicon, the CPU reference);
/// the runtime may still upload, but nothing is gained by a separate device copy.
pub const DEVICE_UNIFIED_MEMORY: u32 = 1;

/// Length of fixed-size name fields (NUL-padded UTF-8).
pub const NAME_LEN: usize = 64;

/// What `device_info` reports about one device.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// e.g. "NVIDIA GeForce RTX 4090", NUL-padded.
    pub name: [u8; NAME_LEN],
    pub total_memory: u64,
    pub free_memory: u64,
    /// How much faster than the CPU this device is expected to run a layer, roughly. The runtime
    /// prefers the highest score; 0 means "not an accelerator" (the CPU reference backend): such a
    /// backend is used only when chosen explicitly.
    pub score: u32,
    pub flags: u32,
    /// Vendor-specific version, e.g. CUDA compute capability major*10+minor; 0 if none.
    pub compute_capability: u32,
    pub _reserved: u32,
}

impl Default for DeviceInfo {
    fn default() -> Self {
        DeviceInfo {
            name: [0; NAME_LEN],
            total_memory: 0,
            free_memory: 0,
            score: 0,
            flags: 0,
            compute_capability: 0,
            _reserved: 0,
        }
    }
}

/// A place in device memory: buffer handle + byte offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub buf: u64,
    pub offset: u64,
}

impl View {
    pub const NONE: View = View { buf: 0, offset: 0 };
    pub fn new(buf: u64, offset: u64) -> View {
        View { buf, offset }
    }
    /// This view moved `bytes` further.
    pub fn at(self, bytes: u64) -> View {
        View { buf: self.buf, offset: self.offset + bytes }
    }
    pub fn is_none(self) -> bool {
        self.buf == 0
    }
}

/// A weight matrix in device memory, in its ggml layout: `rows` rows of `cols` elements each
/// (ne0 = cols), every row `row_bytes(ggml_type, cols)` bytes, rows contiguous.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Weight {
    pub data: View,
    pub ggml_type: u32,
    pub _reserved: u32,
    pub rows: u64,
    pub cols: u64,
}

/// RoPE over `n_tokens` rows of `n_heads * head_dim` f32, token `t` at position `pos0 + t`.
/// The first `n_rot` elements of each head are rotated; pair i by
/// theta_i = freq_scale * (pos * freq_base^(-2i/n_rot) / factor_i), factor_i = f32 element i of
/// `freq_factors` (`n_rot / 2` of them), or 1 for every pair when `freq_factors.buf` is 0; the
/// cos and sin are multiplied by `attn_factor` (the specification is `kernels_cpu::ops::Rope`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub n_tokens: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    pub n_rot: u32,
    pub pos0: u32,
    /// [`ROPE_NORMAL`] or [`ROPE_NEOX`].
    pub mode: u32,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// Multiplier of the cos and sin (1.0: none).
    pub attn_factor: f32,
    pub _reserved: u32,
    /// Per-dimension frequency divisors ([`View::NONE`]: none).
    pub freq_factors: View,
}

/// Causal attention of `n_tokens` queries (token `t` at position `pos0 + t`) over a KV cache that
/// already holds positions `0..pos0 + n_tokens` (the new keys and values are written first with
/// `copy`).
/// - `q`, `out`: f32 `[n_tokens][n_head * head_dim]`.
/// - `k`, `v`: the cache, `kv_type` ([`TYPE_F16`] or [`TYPE_F32`]), position `p` of head `h` at
///   element `p * kv_stride + h * head_dim`.
/// - Query head `h` uses KV head `h / (n_head / n_head_kv)` (GQA).
/// - Token at position `i` sees positions `j <= i`, and only `i - j < window` when `window > 0`.
/// - scores = q·k * scale, then `softcap * tanh(scores / softcap)` if `softcap > 0`, softmax, · v.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub n_tokens: u32,
    pub pos0: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    /// Elements between consecutive positions in the cache (usually n_head_kv * head_dim).
    pub kv_stride: u32,
    pub kv_type: u32,
    /// Sliding window in positions; 0 = none.
    pub window: u32,
    pub scale: f32,
    pub softcap: f32,
}

pub type Status = i32;
/// Opaque backend state for one device (`init` creates it).
pub type Context = *mut c_void;
/// Opaque in-order queue of operations (`stream_create`).
pub type Stream = *mut c_void;

/// The backend's function table. Fields are only ever appended (with `struct_size` telling the
/// runtime which exist); anything else bumps [`ABI_VERSION`].
#[repr(C)]
pub struct GpuApi {
    /// Must be [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<GpuApi>()` as the backend was built.
    pub struct_size: u32,
    /// Short backend name ("cuda", "reference", "metal"), NUL-padded.
    pub name: [u8; NAME_LEN],

    /// Copies the calling thread's last error message (UTF-8, NUL-terminated, truncated to `len`)
    /// into `buf`; returns the message's full length in bytes (without the NUL).
    pub last_error: unsafe extern "C" fn(buf: *mut c_char, len: usize) -> usize,
    /// Number of usable devices (0 is not an error: the reason is then in `last_error`).
    pub device_count: unsafe extern "C" fn(out: *mut u32) -> Status,
    pub device_info: unsafe extern "C" fn(device: u32, out: *mut DeviceInfo) -> Status,
    /// Opens `device`; `*out` receives the context.
    pub init: unsafe extern "C" fn(device: u32, out: *mut Context) -> Status,
    /// Frees the context. Every buffer and stream must have been freed before.
    pub destroy: unsafe extern "C" fn(ctx: Context),
    /// 1 if `matmul` takes weights of this ggml type, else 0.
    pub supports_type: unsafe extern "C" fn(ctx: Context, ggml_type: u32) -> u32,

    /// Allocates `bytes` of device memory (contents undefined); `*out` receives the handle.
    pub alloc: unsafe extern "C" fn(ctx: Context, bytes: u64, out: *mut u64) -> Status,
    pub free: unsafe extern "C" fn(ctx: Context, buf: u64),
    pub stream_create: unsafe extern "C" fn(ctx: Context, out: *mut Stream) -> Status,
    pub stream_destroy: unsafe extern "C" fn(ctx: Context, stream: Stream),
    /// Waits until everything queued on `stream` has run.
    pub synchronize: unsafe extern "C" fn(ctx: Context, stream: Stream) -> Status,
    /// Copies `bytes` from host memory at `src` to `dst`. Returns once `src` may be reused.
    pub upload: unsafe extern "C" fn(ctx: Context, stream: Stream, dst: View, src: *const u8, bytes: u64) -> Status,
    /// Waits for `stream`, then copies `bytes` from `src` to host memory at `dst`.
    pub download: unsafe extern "C" fn(ctx: Context, stream: Stream, src: View, dst: *mut u8, bytes: u64) -> Status,

    /// y[t][r] = dot(W[r], x[t]) for t < n_tokens: x f32 `[n_tokens][cols]`, y f32 `[n_tokens][rows]`.
    pub matmul:
        unsafe extern "C" fn(ctx: Context, stream: Stream, w: *const Weight, x: View, n_tokens: u32, y: View) -> Status,
    /// Each of `n_rows` rows of `dim` f32: out = x / sqrt(mean(x²) + eps) * weight (weight f32
    /// `[dim]`; `View::NONE` = no weight). `out` may equal `x`.
    pub rmsnorm: unsafe extern "C" fn(
        ctx: Context,
        stream: Stream,
        x: View,
        weight: View,
        n_rows: u32,
        dim: u32,
        eps: f32,
        out: View,
    ) -> Status,
    /// In place.
    pub rope: unsafe extern "C" fn(ctx: Context, stream: Stream, x: View, p: *const RopeParams) -> Status,
    /// out = a + b over `n` f32 (`out` may equal `a` or `b`).
    pub add: unsafe extern "C" fn(ctx: Context, stream: Stream, a: View, b: View, out: View, n: u64) -> Status,
    /// out = a * b over `n` f32 (`out` may equal `a` or `b`).
    pub mul: unsafe extern "C" fn(ctx: Context, stream: Stream, a: View, b: View, out: View, n: u64) -> Status,
    /// x[r][i] += bias[i] for `n_rows` rows of `dim` f32, in place.
    pub add_rows:
        unsafe extern "C" fn(ctx: Context, stream: Stream, x: View, bias: View, n_rows: u32, dim: u32) -> Status,
    /// x *= s over `n` f32, in place.
    pub scale: unsafe extern "C" fn(ctx: Context, stream: Stream, x: View, s: f32, n: u64) -> Status,
    /// out = act(gate) * up over `n` f32, act = [`GLU_SILU`] or [`GLU_GELU_TANH`] (`out` may equal
    /// `gate` or `up`).
    pub glu:
        unsafe extern "C" fn(ctx: Context, stream: Stream, gate: View, up: View, out: View, n: u64, act: u32) -> Status,
    /// Converts `n` f32 at `src` to `dst_type` ([`TYPE_F32`] or [`TYPE_F16`]) at `dst` (KV cache
    /// writes). No overlap.
    pub copy: unsafe extern "C" fn(ctx: Context, stream: Stream, src: View, dst: View, dst_type: u32, n: u64) -> Status,
    pub attention: unsafe extern "C" fn(
        ctx: Context,
        stream: Stream,
        q: View,
        k: View,
        v: View,
        out: View,
        p: *const AttentionParams,
    ) -> Status,
}

/// Reads a NUL-padded name field.
pub fn name_str(name: &[u8; NAME_LEN]) -> String {
    let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// Writes `s` into a NUL-padded name field (truncated on a character boundary, always leaving a
/// NUL at the end).
pub const fn name_field(s: &str) -> [u8; NAME_LEN] {
    let b = s.as_bytes();
    let mut out = [0u8; NAME_LEN];
    let mut n = if b.len() < NAME_LEN - 1 { b.len() } else { NAME_LEN - 1 };
    // Never cut a UTF-8 sequence in half.
    while n > 0 && n < b.len() && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    let mut i = 0;
    while i < n {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// Bytes of one row of `cols` elements of a ggml type, or `None` for a type id the table does
/// not hold or a `cols` that is not a whole number of blocks.
pub fn row_bytes(ggml_type: u32, cols: u64) -> Option<u64> {
    WeightType::from_ggml(ggml_type)?.checked_row_bytes(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        // The sizes other languages (a Metal backend in Objective-C/Swift) must reproduce.
        assert_eq!(std::mem::size_of::<View>(), 16);
        assert_eq!(std::mem::size_of::<Weight>(), 40);
        assert_eq!(std::mem::size_of::<RopeParams>(), 56);
        assert_eq!(std::mem::offset_of!(RopeParams, attn_factor), 32);
        assert_eq!(std::mem::offset_of!(RopeParams, freq_factors), 40);
        assert_eq!(std::mem::size_of::<AttentionParams>(), 40);
        assert_eq!(std::mem::size_of::<DeviceInfo>(), NAME_LEN + 32);
        assert_eq!(std::mem::offset_of!(GpuApi, abi_version), 0);
        assert_eq!(std::mem::offset_of!(GpuApi, struct_size), 4);
        assert_eq!(std::mem::offset_of!(GpuApi, name), 8);
    }

    #[test]
    fn names_round_trip_and_truncate() {
        assert_eq!(name_str(&name_field("cuda")), "cuda");
        let long = "é".repeat(40); // 80 bytes
        let f = name_field(&long);
        let back = name_str(&f);
        assert!(back.len() < NAME_LEN && back.chars().all(|c| c == 'é'), "{back}");
    }

    #[test]
    fn row_bytes_come_from_the_type_table() {
        assert_eq!(row_bytes(12, 4096), Some(16 * 144));
        assert_eq!(row_bytes(8, 64), Some(68));
        assert_eq!(row_bytes(1, 3), Some(6));
        assert_eq!(row_bytes(12, 100), None);
        assert_eq!(row_bytes(4, 256), None);
        assert_eq!(row_bytes(99, 256), None);
    }
}
