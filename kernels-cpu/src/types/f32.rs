//! F32: plain little-endian floats (block size 1). Its dot product takes f32 activations.

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.0;

/// Dequantize: a byte copy reinterpreted as f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len() * 4, "F32: {} bytes for {} values", src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// "Quantize": store the floats as bytes.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), src.len() * 4, "F32: {} bytes for {} values", dst.len(), src.len());
    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&s.to_le_bytes());
    }
}

/// Dot product of `n` f32 weights with `n` f32 activations, accumulated in f64 (the
/// specification; SIMD kernels accumulate in f32 lanes and are compared with a tolerance).
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (w, x) = (&w[..n * 4], &x[..n * 4]);
    let mut sum = 0f64;
    for (a, b) in w.chunks_exact(4).zip(x.chunks_exact(4)) {
        let a = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let b = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        sum += (a * b) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_and_dot() {
        let v = [1.5f32, -2.0, 0.25, f32::MAX];
        let mut b = [0u8; 16];
        quantize(&v, &mut b);
        let mut back = [0f32; 4];
        dequantize(&b, &mut back);
        assert_eq!(back, v);
        let x = [2.0f32, 1.0, 4.0, 0.0];
        let mut xb = [0u8; 16];
        quantize(&x, &mut xb);
        assert_eq!(vec_dot(4, &b, &xb), 3.0 - 2.0 + 1.0);
    }
}
