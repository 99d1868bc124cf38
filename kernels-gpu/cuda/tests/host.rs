//! Every CUDA kernel, checked without a GPU: the embedded sources compiled as C++20 with a
//! prelude that emulates CUDA's execution model (each thread of a block is a host thread,
//! `__syncthreads` a barrier, `__shfl_xor_sync` an exchange through the warp's slots behind a
//! 32-thread barrier), launched with the same grid and block shapes as `src/device.rs`, and
//! compared with kernels-cpu's dequantization and plain formulas. Skipped with a message when no
//! C++20 compiler is found.

use llamafile_gpu_cuda::kernels;
use std::process::Command;

const PRELUDE: &str = r#"
#define LLAMAFILE_HOST_TEST 1
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
struct dim3h { unsigned x, y, z; };
thread_local dim3h threadIdx, blockIdx;
static dim3h blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
using std::min; using std::max;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
struct Warp { float slot[32]; std::barrier<>* bar; };
thread_local Warp* tl_warp;
thread_local int tl_lane;
static std::barrier<>* g_block_bar;
inline float __shfl_xor_sync(unsigned, float v, int o) {
    tl_warp->slot[tl_lane] = v;
    tl_warp->bar->arrive_and_wait();
    const float r = tl_warp->slot[tl_lane ^ o];
    tl_warp->bar->arrive_and_wait();
    return r;
}
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
template <class F> void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, F f) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    const unsigned nt = bx * by;
    for (unsigned gyi = 0; gyi < gy; gyi++) for (unsigned gxi = 0; gxi < gx; gxi++) {
        std::vector<Warp> warps((nt + 31) / 32);
        std::vector<std::barrier<>*> bars;
        for (auto& w : warps) { w.bar = new std::barrier<>(32); bars.push_back(w.bar); }
        std::barrier<> block_bar(nt);
        g_block_bar = &block_bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nt; t++) ts.emplace_back([&, t] {
            threadIdx = {t % bx, t / bx, 0};
            blockIdx = {gxi, gyi, 0};
            tl_warp = &warps[t / 32];
            tl_lane = t % 32;
            f();
        });
        for (auto& t : ts) t.join();
        for (auto* b : bars) delete b;
    }
}
"#;

/// Launch wrappers with the shapes of src/device.rs (BLOCK = 256; matmul 32x4 threads, tiles of
/// 4 rows x 8 tokens; attention 32x4 threads, one warp per (token, head)). `build` adds a
/// `HOST_MATMUL` line per kernel of `kernels::weight_types()`.
const WRAPPERS: &str = r#"
static unsigned cdiv(unsigned long long a, unsigned long long b) { return (unsigned)((a + b - 1) / b); }
#define HOST_MATMUL(NAME) extern "C" void host_##NAME(const u8* W, u64 rb, int rows, int cols, const float* x, int n, float* y) { \
    launch(cdiv(rows, 4), cdiv(n, 8), 32, 4, [&] { NAME(W, rb, rows, cols, x, n, y); }); }
extern "C" void host_rmsnorm(const float* x, const float* w, int rows, int dim, float eps, float* out) {
    launch(rows, 1, 256, 1, [&] { rmsnorm(x, w, dim, eps, out); }); }
extern "C" void host_rope(float* x, int nt, int nh, int hd, int nr, int pos0, int mode, float base, float fs, const float* ff,
                          float af) {
    launch(cdiv((u64)nt * nh * (nr / 2), 256), 1, 256, 1, [&] { rope(x, nt, nh, hd, nr, pos0, mode, base, fs, ff, af); }); }
extern "C" void host_glu(const float* g, const float* u, float* o, u64 n, int act) {
    launch(cdiv(n, 256), 1, 256, 1, [&] { glu(g, u, o, n, act); }); }
extern "C" void host_add_rows(float* x, const float* b, int dim, u64 n) {
    launch(cdiv(n, 256), 1, 256, 1, [&] { add_rows(x, b, dim, n); }); }
extern "C" void host_copy_f32_f16(const float* s, u16* d, u64 n) {
    launch(cdiv(n, 256), 1, 256, 1, [&] { copy_f32_f16(s, d, n); }); }
