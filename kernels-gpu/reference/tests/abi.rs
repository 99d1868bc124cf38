//! The reference backend through the real C ABI: the cdylib is loaded with the runtime's
//! loader (`kernels_gpu::client`), so the trampolines, status codes, messages and bounds checks
//! are what is tested here; the numbers of each operation are checked against plain formulas.

use kernels_gpu::abi::{self, AttentionParams, RopeParams, View, Weight};
use kernels_gpu::client::{Device, GpuStream, Library};
use std::path::PathBuf;
use std::sync::Arc;

fn lib_path() -> PathBuf {
    test_support::cdylib("llamafile_gpu_reference")
}

fn open() -> (Arc<Device>, GpuStream) {
    let lib = Library::open(&lib_path()).expect("load the reference backend");
    let dev = lib.init(0).expect("init");
    let s = dev.stream().expect("stream");
    (dev, s)
}

fn upload(dev: &Arc<Device>, s: &mut GpuStream, v: &[f32]) -> kernels_gpu::client::Buffer {
    let b = dev.alloc(v.len() as u64 * 4).unwrap();
    s.upload_f32(b.view(), v).unwrap();
    b
}

fn download(s: &mut GpuStream, v: View, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    s.download_f32(v, &mut out).unwrap();
    out
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}\n{a:?}\n{b:?}");
    }
}

#[test]
fn library_describes_itself() {
    let lib = Library::open(&lib_path()).unwrap();
    assert_eq!(lib.name(), "reference");
    let devs = lib.devices().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].score, 0, "the reference is not an accelerator");
    assert!(abi::name_str(&devs[0].name).starts_with("CPU reference"));
    assert!(devs[0].flags & abi::DEVICE_UNIFIED_MEMORY != 0);
}

#[test]
fn upload_download_and_bounds() {
    let (dev, mut s) = open();
    let b = dev.alloc(64).unwrap();
    let data: Vec<u8> = (0..64).collect();
    s.upload(b.view(), &data).unwrap();
    let mut back = vec![0u8; 16];
    s.download(b.at(48), &mut back).unwrap();
    assert_eq!(back, data[48..]);
    // One byte too far: an error with a message, not a crash.
    let mut over = vec![0u8; 17];
    let e = s.download(b.at(48), &mut over).unwrap_err();
    assert_eq!(e.code, abi::ERR_INVALID_ARGUMENT);
    assert!(e.message.contains("overrun"), "{}", e.message);
    // An unknown handle.
    let e = s.upload(View::new(9999, 0), &data).unwrap_err();
    assert!(e.message.contains("unknown buffer"), "{}", e.message);
}

#[test]
fn elementwise_ops() {
    let (dev, mut s) = open();
    let a = upload(&dev, &mut s, &[1.0, -2.0, 3.0, 0.5]);
    let b = upload(&dev, &mut s, &[0.5, 4.0, -1.0, 2.0]);
    let o = dev.alloc(16).unwrap();
    s.add(a.view(), b.view(), o.view(), 4).unwrap();
    close(&download(&mut s, o.view(), 4), &[1.5, 2.0, 2.0, 2.5], 0.0);
    s.mul(a.view(), b.view(), o.view(), 4).unwrap();
    close(&download(&mut s, o.view(), 4), &[0.5, -8.0, -3.0, 1.0], 0.0);
    // In place, as the ABI allows.
    s.add(a.view(), b.view(), a.view(), 4).unwrap();
    close(&download(&mut s, a.view(), 4), &[1.5, 2.0, 2.0, 2.5], 0.0);
    s.scale(a.view(), 2.0, 4).unwrap();
    close(&download(&mut s, a.view(), 4), &[3.0, 4.0, 4.0, 5.0], 0.0);
    // Two rows of two plus a bias.
    let bias = upload(&dev, &mut s, &[10.0, 20.0]);
    s.add_rows(a.view(), bias.view(), 2, 2).unwrap();
    close(&download(&mut s, a.view(), 4), &[13.0, 24.0, 14.0, 25.0], 0.0);

    let g = [-1.0f32, 0.0, 0.5, 3.0];
    let u = [2.0f32, 1.0, -1.0, 0.25];
    let gb = upload(&dev, &mut s, &g);
    let ub = upload(&dev, &mut s, &u);
    s.glu(gb.view(), ub.view(), o.view(), 4, abi::GLU_SILU).unwrap();
    let silu: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    close(&download(&mut s, o.view(), 4), &silu, 1e-6);
    s.glu(gb.view(), ub.view(), o.view(), 4, abi::GLU_GELU_TANH).unwrap();
    let gelu: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&g, u)| {
            0.5 * g * (1.0 + ((2.0f32 / std::f32::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) * u
        })
        .collect();
    // Through the reference engine's f16 GELU table (input and output rounded to f16).
    close(&download(&mut s, o.view(), 4), &gelu, 1e-3);
    let e = s.glu(gb.view(), ub.view(), o.view(), 4, 77).unwrap_err();
    assert_eq!(e.code, abi::ERR_UNSUPPORTED);
}

