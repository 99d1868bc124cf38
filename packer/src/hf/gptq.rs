//! GPTQ's tensors unpacked (the layout is described in [`crate::hf::quantized`]).

use super::quantized::{dims2, fetch, floats, group_count, int32s, nibble, GptqConfig, RawTensor, Unpacked};
use anyhow::bail;
use llamafile_format::escape::escape;
use rayon::prelude::*;

pub(crate) fn unpack<'a>(
    c: &GptqConfig,
    prefix: &str,
    get: &dyn Fn(&str) -> Option<RawTensor<'a>>,
) -> anyhow::Result<Unpacked> {
    let [qweight, qzeros, scales, g_idx] = ["qweight", "qzeros", "scales", "g_idx"].map(|s| format!("{prefix}.{s}"));
    let qw = fetch(get, &qweight)?;
    let (packed_in, out) = dims2(&qw, &qweight)?;
    let inp = packed_in * 8;
    if !out.is_multiple_of(8) {
        bail!("tensor '{}' has {out} output features, not a multiple of 8 (as qzeros packs them)", escape(&qweight));
    }
    let groups = group_count(c.group_size, &c.source, inp, &qweight)?;
    let words = int32s(&qw, &qweight, &[packed_in, out])?;
    let zero_words = int32s(&fetch(get, &qzeros)?, &qzeros, &[groups, out / 8])?;
    let scales = floats(&fetch(get, &scales)?, &scales, &[groups, out])?;
    let group_of = match get(&g_idx) {
        Some(t) => {
            let g = int32s(&t, &g_idx, &[inp])?;
            // Read as u32, a negative entry is out of range too.
            if let Some((i, &x)) = g.iter().enumerate().find(|(_, &x)| x as usize >= groups) {
                bail!("tensor '{}': entry {i} is {}, but there are {groups} groups", escape(&g_idx), x as i32);
            }
            g
        }
        None if c.desc_act => {
            bail!("tensor '{}' is missing, and {} has desc_act true (the columns' groups)", escape(&g_idx), c.source)
        }
        None => (0..inp).map(|i| (i / (inp / groups)) as u32).collect(),
    };
    let mut q = vec![0u8; out * inp];
    q.par_chunks_mut(inp).enumerate().for_each(|(j, row)| {
        for (r, codes) in row.chunks_exact_mut(8).enumerate() {
            let w = words[r * out + j];
            for (k, code) in codes.iter_mut().enumerate() {
                *code = nibble(w, k);
            }
        }
    });
    let plus = c.zeros_minus_one as u8;
    let zeros = (0..groups * out).map(|k| nibble(zero_words[k / 8], k % 8) + plus).collect();
    Ok(Unpacked { out, inp, q, group_of, scales, zeros })
}
