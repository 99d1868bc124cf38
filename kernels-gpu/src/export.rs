//! The backend side of the ABI: a backend implements the safe-ish trait [`Device`] and exports
//! it with [`export_backend!`](crate::export_backend), which builds the static [`GpuApi`] table of
//! trampolines. Every trampoline catches panics (`catch_unwind`) and turns errors into a status
//! code plus a thread-local message, so nothing unwinds across the C boundary.

use crate::abi::{self, AttentionParams, Context, DeviceInfo, GpuApi, RopeParams, Status, Stream, View, Weight};
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A failure inside a backend: an ABI status code and a message.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub fn new(code: i32, message: impl Into<String>) -> Error {
        Error { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(abi::ERR_INVALID_ARGUMENT, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(abi::ERR_UNSUPPORTED, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, abi::status_name(self.code))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a backend implements. Handles (`u64` buffers, [`View`]s) come from the runtime and must be
/// checked by the backend as far as it can (the reference backend checks every bound; a GPU
/// backend at least checks handles it knows). Methods take `&self` and may be called from several
/// threads at once, each with its own stream.
pub trait Device: Sized + Send + Sync + 'static {
    type Stream: Send + 'static;
    /// Short name: "cuda", "reference"...
    const NAME: &'static str;

    fn device_count() -> Result<u32>;
    fn device_info(device: u32) -> Result<DeviceInfo>;
    fn init(device: u32) -> Result<Self>;
    fn supports_type(&self, ggml_type: u32) -> bool;

    fn alloc(&self, bytes: u64) -> Result<u64>;
    fn free(&self, buf: u64);
    fn stream_create(&self) -> Result<Self::Stream>;
    fn synchronize(&self, s: &mut Self::Stream) -> Result<()>;
    fn upload(&self, s: &mut Self::Stream, dst: View, src: &[u8]) -> Result<()>;
    fn download(&self, s: &mut Self::Stream, src: View, dst: &mut [u8]) -> Result<()>;

    fn matmul(&self, s: &mut Self::Stream, w: &Weight, x: View, n_tokens: u32, y: View) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &self,
        s: &mut Self::Stream,
        x: View,
        weight: View,
        n_rows: u32,
        dim: u32,
        eps: f32,
        out: View,
    ) -> Result<()>;
    fn rope(&self, s: &mut Self::Stream, x: View, p: &RopeParams) -> Result<()>;
    fn add(&self, s: &mut Self::Stream, a: View, b: View, out: View, n: u64) -> Result<()>;
    fn mul(&self, s: &mut Self::Stream, a: View, b: View, out: View, n: u64) -> Result<()>;
    fn add_rows(&self, s: &mut Self::Stream, x: View, bias: View, n_rows: u32, dim: u32) -> Result<()>;
    fn scale(&self, s: &mut Self::Stream, x: View, factor: f32, n: u64) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn glu(&self, s: &mut Self::Stream, gate: View, up: View, out: View, n: u64, act: u32) -> Result<()>;
    fn copy(&self, s: &mut Self::Stream, src: View, dst: View, dst_type: u32, n: u64) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, s: &mut Self::Stream, q: View, k: View, v: View, out: View, p: &AttentionParams) -> Result<()>;

    /// The ABI version this backend reports; only the reference backend's fault injection
    /// overrides it (to test the runtime's version check).
    fn reported_abi_version() -> u32 {
        abi::ABI_VERSION
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_error(msg: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Runs `f`, converting an error or a panic into a status code and the thread's last error.
pub fn guard(what: &str, f: impl FnOnce() -> Result<()>) -> Status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => abi::OK,
        Ok(Err(e)) => {
            set_error(format!("{what}: {}", e.message));
            e.code
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(format!("{what}: panicked: {msg}"));
            abi::ERR_PANIC
        }
    }
}

/// Writes the last error message into a C buffer; returns its full length.
///
/// # Safety
/// `buf` must be valid for `len` bytes (or `len` must be 0).
pub unsafe extern "C" fn last_error(buf: *mut c_char, len: usize) -> usize {
    let r = catch_unwind(|| {
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            let bytes = e.as_bytes();
            if len > 0 && !buf.is_null() {
                let n = bytes.len().min(len - 1);
                // SAFETY: the caller guarantees `buf` holds `len` bytes and n + 1 <= len.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, n);
                    *buf.add(n) = 0;
                }
            }
            bytes.len()
        })
    });
    r.unwrap_or(0)
}