#[test]
fn rmsnorm_with_and_without_weight() {
    let (dev, mut s) = open();
    let x = [1.0f32, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 0.0];
    let w = [1.0f32, 0.5, 2.0, 1.0];
    let xb = upload(&dev, &mut s, &x);
    let wb = upload(&dev, &mut s, &w);
    let o = dev.alloc(32).unwrap();
    let eps = 1e-5f32;
    s.rmsnorm(xb.view(), wb.view(), 2, 4, eps, o.view()).unwrap();
    let mut want = Vec::new();
    for row in x.chunks(4) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
        let r = 1.0 / (ms + eps).sqrt();
        want.extend(row.iter().zip(&w).map(|(v, w)| v * r * w));
    }
    close(&download(&mut s, o.view(), 8), &want, 1e-6);
    // No weight, in place.
    s.rmsnorm(xb.view(), View::NONE, 2, 4, eps, xb.view()).unwrap();
    let unweighted: Vec<f32> = want.iter().enumerate().map(|(i, v)| v / w[i % 4]).collect();
    close(&download(&mut s, xb.view(), 8), &unweighted, 1e-6);
}

#[test]
fn rope_rotates_pairs_by_position() {
    let (dev, mut s) = open();
    // One head of 4, two tokens at positions 3 and 4; n_rot 4, base 100.
    let x = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    for mode in [abi::ROPE_NORMAL, abi::ROPE_NEOX] {
        let xb = upload(&dev, &mut s, &x);
        let p = RopeParams {
            n_tokens: 2,
            n_heads: 1,
            head_dim: 4,
            n_rot: 4,
            pos0: 3,
            mode,
            freq_base: 100.0,
            freq_scale: 1.0,
            attn_factor: 1.0,
            _reserved: 0,
            freq_factors: View::NONE,
        };
        s.rope(xb.view(), &p).unwrap();
        let got = download(&mut s, xb.view(), 8);
        let mut want = x;
        for t in 0..2 {
            let pos = (3 + t) as f32;
            for i in 0..2 {
                let theta = pos * 100f32.powf(-((2 * i) as f32) / 4.0);
                let (a, b) = if mode == abi::ROPE_NEOX { (i, i + 2) } else { (2 * i, 2 * i + 1) };
                let (x0, x1) = (x[t * 4 + a], x[t * 4 + b]);
                want[t * 4 + a] = x0 * theta.cos() - x1 * theta.sin();
                want[t * 4 + b] = x0 * theta.sin() + x1 * theta.cos();
            }
        }
        close(&got, &want, 1e-6);
        // Position 0 leaves a vector unchanged.
        let p0 = RopeParams { pos0: 0, n_tokens: 1, ..p };
        let yb = upload(&dev, &mut s, &[0.3, -0.7, 0.2, 0.9]);
        s.rope(yb.view(), &p0).unwrap();
        close(&download(&mut s, yb.view(), 4), &[0.3, -0.7, 0.2, 0.9], 0.0);
    }
}

#[test]
fn rope_with_factors_and_attn_factor_is_the_specification() {
    let (dev, mut s) = open();
    let (nt, nh, hd, nr) = (3usize, 2usize, 16usize, 12usize);
    let factors: Vec<f32> = (0..nr / 2).map(|i| 1.0 + 3.0 * i as f32).collect();
    let x: Vec<f32> = (0..nt * nh * hd).map(|i| (i as f32 * 0.37).sin()).collect();
    for mode in [abi::ROPE_NORMAL, abi::ROPE_NEOX] {
        let xb = upload(&dev, &mut s, &x);
        let fb = upload(&dev, &mut s, &factors);
        let p = RopeParams {
            n_tokens: nt as u32,
            n_heads: nh as u32,
            head_dim: hd as u32,
            n_rot: nr as u32,
            pos0: 40,
            mode,
            freq_base: 500000.0,
            freq_scale: 0.5,
            attn_factor: 1.2,
            _reserved: 0,
            freq_factors: fb.view(),
        };
        s.rope(xb.view(), &p).unwrap();
        let spec = kernels_cpu::ops::Rope {
            n_rot: nr,
            base: 500000.0,
            freq_scale: 0.5,
            neox: mode == abi::ROPE_NEOX,
            factors: Some(factors.clone()),
            attn_factor: 1.2,
        };
        let mut want = x.clone();
        for (t, row) in want.chunks_exact_mut(nh * hd).enumerate() {
            spec.apply(row, nh, hd, 40 + t);
        }
        close(&download(&mut s, xb.view(), x.len()), &want, 0.0);
        // without factors it is another rotation
        let yb = upload(&dev, &mut s, &x);
        s.rope(yb.view(), &RopeParams { freq_factors: View::NONE, ..p }).unwrap();
        assert_ne!(download(&mut s, yb.view(), x.len()), want);
        // and without the attention factor it is smaller
        let zb = upload(&dev, &mut s, &x);
        s.rope(zb.view(), &RopeParams { attn_factor: 1.0, ..p }).unwrap();
        assert_ne!(download(&mut s, zb.view(), x.len()), want);
    }
}

