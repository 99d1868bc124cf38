//! The reference GPU backend: implements the offload ABI on the CPU with kernels-cpu.
//!
//! It behaves like a discrete device: weights and activations are copied into its own
//! "device memory" (heap allocations named by handles), every view is bounds-checked, and an
//! operation reads only what the ABI lets it read. So the runtime's offload path (upload,
//! per-layer recipe, KV cache on the device, download) runs for real in CI, and its logits can
//! be compared with the pure CPU path. Matrix products use the same kernels-cpu `matmul` as
//! the CPU path; the element-wise operations are plain loops written for clarity.
//!
//! Environment, for tests of the runtime's failure handling:
//! - `LLAMAFILE_REFERENCE_MEMORY=BYTES`: the device has only this much memory (alloc beyond it
//!   fails with `ERR_OUT_OF_MEMORY`).
//! - `LLAMAFILE_REFERENCE_FAULT=init|version|no-device|panic`: init fails / the table reports a
//!   wrong ABI version / no device is found / `matmul` panics (must come back as `ERR_PANIC`).

use half::f16;
use kernels_cpu::matmul::Scratch as MatmulScratch;
use kernels_cpu::WeightType;
use kernels_gpu::abi::{self, AttentionParams, DeviceInfo, RopeParams, View, Weight};
use kernels_gpu::export::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

kernels_gpu::export_backend!(Reference);

/// Buffers are 64-byte aligned, like device allocations.
const ALIGN: usize = 64;

fn fault() -> Option<String> {
    std::env::var("LLAMAFILE_REFERENCE_FAULT").ok()
}

struct Allocation {
    ptr: *mut u8,
    len: usize,
}

pub struct Reference {
    /// LLAMAFILE_REFERENCE_FAULT=panic, read once at init (not per call: no allocation in the
    /// hot loop).
    panic_fault: bool,
    buffers: Mutex<HashMap<u64, Allocation>>,
    next: AtomicU64,
    used: AtomicU64,
    limit: u64,
}

// SAFETY: the raw pointers in `buffers` are owned allocations only touched through the ABI's
// rules (one writer per region at a time); the map itself is behind a Mutex.
unsafe impl Send for Reference {}
// SAFETY: as above.
unsafe impl Sync for Reference {}

impl Drop for Reference {
    fn drop(&mut self) {
        let map = self.buffers.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, a) in map.drain() {
            // SAFETY: allocated in `alloc` with this layout, freed once (removed from the map).
            unsafe { std::alloc::dealloc(a.ptr, std::alloc::Layout::from_size_align_unchecked(a.len, ALIGN)) };
        }
    }
}

/// Per-stream scratch memory: grows to the largest size seen, never shrinks, so a generation
/// loop allocates nothing after its first token.
#[derive(Default)]
pub struct RefStream {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    k16: Vec<f16>,
    v16: Vec<f16>,
    q16: Vec<f16>,
    acc16: Vec<f16>,
    ones: Vec<f32>,
    mm: MatmulScratch,
}

/// Dot product with eight independent accumulators (the order the CPU path sums in, so both
/// round alike).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

fn limit_from_env() -> u64 {
    std::env::var("LLAMAFILE_REFERENCE_MEMORY").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u64::MAX)
}

impl Reference {
    /// The start of `bytes` bytes at `v`, bounds-checked.
    fn span(&self, v: View, bytes: u64, what: &str) -> Result<*mut u8> {
        let map = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let a = map.get(&v.buf).ok_or_else(|| Error::invalid(format!("{what}: unknown buffer handle {}", v.buf)))?;
        let end = v.offset.checked_add(bytes).ok_or_else(|| Error::invalid(format!("{what}: size overflow")))?;
        if end > a.len as u64 {
            return Err(Error::invalid(format!(
                "{what}: {bytes} bytes at offset {} overrun buffer {} of {} bytes",
                v.offset, v.buf, a.len
            )));
        }
        // SAFETY: offset + bytes <= len, inside the allocation.
        Ok(unsafe { a.ptr.add(v.offset as usize) })
    }

