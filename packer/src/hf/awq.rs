//! AWQ GEMM's tensors unpacked (the layout is described in [`crate::hf::quantized`]).

use super::quantized::{dims2, fetch, floats, group_count, int32s, nibble, AwqConfig, RawTensor, Unpacked};
use rayon::prelude::*;

/// The nibble of an int32 that holds each of its 8 consecutive output columns: AutoAWQ packs
/// columns 0, 2, 4, 6, 1, 3, 5, 7 into nibbles 0..8 (the order its GEMM kernel unpacks).
const NIBBLE_OF_COLUMN: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

pub(crate) fn unpack<'a>(
    c: &AwqConfig,
    prefix: &str,
    get: &dyn Fn(&str) -> Option<RawTensor<'a>>,
) -> anyhow::Result<Unpacked> {
    let [qweight, qzeros, scales] = ["qweight", "qzeros", "scales"].map(|s| format!("{prefix}.{s}"));
    let qw = fetch(get, &qweight)?;
    let (inp, packed_out) = dims2(&qw, &qweight)?;
    let out = packed_out * 8;
    let groups = group_count(c.group_size, &c.source, inp, &qweight)?;
    let words = int32s(&qw, &qweight, &[inp, packed_out])?;
    let zero_words = int32s(&fetch(get, &qzeros)?, &qzeros, &[groups, packed_out])?;
    let scales = floats(&fetch(get, &scales)?, &scales, &[groups, out])?;
    let unpack_column = |words: &[u32], j: usize| nibble(words[j / 8], NIBBLE_OF_COLUMN[j % 8]);
    let mut q = vec![0u8; out * inp];
    q.par_chunks_mut(inp).enumerate().for_each(|(j, row)| {
        for (i, code) in row.iter_mut().enumerate() {
            *code = unpack_column(&words[i * packed_out..(i + 1) * packed_out], j);
        }
    });
    let zeros = (0..groups * out).map(|k| unpack_column(&zero_words[k / out * packed_out..], k % out)).collect();
    let group_of = (0..inp).map(|i| (i / (inp / groups)) as u32).collect();
    Ok(Unpacked { out, inp, q, group_of, scales, zeros })
}
