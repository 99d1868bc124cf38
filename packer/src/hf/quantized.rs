//! 4-bit GPTQ and AWQ checkpoints: their settings ([`method_from_dir`]) and their linear layers
//! dequantized to the float weight the checkpoint stands for ([`dequantize_linear`]), or mapped
//! straight onto Q4_0/Q4_1 blocks where the grids agree ([`exact_legacy_q4`]).
//!
//! Both formats store, for every weight, a 4-bit code `q`, and for every group of input columns
//! (per output row) a scale `s` and a zero point `z`; the weight is `s * (q - z)`. The product is
//! computed in f32, where it is exact (an f16 scale has 11 significant bits, `q - z` at most 5),
//! so the result is the value itself, not one of its roundings.
//!
//! Layouts ([`crate::hf::gptq`] and [`crate::hf::awq`] unpack them):
//! - GPTQ (AutoGPTQ, transformers' "gptq"): `qweight` int32 `[in/8, out]`, eight codes per int32
//!   along the input dimension, lowest nibble first; `qzeros` int32 `[groups, out/8]` along the
//!   output dimension, same order; `scales` `[groups, out]`; `g_idx` int32 `[in]`, the group of
//!   each input column (a permutation of the groups with `desc_act`).
//! - AWQ GEMM (AutoAWQ): `qweight` int32 `[in, out/8]` and `qzeros` int32 `[in/group, out/8]`,
//!   packed along the output dimension with nibble `k` holding column `8c + [0,2,4,6,1,3,5,7][k]`;
//!   `scales` `[in/group, out]`.

use anyhow::{bail, Context};
use kernels_cpu::types::{dequantize_row, f16_to_f32, f32_to_f16};
use kernels_cpu::WeightType;
use llamafile_format::escape::{escape, escape_path};
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;

/// A quantized checkpoint's method and settings.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantMethod {
    Gptq(GptqConfig),
    Awq(AwqConfig),
}

/// GPTQ settings (4 bits).
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    /// Input columns per group; `None` for one group over the whole row (`group_size: -1`).
    pub group_size: Option<usize>,
    /// Groups in activation order: `g_idx` permutes them, and must be there.
    pub desc_act: bool,
    pub sym: bool,
    /// The stored zero points are one less than the real ones. AutoGPTQ's original format
    /// (`checkpoint_format` "gptq", TheBloke's repositories) writes `z - 1` and its readers (and
    /// transformers') add the 1 back; "gptq_v2" (GPTQModel) stores `z` itself.
    pub zeros_minus_one: bool,
    /// Where the settings were read (for messages).
    pub source: String,
}

/// AWQ GEMM settings (4 bits, with zero points).
#[derive(Clone, Debug, PartialEq)]
pub struct AwqConfig {
    /// Input columns per group; `None` for one group over the whole row.
    pub group_size: Option<usize>,
    pub source: String,
}

