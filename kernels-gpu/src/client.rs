//! The runtime side of the ABI: open a backend library (libloading), check it, and call it
//! through safe wrappers. Buffers and streams free themselves on drop.

use crate::abi::{self, AttentionParams, DeviceInfo, GpuApi, RopeParams, View, Weight};
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failure reported by a backend (or by the checks made while loading it).
#[derive(Debug, Clone)]
pub struct GpuError {
    /// An `abi::ERR_*` code.
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GpuError {}

impl GpuError {
    fn new(code: i32, message: impl Into<String>) -> GpuError {
        GpuError { code, message: message.into() }
    }
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// A loaded, checked backend library.
pub struct Library {
    api: *const GpuApi,
    path: PathBuf,
    name: String,
    /// Never unloaded: a backend may keep threads of its own (a rayon pool, the CUDA driver's)
    /// running in its code after its last context is gone, and dlclose under them would crash
    /// the process. Each library is loaded at most a few times per process.
    _lib: std::mem::ManuallyDrop<libloading::Library>,
}

// SAFETY: the table is immutable static data inside the library, which stays loaded as long as
// `_lib` lives; the ABI allows calls from any thread.
unsafe impl Send for Library {}
// SAFETY: as above.
unsafe impl Sync for Library {}

/// Whether `name` is a file name a backend library can have on this system (`.so`, `.dll`, ...).
pub fn is_library_name(name: &str) -> bool {
    name.ends_with(std::env::consts::DLL_SUFFIX)
}

impl Library {
    /// dlopen `path`, find [`abi::ENTRY_SYMBOL`], check the table's version and size.
    pub fn open(path: &Path) -> Result<Arc<Library>> {
        // SAFETY: loading a library runs its initialisers; the runtime only loads files it was
        // pointed at as GPU backends (its zip, beside it, or LLAMAFILE_GPU_BACKEND).
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| GpuError::new(abi::ERR_NO_DEVICE, format!("cannot load {}: {e}", path.display())))?;
        // SAFETY: the symbol's type is fixed by the ABI (EntryFn).
        let entry: abi::EntryFn = unsafe {
            *lib.get::<abi::EntryFn>(abi::ENTRY_SYMBOL).map_err(|_| {
                GpuError::new(
                    abi::ERR_NO_DEVICE,
                    format!("{} is not a llamafile GPU backend (no symbol `llamafile_gpu_backend`)", path.display()),
                )
            })?
        };
        // SAFETY: calling the entry point as the ABI defines it.
        let api = unsafe { entry() };
        if api.is_null() {
            return Err(GpuError::new(
                abi::ERR_INTERNAL,
                format!("{}: the backend returned no function table", path.display()),
            ));
        }
        // SAFETY: non-null pointer to the backend's static table; the two first fields exist in
        // every version of the ABI.
        let (version, size) = unsafe { ((*api).abi_version, (*api).struct_size) };
        if version != abi::ABI_VERSION {
            return Err(GpuError::new(
                abi::ERR_UNSUPPORTED,
                format!(
                    "{}: backend ABI version {version}, this llamafile needs version {}",
                    path.display(),
                    abi::ABI_VERSION
                ),
            ));
        }
        if (size as usize) < std::mem::size_of::<GpuApi>() {
            return Err(GpuError::new(
                abi::ERR_UNSUPPORTED,
                format!("{}: backend function table too small ({size} bytes)", path.display()),
            ));
        }
        // SAFETY: version and size checked: the whole table is there.
        let name = abi::name_str(unsafe { &(*api).name });
        Ok(Arc::new(Library { api, path: path.to_path_buf(), name, _lib: std::mem::ManuallyDrop::new(lib) }))
    }