#[test]
fn kv_copy_and_attention() {
    let (dev, mut s) = open();
    // 2 query heads sharing 1 KV head of size 2; 3 positions in an f16 cache.
    let k = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
    let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let kb = upload(&dev, &mut s, &k);
    let vb = upload(&dev, &mut s, &v);
    let kc = dev.alloc(6 * 2).unwrap();
    let vc = dev.alloc(6 * 2).unwrap();
    s.copy(kb.view(), kc.view(), abi::TYPE_F16, 6).unwrap();
    s.copy(vb.view(), vc.view(), abi::TYPE_F16, 6).unwrap();
    // Queries for positions 1 and 2 (pos0 = 1, two tokens), two heads each.
    let q = [2.0f32, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, -1.0];
    let qb = upload(&dev, &mut s, &q);
    let o = dev.alloc(8 * 4).unwrap();
    let scale = 0.7f32;
    let mut p = AttentionParams {
        n_tokens: 2,
        pos0: 1,
        n_head: 2,
        n_head_kv: 1,
        head_dim: 2,
        kv_stride: 2,
        kv_type: abi::TYPE_F16,
        window: 0,
        scale,
        softcap: 0.0,
    };
    let naive = |window: usize| {
        let mut out = vec![0.0f32; 8];
        for t in 0..2 {
            let i: usize = 1 + t;
            let first = if window > 0 { (i + 1).saturating_sub(window) } else { 0 };
            for h in 0..2 {
                let qh = &q[(t * 2 + h) * 2..][..2];
                let sc: Vec<f32> = (first..=i).map(|j| (qh[0] * k[j * 2] + qh[1] * k[j * 2 + 1]) * scale).collect();
                let m = sc.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (n, j) in (first..=i).enumerate() {
                    for d in 0..2 {
                        out[(t * 2 + h) * 2 + d] += e[n] / z * v[j * 2 + d];
                    }
                }
            }
        }
        out
    };
    // The f16 path rounds the query and the value accumulator to f16, as the CPU path does.
    s.attention(qb.view(), kc.view(), vc.view(), o.view(), &p).unwrap();
    close(&download(&mut s, o.view(), 8), &naive(0), 2e-3);
    p.window = 1; // each position sees only itself
    s.attention(qb.view(), kc.view(), vc.view(), o.view(), &p).unwrap();
    let got = download(&mut s, o.view(), 8);
    close(&got, &naive(1), 2e-3);
    close(&got, &[3.0, 4.0, 3.0, 4.0, 5.0, 6.0, 5.0, 6.0], 1e-6);
    // An f32 cache takes the exact path.
    let (kc32, vc32) = (dev.alloc(6 * 4).unwrap(), dev.alloc(6 * 4).unwrap());
    s.copy(kb.view(), kc32.view(), abi::TYPE_F32, 6).unwrap();
    s.copy(vb.view(), vc32.view(), abi::TYPE_F32, 6).unwrap();
    p.window = 0;
    p.kv_type = abi::TYPE_F32;
    s.attention(qb.view(), kc32.view(), vc32.view(), o.view(), &p).unwrap();
    close(&download(&mut s, o.view(), 8), &naive(0), 1e-5);
    p.kv_type = abi::TYPE_F16;
    // A cache too short for the positions asked: a clear error.
    p.pos0 = 5;
    let e = s.attention(qb.view(), kc.view(), vc.view(), o.view(), &p).unwrap_err();
    assert_eq!(e.code, abi::ERR_INVALID_ARGUMENT, "{}", e.message);
}