/// A safetensors tensor as stored: dtype ("I32", "F16", "BF16", "F32"), shape, little-endian bytes.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub dtype: &'a str,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// The quantization settings of the checkpoint in `dir` (whose `config.json` is `config`), or
/// `None` when it is not quantized. Read from `config.json`'s `quantization_config`, else
/// `quantize_config.json` (GPTQ), else `quant_config.json` (AWQ); anything else than 4-bit GPTQ
/// or AWQ GEMM is refused naming the file and field.
pub fn method_from_dir(dir: &Path, config: &Value) -> anyhow::Result<Option<QuantMethod>> {
    if let Some(q) = config.get("quantization_config") {
        let src = format!("{}: quantization_config", escape_path(&dir.join("config.json")));
        let Some(obj) = q.as_object() else { bail!("{src} is not an object") };
        let method = match obj.get("quant_method") {
            Some(Value::String(s)) => s.to_ascii_lowercase(),
            Some(v) => bail!("{src}.quant_method is {}, expected a string", shown(v)),
            None => bail!("{src} has no quant_method"),
        };
        return match method.as_str() {
            "gptq" => gptq_config(obj, &src).map(|c| Some(QuantMethod::Gptq(c))),
            "awq" => awq_config(obj, &src).map(|c| Some(QuantMethod::Awq(c))),
            "exl2" => {
                bail!("{src}.quant_method is 'exl2': ExLlamaV2's format is not supported (GPTQ and AWQ GEMM are)")
            }
            other => bail!(
                "{src}.quant_method is '{}': not supported (pack reads 4-bit GPTQ and AWQ GEMM checkpoints)",
                escape(other)
            ),
        };
    }
    let (gptq, awq) = (dir.join("quantize_config.json"), dir.join("quant_config.json"));
    match (gptq.exists(), awq.exists()) {
        (false, false) => Ok(None),
        (true, true) => bail!(
            "{}: both quantize_config.json (GPTQ) and quant_config.json (AWQ) are there and config.json has no quantization_config to say which applies",
            escape_path(dir)
        ),
        (true, false) => {
            let (obj, src) = read_object(&gptq)?;
            if let Some(m) = obj.get("quant_method") {
                if m.as_str().map(str::to_ascii_lowercase).as_deref() != Some("gptq") {
                    bail!("{src}: quant_method is {}, expected 'gptq'", shown(m));
                }
            }
            gptq_config(&obj, &src).map(|c| Some(QuantMethod::Gptq(c)))
        }
        (false, true) => {
            let (obj, src) = read_object(&awq)?;
            awq_config(&obj, &src).map(|c| Some(QuantMethod::Awq(c)))
        }
    }
}

/// Whether `name` is one of the tensors a quantized linear layer is stored as (read by
/// [`dequantize_linear`], never imported as they are).
pub fn is_quantization_tensor(name: &str) -> bool {
    [".qweight", ".qzeros", ".scales", ".g_idx"].iter().any(|s| name.ends_with(s))
}

/// The linear layer `prefix` (its `prefix.qweight`, `.qzeros`, `.scales` and GPTQ's `.g_idx`,
/// fetched by `get`) dequantized: `[out_features, in_features]` and the f32 weight, row-major,
/// as the float `prefix.weight` it replaces. Missing tensors, and shapes or dtypes that do not
/// fit the settings, are refused naming the tensor.
pub fn dequantize_linear<'a>(
    m: &QuantMethod,
    prefix: &str,
    get: &dyn Fn(&str) -> Option<RawTensor<'a>>,
) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let u = unpack(m, prefix, get)?;
    let mut w = vec![0f32; u.out * u.inp];
    w.par_chunks_mut(u.inp).enumerate().for_each(|(j, row)| u.dequantize_row(j, row));
    Ok((vec![u.out, u.inp], w))
}

/// The linear layer `prefix` as Q4_0 or Q4_1 (`to`) blocks, rows of `in_features / 32` blocks,
/// that dequantize to exactly (as numbers: a zero may come back as -0.0) the weights of
/// [`dequantize_linear`]; `None` when some block cannot, and the f32 weights are quantized as
/// usual instead.
///
/// A block maps without a second rounding when its 32 columns share one group (a group size
/// that is a multiple of 32 without `desc_act`, or a `g_idx` constant over the block), its
/// scale `s` is an f16, and:
/// - Q4_0 (`d * (q' - 8)`): `d = ±s`, `q' = ±(q - z) + 8` within 0..=15. Always true for a
///   symmetric checkpoint (`z = 8`); for an asymmetric one only if the block's codes allow it.
/// - Q4_1 (`d * q' + m`): `d = ±s`, `q' = ±(q - z) - t` within 0..=15 and `m = ±s * t` exact in
///   f16. True for symmetric checkpoints (`m = -8s`), and for asymmetric ones when some offset
///   `t` gives an f16 minimum (e.g. the zero point itself when `s * z` needs no more than 11
///   significant bits); usually not for every block of an asymmetric tensor.
pub fn exact_legacy_q4<'a>(
    m: &QuantMethod,
    prefix: &str,
    get: &dyn Fn(&str) -> Option<RawTensor<'a>>,
    to: WeightType,
) -> anyhow::Result<Option<Vec<u8>>> {
    if !matches!(to, WeightType::Q4_0 | WeightType::Q4_1) {
        bail!("exact mapping to {to}: only Q4_0 and Q4_1 share the 4-bit grid");
    }
    let u = unpack(m, prefix, get)?;
    let qk = to.block_size();
    if !u.inp.is_multiple_of(qk) {
        return Ok(None);
    }
    let row_bytes = to.row_bytes(u.inp);
    let mut out = vec![0u8; u.out * row_bytes];
    let ok = out.par_chunks_mut(row_bytes).enumerate().all(|(j, dst)| {
        let mut want = vec![0f32; u.inp];
        u.dequantize_row(j, &mut want);
        let mapped = (0..u.inp / qk).all(|b| {
            let block = &mut dst[b * to.type_size()..(b + 1) * to.type_size()];
            map_block(&u, j, b * qk, to, block)
        });
        // The blocks are checked as the runtime reads them: what is written is what was meant.
        let mut got = vec![0f32; u.inp];
        mapped && {
            dequantize_row(to, dst, &mut got);
            got == want
        }
    });
    Ok(ok.then_some(out))
}

