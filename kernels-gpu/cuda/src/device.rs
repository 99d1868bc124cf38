//! The CUDA implementation of the ABI over the driver API (cudarc's `result`/`sys` layer, with
//! libcuda and libnvrtc loaded at run time). Raw handles are used rather than cudarc's safe
//! `CudaSlice`/`LaunchArgs` wrappers because buffers cross the C ABI as plain handles and a
//! kernel launch must not allocate (LaunchArgs collects its arguments in a Vec).

use crate::kernels;
use cudarc::driver::{result, sys};
use kernels_gpu::abi::{self, AttentionParams, DeviceInfo, RopeParams, View, Weight};
use kernels_gpu::export::{Device, Error, Result};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

fn derr(what: &str, e: result::DriverError) -> Error {
    let code = if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY { abi::ERR_OUT_OF_MEMORY } else { abi::ERR_DEVICE };
    Error::new(code, format!("{what}: {e}"))
}

/// Loads libcuda (checking first: cudarc panics when it is missing) and calls cuInit.
fn init_driver() -> Result<()> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::new(abi::ERR_NO_DEVICE, "the NVIDIA driver (libcuda) is not installed"));
    }
    result::init().map_err(|e| derr("cuInit", e))
}

fn attribute(dev: sys::CUdevice, a: sys::CUdevice_attribute) -> Result<i32> {
    // SAFETY: `dev` comes from device::get.
    unsafe { result::device::get_attribute(dev, a) }.map_err(|e| derr("cuDeviceGetAttribute", e))
}

struct Funcs {
    matmul: Vec<(u32, sys::CUfunction)>,
    rmsnorm: sys::CUfunction,
    rope: sys::CUfunction,
    add: sys::CUfunction,
    mul: sys::CUfunction,
    add_rows: sys::CUfunction,
    scale: sys::CUfunction,
    glu: sys::CUfunction,
    copy_f16: sys::CUfunction,
    copy_f32: sys::CUfunction,
    attention: sys::CUfunction,
}

pub struct Cuda {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    f: Funcs,
    /// Device pointer -> length, for bounds checks (the handle is the device pointer).
    buffers: Mutex<HashMap<u64, u64>>,
}

// SAFETY: driver API handles may be used from any thread once the context is made current
// there (every method calls `bind` first); the buffer table is behind a Mutex.
unsafe impl Send for Cuda {}
// SAFETY: as above.
unsafe impl Sync for Cuda {}

pub struct CuStream {
    s: sys::CUstream,
    ctx: sys::CUcontext,
}

// SAFETY: a CUstream may be used from any thread with its context current.
unsafe impl Send for CuStream {}

impl Drop for CuStream {
    fn drop(&mut self) {
        // SAFETY: the stream was created in this context and is destroyed once.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::stream::destroy(self.s);
        }
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // SAFETY: every handle below was created by `init` in this context; buffers the runtime
        // did not free are freed here, once.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::ctx::synchronize();
            for (p, _) in self.buffers.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
                let _ = result::free_sync(p);
            }
            let _ = result::module::unload(self.module);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

const BLOCK: u32 = 256;

fn grid_for(n: u64) -> Result<u32> {
    let g = n.div_ceil(BLOCK as u64);
    u32::try_from(g.max(1)).map_err(|_| Error::invalid(format!("{n} elements is too many for one launch")))
}

impl Cuda {
    fn bind(&self) -> Result<()> {
        // SAFETY: the context is alive as long as self.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| derr("cuCtxSetCurrent", e))
    }

    /// The device address of `bytes` bytes at `v`, bounds-checked.
    fn addr(&self, v: View, bytes: u64, what: &str) -> Result<u64> {
        let map = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let len =
            *map.get(&v.buf).ok_or_else(|| Error::invalid(format!("{what}: unknown buffer handle {:#x}", v.buf)))?;
        let end = v.offset.checked_add(bytes).ok_or_else(|| Error::invalid(format!("{what}: size overflow")))?;
        if end > len {
            return Err(Error::invalid(format!(
                "{what}: {bytes} bytes at offset {} overrun a buffer of {len} bytes",
                v.offset
            )));
        }
        Ok(v.buf + v.offset)
    }

    fn f32s(&self, v: View, n: u64, what: &str) -> Result<u64> {
        self.addr(v, n * 4, what)
    }

