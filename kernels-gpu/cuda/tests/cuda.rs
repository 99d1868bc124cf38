//! CUDA backend tests.
//! - `nvrtc_compiles_every_kernel_source`: runs wherever libnvrtc loads (CI installs it from
//!   PyPI), no GPU needed: every embedded source must compile, for several architectures.
//! - `gpu_*`: need an NVIDIA GPU and driver; skipped with a message otherwise. They compare the
//!   backend, through the C ABI, with kernels-cpu's dequantization and plain formulas.

use kernels_gpu::abi::{self, AttentionParams, RopeParams, View, Weight};
use kernels_gpu::client::{Device, GpuStream, Library};
use llamafile_gpu_cuda::kernels;
use std::path::PathBuf;
use std::sync::Arc;

#[test]
fn nvrtc_compiles_every_kernel_source() {
    if !kernels::nvrtc::available() {
        test_support::skip("libnvrtc", "pip install nvidia-cuda-nvrtc-cu12 and add its lib folder to LD_LIBRARY_PATH");
        return;
    }
    for (name, src) in kernels::SOURCES {
        let full = format!("{}\n{}", kernels::COMMON, src);
        let ptx =
            kernels::nvrtc::compile(&full, "compute_75").unwrap_or_else(|e| panic!("{name} does not compile:\n{e}"));
        assert!(ptx.contains(".entry"), "{name}: no kernel in the PTX");
    }
    // The whole program, for the oldest and newest architectures we expect users to have.
    for arch in ["compute_61", "compute_90"] {
        let ptx = kernels::nvrtc::compile(&kernels::program(), arch).unwrap_or_else(|e| panic!("{arch}:\n{e}"));
        for t in kernels::weight_types() {
            let k = kernels::matmul_kernel(t);
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: kernel {k} missing from the PTX");
        }
        for k in kernels::OP_KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: kernel {k} missing from the PTX");
        }
    }
    // A source with an error is reported with NVRTC's log, not a panic.
    let e =
        kernels::nvrtc::compile("extern \"C\" __global__ void k() { undefined_thing(); }", "compute_75").unwrap_err();
    assert!(e.contains("undefined_thing"), "{e}");
}

fn lib_path() -> PathBuf {
    test_support::cdylib("llamafile_gpu_cuda")
}

/// The device, or None (with a message) where there is no GPU.
fn gpu() -> Option<(Arc<Device>, GpuStream)> {
    let lib = Library::open(&lib_path()).expect("the CUDA backend library loads even without a GPU");
    assert_eq!(lib.name(), "cuda");
    match lib.devices() {
        Ok(d) => {
            assert!(d[0].score > 0);
            eprintln!("GPU: {} ({} MiB)", abi::name_str(&d[0].name), d[0].total_memory >> 20);
        }
        Err(e) => {
            test_support::skip_without_gpu(&e.to_string());
            return None;
        }
    }
    let dev = lib.init(0).expect("init");
    let s = dev.stream().expect("stream");
    Some((dev, s))
}

#[test]
fn without_a_gpu_the_library_says_why() {
    let lib = Library::open(&lib_path()).unwrap();
    if let Err(e) = lib.devices() {
        assert!(e.code == abi::ERR_NO_DEVICE || e.code == abi::ERR_DEVICE, "{e}");
        assert!(!e.message.is_empty());
    }
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn up(dev: &Arc<Device>, s: &mut GpuStream, v: &[f32]) -> kernels_gpu::client::Buffer {
    let b = dev.alloc(v.len() as u64 * 4).unwrap();
    s.upload_f32(b.view(), v).unwrap();
    b
}

fn down(s: &mut GpuStream, v: View, n: usize) -> Vec<f32> {
    let mut o = vec![0.0; n];
    s.download_f32(v, &mut o).unwrap();
    o
}

#[test]
fn gpu_matmul_every_weight_type() {
    let Some((dev, mut s)) = gpu() else { return };
    let (rows, cols, n) = (37usize, 512usize, 11usize);
    let x = rand_vec(n * cols, 1);
    let xb = up(&dev, &mut s, &x);
    let yb = dev.alloc((n * rows * 4) as u64).unwrap();
    for wt in kernels::weight_types() {
        let wf = rand_vec(rows * cols, 2 + wt.id() as u64);
        let mut q = vec![0u8; wt.row_bytes(cols) * rows];
        kernels_cpu::types::quantize_row(wt, &wf, &mut q);
        let mut deq = vec![0f32; rows * cols];
        kernels_cpu::types::dequantize_row(wt, &q, &mut deq);
        let wb = dev.alloc(q.len() as u64).unwrap();
        s.upload(wb.view(), &q).unwrap();
        let w = Weight { data: wb.view(), ggml_type: wt.id(), _reserved: 0, rows: rows as u64, cols: cols as u64 };
        s.matmul(&w, xb.view(), n as u32, yb.view()).unwrap();
        let got = down(&mut s, yb.view(), n * rows);
        for tok in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| deq[r * cols + c] as f64 * x[tok * cols + c] as f64).sum();
                let g = got[tok * rows + r] as f64;
                assert!(
                    (g - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{}: token {tok} row {r}: {g} vs {want}",
                    wt.name()
                );
            }
        }
    }
}