// SAFETY (all helpers below): the runtime passes back exactly the pointers `init` and
// `stream_create` returned (Box::into_raw of a `D` / `D::Stream`), not yet destroyed; the ABI
// allows concurrent calls on one context (Device: Sync) but one thread per stream.
unsafe fn ctx_ref<'a, D: Device>(ctx: Context) -> Result<&'a D> {
    if ctx.is_null() {
        return Err(Error::invalid("null context"));
    }
    // SAFETY: see above.
    Ok(unsafe { &*(ctx as *const D) })
}

unsafe fn stream_mut<'a, D: Device>(stream: Stream) -> Result<&'a mut D::Stream> {
    if stream.is_null() {
        return Err(Error::invalid("null stream"));
    }
    // SAFETY: see above; a stream is used by one thread at a time.
    Ok(unsafe { &mut *(stream as *mut D::Stream) })
}

unsafe fn out_ptr<'a, T>(p: *mut T) -> Result<&'a mut T> {
    if p.is_null() {
        return Err(Error::invalid("null output pointer"));
    }
    // SAFETY: the caller passes a valid, exclusive pointer to write the result into.
    Ok(unsafe { &mut *p })
}

unsafe fn in_ref<'a, T>(p: *const T) -> Result<&'a T> {
    if p.is_null() {
        return Err(Error::invalid("null parameter pointer"));
    }
    // SAFETY: the caller passes a valid pointer for the duration of the call.
    Ok(unsafe { &*p })
}

#[allow(clippy::missing_safety_doc)]
pub mod trampolines {
    //! One `extern "C"` function per table entry, generic over the backend.
    //!
    //! # Safety
    //! Called only through the table, with the arguments the ABI (`kernels_gpu::abi`) describes:
    //! contexts and streams this backend created, valid pointers for outputs and parameters.
    use super::*;

