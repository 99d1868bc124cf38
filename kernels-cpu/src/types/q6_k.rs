//! Q6_K: 256 values in 16 sub-blocks of 16, value = `d * sc[j] * (q - 32)`, `q` in 0..64, with
//! signed 8-bit sub-block scales (ggml `block_q6_K`).
//!
//! Layout per half `h` (values `128h..128h+128`): `ql[64h..64h+64]` holds the low 4 bits (bytes
//! 0..32: values +0 (low nibble) and +64 (high nibble); bytes 32..64: values +32 and +96) and
//! `qh[32h..32h+32]` the top 2 bits (bits 0-1: +0, 2-3: +32, 4-5: +64, 6-7: +96).
#![allow(clippy::needless_range_loop)] // positions index several arrays, as in the format's description

use super::Block;
use super::q8_k::{blocks_mut, f16_to_f32, f32_to_f16, first_blocks, make_qx_quants, nearest_int, BlockQ8K, QK_K};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == super::WeightType::Q6_K.type_size());
const _: () = assert!(std::mem::align_of::<BlockQ6K>() == 1);
// SAFETY: repr(C), byte arrays only (alignment 1, no padding, any bit pattern valid).
unsafe impl Block for BlockQ6K {}

/// The signed level `q - 32` (-32..32) of value `i` (0..256).
#[inline]
fn level(b: &BlockQ6K, i: usize) -> i32 {
    let (h, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql = b.ql[64 * h + l + if quarter % 2 == 1 { 32 } else { 0 }];
    let low = if quarter < 2 { ql & 0xF } else { ql >> 4 };
    let high = (b.qh[32 * h + l] >> (2 * quarter)) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Relative RMS error bound of quantize -> dequantize (see `TypeInfo::max_rms_error`).
pub const MAX_RMS_ERROR: f32 = 0.02;

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    for (b, y) in first_blocks::<BlockQ6K>(src, nb, "Q6_K dequantize").iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * level(b, i) as f32;
        }
    }
}

/// Quantize as the reference does without an importance matrix (`quantize_row_q6_K_ref`).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_impl(src, dst, None)
}

/// Quantize one row with an importance matrix's values `qw` for its columns, as the reference
/// does (`quantize_row_q6_K_impl`): each sub-block's scale search weights its errors by `qw`.
pub fn quantize_weighted(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    assert_eq!(src.len(), qw.len(), "Q6_K quantize: one importance per column");
    quantize_impl(src, dst, Some(qw))
}

fn quantize_impl(src: &[f32], dst: &mut [u8], qw: Option<&[f32]>) {
    assert!(src.len().is_multiple_of(QK_K), "Q6_K quantize: {} values is not a multiple of {QK_K}", src.len());
    let out = blocks_mut::<BlockQ6K>(dst);
    assert!(out.len() >= src.len() / QK_K, "Q6_K quantize: output too short");
    for (b, (x, y)) in src.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for j in 0..16 {
            let w = qw.map(|q| &q[QK_K * b + 16 * j..QK_K * b + 16 * j + 16]);
            scales[j] = make_qx_quants(&x[16 * j..16 * j + 16], 32, &mut l[16 * j..16 * j + 16], w);
            if scales[j].abs() > max_abs_scale {
                max_abs_scale = scales[j].abs();
                max_scale = scales[j];
            }
        }
        if max_abs_scale < 1e-15 {
            *y = BlockQ6K { ql: [0; QK_K / 2], qh: [0; QK_K / 4], scales: [0; 16], d: f32_to_f16(0.0) };
            continue;
        }
        let iscale = -128.0f32 / max_scale;
        y.d = f32_to_f16(1.0 / iscale);
        for j in 0..16 {
            y.scales[j] = nearest_int(iscale * scales[j]).min(127) as i8;
        }
        for j in 0..16 {
            let d = f16_to_f32(y.d) * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |k: usize| l[128 * h + 32 * k + i] as u8;
                y.ql[64 * h + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                y.ql[64 * h + 32 + i] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                y.qh[32 * h + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

/// The specification: exact integer sum of `scale[j] * Σ (q - 32) * x` per block, times `d * x.d`.
pub fn vec_dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let nb = n / QK_K;
    let wb = first_blocks::<BlockQ6K>(w, nb, "Q6_K vec_dot weights");
    let xb = first_blocks::<BlockQ8K>(x, nb, "Q6_K vec_dot activations");
    let mut sum = 0.0f32;
    for (b, a) in wb.iter().zip(xb) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16).map(|i| level(b, i) * a.qs[i] as i32).sum();
            sumi += b.scales[j] as i32 * s;
        }
        sum += f16_to_f32(b.d) * a.d() * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::q8_k::test_util::*;
    use crate::types::WeightType;

    const KQ: KQuant = KQuant(WeightType::Q6_K);

    #[test]
    fn quantize_dequantize_error_bound() {
        KQ.check_error_bound(25, 0x77);
    }

    #[test]
    fn vec_dot_matches_dequantized_dot() {
        KQ.check_vec_dot(29);
    }
}
