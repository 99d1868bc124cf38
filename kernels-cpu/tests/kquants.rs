//! K-quant (and IQ4_XS, the same 256-value super-blocks against Q8_K) kernels on every ISA this host has, against the scalar specification, on blocks of
//! *arbitrary bytes* (every level and scale pattern the format can hold, not only what the
//! quantizer produces: all-max levels with extreme scales, negative Q6_K scales, zero blocks)
//! and on Q8_K activations with any value in -127..=127 (the range the reference's quantizer
//! produces) with consistent group sums. Covers `vec_dot`, the tile kernel with every tile
//! shape up to the declared maximum and the panel kernel with ragged row and token counts, with
//! row/activation strides larger than a row.

use kernels_cpu::isa::{Isa, Kernels, Tile};
use kernels_cpu::types::WeightType;

const K_TYPES: [WeightType; 6] =
    [WeightType::Q2_K, WeightType::Q3_K, WeightType::Q4_K, WeightType::Q5_K, WeightType::Q6_K, WeightType::IQ4_XS];
const QK_K: usize = 256;
const Q8K_BYTES: usize = 292;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Offsets of the f16 fields (`d`, and `dmin` where the type has one) inside a block.
fn half_fields(t: WeightType) -> &'static [usize] {
    match t {
        WeightType::Q2_K => &[80, 82],
        WeightType::Q3_K => &[108],
        WeightType::Q4_K | WeightType::Q5_K => &[0, 2],
        WeightType::IQ4_XS => &[0],
        WeightType::Q6_K => &[208],
        _ => unreachable!(),
    }
}

/// A finite f16 of either sign, from tiny (subnormal) to large, or zero.
fn some_f16(rng: &mut Rng) -> [u8; 2] {
    let bits: u16 = match rng.below(6) {
        0 => 0,
        1 => rng.below(0x0400) as u16,            // subnormal
        2 => 0x7bff,                              // largest finite
        _ => (0x2000 + rng.below(0x2800)) as u16, // about 2^-7 .. 2^3
    } | if rng.below(2) == 0 { 0 } else { 0x8000 };
    bits.to_le_bytes()
}

/// `nb` blocks of type `t` with random bytes (levels, scales, masks), finite f16 factors; some
/// blocks all-0xFF (every level and scale at its maximum) or all-zero.
fn random_weights(rng: &mut Rng, t: WeightType, nb: usize) -> Vec<u8> {
    let ts = t.type_size();
    let mut v = vec![0u8; nb * ts];
    for b in v.chunks_mut(ts) {
        match rng.below(8) {
            0 => b.fill(0xFF),
            1 => b.fill(0),
            _ => b.iter_mut().for_each(|x| *x = rng.next() as u8),
        }
        for &o in half_fields(t) {
            let h = if rng.below(4) == 0 { [0xff, 0x7b] } else { some_f16(rng) };
            b[o..o + 2].copy_from_slice(&h);
        }
    }
    v
}

/// `nb` Q8_K blocks: `d` random (some zero), quants anywhere in -127..=127 (some blocks all
/// +127 or all -127), `bsums` consistent with the quants.
fn random_q8k(rng: &mut Rng, nb: usize) -> Vec<u8> {
    let mut v = vec![0u8; nb * Q8K_BYTES];
    for b in v.chunks_mut(Q8K_BYTES) {
        let d: f32 = if rng.below(8) == 0 { 0.0 } else { (rng.below(2000) as f32 + 1.0) * 1e-3 };
        b[..4].copy_from_slice(&d.to_le_bytes());
        let mode = rng.below(6);
        let mut q = [0i8; QK_K];
        for x in q.iter_mut() {
            *x = match mode {
                0 => 127,
                1 => -127,
                _ => (rng.below(255) as i32 - 127) as i8,
            };
        }
        for (i, x) in q.iter().enumerate() {
            b[4 + i] = *x as u8;
        }
        for j in 0..16 {
            let s: i32 = q[16 * j..16 * j + 16].iter().map(|&x| x as i32).sum();
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
        }
    }
    v
}