    /// Launches `f` on stream `s`. `args` are pointers to the argument values, in order.
    fn launch(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        s: &CuStream,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: `f` is a kernel of our module; `args` point at live values whose types match
        // the kernel's parameters (checked by the NVRTC test against the sources); every device
        // address was bounds-checked by `addr`.
        unsafe { result::launch_kernel(f, grid, block, 0, s.s, args) }.map_err(|e| derr("cuLaunchKernel", e))
    }

    #[allow(clippy::too_many_arguments)]
    fn elementwise(
        &self,
        f: sys::CUfunction,
        s: &CuStream,
        a: View,
        b: View,
        out: View,
        n: u64,
        what: &str,
    ) -> Result<()> {
        let (mut pa, mut pb, mut po) = (self.f32s(a, n, what)?, self.f32s(b, n, what)?, self.f32s(out, n, what)?);
        let mut n_ = n;
        let mut args = [
            &mut pa as *mut u64 as *mut c_void,
            &mut pb as *mut u64 as *mut c_void,
            &mut po as *mut u64 as *mut c_void,
            &mut n_ as *mut u64 as *mut c_void,
        ];
        self.launch(f, (grid_for(n)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }
}

fn i32_arg(v: &mut i32) -> *mut c_void {
    v as *mut i32 as *mut c_void
}

impl Device for Cuda {
    type Stream = CuStream;
    const NAME: &'static str = "cuda";

    fn device_count() -> Result<u32> {
        init_driver()?;
        let n = result::device::get_count().map_err(|e| derr("cuDeviceGetCount", e))?;
        Ok(n.max(0) as u32)
    }

    fn device_info(device: u32) -> Result<DeviceInfo> {
        init_driver()?;
        let dev = result::device::get(device as i32).map_err(|e| derr("cuDeviceGet", e))?;
        let name = result::device::get_name(dev).map_err(|e| derr("cuDeviceGetName", e))?;
        // SAFETY: `dev` comes from device::get.
        let total = unsafe { result::device::total_mem(dev) }.map_err(|e| derr("cuDeviceTotalMem", e))? as u64;
        let major = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sms = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        // Free memory needs a context: the primary one, retained only for this query.
        // SAFETY: `dev` comes from device::get; retain/release are paired.
        let free = unsafe {
            let ctx = result::primary_ctx::retain(dev).map_err(|e| derr("cuDevicePrimaryCtxRetain", e))?;
            let r = result::ctx::set_current(ctx).and_then(|_| result::mem_get_info());
            let _ = result::primary_ctx::release(dev);
            r.map_err(|e| derr("cuMemGetInfo", e))?.0 as u64
        };
        Ok(DeviceInfo {
            name: abi::name_field(&name),
            total_memory: total,
            free_memory: free,
            // Roughly proportional to throughput; always above the CPU reference's 0.
            score: (sms.max(1) as u32) * 100,
            flags: 0,
            compute_capability: (major * 10 + minor) as u32,
            _reserved: 0,
        })
    }

    fn init(device: u32) -> Result<Self> {
        init_driver()?;
        let dev = result::device::get(device as i32).map_err(|e| derr("cuDeviceGet", e))?;
        let major = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        // NVRTC takes the architecture as &'static str; one small string per process.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx =
            kernels::nvrtc::ptx_for_device(&kernels::program(), arch).map_err(|e| Error::new(abi::ERR_NO_DEVICE, e))?;
        // SAFETY: retain/release paired in Drop (or below on failure).
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| derr("cuDevicePrimaryCtxRetain", e))?;
        let setup = || -> Result<(sys::CUmodule, Funcs)> {
            // SAFETY: ctx was just retained.
            unsafe { result::ctx::set_current(ctx) }.map_err(|e| derr("cuCtxSetCurrent", e))?;
            let c = CString::new(ptx).map_err(|_| Error::new(abi::ERR_INTERNAL, "PTX with a NUL byte"))?;
            // SAFETY: `c` is a NUL-terminated PTX image, alive during the call.
            let module = unsafe { result::module::load_data(c.as_ptr() as *const c_void) }
                .map_err(|e| derr("cuModuleLoadData", e))?;
            let get = |name: &str| -> Result<sys::CUfunction> {
                // SAFETY: `module` was just loaded.
                unsafe { result::module::get_function(module, CString::new(name).unwrap()) }
                    .map_err(|e| derr(&format!("kernel {name}"), e))
            };
            let mut matmul = Vec::new();
            for t in kernels::weight_types() {
                matmul.push((t.id(), get(&kernels::matmul_kernel(t))?));
            }
            let f = Funcs {
                matmul,
                rmsnorm: get("rmsnorm")?,
                rope: get("rope")?,
                add: get("add")?,
                mul: get("mul")?,
                add_rows: get("add_rows")?,
                scale: get("scale")?,
                glu: get("glu")?,
                copy_f16: get("copy_f32_f16")?,
                copy_f32: get("copy_f32_f32")?,
                attention: get("attention")?,
            };
            Ok((module, f))
        };
        match setup() {
            Ok((module, f)) => Ok(Cuda { dev, ctx, module, f, buffers: Mutex::new(HashMap::new()) }),
            Err(e) => {
                // SAFETY: balances the retain above.
                unsafe {
                    let _ = result::primary_ctx::release(dev);
                }
                Err(e)
            }
        }
    }

    fn supports_type(&self, ggml_type: u32) -> bool {
        self.f.matmul.iter().any(|(t, _)| *t == ggml_type)
    }

    fn alloc(&self, bytes: u64) -> Result<u64> {
        self.bind()?;
        // SAFETY: plain device allocation in the current context.
        let p = unsafe { result::malloc_sync(bytes.max(1) as usize) }
            .map_err(|e| derr(&format!("allocating {bytes} bytes"), e))?;
        self.buffers.lock().unwrap_or_else(|e| e.into_inner()).insert(p, bytes.max(1));
        Ok(p)
    }

    fn free(&self, buf: u64) {
        let known = self.buffers.lock().unwrap_or_else(|e| e.into_inner()).remove(&buf).is_some();
        if known && self.bind().is_ok() {
            // SAFETY: `buf` was allocated by `alloc` and is freed once (removed from the table).
            unsafe {
                let _ = result::free_sync(buf);
            }
        }
    }

    fn stream_create(&self) -> Result<CuStream> {
        self.bind()?;
        let s =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| derr("cuStreamCreate", e))?;
        Ok(CuStream { s, ctx: self.ctx })
    }