/// Fill `block` (type `to`) with row `j`'s columns `first..first + 32`; false when the block
/// cannot hold them exactly.
fn map_block(u: &Unpacked, j: usize, first: usize, to: WeightType, block: &mut [u8]) -> bool {
    let qk = to.block_size();
    let g = u.group_of[first] as usize;
    if u.group_of[first..first + qk].iter().any(|&x| x as usize != g) {
        return false;
    }
    let s = u.scales[g * u.out + j];
    let z = u.zeros[g * u.out + j] as i32;
    if f16_to_f32(f32_to_f16(s)) != s {
        return false;
    }
    let e: Vec<i32> = (0..qk).map(|i| u.q[j * u.inp + first + i] as i32 - z).collect();
    for sigma in [1i32, -1] {
        let (lo, hi) = e.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &x| (lo.min(sigma * x), hi.max(sigma * x)));
        let d = f32_to_f16(sigma as f32 * s);
        // The offset subtracted from each `sigma * e`, and the f16 minimum it makes.
        let offset = match to {
            WeightType::Q4_0 => (lo >= -8 && hi <= 7).then_some((-8, None)),
            _ => {
                let mut ts: Vec<i32> = (hi - 15..=lo).collect();
                ts.sort_by_key(|t| t.abs());
                ts.into_iter().find_map(|t| {
                    let m = sigma as f32 * s * t as f32;
                    (f16_to_f32(f32_to_f16(m)) == m).then_some((t, Some(f32_to_f16(m))))
                })
            }
        };
        let Some((t, m)) = offset else { continue };
        let codes: Vec<u8> = e.iter().map(|&x| (sigma * x - t) as u8).collect();
        block[0..2].copy_from_slice(&d);
        let qs = match m {
            Some(m) => {
                block[2..4].copy_from_slice(&m);
                &mut block[4..]
            }
            None => &mut block[2..],
        };
        for k in 0..qk / 2 {
            qs[k] = codes[k] | (codes[k + qk / 2] << 4);
        }
        return true;
    }
    false
}

/// A quantized linear layer unpacked: one code per weight, each column's group, and each
/// (group, output row)'s scale and zero point.
pub(crate) struct Unpacked {
    pub out: usize,
    pub inp: usize,
    /// Codes `[out][in]`, 0..=15.
    pub q: Vec<u8>,
    /// Group of each input column.
    pub group_of: Vec<u32>,
    /// `[groups][out]`.
    pub scales: Vec<f32>,
    /// `[groups][out]`, 0..=16 (AutoGPTQ's "+1" can make 16).
    pub zeros: Vec<u8>,
}

impl Unpacked {
    fn dequantize_row(&self, j: usize, row: &mut [f32]) {
        let q = &self.q[j * self.inp..(j + 1) * self.inp];
        for ((w, &q), &g) in row.iter_mut().zip(q).zip(&self.group_of) {
            let k = g as usize * self.out + j;
            *w = self.scales[k] * (q as i32 - self.zeros[k] as i32) as f32;
        }
    }
}

