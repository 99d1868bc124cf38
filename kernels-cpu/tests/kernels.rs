//! Every type in `TYPES` x every ISA this host has, against the scalar specification:
//! dot products on random blocks (with zero blocks, tiny and huge scales, outliers),
//! activation quantizers (byte-identical), quantize -> dequantize error, and matmul / matvec
//! against an f64 reference over the dequantized operands, for shapes that are not multiples
//! of any tile. Generic over the table, so new types are covered without touching this file.

use kernels_cpu::isa::{Isa, Kernels};
use kernels_cpu::matmul::{self, Scratch};
use kernels_cpu::types::{dequantize_row, quantize_row, WeightType, TYPES};

/// splitmix64: a seeded generator, so every failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random values in runs of 32: zeros, a constant, gaussian at scales from 1e-4 to 1e3,
/// a single outlier among small values, all positive, all negative.
fn nasty(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    for run in v.chunks_mut(32) {
        let scale = 10f32.powf(rng.uniform() * 7.0 - 4.0);
        match rng.below(8) {
            0 => {}
            1 => run.fill(scale),
            2 => {
                for x in run.iter_mut() {
                    *x = rng.gauss() * 1e-3;
                }
                let i = rng.below(run.len());
                run[i] = 50.0 * if rng.below(2) == 0 { 1.0 } else { -1.0 };
            }
            3 => run.iter_mut().for_each(|x| *x = rng.uniform() * scale),
            4 => run.iter_mut().for_each(|x| *x = -rng.uniform() * scale),
            _ => run.iter_mut().for_each(|x| *x = rng.gauss() * scale),
        }
    }
    v
}

/// Activations: gaussian runs at scales from 1e-2 to 1e2, zero runs and outliers. (Tiny
/// activation scales turn the f16 scale of Q8_0/Q8_1 subnormal, where Q8_1's `s` no longer
/// agrees with `d * sum(q)`; the quantizer tests cover those scales.)
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    for run in v.chunks_mut(32) {
        let scale = 10f32.powf(rng.uniform() * 4.0 - 2.0);
        match rng.below(6) {
            0 => {}
            1 => {
                run.iter_mut().for_each(|x| *x = rng.gauss() * 0.05 * scale);
                run[rng.below(run.len())] = 20.0 * scale;
            }
            _ => run.iter_mut().for_each(|x| *x = rng.gauss() * scale),
        }
    }
    v
}

fn quantized(t: WeightType, x: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; t.row_bytes(x.len())];
    quantize_row(t, x, &mut b);
    b
}

fn dequantized(t: WeightType, b: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    dequantize_row(t, b, &mut v);
    v
}

/// Row length used for a type: a few blocks of it, at least 512 elements.
fn test_len(t: WeightType) -> usize {
    let bs = t.block_size();
    (512usize.div_ceil(bs) + 1) * bs
}

/// The exact f64 dot of the dequantized operands, with `a` = sum of |products| and
/// `m` = sum over 32-blocks of max|w| * sum|x| (bounds the size of the terms that types with a
/// minimum subtract from each other: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K compute `d*sum(q*x) - min*sum(x)`,
/// which cancel where the weights are near zero).
fn reference_dot(w: &[f32], x: &[f32]) -> (f64, f64, f64) {
    let (mut s, mut a, mut m) = (0f64, 0f64, 0f64);
    for (wb, xb) in w.chunks(32).zip(x.chunks(32)) {
        let wmax = wb.iter().fold(0f64, |acc, v| acc.max(v.abs() as f64));
        for (p, q) in wb.iter().zip(xb) {
            let v = *p as f64 * *q as f64;
            s += v;
            a += v.abs();
            m += wmax * q.abs() as f64;
        }
    }
    (s, a, m)
}

/// Tolerance between two kernels on the same quantized operands: summation order only.
fn order_tolerance(a: f64, m: f64) -> f64 {
    2e-5 * a + 2e-6 * m + 1e-30
}