#[test]
fn gpu_ops_match_formulas() {
    let Some((dev, mut s)) = gpu() else { return };
    // rmsnorm
    let x = rand_vec(3 * 300, 7);
    let w = rand_vec(300, 8);
    let (xb, wb) = (up(&dev, &mut s, &x), up(&dev, &mut s, &w));
    let ob = dev.alloc(3 * 300 * 4).unwrap();
    s.rmsnorm(xb.view(), wb.view(), 3, 300, 1e-5, ob.view()).unwrap();
    let got = down(&mut s, ob.view(), 900);
    for r in 0..3 {
        let row = &x[r * 300..][..300];
        let sc = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / 300.0 + 1e-5).sqrt();
        for i in 0..300 {
            assert!((got[r * 300 + i] - row[i] * sc * w[i]).abs() < 1e-4);
        }
    }
    // rope (NEOX), then attention against a naive loop over an f16 cache.
    let (nh, nkv, hd, nt, pos0) = (4usize, 2usize, 64usize, 3usize, 5usize);
    let qv = rand_vec(nt * nh * hd, 9);
    let qb = up(&dev, &mut s, &qv);
    let rp = RopeParams {
        n_tokens: nt as u32,
        n_heads: nh as u32,
        head_dim: hd as u32,
        n_rot: hd as u32,
        pos0: pos0 as u32,
        mode: abi::ROPE_NEOX,
        freq_base: 10000.0,
        freq_scale: 1.0,
        attn_factor: 1.0,
        _reserved: 0,
        freq_factors: View::NONE,
    };
    s.rope(qb.view(), &rp).unwrap();
    let qr = down(&mut s, qb.view(), qv.len());
    for t in 0..nt {
        for h in 0..nh {
            for i in 0..hd / 2 {
                let th = (pos0 + t) as f32 * 10000f32.powf(-2.0 * i as f32 / hd as f32);
                let base = (t * nh + h) * hd;
                let (x0, x1) = (qv[base + i], qv[base + i + hd / 2]);
                assert!((qr[base + i] - (x0 * th.cos() - x1 * th.sin())).abs() < 1e-4);
            }
        }
    }
    // per-dimension factors (Llama 3.1's rope_freqs, LongRoPE's) and LongRoPE's attention factor,
    // against the specification
    let ff: Vec<f32> = (0..hd / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
    let fb = up(&dev, &mut s, &ff);
    let xb = up(&dev, &mut s, &qv);
    let p =
        RopeParams { mode: abi::ROPE_NORMAL, freq_base: 500000.0, freq_factors: fb.view(), attn_factor: 1.2247, ..rp };
    s.rope(xb.view(), &p).unwrap();
    let got = down(&mut s, xb.view(), qv.len());
    let spec = kernels_cpu::ops::Rope {
        factors: Some(ff.clone()),
        attn_factor: 1.2247,
        ..kernels_cpu::ops::Rope::normal(hd, 500000.0)
    };
    let mut want = qv.clone();
    for (t, row) in want.chunks_exact_mut(nh * hd).enumerate() {
        spec.apply(row, nh, hd, pos0 + t);
    }
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "rope with factors: {a} vs {b}");
    }
    let n_pos = pos0 + nt;
    let kv = rand_vec(n_pos * nkv * hd, 10);
    let vv = rand_vec(n_pos * nkv * hd, 11);
    let (kf, vf) = (up(&dev, &mut s, &kv), up(&dev, &mut s, &vv));
    let (kc, vc) = (dev.alloc((kv.len() * 2) as u64).unwrap(), dev.alloc((vv.len() * 2) as u64).unwrap());
    s.copy(kf.view(), kc.view(), abi::TYPE_F16, kv.len() as u64).unwrap();
    s.copy(vf.view(), vc.view(), abi::TYPE_F16, vv.len() as u64).unwrap();
    let h16 = |v: f32| half::f16::from_f32(v).to_f32();
    let ab = dev.alloc((nt * nh * hd * 4) as u64).unwrap();
    for window in [0usize, 3] {
        let p = AttentionParams {
            n_tokens: nt as u32,
            pos0: pos0 as u32,
            n_head: nh as u32,
            n_head_kv: nkv as u32,
            head_dim: hd as u32,
            kv_stride: (nkv * hd) as u32,
            kv_type: abi::TYPE_F16,
            window: window as u32,
            scale: 0.125,
            softcap: 0.0,
        };
        s.attention(qb.view(), kc.view(), vc.view(), ab.view(), &p).unwrap();
        let got = down(&mut s, ab.view(), nt * nh * hd);
        for t in 0..nt {
            let i = pos0 + t;
            let first = if window > 0 { (i + 1).saturating_sub(window) } else { 0 };
            for h in 0..nh {
                let g = h / (nh / nkv);
                let q = &qr[(t * nh + h) * hd..][..hd];
                let sc: Vec<f32> = (first..=i)
                    .map(|j| (0..hd).map(|d| q[d] * h16(kv[j * nkv * hd + g * hd + d])).sum::<f32>() * 0.125)
                    .collect();
                let m = sc.iter().cloned().fold(f32::MIN, f32::max);
                let z: f32 = sc.iter().map(|v| (v - m).exp()).sum();
                for d in 0..hd {
                    let want: f32 =
                        (first..=i).zip(&sc).map(|(j, v)| (v - m).exp() / z * h16(vv[j * nkv * hd + g * hd + d])).sum();
                    let gv = got[(t * nh + h) * hd + d];
                    // f16 query and accumulator (the CPU path's numerics): a few f16 ulps.
                    assert!(
                        (gv - want).abs() < 3e-3 * (1.0 + want.abs()),
                        "window {window} t {t} h {h} d {d}: {gv} vs {want}"
                    );
                }
            }
        }
    }
}