    fn api(&self) -> &GpuApi {
        // SAFETY: checked in `open`; the library is never unloaded.
        unsafe { &*self.api }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backend's name ("cuda", "reference", ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn last_error(&self) -> String {
        let mut buf = [0u8; 1024];
        // SAFETY: buf is writable for its length.
        let n = unsafe { (self.api().last_error)(buf.as_mut_ptr() as *mut c_char, buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len()).min(n);
        let msg = String::from_utf8_lossy(&buf[..end]).into_owned();
        if msg.is_empty() {
            "no message".into()
        } else {
            msg
        }
    }

    fn check(&self, status: i32) -> Result<()> {
        if status == abi::OK {
            Ok(())
        } else {
            Err(GpuError::new(
                status,
                format!("{} backend: {} ({})", self.name, self.last_error(), abi::status_name(status)),
            ))
        }
    }

    /// Every device the backend can use, with its information.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut n = 0u32;
        // SAFETY: valid out pointer.
        self.check(unsafe { (self.api().device_count)(&mut n) })?;
        if n == 0 {
            return Err(GpuError::new(
                abi::ERR_NO_DEVICE,
                format!("{} backend: no device ({})", self.name, self.last_error()),
            ));
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let mut info = DeviceInfo::default();
            // SAFETY: valid out pointer.
            self.check(unsafe { (self.api().device_info)(i, &mut info) })?;
            out.push(info);
        }
        Ok(out)
    }

    /// Opens device `index`.
    pub fn init(self: &Arc<Self>, index: u32) -> Result<Arc<Device>> {
        let mut ctx: abi::Context = std::ptr::null_mut();
        // SAFETY: valid out pointer.
        self.check(unsafe { (self.api().init)(index, &mut ctx) })?;
        if ctx.is_null() {
            return Err(GpuError::new(abi::ERR_INTERNAL, format!("{} backend: init returned no context", self.name)));
        }
        Ok(Arc::new(Device { lib: self.clone(), ctx }))
    }
}

/// An opened device (a backend context).
pub struct Device {
    lib: Arc<Library>,
    ctx: abi::Context,
}

// SAFETY: the ABI allows calls on one context from several threads (streams are per thread).
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: ctx came from init; every Buffer and Stream holds an Arc<Device>, so they are
        // all gone by now.
        unsafe { (self.lib.api().destroy)(self.ctx) }
    }
}

impl Device {
    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    pub fn supports_type(&self, ggml_type: u32) -> bool {
        // SAFETY: valid context.
        unsafe { (self.lib.api().supports_type)(self.ctx, ggml_type) != 0 }
    }

    /// Allocates `bytes` of device memory.
    pub fn alloc(self: &Arc<Self>, bytes: u64) -> Result<Buffer> {
        let mut h = 0u64;
        // SAFETY: valid context and out pointer.
        self.lib.check(unsafe { (self.lib.api().alloc)(self.ctx, bytes.max(1), &mut h) })?;
        if h == 0 {
            return Err(GpuError::new(
                abi::ERR_INTERNAL,
                format!("{} backend: alloc returned handle 0", self.lib.name),
            ));
        }
        Ok(Buffer { dev: self.clone(), handle: h, bytes })
    }

    pub fn stream(self: &Arc<Self>) -> Result<GpuStream> {
        let mut s: abi::Stream = std::ptr::null_mut();
        // SAFETY: valid context and out pointer.
        self.lib.check(unsafe { (self.lib.api().stream_create)(self.ctx, &mut s) })?;
        if s.is_null() {
            return Err(GpuError::new(
                abi::ERR_INTERNAL,
                format!("{} backend: stream_create returned null", self.lib.name),
            ));
        }
        Ok(GpuStream { dev: self.clone(), s })
    }
}

/// Device memory, freed on drop.
pub struct Buffer {
    dev: Arc<Device>,
    handle: u64,
    bytes: u64,
}