/// The scale of the rounding differences allowed between two summation orders: Σ |w_i x_i|
/// over the dequantized operands, taken separately for the `d` and `dmin` parts of the weights
/// of Q2_K/Q4_K/Q5_K (both kernels compute `d * Σ... - dmin * Σ...`, which cancel where a
/// weight is near zero; Q3_K/Q6_K fold their offset exactly in integers).
fn magnitude(t: WeightType, w: &[u8], x: &[u8], n: usize) -> f64 {
    let mut dx = vec![0f32; n];
    kernels_cpu::types::dequantize_row(WeightType::Q8_K, x, &mut dx);
    let fields = half_fields(t);
    let mut mag = 0f64;
    for keep in 0..fields.len() {
        let mut part = w.to_vec();
        for b in part.chunks_mut(t.type_size()) {
            for (i, &o) in fields.iter().enumerate() {
                if i != keep {
                    b[o..o + 2].fill(0);
                }
            }
        }
        let mut dw = vec![0f32; n];
        kernels_cpu::types::dequantize_row(t, &part, &mut dw);
        mag += dw.iter().zip(&dx).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>();
    }
    mag
}

fn close(got: f32, want: f32, mag: f64) -> bool {
    let (g, w) = (got as f64, want as f64);
    if !g.is_finite() || !w.is_finite() {
        return got.to_bits() == want.to_bits() || (g.is_nan() && w.is_nan());
    }
    (g - w).abs() <= 2e-6 * mag + 1e-30
}

#[test]
fn kquant_vec_dot_on_arbitrary_blocks_matches_scalar_on_every_isa() {
    let mut rng = Rng(0x4b51);
    let scalar = Kernels::for_isa(Isa::Scalar);
    for isa in Isa::available() {
        let k = Kernels::for_isa(isa);
        for t in K_TYPES {
            for case in 0..200 {
                let nb = 1 + rng.below(6) as usize;
                let n = nb * QK_K;
                let w = random_weights(&mut rng, t, nb);
                let x = random_q8k(&mut rng, nb);
                let want = (scalar.get(t).unwrap().vec_dot)(n, &w, &x);
                let got = (k.get(t).unwrap().vec_dot)(n, &w, &x);
                let mag = magnitude(t, &w, &x, n);
                assert!(
                    close(got, want, mag),
                    "{} {} case {case} ({nb} blocks): {got} vs scalar {want} (magnitude {mag})",
                    isa.name(),
                    t.name()
                );
            }
        }
    }
}

/// Runs a many-token kernel (`GemmTileFn` arguments) on `nr` x `nc` random rows and tokens of
/// `nb` blocks at strides larger than a row, against the scalar `vec_dot`, and checks that it
/// leaves the output outside its rows untouched.
fn check_many_tokens(
    rng: &mut Rng,
    f: kernels_cpu::isa::GemmTileFn,
    label: &str,
    t: WeightType,
    nr: usize,
    nc: usize,
    nb: usize,
) {
    let vec_dot = Kernels::for_isa(Isa::Scalar).get(t).unwrap().vec_dot;
    let n = nb * QK_K;
    // strides larger than a row, as when a tile is cut out of a wider matrix
    let (w_stride, x_stride) = (t.row_bytes(n) + 7, WeightType::Q8_K.row_bytes(n) + 3);
    let w = random_weights(rng, t, (nr * w_stride).div_ceil(t.type_size()) + 1);
    let x = random_q8k(rng, (nc * x_stride).div_ceil(Q8K_BYTES) + 1);
    // consistent Q8_K rows at the strided offsets
    let mut xs = vec![0u8; nc * x_stride];
    for c in 0..nc {
        xs[c * x_stride..c * x_stride + nb * Q8K_BYTES]
            .copy_from_slice(&x[c * nb * Q8K_BYTES..(c + 1) * nb * Q8K_BYTES]);
    }
    let mut ws = vec![0u8; nr * w_stride];
    for r in 0..nr {
        let src = &w[r * t.row_bytes(n)..(r + 1) * t.row_bytes(n)];
        ws[r * w_stride..r * w_stride + t.row_bytes(n)].copy_from_slice(src);
    }
    let out_stride = nr + 2;
    let mut out = vec![f32::NAN; nc * out_stride];
    f(Tile { n, w: &ws, w_stride, rows: nr, x: &xs, x_stride, tokens: nc, out: &mut out, out_stride });
    for c in 0..nc {
        for r in 0..nr {
            let wr = &ws[r * w_stride..r * w_stride + t.row_bytes(n)];
            let xr = &xs[c * x_stride..c * x_stride + nb * Q8K_BYTES];
            let want = vec_dot(n, wr, xr);
            let got = out[c * out_stride + r];
            let mag = magnitude(t, wr, xr, n);
            assert!(close(got, want, mag), "{label} {} {nr}x{nc} at ({r}, {c}): {got} vs scalar {want}", t.name());
        }
        // entries outside the rows are untouched
        for r in nr..out_stride {
            assert!(out[c * out_stride + r].is_nan(), "{label} {} {nr}x{nc} wrote outside", t.name());
        }
    }
}