    /// Copies `n` f32 at `v` into `dst` (resized to `n`).
    fn read_f32(&self, v: View, n: usize, dst: &mut Vec<f32>, what: &str) -> Result<()> {
        let p = self.span(v, n as u64 * 4, what)?;
        dst.resize(n, 0.0);
        // SAFETY: `p` is valid for n*4 bytes (span); `dst` holds n f32; they do not overlap
        // (dst is host scratch).
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr() as *mut u8, n * 4) };
        Ok(())
    }

    fn write_f32(&self, v: View, src: &[f32], what: &str) -> Result<()> {
        let p = self.span(v, src.len() as u64 * 4, what)?;
        // SAFETY: `p` is valid for the length (span); src is host scratch, no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr() as *const u8, p, src.len() * 4) };
        Ok(())
    }

    /// Reads `n` elements of a KV cache (f16 or f32) as f32.
    fn read_kv(&self, v: View, n: usize, kv_type: u32, dst: &mut Vec<f32>, what: &str) -> Result<()> {
        match kv_type {
            abi::TYPE_F32 => self.read_f32(v, n, dst, what),
            abi::TYPE_F16 => {
                let p = self.span(v, n as u64 * 2, what)?;
                dst.resize(n, 0.0);
                for (i, d) in dst.iter_mut().enumerate() {
                    // SAFETY: i < n and `p` is valid for n*2 bytes; unaligned read of 2 bytes.
                    let bits = unsafe { std::ptr::read_unaligned((p as *const u16).add(i)) };
                    *d = f16::from_bits(bits).to_f32();
                }
                Ok(())
            }
            t => Err(Error::unsupported(format!("{what}: KV cache type {t}"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn elementwise(
        &self,
        s: &mut RefStream,
        a: View,
        b: View,
        out: View,
        n: u64,
        what: &str,
        f: impl Fn(f32, f32) -> f32,
    ) -> Result<()> {
        let n = n as usize;
        self.read_f32(a, n, &mut s.a, what)?;
        self.read_f32(b, n, &mut s.b, what)?;
        for (x, y) in s.a.iter_mut().zip(&s.b) {
            *x = f(*x, *y);
        }
        self.write_f32(out, &s.a, what)
    }
}

impl Reference {
    /// Copies `n` f16 values at `v` into `dst`.
    fn read_f16(&self, v: View, n: usize, dst: &mut Vec<f16>, what: &str) -> Result<()> {
        let p = self.span(v, n as u64 * 2, what)?;
        dst.resize(n, f16::ZERO);
        // SAFETY: `p` is valid for n*2 bytes (span); `dst` holds n f16 (2 bytes each, any bit
        // pattern valid); host scratch and device memory do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr() as *mut u8, n * 2) };
        Ok(())
    }

    /// Attention over an f16 cache with the CPU path's numerics (those of the reference engine's
    /// CPU flash attention): the query rounded to f16, f16·f16 dot products summed in f32, one
    /// pass with a running maximum and sum, the value accumulator held in f16. Queries are in
    /// `s.a` already.
    fn attention_f16(
        &self,
        s: &mut RefStream,
        k: View,
        v: View,
        out: View,
        p: &AttentionParams,
        cache_elems: usize,
    ) -> Result<()> {
        use kernels_cpu::ops;
        let (nt, nh, nkv, hd) = (p.n_tokens as usize, p.n_head as usize, p.n_head_kv as usize, p.head_dim as usize);
        let stride = p.kv_stride as usize;
        self.read_f16(k, cache_elems, &mut s.k16, "attention k")?;
        self.read_f16(v, cache_elems, &mut s.v16, "attention v")?;
        s.c.clear();
        s.c.resize(nt * nh * hd, 0.0);
        s.q16.resize(hd, f16::ZERO);
        s.acc16.resize(hd, f16::ZERO);
        s.scores.resize(hd, 0.0); // the f32 view of the accumulator
        let group = nh / nkv;
        for t in 0..nt {
            let i = p.pos0 as usize + t;
            let first = if p.window > 0 { (i + 1).saturating_sub(p.window as usize) } else { 0 };
            for h in 0..nh {
                let kvo = (h / group) * hd;
                ops::f32_to_f16_slice(&s.a[(t * nh + h) * hd..][..hd], &mut s.q16);
                let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
                s.acc16.fill(f16::ZERO);
                let acc = &mut s.scores[..hd];
                for j in first..=i {
                    let mut sc = ops::dot_f16(&s.q16, &s.k16[j * stride + kvo..][..hd]) * p.scale;
                    if p.softcap > 0.0 {
                        sc = p.softcap * (sc / p.softcap).tanh();
                    }
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    ops::f16_to_f32_slice(&s.acc16, acc);
                    if sc > m {
                        ms = if m == f32::NEG_INFINITY { 0.0 } else { (m - sc).exp() };
                        m = sc;
                        if ms != 1.0 {
                            ops::scale(acc, ms);
                            ops::f32_to_f16_slice(acc, &mut s.acc16);
                            ops::f16_to_f32_slice(&s.acc16, acc);
                        }
                    } else {
                        vs = (sc - m).exp();
                    }
                    ops::axpy_f16(acc, vs, &s.v16[j * stride + kvo..][..hd]);
                    ops::f32_to_f16_slice(acc, &mut s.acc16);
                    sum = sum * ms + vs;
                }
                let o = &mut s.c[(t * nh + h) * hd..][..hd];
                ops::f16_to_f32_slice(&s.acc16, o);
                ops::scale(o, if sum == 0.0 { 0.0 } else { 1.0 / sum });
            }
        }
        self.write_f32(out, &s.c, "attention output")
    }
}

impl Device for Reference {
    type Stream = RefStream;
    const NAME: &'static str = "reference";

    fn device_count() -> Result<u32> {
        if fault().as_deref() == Some("no-device") {
            return Err(Error::new(abi::ERR_NO_DEVICE, "no device (LLAMAFILE_REFERENCE_FAULT=no-device)"));
        }
        Ok(1)
    }

    fn device_info(device: u32) -> Result<DeviceInfo> {
        if device != 0 {
            return Err(Error::invalid(format!("no device {device}")));
        }
        let limit = limit_from_env();
        let name = format!("CPU reference (kernels-cpu, {})", kernels_cpu::kernels().isa.name());
        Ok(DeviceInfo {
            name: abi::name_field(&name),
            total_memory: limit,
            free_memory: limit,
            // Not an accelerator: used only when chosen explicitly.
            score: 0,
            flags: abi::DEVICE_UNIFIED_MEMORY,
            compute_capability: 0,
            _reserved: 0,
        })
    }

    fn init(device: u32) -> Result<Self> {
        if fault().as_deref() == Some("init") {
            return Err(Error::new(abi::ERR_DEVICE, "device initialisation failed (LLAMAFILE_REFERENCE_FAULT=init)"));
        }
        if device != 0 {
            return Err(Error::invalid(format!("no device {device}")));
        }
        Ok(Reference {
            panic_fault: fault().as_deref() == Some("panic"),
            buffers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            used: AtomicU64::new(0),
            limit: limit_from_env(),
        })
    }

    fn reported_abi_version() -> u32 {
        if fault().as_deref() == Some("version") {
            abi::ABI_VERSION + 1000
        } else {
            abi::ABI_VERSION
        }
    }

    fn supports_type(&self, ggml_type: u32) -> bool {
        WeightType::from_ggml(ggml_type).is_some_and(|t| kernels_cpu::kernels().get(t).is_some())
    }

    fn alloc(&self, bytes: u64) -> Result<u64> {
        let used = self.used.fetch_add(bytes, Ordering::SeqCst);
        if used.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::new(
                abi::ERR_OUT_OF_MEMORY,
                format!("cannot allocate {bytes} bytes: {used} of {} in use", self.limit),
            ));
        }
        let len = (bytes as usize).max(1);
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).map_err(|e| Error::invalid(e.to_string()))?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::new(abi::ERR_OUT_OF_MEMORY, format!("cannot allocate {bytes} bytes")));
        }
        let h = self.next.fetch_add(1, Ordering::SeqCst);
        self.buffers.lock().unwrap_or_else(|e| e.into_inner()).insert(h, Allocation { ptr, len });
        Ok(h)
    }

    fn free(&self, buf: u64) {
        let a = self.buffers.lock().unwrap_or_else(|e| e.into_inner()).remove(&buf);
        if let Some(a) = a {
            self.used.fetch_sub(a.len as u64, Ordering::SeqCst);
            // SAFETY: allocated in `alloc` with this layout; removed from the map, so freed once.
            unsafe { std::alloc::dealloc(a.ptr, std::alloc::Layout::from_size_align_unchecked(a.len, ALIGN)) };
        }
    }

    fn stream_create(&self) -> Result<RefStream> {
        Ok(RefStream::default())
    }

    fn synchronize(&self, _s: &mut RefStream) -> Result<()> {
        // Every operation runs to completion before it returns.
        Ok(())
    }

    fn upload(&self, _s: &mut RefStream, dst: View, src: &[u8]) -> Result<()> {
        let p = self.span(dst, src.len() as u64, "upload")?;
        // SAFETY: `p` is valid for src.len() bytes; host memory and device memory are distinct.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    fn download(&self, _s: &mut RefStream, src: View, dst: &mut [u8]) -> Result<()> {
        let p = self.span(src, dst.len() as u64, "download")?;
        // SAFETY: as in upload.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn matmul(&self, s: &mut RefStream, w: &Weight, x: View, n_tokens: u32, y: View) -> Result<()> {
        if self.panic_fault {
            panic!("injected panic (LLAMAFILE_REFERENCE_FAULT=panic)");
        }
        let wtype = WeightType::from_ggml(w.ggml_type)
            .filter(|_| self.supports_type(w.ggml_type))
            .ok_or_else(|| Error::unsupported(format!("weight type {}", w.ggml_type)))?;
        let (rows, cols, n) = (w.rows as usize, w.cols as usize, n_tokens as usize);
        let row_bytes = abi::row_bytes(w.ggml_type, w.cols).ok_or_else(|| {
            Error::invalid(format!("{cols} columns is not a whole number of {} blocks", wtype.name()))
        })?;
        let wbytes = row_bytes * w.rows;
        let wp = self.span(w.data, wbytes, "matmul weight")?;
        // SAFETY: `wp` is valid for wbytes bytes (span); weights are written only by upload, which
        // the runtime finishes before any matmul reads them.
        let wslice = unsafe { std::slice::from_raw_parts(wp as *const u8, wbytes as usize) };
        self.read_f32(x, n * cols, &mut s.a, "matmul input")?;
        s.b.resize(n * rows, 0.0);
        kernels_cpu::matmul::matmul(wslice, wtype, rows, cols, &s.a, n, &mut s.b, &mut s.mm);
        self.write_f32(y, &s.b, "matmul output")
    }

    fn rmsnorm(
        &self,
        s: &mut RefStream,
        x: View,
        weight: View,
        n_rows: u32,
        dim: u32,
        eps: f32,
        out: View,
    ) -> Result<()> {
        let (rows, dim) = (n_rows as usize, dim as usize);
        self.read_f32(x, rows * dim, &mut s.a, "rmsnorm input")?;
        let w: &[f32] = if weight.is_none() {
            s.ones.resize(dim, 1.0);
            &s.ones
        } else {
            self.read_f32(weight, dim, &mut s.b, "rmsnorm weight")?;
            &s.b
        };
        for row in s.a.chunks_exact_mut(dim.max(1)) {
            kernels_cpu::ops::rmsnorm_inplace(row, w, eps);
        }
        self.write_f32(out, &s.a, "rmsnorm output")
    }

    fn rope(&self, s: &mut RefStream, x: View, p: &RopeParams) -> Result<()> {
        let (nt, nh, hd, nr) = (p.n_tokens as usize, p.n_heads as usize, p.head_dim as usize, p.n_rot as usize);
        if nr > hd || !nr.is_multiple_of(2) || nr > kernels_cpu::ops::MAX_ROT {
            return Err(Error::invalid(format!("rope: n_rot {nr} with head_dim {hd}")));
        }
        self.read_f32(x, nt * nh * hd, &mut s.a, "rope")?;
        let factors = if p.freq_factors.buf == 0 {
            None
        } else {
            let mut f = Vec::new();
            self.read_f32(p.freq_factors, nr / 2, &mut f, "rope factors")?;
            Some(f)
        };
        let rope = kernels_cpu::ops::Rope {
            n_rot: nr,
            base: p.freq_base,
            freq_scale: p.freq_scale,
            neox: p.mode == abi::ROPE_NEOX,
            factors,
            attn_factor: p.attn_factor,
        };
        for (t, row) in s.a.chunks_exact_mut((nh * hd).max(1)).enumerate() {
            rope.apply(row, nh, hd, p.pos0 as usize + t);
        }
        self.write_f32(x, &s.a, "rope")
    }

    fn add(&self, s: &mut RefStream, a: View, b: View, out: View, n: u64) -> Result<()> {
        self.elementwise(s, a, b, out, n, "add", |x, y| x + y)
    }

    fn mul(&self, s: &mut RefStream, a: View, b: View, out: View, n: u64) -> Result<()> {
        self.elementwise(s, a, b, out, n, "mul", |x, y| x * y)
    }

    fn add_rows(&self, s: &mut RefStream, x: View, bias: View, n_rows: u32, dim: u32) -> Result<()> {
        let (rows, dim) = (n_rows as usize, dim as usize);
        self.read_f32(x, rows * dim, &mut s.a, "add_rows input")?;
        self.read_f32(bias, dim, &mut s.b, "add_rows bias")?;
        for row in s.a.chunks_exact_mut(dim.max(1)) {
            for (v, b) in row.iter_mut().zip(&s.b) {
                *v += b;
            }
        }
        self.write_f32(x, &s.a, "add_rows output")
    }

    fn scale(&self, s: &mut RefStream, x: View, factor: f32, n: u64) -> Result<()> {
        self.read_f32(x, n as usize, &mut s.a, "scale")?;
        s.a.iter_mut().for_each(|v| *v *= factor);
        self.write_f32(x, &s.a, "scale")
    }

    fn glu(&self, s: &mut RefStream, gate: View, up: View, out: View, n: u64, act: u32) -> Result<()> {
        // kernels-cpu's activations, the CPU path's numerics (GELU through the reference
        // engine's f16 table).
        let f: fn(&mut [f32], &[f32]) = match act {
            abi::GLU_SILU => kernels_cpu::ops::silu_mul,
            abi::GLU_GELU_TANH => kernels_cpu::ops::gelu_mul,
            a => return Err(Error::unsupported(format!("glu activation {a}"))),
        };
        let n = n as usize;
        self.read_f32(gate, n, &mut s.a, "glu gate")?;
        self.read_f32(up, n, &mut s.b, "glu up")?;
        f(&mut s.a, &s.b);
        self.write_f32(out, &s.a, "glu output")
    }

    fn copy(&self, s: &mut RefStream, src: View, dst: View, dst_type: u32, n: u64) -> Result<()> {
        let n = n as usize;
        self.read_f32(src, n, &mut s.a, "copy source")?;
        match dst_type {
            abi::TYPE_F32 => self.write_f32(dst, &s.a, "copy destination"),
            abi::TYPE_F16 => {
                let p = self.span(dst, n as u64 * 2, "copy destination")? as *mut u16;
                for (i, v) in s.a.iter().enumerate() {
                    // SAFETY: i < n and `p` is valid for n*2 bytes; unaligned write of 2 bytes.
                    unsafe { std::ptr::write_unaligned(p.add(i), f16::from_f32(*v).to_bits()) };
                }
                Ok(())
            }
            t => Err(Error::unsupported(format!("copy to type {t}"))),
        }
    }

    fn attention(&self, s: &mut RefStream, q: View, k: View, v: View, out: View, p: &AttentionParams) -> Result<()> {
        let (nt, nh, nkv, hd) = (p.n_tokens as usize, p.n_head as usize, p.n_head_kv as usize, p.head_dim as usize);
        let stride = p.kv_stride as usize;
        if nkv == 0 || !nh.is_multiple_of(nkv) || stride < nkv * hd {
            return Err(Error::invalid(format!("attention: {nh} heads over {nkv} KV heads, stride {stride}")));
        }
        let n_pos = p.pos0 as usize + nt;
        let cache_elems = (n_pos - 1) * stride + nkv * hd;
        self.read_f32(q, nt * nh * hd, &mut s.a, "attention q")?;
        if p.kv_type == abi::TYPE_F16 {
            return self.attention_f16(s, k, v, out, p, cache_elems);
        }
        self.read_kv(k, cache_elems, p.kv_type, &mut s.k, "attention k")?;
        self.read_kv(v, cache_elems, p.kv_type, &mut s.v, "attention v")?;
        s.c.clear();
        s.c.resize(nt * nh * hd, 0.0);
        s.scores.resize(n_pos, 0.0);
        let group = nh / nkv;
        for t in 0..nt {
            let i = p.pos0 as usize + t;
            let first = if p.window > 0 { (i + 1).saturating_sub(p.window as usize) } else { 0 };
            for h in 0..nh {
                let qh = &s.a[(t * nh + h) * hd..][..hd];
                let kvo = (h / group) * hd;
                let mut max = f32::NEG_INFINITY;
                for j in first..=i {
                    let kj = &s.k[j * stride + kvo..][..hd];
                    let mut sc = dot(qh, kj) * p.scale;
                    if p.softcap > 0.0 {
                        sc = p.softcap * (sc / p.softcap).tanh();
                    }
                    s.scores[j] = sc;
                    max = max.max(sc);
                }
                let mut sum = 0.0f32;
                for j in first..=i {
                    let e = (s.scores[j] - max).exp();
                    s.scores[j] = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                let o = &mut s.c[(t * nh + h) * hd..][..hd];
                for j in first..=i {
                    let w = s.scores[j] * inv;
                    let vj = &s.v[j * stride + kvo..][..hd];
                    for (a, b) in o.iter_mut().zip(vj) {
                        *a += w * b;
                    }
                }
            }
        }
        self.write_f32(out, &s.c, "attention output")
    }
}
