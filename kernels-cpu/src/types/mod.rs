//! GGUF/ggml weight types on the CPU. Adding a type = its own file here + one line in
//! `ggml_types::weight_types!` (id, name, block layout, activation format): the `pub mod` of
//! each file and the table [`TYPES`] are derived from that list.
//!
//! Each type's file holds: the `#[repr(C)]` block with a compile-time check of its size against
//! the table, `dequantize`, `quantize` (from f32), `vec_dot` (the scalar dot product against the
//! type's `vec_dot_type`), which is the specification the SIMD kernels are tested against, and
//! `MAX_RMS_ERROR`, the accuracy its quantizer is held to (see [`TypeInfo::max_rms_error`]).

pub use ggml_types::WeightType;

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
        assert!(bytes.len().is_multiple_of(size), "{} bytes is not a whole number of {size}-byte blocks", bytes.len());
        // SAFETY: `Block` guarantees alignment 1, no padding and that every bit pattern is valid;
        // the length is a whole number of blocks, so the view covers exactly `bytes`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const Self, bytes.len() / size) }
    }
    /// Mutable view of `bytes` as blocks (same rules as `slice`).
    #[inline(always)]
    fn slice_mut(bytes: &mut [u8]) -> &mut [Self] {
        let size = std::mem::size_of::<Self>();
        debug_assert_eq!(std::mem::align_of::<Self>(), 1);
        assert!(bytes.len().is_multiple_of(size), "{} bytes is not a whole number of {size}-byte blocks", bytes.len());
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
    let h = if (u & 0x7fff_ffff) > 0x7f80_0000 { (u >> 16) | 64 } else { (u + (0x7fff + ((u >> 16) & 1))) >> 16 };
    (h as u16).to_le_bytes()
}

/// The CPU code of one weight type (its facts: `ty.facts()`).
pub struct TypeInfo {
    pub ty: WeightType,
    /// Dequantize whole blocks: `src` holds `dst.len() / block_size` blocks.
    pub dequantize: fn(src: &[u8], dst: &mut [f32]),
    /// Quantize whole blocks: `src.len()` is a multiple of `block_size`.
    pub quantize: fn(src: &[f32], dst: &mut [u8]),
    /// Scalar dot product of `n` elements: `w` in this type, `x` in `vec_dot_type`.
    pub vec_dot: fn(n: usize, w: &[u8], x: &[u8]) -> f32,
    /// Bound on the RMS error of quantize -> dequantize of unit gaussians, relative to the RMS of
    /// the input: a little above what the format's step size gives (e.g. Q8_0: step amax/127,
    /// error ~0.005), so that a broken rounding or a wrong scale fails the tests loudly.
    pub max_rms_error: f32,
}

macro_rules! cpu_types {
    ($($t:ident = $id:literal, $m:ident, $bs:literal, $ts:literal, $vd:ident;)*) => {
        $(pub mod $m;)*

        /// The CPU code of every type, in the order of `ggml_types::TYPES`.
        pub static TYPES: &[TypeInfo] = &[$(TypeInfo {
            ty: WeightType::$t,
            dequantize: $m::dequantize,
            quantize: $m::quantize,
            vec_dot: $m::vec_dot,
            max_rms_error: $m::MAX_RMS_ERROR,
        }),*];
    };
}

ggml_types::weight_types!(cpu_types);

/// The K-quant scale searches of `q8_k` on AVX2 (the file quantizer's hot loop).
#[cfg(target_arch = "x86_64")]
mod search_avx2;

/// The CPU code of type `t`.
pub fn info(t: WeightType) -> &'static TypeInfo {
    TYPES.iter().find(|i| i.ty == t).expect("every WeightType is in TYPES")
}

/// Dequantize a row (or several): `src` holds `dst.len() / block_size` blocks of `t`.
pub fn dequantize_row(t: WeightType, src: &[u8], dst: &mut [f32]) {
    (info(t).dequantize)(src, dst)
}

/// Quantize `src` (a multiple of the block size) into `dst` as type `t`.
pub fn quantize_row(t: WeightType, src: &[f32], dst: &mut [u8]) {
    (info(t).quantize)(src, dst)
}

/// Quantize weights for a model file as the reference's file quantizer does: `quantize_row`,
/// but Q8_0 rounds as `quantize_row_q8_0_ref` (its `quantize` is the activations' rounding).
pub fn quantize_weights(t: WeightType, src: &[f32], dst: &mut [u8]) {
    match t {
        WeightType::Q8_0 => q8_0::quantize_ref(src, dst),
        _ => quantize_row(t, src, dst),
    }
}

/// Quantize one row `src` as type `t` with an importance matrix's values `qw` for its columns
/// (`qw.len() == src.len()`), for the types whose scale searches take them (Q4_K, Q5_K, Q6_K);
/// `false` (nothing written) for the others.
pub fn quantize_row_weighted(t: WeightType, src: &[f32], dst: &mut [u8], qw: &[f32]) -> bool {
    match t {
        WeightType::Q4_K => q4_k::quantize_weighted(src, dst, qw),
        WeightType::Q5_K => q5_k::quantize_weighted(src, dst, qw),
        WeightType::Q6_K => q6_k::quantize_weighted(src, dst, qw),
        _ => return false,
    }
    true
}