impl Buffer {
    /// A view at `offset` bytes into the buffer.
    pub fn at(&self, offset: u64) -> View {
        debug_assert!(offset <= self.bytes);
        View { buf: self.handle, offset }
    }
    pub fn view(&self) -> View {
        self.at(0)
    }
    pub fn len(&self) -> u64 {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the handle came from alloc on this context and is freed once.
        unsafe { (self.dev.lib.api().free)(self.dev.ctx, self.handle) }
    }
}

/// An in-order queue of operations on one device. Methods check the status of each call.
pub struct GpuStream {
    dev: Arc<Device>,
    s: abi::Stream,
}

// SAFETY: a stream may move between threads; `&mut self` on every call keeps it to one thread at
// a time, as the ABI requires.
unsafe impl Send for GpuStream {}

impl Drop for GpuStream {
    fn drop(&mut self) {
        // SAFETY: the stream came from stream_create on this context and is destroyed once.
        unsafe { (self.dev.lib.api().stream_destroy)(self.dev.ctx, self.s) }
    }
}

macro_rules! call {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {{
        let api = $self.dev.lib.api();
        // SAFETY: valid context and stream; the views are handles the backend checks.
        $self.dev.lib.check(unsafe { (api.$f)($self.dev.ctx, $self.s, $($arg),*) })
    }};
}

impl GpuStream {
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
    pub fn synchronize(&mut self) -> Result<()> {
        let api = self.dev.lib.api();
        // SAFETY: valid context and stream.
        self.dev.lib.check(unsafe { (api.synchronize)(self.dev.ctx, self.s) })
    }
    pub fn upload(&mut self, dst: View, src: &[u8]) -> Result<()> {
        call!(self, upload(dst, src.as_ptr(), src.len() as u64))
    }
    pub fn upload_f32(&mut self, dst: View, src: &[f32]) -> Result<()> {
        // SAFETY: f32 has no padding; reading its bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, std::mem::size_of_val(src)) };
        self.upload(dst, bytes)
    }
    pub fn download(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        call!(self, download(src, dst.as_mut_ptr(), dst.len() as u64))
    }
    pub fn download_f32(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
        // SAFETY: every bit pattern is a valid f32; the slice covers exactly dst's memory.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, std::mem::size_of_val(dst)) };
        self.download(src, bytes)
    }
    pub fn matmul(&mut self, w: &Weight, x: View, n_tokens: u32, y: View) -> Result<()> {
        call!(self, matmul(w as *const Weight, x, n_tokens, y))
    }
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(&mut self, x: View, weight: View, n_rows: u32, dim: u32, eps: f32, out: View) -> Result<()> {
        call!(self, rmsnorm(x, weight, n_rows, dim, eps, out))
    }
    pub fn rope(&mut self, x: View, p: &RopeParams) -> Result<()> {
        call!(self, rope(x, p as *const RopeParams))
    }
    pub fn add(&mut self, a: View, b: View, out: View, n: u64) -> Result<()> {
        call!(self, add(a, b, out, n))
    }
    pub fn mul(&mut self, a: View, b: View, out: View, n: u64) -> Result<()> {
        call!(self, mul(a, b, out, n))
    }
    pub fn add_rows(&mut self, x: View, bias: View, n_rows: u32, dim: u32) -> Result<()> {
        call!(self, add_rows(x, bias, n_rows, dim))
    }
    pub fn scale(&mut self, x: View, s: f32, n: u64) -> Result<()> {
        call!(self, scale(x, s, n))
    }
    pub fn glu(&mut self, gate: View, up: View, out: View, n: u64, act: u32) -> Result<()> {
        call!(self, glu(gate, up, out, n, act))
    }
    pub fn copy(&mut self, src: View, dst: View, dst_type: u32, n: u64) -> Result<()> {
        call!(self, copy(src, dst, dst_type, n))
    }
    pub fn attention(&mut self, q: View, k: View, v: View, out: View, p: &AttentionParams) -> Result<()> {
        call!(self, attention(q, k, v, out, p as *const AttentionParams))
    }
}