/// Tolerance between a kernel and the exact dot of the dequantized operands: also, Q8_1 carries
/// `d * sum(q)` rounded to f16, which Q4_1/Q5_1 use for the minimum term (as the reference
/// does): up to ~2^-10 of |min| * sum|x| per block.
fn exact_tolerance(t: WeightType, a: f64, m: f64) -> f64 {
    order_tolerance(a, m) + if t.vec_dot_type() == WeightType::Q8_1 { 1e-3 * m } else { 0.0 }
}

fn isas() -> Vec<(Isa, Kernels)> {
    Isa::available().into_iter().map(|i| (i, Kernels::for_isa(i))).collect()
}

#[test]
fn every_isa_is_listed_and_builds_a_full_table() {
    let av = Isa::available();
    assert_eq!(av[0], Isa::Scalar);
    assert_eq!(*av.last().unwrap(), Isa::detect());
    for (isa, k) in isas() {
        assert_eq!(k.isa, isa);
        for info in TYPES {
            assert!(k.get(info.ty).is_some(), "{}: no kernels for {}", isa.name(), info.ty.name());
        }
    }
    eprintln!("ISAs tested here: {:?}", av);
}

#[test]
fn vec_dot_of_every_type_on_every_isa_matches_scalar() {
    let mut rng = Rng(1);
    let scalar = Kernels::for_isa(Isa::Scalar);
    for (isa, k) in isas() {
        for info in TYPES {
            let t = info.ty;
            let at = t.vec_dot_type();
            let n = test_len(t);
            for case in 0..40 {
                let w = quantized(t, &nasty(&mut rng, n));
                let x = quantized(at, &activations(&mut rng, n));
                let want = (scalar.get(t).unwrap().vec_dot)(n, &w, &x);
                let got = (k.get(t).unwrap().vec_dot)(n, &w, &x);
                let (exact, a, m) = reference_dot(&dequantized(t, &w, n), &dequantized(at, &x, n));
                // Scalar and SIMD see the same quantized operands: only summation order differs.
                let tol = order_tolerance(a, m);
                let tol_exact = exact_tolerance(t, a, m);
                assert!(
                    ((got as f64) - (want as f64)).abs() <= tol,
                    "{} {} case {case}: {got} vs scalar {want} (tol {tol})",
                    isa.name(),
                    info.ty.name()
                );
                // The scalar specification itself agrees with the dequantized values.
                assert!(
                    ((want as f64) - exact).abs() <= tol_exact,
                    "scalar {} case {case}: {want} vs dequantized dot {exact}",
                    info.ty.name()
                );
            }
        }
    }
}

#[test]
fn activation_quantizers_on_every_isa_are_byte_identical_to_scalar() {
    let mut rng = Rng(2);
    let scalar = Kernels::for_isa(Isa::Scalar);
    let act_types: std::collections::BTreeSet<WeightType> = TYPES.iter().map(|i| i.ty.vec_dot_type()).collect();
    for (isa, k) in isas() {
        for &at in &act_types {
            let n = test_len(at) * 4;
            for case in 0..20 {
                let x = nasty(&mut rng, n);
                let mut a = vec![0u8; at.row_bytes(n)];
                let mut b = vec![0u8; at.row_bytes(n)];
                (scalar.get(at).unwrap().quantize.unwrap())(&x, &mut a);
                (k.get(at).unwrap().quantize.expect("activation type has a quantizer"))(&x, &mut b);
                assert!(a == b, "{} quantize {} case {case}: differs from scalar", isa.name(), at.name());
            }
        }
    }
}