fn unpack<'a>(m: &QuantMethod, prefix: &str, get: &dyn Fn(&str) -> Option<RawTensor<'a>>) -> anyhow::Result<Unpacked> {
    match m {
        QuantMethod::Gptq(c) => crate::hf::gptq::unpack(c, prefix, get),
        QuantMethod::Awq(c) => crate::hf::awq::unpack(c, prefix, get),
    }
}

// ---- Reading the stored tensors (shared by the GPTQ and AWQ readers) ----

/// Tensor `name`, which must be there.
pub(crate) fn fetch<'a>(get: &dyn Fn(&str) -> Option<RawTensor<'a>>, name: &str) -> anyhow::Result<RawTensor<'a>> {
    get(name).with_context(|| format!("tensor '{}' is missing", escape(name)))
}

/// `t`'s values as i32, after checking its dtype is I32 and its shape `shape`.
pub(crate) fn int32s(t: &RawTensor, name: &str, shape: &[usize]) -> anyhow::Result<Vec<u32>> {
    check(t, name, shape, &["I32"])?;
    Ok(t.data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// `t`'s values as f32 (from F16, BF16 or F32), after checking its shape is `shape`.
pub(crate) fn floats(t: &RawTensor, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
    check(t, name, shape, &["F16", "BF16", "F32"])?;
    Ok(match t.dtype {
        "F16" => t.data.chunks_exact(2).map(|b| f16_to_f32([b[0], b[1]])).collect(),
        "BF16" => t.data.chunks_exact(2).map(|b| kernels_cpu::types::bf16_to_f32([b[0], b[1]])).collect(),
        _ => t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    })
}

fn check(t: &RawTensor, name: &str, shape: &[usize], dtypes: &[&str]) -> anyhow::Result<()> {
    if !dtypes.contains(&t.dtype) {
        bail!("tensor '{}' has dtype {}, expected {}", escape(name), escape(t.dtype), dtypes.join(" or "));
    }
    if t.shape != shape {
        bail!("tensor '{}' has shape {:?}, expected {:?}", escape(name), t.shape, shape);
    }
    let size = if t.dtype == "F16" || t.dtype == "BF16" { 2 } else { 4 };
    if t.data.len() != shape.iter().product::<usize>() * size {
        bail!("tensor '{}' has {} bytes of data for shape {:?} {}", escape(name), t.data.len(), t.shape, t.dtype);
    }
    Ok(())
}

/// The 2-D shape of `t` (named `name`), refused otherwise.
pub(crate) fn dims2(t: &RawTensor, name: &str) -> anyhow::Result<(usize, usize)> {
    match t.shape[..] {
        [a, b] if a > 0 && b > 0 => Ok((a, b)),
        _ => bail!("tensor '{}' has shape {:?}, expected two non-zero dimensions", escape(name), t.shape),
    }
}

/// Groups over `inp` input columns (`group_size` from `src`), refused when the group size does
/// not divide them.
pub(crate) fn group_count(group_size: Option<usize>, src: &str, inp: usize, name: &str) -> anyhow::Result<usize> {
    match group_size {
        None => Ok(1),
        Some(g) if inp.is_multiple_of(g) => Ok(inp / g),
        Some(g) => bail!(
            "tensor '{}': its {inp} input features are not a multiple of the group size {g} ({src})",
            escape(name)
        ),
    }
}

/// The 4-bit field `k` (0 = lowest) of `word`.
#[inline]
pub(crate) fn nibble(word: u32, k: usize) -> u8 {
    ((word >> (4 * k)) & 15) as u8
}

// ---- The settings files ----

fn read_object(path: &Path) -> anyhow::Result<(Map<String, Value>, String)> {
    let src = escape_path(path);
    let bytes = llamafile_format::input::read_regular(path, "a quantization settings file")?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(o)) => Ok((o, src)),
        Ok(_) => bail!("{src}: not a JSON object"),
        Err(e) => bail!("{src}: not valid JSON: {e}"),
    }
}

/// A JSON value as shown in a message (escaped, cut).
fn shown(v: &Value) -> String {
    escape(&v.to_string())
}