extern "C" void host_attention(const float* q, const void* k, const void* v, float* out, int nt, int pos0, int nh,
                               int nkv, int hd, int stride, int f16, int window, float scale, float softcap) {
    launch(cdiv((u64)nt * nh, 4), 1, 32, 4, [&] { attention(q, k, v, out, nt, pos0, nh, nkv, hd, stride, f16, window, scale, softcap); }); }
"#;

type MatmulFn = unsafe extern "C" fn(*const u8, u64, i32, i32, *const f32, i32, *mut f32);
type RmsFn = unsafe extern "C" fn(*const f32, *const f32, i32, i32, f32, *mut f32);
type RopeFn = unsafe extern "C" fn(*mut f32, i32, i32, i32, i32, i32, i32, f32, f32, *const f32, f32);
type GluFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, u64, i32);
type AddRowsFn = unsafe extern "C" fn(*mut f32, *const f32, i32, u64);
type CopyFn = unsafe extern "C" fn(*const f32, *mut u16, u64);
type Att32Fn = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    f32,
);
type AttFn = unsafe extern "C" fn(
    *const f32,
    *const u16,
    *const u16,
    *mut f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    f32,
);

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: kernel {g}, expected {w}");
    }
}

/// Builds the kernels for the host; None (with a message) without a C++20 compiler.
fn build(dir: &std::path::Path) -> Option<libloading::Library> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        test_support::skip(
            &format!("a C++ compiler ({cxx}) to build the CUDA sources for the host"),
            "install g++, or set CXX",
        );
        return None;
    }
    let src = dir.join("kernels_host.cpp");
    let matmuls: String =
        kernels::weight_types().into_iter().map(|t| format!("HOST_MATMUL({})\n", kernels::matmul_kernel(t))).collect();
    std::fs::write(&src, format!("{PRELUDE}\n{}\n{WRAPPERS}\n{matmuls}", kernels::program())).unwrap();
    let so = dir.join("libkernels_host.so");
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&so)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("barrier") && err.contains("No such file") {
            test_support::skip(&format!("C++20 <barrier> in {cxx}"), "install g++ 11 or newer, or set CXX");
            return None;
        }
        panic!("the CUDA sources do not compile as host C++:\n{err}");
    }
    // SAFETY: the library was just built from our own sources and the wrappers above.
    Some(unsafe { libloading::Library::new(&so) }.unwrap())
}