#[test]
fn quantize_dequantize_error_within_each_formats_bound() {
    let mut rng = Rng(3);
    for info in TYPES {
        let t = info.ty;
        let n = test_len(t) * 16;
        let x: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
        let y = dequantized(t, &quantized(t, &x), n);
        let err: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = (err / sig).sqrt() as f32;
        let bound = info.max_rms_error;
        eprintln!("{:5} relative RMS error {rel:.5} (bound {bound})", t.name());
        assert!(rel <= bound, "{}: relative RMS error {rel} above {bound}", t.name());
        // Zeros stay exactly zero.
        let z = dequantized(t, &quantized(t, &vec![0f32; test_len(t)]), test_len(t));
        assert!(z.iter().all(|v| *v == 0.0), "{}: zeros do not survive", t.name());
    }
}

/// matmul through the kernel table `k` against an f64 reference over the dequantized weights
/// and the dequantized quantized activations (so only summation order may differ).
fn check_matmul(
    k: &Kernels,
    t: WeightType,
    rows: usize,
    cols: usize,
    n_tokens: usize,
    rng: &mut Rng,
    scratch: &mut Scratch,
) {
    let at = t.vec_dot_type();
    let w = quantized(t, &nasty(rng, rows * cols));
    let x = activations(rng, n_tokens * cols);
    let mut y = vec![f32::NAN; n_tokens * rows];
    if n_tokens == 1 && rng.below(2) == 0 {
        matmul::matmul_with(k, &w, t, rows, cols, &x, 1, &mut y, scratch);
    } else {
        matmul::matmul_with(k, &w, t, rows, cols, &x, n_tokens, &mut y, scratch);
    }
    let wd = dequantized(t, &w, rows * cols);
    let xq = quantized(at, &x);
    let xd = dequantized(at, &xq, n_tokens * cols);
    for tok in 0..n_tokens {
        for r in 0..rows {
            let (exact, a, m) = reference_dot(&wd[r * cols..(r + 1) * cols], &xd[tok * cols..(tok + 1) * cols]);
            let tol = exact_tolerance(t, a, m);
            let got = y[tok * rows + r];
            assert!(
                ((got as f64) - exact).abs() <= tol,
                "{} {} {rows}x{cols}, {n_tokens} tokens: y[{tok}][{r}] = {got}, want {exact}",
                k.isa.name(),
                t.name()
            );
        }
    }
}

#[test]
fn matmul_and_matvec_match_f64_reference_for_every_type_isa_and_shape() {
    let mut rng = Rng(4);
    let mut scratch = Scratch::default();
    for (_, k) in isas() {
        for info in TYPES {
            let t = info.ty;
            // Shapes off every tile size: odd row counts, token counts around tile edges;
            // rows of 256 elements (a whole number of blocks for every type).
            // (2, 65, 1): a row longer than the parts one-token kernels prepare at a time.
            for &(rows, blocks, n_tokens) in
                &[(1, 1, 1), (7, 2, 1), (37, 3, 5), (64, 2, 13), (129, 1, 33), (3, 4, 70), (2, 65, 1)]
            {
                let cols = blocks * 256;
                check_matmul(&k, t, rows, cols, n_tokens, &mut rng, &mut scratch);
            }
        }
    }
}

#[test]
fn matmul_is_the_same_with_one_two_and_three_threads() {
    let mut rng = Rng(5);
    let k = Kernels::for_isa(Isa::detect());
    for t in [WeightType::Q8_0, WeightType::Q4_0, WeightType::F16, WeightType::Q4_K] {
        let (rows, cols, n) = (301, 512, 19);
        let w = quantized(t, &nasty(&mut rng, rows * cols));
        let x = nasty(&mut rng, n * cols);
        let mut outs = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![0f32; rows * n];
            let mut s = Scratch::default();
            pool.install(|| matmul::matmul_with(&k, &w, t, rows, cols, &x, n, &mut y, &mut s));
            outs.push(y);
        }
        // Each output is one dot product computed the same way whatever the split: identical.
        assert!(outs[0] == outs[1] && outs[1] == outs[2], "{}: results depend on the thread count", t.name());
    }
}