    pub unsafe extern "C" fn device_count<D: Device>(out: *mut u32) -> Status {
        guard("device_count", || {
            // SAFETY: the runtime passes a valid pointer.
            let out = unsafe { out_ptr(out)? };
            *out = 0;
            *out = D::device_count()?;
            Ok(())
        })
    }
    pub unsafe extern "C" fn device_info<D: Device>(device: u32, out: *mut DeviceInfo) -> Status {
        guard("device_info", || {
            // SAFETY: the runtime passes a valid pointer.
            let out = unsafe { out_ptr(out)? };
            *out = D::device_info(device)?;
            Ok(())
        })
    }
    pub unsafe extern "C" fn init<D: Device>(device: u32, out: *mut Context) -> Status {
        guard("init", || {
            // SAFETY: the runtime passes a valid pointer.
            let out = unsafe { out_ptr(out)? };
            *out = std::ptr::null_mut();
            let d = D::init(device)?;
            *out = Box::into_raw(Box::new(d)) as Context;
            Ok(())
        })
    }
    pub unsafe extern "C" fn destroy<D: Device>(ctx: Context) {
        let _ = guard("destroy", || {
            if !ctx.is_null() {
                // SAFETY: `ctx` came from `init` (Box::into_raw) and is destroyed once.
                drop(unsafe { Box::from_raw(ctx as *mut D) });
            }
            Ok(())
        });
    }
    pub unsafe extern "C" fn supports_type<D: Device>(ctx: Context, t: u32) -> u32 {
        let mut yes = false;
        let _ = guard("supports_type", || {
            // SAFETY: see ctx_ref.
            yes = unsafe { ctx_ref::<D>(ctx)? }.supports_type(t);
            Ok(())
        });
        yes as u32
    }
    pub unsafe extern "C" fn alloc<D: Device>(ctx: Context, bytes: u64, out: *mut u64) -> Status {
        guard("alloc", || {
            // SAFETY: see ctx_ref / out_ptr.
            let (d, out) = unsafe { (ctx_ref::<D>(ctx)?, out_ptr(out)?) };
            *out = 0;
            *out = d.alloc(bytes)?;
            Ok(())
        })
    }
    pub unsafe extern "C" fn free<D: Device>(ctx: Context, buf: u64) {
        let _ = guard("free", || {
            // SAFETY: see ctx_ref.
            unsafe { ctx_ref::<D>(ctx)? }.free(buf);
            Ok(())
        });
    }
    pub unsafe extern "C" fn stream_create<D: Device>(ctx: Context, out: *mut Stream) -> Status {
        guard("stream_create", || {
            // SAFETY: see ctx_ref / out_ptr.
            let (d, out) = unsafe { (ctx_ref::<D>(ctx)?, out_ptr(out)?) };
            *out = std::ptr::null_mut();
            let s = d.stream_create()?;
            *out = Box::into_raw(Box::new(s)) as Stream;
            Ok(())
        })
    }
    pub unsafe extern "C" fn stream_destroy<D: Device>(_ctx: Context, stream: Stream) {
        let _ = guard("stream_destroy", || {
            if !stream.is_null() {
                // SAFETY: `stream` came from `stream_create` (Box::into_raw) and is destroyed once.
                drop(unsafe { Box::from_raw(stream as *mut D::Stream) });
            }
            Ok(())
        });
    }
    pub unsafe extern "C" fn synchronize<D: Device>(ctx: Context, stream: Stream) -> Status {
        guard("synchronize", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.synchronize(s)
        })
    }
    pub unsafe extern "C" fn upload<D: Device>(
        ctx: Context,
        stream: Stream,
        dst: View,
        src: *const u8,
        bytes: u64,
    ) -> Status {
        guard("upload", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            if src.is_null() && bytes > 0 {
                return Err(Error::invalid("null source"));
            }
            let src: &[u8] = if bytes == 0 {
                &[]
            } else {
                // SAFETY: the caller guarantees `src` is readable for `bytes` bytes during the call.
                unsafe { std::slice::from_raw_parts(src, bytes as usize) }
            };
            d.upload(s, dst, src)
        })
    }
    pub unsafe extern "C" fn download<D: Device>(
        ctx: Context,
        stream: Stream,
        src: View,
        dst: *mut u8,
        bytes: u64,
    ) -> Status {
        guard("download", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            if dst.is_null() && bytes > 0 {
                return Err(Error::invalid("null destination"));
            }
            let dst: &mut [u8] = if bytes == 0 {
                &mut []
            } else {
                // SAFETY: the caller guarantees `dst` is writable for `bytes` bytes and not aliased.
                unsafe { std::slice::from_raw_parts_mut(dst, bytes as usize) }
            };
            d.download(s, src, dst)
        })
    }
    pub unsafe extern "C" fn matmul<D: Device>(
        ctx: Context,
        stream: Stream,
        w: *const Weight,
        x: View,
        n_tokens: u32,
        y: View,
    ) -> Status {
        guard("matmul", || {
            // SAFETY: see ctx_ref / stream_mut / in_ref.
            let (d, s, w) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?, in_ref(w)?) };
            d.matmul(s, w, x, n_tokens, y)
        })
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn rmsnorm<D: Device>(
        ctx: Context,
        stream: Stream,
        x: View,
        weight: View,
        n_rows: u32,
        dim: u32,
        eps: f32,
        out: View,
    ) -> Status {
        guard("rmsnorm", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.rmsnorm(s, x, weight, n_rows, dim, eps, out)
        })
    }
    pub unsafe extern "C" fn rope<D: Device>(ctx: Context, stream: Stream, x: View, p: *const RopeParams) -> Status {
        guard("rope", || {
            // SAFETY: see ctx_ref / stream_mut / in_ref.
            let (d, s, p) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?, in_ref(p)?) };
            d.rope(s, x, p)
        })
    }
    pub unsafe extern "C" fn add<D: Device>(
        ctx: Context,
        stream: Stream,
        a: View,
        b: View,
        out: View,
        n: u64,
    ) -> Status {
        guard("add", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.add(s, a, b, out, n)
        })
    }
    pub unsafe extern "C" fn mul<D: Device>(
        ctx: Context,
        stream: Stream,
        a: View,
        b: View,
        out: View,
        n: u64,
    ) -> Status {
        guard("mul", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.mul(s, a, b, out, n)
        })
    }
    pub unsafe extern "C" fn add_rows<D: Device>(
        ctx: Context,
        stream: Stream,
        x: View,
        bias: View,
        n_rows: u32,
        dim: u32,
    ) -> Status {
        guard("add_rows", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.add_rows(s, x, bias, n_rows, dim)
        })
    }
    pub unsafe extern "C" fn scale<D: Device>(ctx: Context, stream: Stream, x: View, f: f32, n: u64) -> Status {
        guard("scale", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.scale(s, x, f, n)
        })
    }
    pub unsafe extern "C" fn glu<D: Device>(
        ctx: Context,
        stream: Stream,
        gate: View,
        up: View,
        out: View,
        n: u64,
        act: u32,
    ) -> Status {
        guard("glu", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.glu(s, gate, up, out, n, act)
        })
    }
    pub unsafe extern "C" fn copy<D: Device>(
        ctx: Context,
        stream: Stream,
        src: View,
        dst: View,
        dst_type: u32,
        n: u64,
    ) -> Status {
        guard("copy", || {
            // SAFETY: see ctx_ref / stream_mut.
            let (d, s) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?) };
            d.copy(s, src, dst, dst_type, n)
        })
    }
    pub unsafe extern "C" fn attention<D: Device>(
        ctx: Context,
        stream: Stream,
        q: View,
        k: View,
        v: View,
        out: View,
        p: *const AttentionParams,
    ) -> Status {
        guard("attention", || {
            // SAFETY: see ctx_ref / stream_mut / in_ref.
            let (d, s, p) = unsafe { (ctx_ref::<D>(ctx)?, stream_mut::<D>(stream)?, in_ref(p)?) };
            d.attention(s, q, k, v, out, p)
        })
    }
}

