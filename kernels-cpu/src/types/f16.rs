//! F16: IEEE half floats (block size 1). Its dot product takes F16 activations, as ggml's
//! (activations are rounded to half first, so results match the reference's F16 path).

use super::{f16_to_f32, f32_to_f16};

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 5e-4;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len() * 2, "F16: {} bytes for {} values", src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_to_f32([s[0], s[1]]);
    }
}

/// Round to nearest even (as F16C and ggml).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 2, "F16: {} bytes for {} values", dst.len(), src.len());
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_f16(*s));
    }
}

/// Dot product of `n` F16 weights with `n` F16 activations, products in f32, sum in f64 (as
/// ggml's generic `ggml_vec_dot_f16`).
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (w, x) = (&w[..n * 2], &x[..n * 2]);
    let mut sum = 0f64;
    for (a, b) in w.chunks_exact(2).zip(x.chunks_exact(2)) {
        sum += (f16_to_f32([a[0], a[1]]) * f16_to_f32([b[0], b[1]])) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_rounds_to_nearest_even() {
        // 1 + 2^-11 lies exactly between two halves: ties go to the even one (1.0).
        let v = [1.0f32 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, -0.5, 65504.0, 1e-8];
        let mut b = [0u8; 10];
        quantize(&v, &mut b);
        let mut back = [0f32; 5];
        dequantize(&b, &mut back);
        assert_eq!(back, [1.0, 1.0 + 4.0 / 2048.0, -0.5, 65504.0, 0.0]);
        assert_eq!(vec_dot(5, &b, &b), 1.0 + (1.0 + 4.0 / 2048.0f32).powi(2) + 0.25 + 65504.0f32 * 65504.0);
    }
}