#[test]
fn every_kernel_on_the_host_matches_kernels_cpu_and_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = build(dir.path()) else { return };
    // SAFETY (every `get` and call below): symbols of the library just built, with the
    // signatures of the wrappers; every buffer is sized for the shapes passed.
    unsafe {
        // ---- matmul, every weight type, 5 rows x 1024 columns, 11 tokens (two token tiles) ----
        let (rows, cols, n) = (5usize, 1024usize, 11usize);
        let x = rand_vec(n * cols, 1);
        // The types that must offload (the list is read from matmul.cu, so a dropped line would
        // otherwise only shrink the loop).
        use ggml_types::WeightType::*;
        for t in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS] {
            assert!(kernels::weight_types().contains(&t), "no CUDA matmul kernel for {}", t.name());
        }
        for wt in kernels::weight_types() {
            let name = format!("host_{}", kernels::matmul_kernel(wt));
            let f: libloading::Symbol<MatmulFn> = lib.get(name.as_bytes()).unwrap();
            let wf: Vec<f32> = rand_vec(rows * cols, 7 + wt.id() as u64).iter().map(|v| v * 3.0).collect();
            let rb = wt.row_bytes(cols);
            let mut q = vec![0u8; rb * rows];
            kernels_cpu::types::quantize_row(wt, &wf, &mut q);
            let mut deq = vec![0f32; rows * cols];
            kernels_cpu::types::dequantize_row(wt, &q, &mut deq);
            let mut y = vec![0f32; n * rows];
            f(q.as_ptr(), rb as u64, rows as i32, cols as i32, x.as_ptr(), n as i32, y.as_mut_ptr());
            for tok in 0..n {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| deq[r * cols + c] as f64 * x[tok * cols + c] as f64);
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    let got = y[tok * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * scale.max(1.0),
                        "{}: token {tok} row {r}: kernel {got}, kernels-cpu {want}",
                        wt.name()
                    );
                }
            }
        }

        // ---- rmsnorm: 3 rows of 300 (not a multiple of the block), with and without weight ----
        let rms: libloading::Symbol<RmsFn> = lib.get(b"host_rmsnorm").unwrap();
        let xs = rand_vec(900, 2);
        let w = rand_vec(300, 3);
        let mut out = vec![0f32; 900];
        let w = &w;
        let want = |weighted: bool| -> Vec<f32> {
            xs.chunks(300)
                .flat_map(|r| {
                    let s = 1.0 / (r.iter().map(|v| v * v).sum::<f32>() / 300.0 + 1e-5).sqrt();
                    r.iter()
                        .enumerate()
                        .map(move |(i, v)| v * s * if weighted { w[i] } else { 1.0 })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        rms(xs.as_ptr(), w.as_ptr(), 3, 300, 1e-5, out.as_mut_ptr());
        close("rmsnorm", &out, &want(true), 1e-5);
        rms(xs.as_ptr(), std::ptr::null(), 3, 300, 1e-5, out.as_mut_ptr());
        close("rmsnorm without weight", &out, &want(false), 1e-5);

        // ---- rope, both layouts, partial rotation (n_rot 16 of head 32), with and without
        // per-dimension factors and an attention factor, against the specification
        // (kernels_cpu::ops::Rope) ----
        let rope: libloading::Symbol<RopeFn> = lib.get(b"host_rope").unwrap();
        let (nt, nh, hd, nr, pos0) = (3usize, 2usize, 32usize, 16usize, 7usize);
        let factors: Vec<f32> = (0..nr / 2).map(|i| 1.0 + i as f32 * 0.75).collect();
        for (mode, af) in [(0, 1.0), (2, 1.0), (0, 1.2247), (2, 1.2247)] {
            for ff in [None, Some(factors.clone())] {
                let x0 = rand_vec(nt * nh * hd, 4);
                let mut x = x0.clone();
                rope(
                    x.as_mut_ptr(),
                    nt as i32,
                    nh as i32,
                    hd as i32,
                    nr as i32,
                    pos0 as i32,
                    mode,
                    10000.0,
                    0.5,
                    ff.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                    af,
                );
                let spec = kernels_cpu::ops::Rope {
                    n_rot: nr,
                    base: 10000.0,
                    freq_scale: 0.5,
                    neox: mode == 2,
                    factors: ff.clone(),
                    attn_factor: af,
                };
                let mut want = x0.clone();
                for (t, row) in want.chunks_exact_mut(nh * hd).enumerate() {
                    spec.apply(row, nh, hd, pos0 + t);
                }
                close(&format!("rope mode {mode} factors {} attn_factor {af}", ff.is_some()), &x, &want, 1e-5);
            }
        }

        // ---- glu, add_rows, f16 copy ----
        let glu: libloading::Symbol<GluFn> = lib.get(b"host_glu").unwrap();
        let (g, u) = (rand_vec(700, 5).iter().map(|v| v * 4.0).collect::<Vec<f32>>(), rand_vec(700, 6));
        let mut o = vec![0f32; 700];
        glu(g.as_ptr(), u.as_ptr(), o.as_mut_ptr(), 700, 0);
        close("silu", &o, &g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect::<Vec<_>>(), 1e-6);
        // GELU: exactly kernels-cpu's (the reference engine's f16 table), inputs past +-10 too.
        let g: Vec<f32> = g.iter().map(|v| v * 3.0).collect();
        glu(g.as_ptr(), u.as_ptr(), o.as_mut_ptr(), 700, 1);
        let mut want = g.clone();
        kernels_cpu::ops::gelu_mul(&mut want, &u);
        close("gelu", &o, &want, 1e-6);
        let add_rows: libloading::Symbol<AddRowsFn> = lib.get(b"host_add_rows").unwrap();
        let mut xr = rand_vec(12, 7);
        let want: Vec<f32> = xr.iter().enumerate().map(|(i, v)| v + (i % 4) as f32).collect();
        add_rows(xr.as_mut_ptr(), [0.0f32, 1.0, 2.0, 3.0].as_ptr(), 4, 12);
        close("add_rows", &xr, &want, 0.0);
        let copy: libloading::Symbol<CopyFn> = lib.get(b"host_copy_f32_f16").unwrap();
        let mut vals = rand_vec(1000, 8).iter().map(|v| v * 70000.0).collect::<Vec<f32>>();
        vals.extend([1e-6f32, -3e-7, 6.1e-5, 0.0, 65504.0, 1e9]);
        let mut h = vec![0u16; vals.len()];
        copy(vals.as_ptr(), h.as_mut_ptr(), vals.len() as u64);
        for (v, h) in vals.iter().zip(&h) {
            assert_eq!(*h, half::f16::from_f32(*v).to_bits(), "f32 {v} -> f16");
        }

        // ---- attention: GQA, f16 cache, causal with and without window, softcap ----
        let att: libloading::Symbol<AttFn> = lib.get(b"host_attention").unwrap();
        let (nt, pos0, nh, nkv, hd) = (3usize, 4usize, 4usize, 2usize, 64usize);
        let n_pos = pos0 + nt;
        let stride = nkv * hd;
        let q = rand_vec(nt * nh * hd, 9);
        let kf = rand_vec(n_pos * stride, 10);
        let vf = rand_vec(n_pos * stride, 11);
        let k16: Vec<u16> = kf.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
        let v16: Vec<u16> = vf.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
        let kr: Vec<f32> = k16.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect();
        let vr: Vec<f32> = v16.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect();
        // Expected: exact f32 softmax (the kernel rounds the query and the accumulator to f16,
        // so the tolerance is a few f16 ulps), plus an exact run over an f32 cache below.
        for (window, softcap) in [(0usize, 0.0f32), (2, 0.0), (0, 1.5)] {
            let mut o = vec![0f32; nt * nh * hd];
            let scale = 1.0 / (hd as f32).sqrt() * 4.0;
            att(
                q.as_ptr(),
                k16.as_ptr(),
                v16.as_ptr(),
                o.as_mut_ptr(),
                nt as i32,
                pos0 as i32,
                nh as i32,
                nkv as i32,
                hd as i32,
                stride as i32,
                1,
                window as i32,
                scale,
                softcap,
            );
            let mut want = vec![0f32; nt * nh * hd];
            for t in 0..nt {
                let i = pos0 + t;
                let first = if window > 0 { (i + 1).saturating_sub(window) } else { 0 };
                for hq in 0..nh {
                    let g = hq / (nh / nkv);
                    let qh = &q[(t * nh + hq) * hd..][..hd];
                    let sc: Vec<f32> = (first..=i)
                        .map(|j| {
                            let s = (0..hd).map(|d| qh[d] * kr[j * stride + g * hd + d]).sum::<f32>() * scale;
                            if softcap > 0.0 {
                                softcap * (s / softcap).tanh()
                            } else {
                                s
                            }
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f32::MIN, f32::max);
                    let z: f32 = sc.iter().map(|s| (s - m).exp()).sum();
                    for d in 0..hd {
                        want[(t * nh + hq) * hd + d] =
                            (first..=i).zip(&sc).map(|(j, s)| (s - m).exp() / z * vr[j * stride + g * hd + d]).sum();
                    }
                }
            }
            close(&format!("attention window {window} softcap {softcap}"), &o, &want, 3e-3);
            if window == 0 && softcap == 0.0 {
                let mut o32 = vec![0f32; nt * nh * hd];
                let att32: libloading::Symbol<Att32Fn> = lib.get(b"host_attention").unwrap();
                att32(
                    q.as_ptr(),
                    kr.as_ptr(),
                    vr.as_ptr(),
                    o32.as_mut_ptr(),
                    nt as i32,
                    pos0 as i32,
                    nh as i32,
                    nkv as i32,
                    hd as i32,
                    stride as i32,
                    0,
                    0,
                    scale,
                    0.0,
                );
                close("attention over an f32 cache", &o32, &want, 1e-5);
            }
        }
    }
}
