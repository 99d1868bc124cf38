//! Q4_0. (being written: issue #3)

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let _ = (src, dst);
    unimplemented!("Q4_0 dequantize")
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let _ = (src, dst);
    unimplemented!("Q4_0 quantize")
}

pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let _ = (n, w, x);
    unimplemented!("Q4_0 vec_dot")
}
