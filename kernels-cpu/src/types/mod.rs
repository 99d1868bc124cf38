//! GGUF/ggml weight types. Adding a type = its own file + one line in `TYPES`.
//!
//! Each type's file holds: the `#[repr(C)]` block with a compile-time size assertion,
//! `dequantize`, `quantize` (from f32) and `vec_dot` (the scalar dot product against the type's
//! `vec_dot_type`), which is the specification the SIMD kernels are tested against.

pub mod f32;
pub mod f16;
pub mod bf16;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;
pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_k;

/// A quantization block as laid out in GGUF/ggml.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1 (multi-byte fields stored as byte
/// arrays, little-endian), no padding, and accept every bit pattern as a valid value. Then any
/// `&[u8]` whose length is a multiple of the block size can be viewed as `&[Self]`, wherever
/// it lies in the mmap.
pub unsafe trait Block: Copy + Sized + 'static {
    /// View `bytes` as blocks. Panics if the length is not a whole number of blocks (callers
    /// pass row lengths computed with `WeightType::row_bytes`, so this is a programming error).
    #[inline(always)]
    fn slice(bytes: &[u8]) -> &[Self] {
        let size = std::mem::size_of::<Self>();
        debug_assert_eq!(std::mem::align_of::<Self>(), 1);
        assert!(bytes.len() % size == 0, "{} bytes is not a whole number of {size}-byte blocks", bytes.len());
        // SAFETY: `Block` guarantees alignment 1, no padding and that every bit pattern is valid;
        // the length is a whole number of blocks, so the view covers exactly `bytes`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const Self, bytes.len() / size) }
    }
    /// Mutable view of `bytes` as blocks (same rules as `slice`).
    #[inline(always)]
    fn slice_mut(bytes: &mut [u8]) -> &mut [Self] {
        let size = std::mem::size_of::<Self>();
        debug_assert_eq!(std::mem::align_of::<Self>(), 1);
        assert!(bytes.len() % size == 0, "{} bytes is not a whole number of {size}-byte blocks", bytes.len());
        // SAFETY: as in `slice`; the exclusive borrow of `bytes` is carried over to the result.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut Self, bytes.len() / size) }
    }
}

/// An IEEE half stored little-endian in a block (alignment 1), ggml's `ggml_half`.
#[inline(always)]
pub fn f16_to_f32(h: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(h)).to_f32()
}

/// f32 to IEEE half, round to nearest even (what F16C's `vcvtps2ph` with mode 0 and ggml do).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// bfloat16 (the top half of an f32) to f32: exact.
#[inline(always)]
pub fn bf16_to_f32(h: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(h) as u32) << 16)
}

/// f32 to bfloat16 as ggml does it: round to nearest even, NaN kept quiet.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> [u8; 2] {
    let u = x.to_bits();
    let h = if (u & 0x7fff_ffff) > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u + (0x7fff + ((u >> 16) & 1))) >> 16
    };
    (h as u16).to_le_bytes()
}

/// ggml type ids as stored in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum WeightType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// Static facts about one type: (type, name, elements per block, bytes per block, activation
/// format its integer dot product takes).
pub struct TypeInfo {
    pub ty: WeightType,
    pub name: &'static str,
    pub block_size: usize,
    pub type_size: usize,
    pub vec_dot_type: WeightType,
    /// Dequantize whole blocks: `src` holds `dst.len() / block_size` blocks.
    pub dequantize: fn(src: &[u8], dst: &mut [f32]),
    /// Quantize whole blocks: `src.len()` is a multiple of `block_size`.
    pub quantize: fn(src: &[f32], dst: &mut [u8]),
    /// Scalar dot product of `n` elements: `w` in this type, `x` in `vec_dot_type`.
    pub vec_dot: fn(n: usize, w: &[u8], x: &[u8]) -> f32,
}

macro_rules! info {
    ($t:ident, $m:ident, $bs:expr, $ts:expr, $vd:ident) => {
        TypeInfo {
            ty: WeightType::$t,
            name: stringify!($t),
            block_size: $bs,
            type_size: $ts,
            vec_dot_type: WeightType::$vd,
            dequantize: $m::dequantize,
            quantize: $m::quantize,
            vec_dot: $m::vec_dot,
        }
    };
}

/// The table of supported types.
pub static TYPES: &[TypeInfo] = &[
    info!(F32, f32, 1, 4, F32),
    info!(F16, f16, 1, 2, F16),
    info!(BF16, bf16, 1, 2, BF16),
    info!(Q4_0, q4_0, 32, 18, Q8_0),
    info!(Q4_1, q4_1, 32, 20, Q8_1),
    info!(Q5_0, q5_0, 32, 22, Q8_0),
    info!(Q5_1, q5_1, 32, 24, Q8_1),
    info!(Q8_0, q8_0, 32, 34, Q8_0),
    info!(Q8_1, q8_1, 32, 36, Q8_1),
    info!(Q2_K, q2_k, 256, 84, Q8_K),
    info!(Q3_K, q3_k, 256, 110, Q8_K),
    info!(Q4_K, q4_k, 256, 144, Q8_K),
    info!(Q5_K, q5_k, 256, 176, Q8_K),
    info!(Q6_K, q6_k, 256, 210, Q8_K),
    info!(Q8_K, q8_k, 256, 292, Q8_K),
];

impl WeightType {
    /// From a ggml type id; `None` for ids this crate does not know.
    pub fn from_ggml(id: u32) -> Option<Self> {
        TYPES.iter().find(|i| i.ty as u32 == id).map(|i| i.ty)
    }
    pub fn info(self) -> &'static TypeInfo {
        TYPES.iter().find(|i| i.ty == self).expect("every WeightType is in TYPES")
    }
    /// ggml spelling, e.g. "Q4_K".
    pub fn name(self) -> &'static str {
        self.info().name
    }
    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.info().block_size
    }
    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.info().type_size
    }
    /// Bytes of a row of `n` elements (`n` must be a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }
    /// The activation format the integer dot product of this weight type takes.
    pub fn vec_dot_type(self) -> WeightType {
        self.info().vec_dot_type
    }
}

/// Dequantize a row (or several): `src` holds `dst.len() / block_size` blocks of `t`.
pub fn dequantize_row(t: WeightType, src: &[u8], dst: &mut [f32]) {
    (t.info().dequantize)(src, dst)
}

/// Quantize `src` (a multiple of the block size) into `dst` as type `t`.
pub fn quantize_row(t: WeightType, src: &[f32], dst: &mut [u8]) {
    (t.info().quantize)(src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn table_round_trips_ids() {
        for i in TYPES {
            assert_eq!(WeightType::from_ggml(i.ty as u32), Some(i.ty));
        }
        assert_eq!(WeightType::from_ggml(4), None);
        assert_eq!(WeightType::Q4_K.row_bytes(4096), 16 * 144);
    }
}