#[test]
fn kquant_gemm_tiles_of_every_shape_match_scalar_on_every_isa() {
    let mut rng = Rng(0x6e6d);
    let mut tiled = 0;
    for isa in Isa::available() {
        let k = Kernels::for_isa(isa);
        for t in K_TYPES {
            let Some((gemm, max_r, max_c)) = k.get(t).unwrap().gemm else { continue };
            tiled += 1;
            for nr in 1..=max_r {
                for nc in 1..=max_c {
                    let nb = 1 + rng.below(3) as usize;
                    check_many_tokens(&mut rng, gemm, &format!("{} tile", isa.name()), t, nr, nc, nb);
                }
            }
        }
    }
    eprintln!("K-quant tile kernels tested: {tiled} (type x ISA)");
}

#[test]
fn kquant_panels_on_arbitrary_blocks_match_scalar_on_every_isa() {
    let mut rng = Rng(0x7061);
    let mut panels = 0;
    for isa in Isa::available() {
        let k = Kernels::for_isa(isa);
        for t in K_TYPES {
            let Some(panel) = k.get(t).unwrap().panel else { continue };
            panels += 1;
            for (nr, nc) in [(1, 8), (8, 9), (16, 16), (17, 11), (33, 20)] {
                let nb = 1 + rng.below(3) as usize;
                check_many_tokens(&mut rng, panel, &format!("{} panel", isa.name()), t, nr, nc, nb);
            }
        }
    }
    eprintln!("K-quant panel kernels tested: {panels} (type x ISA)");
}

/// The Q8_K activation quantizer of every ISA writes the scalar one's bytes, on edge cases:
/// ties between +max and -max (the first wins), all -0.0, exact .5 rounding points, a huge
/// range, infinities, single non-zero values.
#[test]
fn q8k_quantizer_of_every_isa_is_byte_identical_to_scalar_on_edge_cases() {
    let mut rng = Rng(0x9_8b);
    let scalar = Kernels::for_isa(Isa::Scalar);
    let want_q = scalar.get(WeightType::Q8_K).unwrap().quantize.unwrap();
    let mut cases: Vec<Vec<f32>> = Vec::new();
    let mut tie = vec![0.5f32; QK_K];
    tie[10] = 3.0;
    tie[200] = -3.0;
    cases.push(tie.clone());
    tie[10] = -3.0;
    tie[200] = 3.0;
    cases.push(tie);
    cases.push(vec![-0.0; QK_K]);
    // values landing exactly on k + 0.5 after scaling by -127 / max (max = -127)
    cases.push((0..QK_K).map(|i| if i == 0 { -127.0 } else { (i % 254) as f32 - 126.5 }).collect());
    cases.push((0..QK_K).map(|i| if i % 3 == 0 { 1e30 } else { 1e-30 * i as f32 }).collect());
    let mut inf = vec![1.0f32; QK_K];
    inf[7] = f32::INFINITY;
    inf[9] = f32::NEG_INFINITY;
    cases.push(inf);
    let mut single = vec![0.0f32; QK_K];
    single[255] = -1e-7;
    cases.push(single);
    for _ in 0..50 {
        cases.push((0..QK_K).map(|_| (rng.below(2001) as f32 - 1000.0) * 0.25).collect());
    }
    for isa in Isa::available() {
        let k = Kernels::for_isa(isa);
        let q = k.get(WeightType::Q8_K).unwrap().quantize.expect("Q8_K has a quantizer");
        for (i, x) in cases.iter().enumerate() {
            let (mut a, mut b) = (vec![0u8; Q8K_BYTES], vec![0xAAu8; Q8K_BYTES]);
            want_q(x, &mut a);
            q(x, &mut b);
            assert!(a == b, "{} Q8_K quantize case {i}: bytes differ from scalar", isa.name());
        }
    }
}