    fn synchronize(&self, s: &mut CuStream) -> Result<()> {
        self.bind()?;
        // SAFETY: a live stream of this context.
        unsafe { result::stream::synchronize(s.s) }.map_err(|e| derr("cuStreamSynchronize", e))
    }

    fn upload(&self, s: &mut CuStream, dst: View, src: &[u8]) -> Result<()> {
        let d = self.addr(dst, src.len() as u64, "upload")?;
        self.bind()?;
        // SAFETY: `d` is bounds-checked; `src` stays alive until the synchronize below returns.
        unsafe {
            result::memcpy_htod_async(d, src, s.s).map_err(|e| derr("cuMemcpyHtoDAsync", e))?;
            result::stream::synchronize(s.s).map_err(|e| derr("upload", e))
        }
    }

    fn download(&self, s: &mut CuStream, src: View, dst: &mut [u8]) -> Result<()> {
        let p = self.addr(src, dst.len() as u64, "download")?;
        self.bind()?;
        // SAFETY: `p` is bounds-checked; `dst` stays alive until the synchronize returns.
        unsafe {
            result::memcpy_dtoh_async(dst, p, s.s).map_err(|e| derr("cuMemcpyDtoHAsync", e))?;
            result::stream::synchronize(s.s).map_err(|e| derr("download", e))
        }
    }

    fn matmul(&self, s: &mut CuStream, w: &Weight, x: View, n_tokens: u32, y: View) -> Result<()> {
        let f = self
            .f
            .matmul
            .iter()
            .find(|(t, _)| *t == w.ggml_type)
            .map(|(_, f)| *f)
            .ok_or_else(|| Error::unsupported(format!("weight type {}", w.ggml_type)))?;
        let row_bytes = abi::row_bytes(w.ggml_type, w.cols).filter(|_| w.cols.is_multiple_of(32)).ok_or_else(|| {
            Error::invalid(format!("{} columns of type {}: rows must hold whole blocks of 32", w.cols, w.ggml_type))
        })?;
        if w.rows > i32::MAX as u64 || w.cols > i32::MAX as u64 {
            return Err(Error::invalid("matrix too large"));
        }
        let mut pw = self.addr(w.data, row_bytes * w.rows, "matmul weight")?;
        let mut px = self.f32s(x, n_tokens as u64 * w.cols, "matmul input")?;
        let mut py = self.f32s(y, n_tokens as u64 * w.rows, "matmul output")?;
        let (mut rb, mut rows, mut cols, mut nt) = (row_bytes, w.rows as i32, w.cols as i32, n_tokens as i32);
        let mut args = [
            &mut pw as *mut u64 as *mut c_void,
            &mut rb as *mut u64 as *mut c_void,
            i32_arg(&mut rows),
            i32_arg(&mut cols),
            &mut px as *mut u64 as *mut c_void,
            i32_arg(&mut nt),
            &mut py as *mut u64 as *mut c_void,
        ];
        // Block: 4 warps = 4 rows; grid.y: tiles of 8 tokens (MM_ROWS_PER_BLOCK, MM_TOKENS).
        let grid = ((w.rows as u32).div_ceil(4), n_tokens.div_ceil(8).max(1), 1);
        self.launch(f, grid, (32, 4, 1), s, &mut args)
    }