/// The table for backend `D` (used by [`export_backend!`](crate::export_backend)).
pub fn api<D: Device>() -> GpuApi {
    use trampolines as t;
    GpuApi {
        abi_version: D::reported_abi_version(),
        struct_size: std::mem::size_of::<GpuApi>() as u32,
        name: abi::name_field(D::NAME),
        last_error,
        device_count: t::device_count::<D>,
        device_info: t::device_info::<D>,
        init: t::init::<D>,
        destroy: t::destroy::<D>,
        supports_type: t::supports_type::<D>,
        alloc: t::alloc::<D>,
        free: t::free::<D>,
        stream_create: t::stream_create::<D>,
        stream_destroy: t::stream_destroy::<D>,
        synchronize: t::synchronize::<D>,
        upload: t::upload::<D>,
        download: t::download::<D>,
        matmul: t::matmul::<D>,
        rmsnorm: t::rmsnorm::<D>,
        rope: t::rope::<D>,
        add: t::add::<D>,
        mul: t::mul::<D>,
        add_rows: t::add_rows::<D>,
        scale: t::scale::<D>,
        glu: t::glu::<D>,
        copy: t::copy::<D>,
        attention: t::attention::<D>,
    }
}

/// Exports backend type `$ty` (implementing [`Device`](crate::export::Device)) as the library's
/// [`ENTRY_SYMBOL`](crate::abi::ENTRY_SYMBOL). Use once, in the backend's cdylib crate.
#[macro_export]
macro_rules! export_backend {
    ($ty:ty) => {
        /// The backend's entry point (see kernels_gpu::abi).
        #[no_mangle]
        pub extern "C" fn llamafile_gpu_backend() -> *const $crate::abi::GpuApi {
            static API: ::std::sync::OnceLock<$crate::abi::GpuApi> = ::std::sync::OnceLock::new();
            match ::std::panic::catch_unwind(|| API.get_or_init($crate::export::api::<$ty>) as *const _) {
                Ok(p) => p,
                Err(_) => ::std::ptr::null(),
            }
        }
    };
}
