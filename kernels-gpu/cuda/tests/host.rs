//! The CUDA weight-format code, checked without a GPU: `matmul.cu` compiled as C++ with g++
//! (`LLAMAFILE_HOST_TEST`: the same dequantization functions, the warp's 32 lanes run one after
//! the other), loaded with dlopen, and compared with kernels-cpu's dequantization for every
//! weight type the CUDA backend supports. Skipped with a message when no C++ compiler is found.

use kernels_cpu::WeightType;
use llamafile_gpu_cuda::kernels;
use std::process::Command;

type MatmulFn = unsafe extern "C" fn(*const u8, u64, i32, i32, *const f32, i32, *mut f32);

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

#[test]
fn host_compiled_matmul_matches_kernels_cpu_for_every_type() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED: no C++ compiler ({cxx}) to build the CUDA sources for the host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("matmul_host.cpp");
    let matmul = kernels::SOURCES.iter().find(|(n, _)| *n == "matmul.cu").unwrap().1;
    std::fs::write(&src, format!("{}\n{}", kernels::COMMON, matmul)).unwrap();
    let so = dir.path().join("libmatmul_host.so");
    let out = Command::new(&cxx)
        .args(["-O1", "-shared", "-fPIC", "-DLLAMAFILE_HOST_TEST", "-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&so)
        .output()
        .unwrap();
    assert!(out.status.success(), "g++ failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: the library was just built from our own sources; its functions have the
    // MatmulFn signature (DEFINE_MATMUL in its host form).
    let lib = unsafe { libloading::Library::new(&so) }.unwrap();

    let (rows, cols, n) = (5usize, 1024usize, 3usize);
    let x = rand_vec(n * cols, 1);
    for &t in kernels::WEIGHT_TYPES {
        let wt = WeightType::from_ggml(t).unwrap();
        let name = kernels::matmul_kernel(t).unwrap();
        // SAFETY: see above.
        let f: libloading::Symbol<MatmulFn> = unsafe { lib.get(name.as_bytes()) }.unwrap_or_else(|_| panic!("{name} missing"));
        let wf: Vec<f32> = rand_vec(rows * cols, 7 + t as u64).iter().map(|v| v * 3.0).collect();
        let rb = wt.row_bytes(cols);
        let mut q = vec![0u8; rb * rows];
        kernels_cpu::types::quantize_row(wt, &wf, &mut q);
        let mut deq = vec![0f32; rows * cols];
        kernels_cpu::types::dequantize_row(wt, &q, &mut deq);
        let mut y = vec![0f32; n * rows];
        // SAFETY: buffers sized for rows x cols weights, n x cols inputs, n x rows outputs.
        unsafe { f(q.as_ptr(), rb as u64, rows as i32, cols as i32, x.as_ptr(), n as i32, y.as_mut_ptr()) };
        for tok in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| deq[r * cols + c] as f64 * x[tok * cols + c] as f64).sum();
                let scale: f64 = (0..cols).map(|c| (deq[r * cols + c] as f64 * x[tok * cols + c] as f64).abs()).sum();
                let got = y[tok * rows + r] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * scale.max(1.0),
                    "{}: token {tok} row {r}: CUDA source gives {got}, kernels-cpu dequantization {want}",
                    wt.name()
                );
            }
        }
        eprintln!("{}: ok", wt.name());
    }
}