/// The integer field `key` (the first of `keys` present), or `None`.
fn int_field(obj: &Map<String, Value>, keys: &[&str], src: &str) -> anyhow::Result<Option<(i64, String)>> {
    let Some((k, v)) = keys.iter().find_map(|k| obj.get(*k).map(|v| (*k, v))) else { return Ok(None) };
    match v.as_i64() {
        Some(n) => Ok(Some((n, k.to_string()))),
        None => bail!("{src}: {k} is {}, expected an integer", shown(v)),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, default: bool, src: &str) -> anyhow::Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("{src}: {key} is {}, expected true or false", shown(v)),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str, src: &str) -> anyhow::Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("{src}: {key} is {}, expected a string", shown(v)),
    }
}

/// Bits (`keys`: its names) must be 4.
fn four_bits(obj: &Map<String, Value>, keys: &[&str], what: &str, src: &str) -> anyhow::Result<()> {
    match int_field(obj, keys, src)? {
        Some((4, _)) => Ok(()),
        Some((n, k)) => bail!("{src}: {k} is {n}; only 4-bit {what} is supported"),
        None => bail!("{src}: no {} field", keys[0]),
    }
}

/// The group size (`keys`: its names): positive, or -1 for one group per row.
fn group_size(obj: &Map<String, Value>, keys: &[&str], src: &str) -> anyhow::Result<Option<usize>> {
    match int_field(obj, keys, src)? {
        Some((-1, _)) => Ok(None),
        Some((n, _)) if n > 0 => Ok(Some(n as usize)),
        Some((n, k)) => bail!("{src}: {k} is {n}; expected a positive number of columns, or -1"),
        None => bail!("{src}: no {} field", keys[0]),
    }
}

fn gptq_config(obj: &Map<String, Value>, src: &str) -> anyhow::Result<GptqConfig> {
    four_bits(obj, &["bits"], "GPTQ", src)?;
    let group_size = group_size(obj, &["group_size"], src)?;
    if bool_field(obj, "is_marlin_format", false, src)? {
        bail!("{src}: is_marlin_format is true: the Marlin layout is not supported (the GPTQ layout is)");
    }
    // AutoGPTQ and transformers name it checkpoint_format, GPTQModel format.
    let mut zeros_minus_one = true;
    for key in ["checkpoint_format", "format"] {
        match str_field(obj, key, src)?.map(str::to_ascii_lowercase).as_deref() {
            None | Some("gptq") => {}
            Some("gptq_v2") => zeros_minus_one = false,
            Some(other) => {
                bail!("{src}: {key} is '{}': only the gptq and gptq_v2 layouts are supported", escape(other))
            }
        }
    }
    Ok(GptqConfig {
        group_size,
        desc_act: bool_field(obj, "desc_act", false, src)?,
        sym: bool_field(obj, "sym", true, src)?,
        zeros_minus_one,
        source: src.to_string(),
    })
}

fn awq_config(obj: &Map<String, Value>, src: &str) -> anyhow::Result<AwqConfig> {
    // quant_config.json names them w_bit and q_group_size, config.json bits and group_size.
    four_bits(obj, &["w_bit", "bits"], "AWQ", src)?;
    let group_size = group_size(obj, &["q_group_size", "group_size"], src)?;
    if !bool_field(obj, "zero_point", true, src)? {
        bail!("{src}: zero_point is false: AWQ without zero points is not supported");
    }
    // AutoAWQ's default version is GEMM.
    match str_field(obj, "version", src)? {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("gemm") => {}
        Some(v) => bail!("{src}: version is '{}': only AWQ GEMM checkpoints are supported", escape(v)),
    }
    // llm-awq (the original MIT code) packs differently from AutoAWQ.
    match str_field(obj, "backend", src)? {
        None => {}
        Some(b) if b.eq_ignore_ascii_case("autoawq") => {}
        Some(b) => bail!("{src}: backend is '{}': only AutoAWQ's packing is supported", escape(b)),
    }
    Ok(AwqConfig { group_size, source: src.to_string() })
}

#[cfg(test)]
#[path = "quantized_tests.rs"]
mod tests;