#[test]
fn matmul_f32_and_f16_weights() {
    let (dev, mut s) = open();
    let (rows, cols, n) = (3usize, 64usize, 2usize);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 11 % 13) as f32 - 6.0) / 6.0).collect();
    let mut want = vec![0.0f32; n * rows];
    for t in 0..n {
        for r in 0..rows {
            want[t * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
        }
    }
    let xb = upload(&dev, &mut s, &x);
    let yb = dev.alloc((n * rows * 4) as u64).unwrap();
    // F32 weights.
    let wb = upload(&dev, &mut s, &w);
    let wt = Weight { data: wb.view(), ggml_type: abi::TYPE_F32, _reserved: 0, rows: rows as u64, cols: cols as u64 };
    s.matmul(&wt, xb.view(), n as u32, yb.view()).unwrap();
    close(&download(&mut s, yb.view(), n * rows), &want, 1e-4);
    // F16 weights (the values above are exact in f16).
    let wh: Vec<u8> = w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let whb = dev.alloc(wh.len() as u64).unwrap();
    s.upload(whb.view(), &wh).unwrap();
    let wt = Weight { data: whb.view(), ggml_type: abi::TYPE_F16, ..wt };
    s.matmul(&wt, xb.view(), n as u32, yb.view()).unwrap();
    close(&download(&mut s, yb.view(), n * rows), &want, 1e-2);
    // Weights shorter than rows x cols say so.
    let short = Weight { rows: 100, ..wt };
    let e = s.matmul(&short, xb.view(), n as u32, yb.view()).unwrap_err();
    assert_eq!(e.code, abi::ERR_INVALID_ARGUMENT, "{}", e.message);
    // A type id that does not exist.
    let bad = Weight { ggml_type: 4, ..wt };
    assert_eq!(s.matmul(&bad, xb.view(), n as u32, yb.view()).unwrap_err().code, abi::ERR_UNSUPPORTED);
}

#[test]
fn supports_exactly_the_weight_types_of_the_table() {
    // The reference backend runs every type kernels-cpu has, and those are the table's.
    let (dev, _s) = open();
    for info in kernels_cpu::types::TYPES {
        assert!(dev.supports_type(info.ty.id()), "{} not supported", info.ty);
    }
    for id in (0..256).chain([u32::MAX]) {
        let listed = kernels_cpu::WeightType::from_ggml(id).is_some();
        assert_eq!(dev.supports_type(id), listed, "type id {id}");
    }
}

/// Runs this test binary again with `fault` injected, executing only `child_fault_case`
/// (the reference backend reads its fault variables at init, so they need their own process).
fn run_child(env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_fault_case", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "child {env:?} failed:\n{text}");
}

#[test]
fn injected_faults_come_back_as_errors() {
    run_child(&[("LLAMAFILE_REFERENCE_FAULT", "init")]);
    run_child(&[("LLAMAFILE_REFERENCE_FAULT", "version")]);
    run_child(&[("LLAMAFILE_REFERENCE_FAULT", "no-device")]);
    run_child(&[("LLAMAFILE_REFERENCE_FAULT", "panic")]);
    run_child(&[("LLAMAFILE_REFERENCE_MEMORY", "1000")]);
}

#[test]
#[ignore = "run by injected_faults_come_back_as_errors in a child process"]
fn child_fault_case() {
    let fault = std::env::var("LLAMAFILE_REFERENCE_FAULT").unwrap_or_default();
    if fault == "version" {
        let e = Library::open(&lib_path()).err().expect("a wrong version must be refused");
        assert_eq!(e.code, abi::ERR_UNSUPPORTED);
        assert!(e.message.contains(&format!("ABI version {}", abi::ABI_VERSION + 1000)), "{}", e.message);
        return;
    }
    let lib = Library::open(&lib_path()).unwrap();
    match fault.as_str() {
        "init" => {
            let e = lib.init(0).err().expect("init must fail");
            assert_eq!(e.code, abi::ERR_DEVICE);
            assert!(e.message.contains("initialisation failed"), "{}", e.message);
        }
        "no-device" => {
            let e = lib.devices().unwrap_err();
            assert_eq!(e.code, abi::ERR_NO_DEVICE);
        }
        "panic" => {
            let dev = lib.init(0).unwrap();
            let mut s = dev.stream().unwrap();
            let b = dev.alloc(256).unwrap();
            let w = Weight { data: b.view(), ggml_type: abi::TYPE_F32, _reserved: 0, rows: 1, cols: 32 };
            let e = s.matmul(&w, b.view(), 1, b.at(128)).unwrap_err();
            assert_eq!(e.code, abi::ERR_PANIC);
            assert!(e.message.contains("injected panic"), "{}", e.message);
            // The library is still usable after a caught panic.
            s.upload(b.view(), &[1, 2, 3]).unwrap();
        }
        "" => {
            // LLAMAFILE_REFERENCE_MEMORY=1000
            let dev = lib.init(0).unwrap();
            let a = dev.alloc(600).unwrap();
            let e = dev.alloc(600).err().expect("over the limit");
            assert_eq!(e.code, abi::ERR_OUT_OF_MEMORY, "{}", e.message);
            drop(a);
            dev.alloc(600).expect("memory is given back on free");
        }
        f => panic!("unknown fault {f}"),
    }
}
