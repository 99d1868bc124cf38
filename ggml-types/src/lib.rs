//! The ggml weight types: what a GGUF tensor's type id means. One line per type in
//! [`weight_types!`]; everything else is derived from it:
//! - here, the [`WeightType`] enum and the [`TYPES`] table of [`TypeFacts`];
//! - in kernels-cpu, the module of each type (`src/types/<module>.rs`) and its kernel table;
//! - in the GPU ABI, `row_bytes`; in the GPU backends, the list of types they may support.
//!
//! No dependencies, so that the GPU ABI crate can read the facts without linking any kernels.

/// The one list of weight types, one line each:
///
/// `Name = ggml id, module, elements per block, bytes per block, vec_dot type;`
///
/// - `Name`: ggml's spelling, also the enum variant.
/// - `module`: the snake_case name: the file of its CPU code in kernels-cpu
///   (`src/types/<module>.rs`); `Name` in lower case, as GPU kernel names use it.
/// - `vec_dot type`: the activation format an integer dot product with this type takes (ggml's
///   `vec_dot_type`): the CPU kernels quantize activations to it once per matrix product.
///
/// Expands to `$then! { <the lines> }`, so that another crate can derive its own items from the
/// same lines (kernels-cpu does). A line's place in the list is its place in [`TYPES`].
#[macro_export]
macro_rules! weight_types {
    ($then:ident) => {
        $then! {
            F32  = 0,  f32,  1,   4,   F32;
            F16  = 1,  f16,  1,   2,   F16;
            BF16 = 30, bf16, 1,   2,   BF16;
            Q4_0 = 2,  q4_0, 32,  18,  Q8_0;
            Q4_1 = 3,  q4_1, 32,  20,  Q8_1;
            Q5_0 = 6,  q5_0, 32,  22,  Q8_0;
            Q5_1 = 7,  q5_1, 32,  24,  Q8_1;
            Q8_0 = 8,  q8_0, 32,  34,  Q8_0;
            Q8_1 = 9,  q8_1, 32,  36,  Q8_1;
            Q2_K = 10, q2_k, 256, 84,  Q8_K;
            Q3_K = 11, q3_k, 256, 110, Q8_K;
            Q4_K = 12, q4_k, 256, 144, Q8_K;
            Q5_K = 13, q5_k, 256, 176, Q8_K;
            Q6_K = 14, q6_k, 256, 210, Q8_K;
            Q8_K = 15, q8_k, 256, 292, Q8_K;
            IQ4_NL = 20, iq4_nl, 32, 18, Q8_0;
            IQ4_XS = 23, iq4_xs, 256, 136, Q8_K;
        }
    };
}

/// Static facts about one weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeFacts {
    pub ty: WeightType,
    /// ggml's spelling, e.g. "Q4_K".
    pub name: &'static str,
    /// Elements per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
    /// The activation format the integer dot product of this type takes.
    pub vec_dot_type: WeightType,
}

macro_rules! define_types {
    ($($t:ident = $id:literal, $m:ident, $bs:literal, $ts:literal, $vd:ident;)*) => {
        /// ggml type ids as stored in GGUF tensor infos.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum WeightType {
            $($t = $id,)*
        }

        /// One constant per type, named like its variant, so that [`WeightType::facts`] is a
        /// `match` (no search).
        mod facts {
            use super::{TypeFacts, WeightType};
            $(pub const $t: TypeFacts = TypeFacts {
                ty: WeightType::$t,
                name: stringify!($t),
                block_size: $bs,
                type_size: $ts,
                vec_dot_type: WeightType::$vd,
            };)*
        }

        /// Every weight type, in the order of [`weight_types!`].
        pub static TYPES: &[TypeFacts] = &[$(facts::$t),*];

        impl WeightType {
            /// From a ggml type id; `None` for ids this table does not hold.
            pub const fn from_ggml(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(WeightType::$t),)*
                    _ => None,
                }
            }
            /// The type's line of the table.
            pub const fn facts(self) -> &'static TypeFacts {
                match self {
                    $(WeightType::$t => &facts::$t,)*
                }
            }
        }
    };
}

weight_types!(define_types);

impl WeightType {
    /// The ggml type id (the number in GGUF tensor infos and in the GPU ABI).
    pub const fn id(self) -> u32 {
        self as u32
    }
    /// ggml spelling, e.g. "Q4_K".
    pub const fn name(self) -> &'static str {
        self.facts().name
    }
    /// Elements per block.
    pub const fn block_size(self) -> usize {
        self.facts().block_size
    }
    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.facts().type_size
    }
    /// Bytes of a row of `n` elements (`n` must be a multiple of the block size).
    pub const fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }
    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the size does not fit in a u64 (for sizes that come from files or across an ABI).
    pub const fn checked_row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
    /// The activation format the integer dot product of this weight type takes.
    pub const fn vec_dot_type(self) -> WeightType {
        self.facts().vec_dot_type
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_none() {
        for f in TYPES {
            assert_eq!(WeightType::from_ggml(f.ty.id()), Some(f.ty), "{}", f.name);
        }
        // 4 and 5 were Q4_2 and Q4_3, removed from ggml.
        for id in [4, 5, u32::MAX] {
            assert_eq!(WeightType::from_ggml(id), None, "{id}");
        }
    }

    #[test]
    fn module_names_are_the_names_in_lower_case() {
        // kernels-cpu finds a type's file by the module column, GPU backends name its kernels by
        // the lower-case name: the two must agree.
        macro_rules! modules {
            ($($t:ident = $id:literal, $m:ident, $bs:literal, $ts:literal, $vd:ident;)*) => {
                [$((stringify!($t), stringify!($m))),*]
            };
        }
        for (name, module) in weight_types!(modules) {
            assert_eq!(module, name.to_ascii_lowercase(), "{name}");
        }
    }

    #[test]
    fn activation_blocks_divide_weight_blocks() {
        // A row of whole weight blocks is then a row of whole activation blocks.
        for f in TYPES {
            let at = f.vec_dot_type;
            assert_eq!(f.block_size % at.block_size(), 0, "{}: blocks not a multiple of {at}'s", f.name);
        }
    }

    #[test]
    fn row_bytes_are_ggmls() {
        assert_eq!(WeightType::Q4_K.row_bytes(4096), 16 * 144);
        assert_eq!(WeightType::Q8_0.row_bytes(64), 68);
        assert_eq!(WeightType::F16.row_bytes(3), 6);
        assert_eq!(WeightType::Q4_K.checked_row_bytes(4096), Some(16 * 144));
        assert_eq!(WeightType::Q4_K.checked_row_bytes(100), None);
        assert_eq!(WeightType::F32.checked_row_bytes(u64::MAX), None);
        assert_eq!(WeightType::BF16.checked_row_bytes(0), Some(0));
    }
}
