//! BF16: the top 16 bits of an f32 (block size 1). Its dot product takes BF16 activations,
//! as ggml's.

use super::{bf16_to_f32, f32_to_bf16};

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 4e-3;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len() * 2, "BF16: {} bytes for {} values", src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32([s[0], s[1]]);
    }
}

/// Round to nearest even, NaN stays NaN (ggml's `ggml_compute_fp32_to_bf16`).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "BF16: {} bytes for {} values", dst.len(), src.len());
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16(*s));
    }
}

/// Dot product of `n` BF16 weights with `n` BF16 activations, sum in f64.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (w, x) = (&w[..n * 2], &x[..n * 2]);
    let mut sum = 0f64;
    for (a, b) in w.chunks_exact(2).zip(x.chunks_exact(2)) {
        sum += (bf16_to_f32([a[0], a[1]]) * bf16_to_f32([b[0], b[1]])) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_rounds_to_nearest_even() {
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: goes to 1 (even); 1 + 3*2^-8 goes up.
        let v = [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -3.0, f32::NAN];
        let mut b = [0u8; 8];
        quantize(&v, &mut b);
        let mut back = [0f32; 4];
        dequantize(&b, &mut back);
        assert_eq!(&back[..3], &[1.0, 1.0 + 4.0 / 256.0, -3.0]);
        assert!(back[3].is_nan());
        assert_eq!(vec_dot(3, &b, &b), 1.0 + (1.0 + 4.0 / 256.0f32).powi(2) + 9.0);
    }
}