    fn rmsnorm(
        &self,
        s: &mut CuStream,
        x: View,
        weight: View,
        n_rows: u32,
        dim: u32,
        eps: f32,
        out: View,
    ) -> Result<()> {
        let n = n_rows as u64 * dim as u64;
        let mut px = self.f32s(x, n, "rmsnorm input")?;
        let mut pw = if weight.is_none() { 0 } else { self.f32s(weight, dim as u64, "rmsnorm weight")? };
        let mut po = self.f32s(out, n, "rmsnorm output")?;
        let (mut d, mut e) = (dim as i32, eps);
        let mut args = [
            &mut px as *mut u64 as *mut c_void,
            &mut pw as *mut u64 as *mut c_void,
            i32_arg(&mut d),
            &mut e as *mut f32 as *mut c_void,
            &mut po as *mut u64 as *mut c_void,
        ];
        if n_rows == 0 {
            return Ok(());
        }
        self.launch(self.f.rmsnorm, (n_rows, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn rope(&self, s: &mut CuStream, x: View, p: &RopeParams) -> Result<()> {
        if p.n_rot > p.head_dim || !p.n_rot.is_multiple_of(2) {
            return Err(Error::invalid(format!("rope: n_rot {} with head_dim {}", p.n_rot, p.head_dim)));
        }
        let n = p.n_tokens as u64 * p.n_heads as u64 * p.head_dim as u64;
        let mut px = self.f32s(x, n, "rope")?;
        let (mut nt, mut nh, mut hd, mut nr, mut p0, mut mode) =
            (p.n_tokens as i32, p.n_heads as i32, p.head_dim as i32, p.n_rot as i32, p.pos0 as i32, p.mode as i32);
        let (mut base, mut fs, mut af) = (p.freq_base, p.freq_scale, p.attn_factor);
        let mut ff = if p.freq_factors.buf == 0 {
            0u64
        } else {
            self.f32s(p.freq_factors, (p.n_rot / 2) as u64, "rope factors")?
        };
        let mut args = [
            &mut px as *mut u64 as *mut c_void,
            i32_arg(&mut nt),
            i32_arg(&mut nh),
            i32_arg(&mut hd),
            i32_arg(&mut nr),
            i32_arg(&mut p0),
            i32_arg(&mut mode),
            &mut base as *mut f32 as *mut c_void,
            &mut fs as *mut f32 as *mut c_void,
            &mut ff as *mut u64 as *mut c_void,
            &mut af as *mut f32 as *mut c_void,
        ];
        let pairs = p.n_tokens as u64 * p.n_heads as u64 * (p.n_rot / 2) as u64;
        self.launch(self.f.rope, (grid_for(pairs)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn add(&self, s: &mut CuStream, a: View, b: View, out: View, n: u64) -> Result<()> {
        self.elementwise(self.f.add, s, a, b, out, n, "add")
    }

    fn mul(&self, s: &mut CuStream, a: View, b: View, out: View, n: u64) -> Result<()> {
        self.elementwise(self.f.mul, s, a, b, out, n, "mul")
    }

    fn add_rows(&self, s: &mut CuStream, x: View, bias: View, n_rows: u32, dim: u32) -> Result<()> {
        let n = n_rows as u64 * dim as u64;
        let mut px = self.f32s(x, n, "add_rows input")?;
        let mut pb = self.f32s(bias, dim as u64, "add_rows bias")?;
        let (mut d, mut n_) = (dim as i32, n);
        let mut args = [
            &mut px as *mut u64 as *mut c_void,
            &mut pb as *mut u64 as *mut c_void,
            i32_arg(&mut d),
            &mut n_ as *mut u64 as *mut c_void,
        ];
        self.launch(self.f.add_rows, (grid_for(n)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn scale(&self, s: &mut CuStream, x: View, factor: f32, n: u64) -> Result<()> {
        let mut px = self.f32s(x, n, "scale")?;
        let (mut f, mut n_) = (factor, n);
        let mut args =
            [&mut px as *mut u64 as *mut c_void, &mut f as *mut f32 as *mut c_void, &mut n_ as *mut u64 as *mut c_void];
        self.launch(self.f.scale, (grid_for(n)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn glu(&self, s: &mut CuStream, gate: View, up: View, out: View, n: u64, act: u32) -> Result<()> {
        if act != abi::GLU_SILU && act != abi::GLU_GELU_TANH {
            return Err(Error::unsupported(format!("glu activation {act}")));
        }
        let (mut pg, mut pu, mut po) =
            (self.f32s(gate, n, "glu gate")?, self.f32s(up, n, "glu up")?, self.f32s(out, n, "glu output")?);
        let (mut n_, mut a) = (n, act as i32);
        let mut args = [
            &mut pg as *mut u64 as *mut c_void,
            &mut pu as *mut u64 as *mut c_void,
            &mut po as *mut u64 as *mut c_void,
            &mut n_ as *mut u64 as *mut c_void,
            i32_arg(&mut a),
        ];
        self.launch(self.f.glu, (grid_for(n)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn copy(&self, s: &mut CuStream, src: View, dst: View, dst_type: u32, n: u64) -> Result<()> {
        let (f, size) = match dst_type {
            abi::TYPE_F16 => (self.f.copy_f16, 2),
            abi::TYPE_F32 => (self.f.copy_f32, 4),
            t => return Err(Error::unsupported(format!("copy to type {t}"))),
        };
        let mut ps = self.f32s(src, n, "copy source")?;
        let mut pd = self.addr(dst, n * size, "copy destination")?;
        let mut n_ = n;
        let mut args = [
            &mut ps as *mut u64 as *mut c_void,
            &mut pd as *mut u64 as *mut c_void,
            &mut n_ as *mut u64 as *mut c_void,
        ];
        self.launch(f, (grid_for(n)?, 1, 1), (BLOCK, 1, 1), s, &mut args)
    }

    fn attention(&self, s: &mut CuStream, q: View, k: View, v: View, out: View, p: &AttentionParams) -> Result<()> {
        let (nt, nh, nkv, hd) = (p.n_tokens as u64, p.n_head as u64, p.n_head_kv as u64, p.head_dim as u64);
        if nkv == 0 || nh % nkv != 0 || (p.kv_stride as u64) < nkv * hd || hd > 256 || nt == 0 {
            return Err(Error::invalid(format!(
                "attention: {nh} heads over {nkv} KV heads of {hd} (at most 256), stride {}, {nt} tokens",
                p.kv_stride
            )));
        }
        let esize = match p.kv_type {
            abi::TYPE_F16 => 2,
            abi::TYPE_F32 => 4,
            t => return Err(Error::unsupported(format!("KV cache type {t}"))),
        };
        let cache_elems = (p.pos0 as u64 + nt - 1) * p.kv_stride as u64 + nkv * hd;
        let mut pq = self.f32s(q, nt * nh * hd, "attention q")?;
        let mut pk = self.addr(k, cache_elems * esize, "attention k")?;
        let mut pv = self.addr(v, cache_elems * esize, "attention v")?;
        let mut po = self.f32s(out, nt * nh * hd, "attention output")?;
        let mut ints = [
            p.n_tokens as i32,
            p.pos0 as i32,
            p.n_head as i32,
            p.n_head_kv as i32,
            p.head_dim as i32,
            p.kv_stride as i32,
            (p.kv_type == abi::TYPE_F16) as i32,
            p.window as i32,
        ];
        let (mut sc, mut cap) = (p.scale, p.softcap);
        let [i0, i1, i2, i3, i4, i5, i6, i7] = &mut ints;
        let mut args = [
            &mut pq as *mut u64 as *mut c_void,
            &mut pk as *mut u64 as *mut c_void,
            &mut pv as *mut u64 as *mut c_void,
            &mut po as *mut u64 as *mut c_void,
            i32_arg(i0),
            i32_arg(i1),
            i32_arg(i2),
            i32_arg(i3),
            i32_arg(i4),
            i32_arg(i5),
            i32_arg(i6),
            i32_arg(i7),
            &mut sc as *mut f32 as *mut c_void,
            &mut cap as *mut f32 as *mut c_void,
        ];
        // 4 warps per block, one warp per (token, head).
        let items = (nt * nh) as u32;
        self.launch(self.f.attention, (items.div_ceil(4), 1, 1), (32, 4, 1), s, &mut args)
    }
}