#[test]
fn shared_quantized_activations_and_no_reallocation() {
    let mut rng = Rng(6);
    let (cols, n) = (512, 9);
    let x = nasty(&mut rng, n * cols);
    let wq = quantized(WeightType::Q4_K, &nasty(&mut rng, 40 * cols));
    let wv = quantized(WeightType::Q6_K, &nasty(&mut rng, 24 * cols));
    let mut s = Scratch::default();
    matmul::quantize_activations(WeightType::Q4_K, &x, n, cols, &mut s);
    assert_eq!(s.held(), Some((WeightType::Q8_K, cols, n)));
    let ptr = s.quantized.as_ptr();
    let mut yq = vec![0f32; 40 * n];
    let mut yv = vec![0f32; 24 * n];
    matmul::matmul_quantized(&wq, WeightType::Q4_K, 40, cols, &s, &mut yq);
    matmul::matmul_quantized(&wv, WeightType::Q6_K, 24, cols, &s, &mut yv);
    // Same as quantizing separately.
    let mut y2 = vec![0f32; 24 * n];
    let mut s2 = Scratch::default();
    matmul::matmul(&wv, WeightType::Q6_K, 24, cols, &x, n, &mut y2, &mut s2);
    assert_eq!(yv, y2);
    // A smaller input reuses the buffer.
    matmul::quantize_activations(WeightType::Q4_K, &x[..cols], 1, cols, &mut s);
    assert_eq!(s.quantized.as_ptr(), ptr, "scratch reallocated for a smaller input");
    matmul::matvec(&wq, WeightType::Q4_K, 40, cols, &x[..cols], &mut yq[..40], &mut s);
    assert_eq!(s.quantized.as_ptr(), ptr, "scratch reallocated for a smaller input");
}

#[test]
#[should_panic(expected = "scratch holds")]
fn matmul_quantized_refuses_activations_of_another_format() {
    let cols = 256;
    let mut s = Scratch::default();
    matmul::quantize_activations(WeightType::Q8_0, &vec![1.0; cols], 1, cols, &mut s);
    let w = quantized(WeightType::Q4_K, &vec![1.0; cols]);
    let mut y = [0f32; 1];
    matmul::matmul_quantized(&w, WeightType::Q4_K, 1, cols, &s, &mut y);
}

#[test]
fn matmul_of_float_types_with_rows_of_any_length() {
    // Types with blocks of one value (F32, F16, BF16) take rows of any length, including ragged
    // tails of the 16- and 32-value SIMD steps.
    let mut rng = Rng(7);
    let mut scratch = Scratch::default();
    let float_types: Vec<WeightType> = TYPES.iter().map(|i| i.ty).filter(|t| t.block_size() == 1).collect();
    assert!(float_types.len() >= 3, "{float_types:?}");
    for (_, k) in isas() {
        for &t in &float_types {
            for &(rows, cols, n_tokens) in &[(5, 1, 3), (9, 37, 1), (11, 100, 7), (6, 1000, 13), (17, 33, 2)] {
                check_matmul(&k, t, rows, cols, n_tokens, &mut rng, &mut scratch);
            }
        }
    }
}

#[test]
fn empty_shapes_do_not_panic() {
    let mut s = Scratch::default();
    let mut y = vec![1f32; 6];
    // No columns: every output is an empty sum.
    matmul::matmul(&[], WeightType::Q8_0, 3, 0, &[], 2, &mut y, &mut s);
    assert_eq!(y, vec![0.0; 6]);
    // No rows or no tokens: nothing written.
    let mut y = vec![1f32; 2];
    matmul::matmul(&[], WeightType::Q4_0, 0, 32, &vec![0.5; 64], 2, &mut y, &mut s);
    matmul::matmul(&quantized(WeightType::Q4_0, &[1.0; 32]), WeightType::Q4_0, 1, 32, &[], 0, &mut y, &mut s);
    assert_eq!(y, vec![1.0; 2]);
}
