//! `pack --hf DIR`: a Hugging Face checkpoint (config.json, safetensors, tokenizer files) to a
//! GGUF laid out as the reference converter (`convert_hf_to_gguf.py`) writes it: the same
//! metadata keys and values in the same order, the same tensor names, order and types (2-D
//! weights as its `--outtype` says, [`OutType`]: by default F16, or BF16 from a BF16
//! checkpoint; norms and biases F32), the
//! Llama family's q/k permutation, and the tokenizer's metadata, so tokenization is the same.
//! What differs by architecture: config.rs (Llama, Mistral, Qwen2/3), phi3.rs, gemma.rs for the
//! metadata; tensors.rs for the names; vocab.rs (its `Flavor`) for the tokenizer reading.
//!
//! Tensors are streamed from the memory-mapped shards a slab of rows at a time: the model is
//! never whole in memory. The GGUF goes to `--gguf-out`, or to a temporary file beside the
//! output that the ordinary pack (and `--quantize`) path then reads; with `--quantize`, the
//! GPTQ/AWQ layers that map exactly onto Q4_0/Q4_1 blocks reach the quantizer as those blocks
//! ([`TempGguf::precomputed`]) rather than as their F16 conversion.

mod awq;
mod bpe_pre;
// The model card's front matter (README.md) read into the descriptive general.* keys.
mod card;
mod card_yaml;
mod config;
mod gemma;
mod gptq;
mod model_id;
mod phi3;
pub mod quantized;
mod shards;
mod special;
mod spm;
mod tensors;
#[cfg(test)]
mod tests;
mod vocab;

use anyhow::{bail, Context};
use config::Config;
use kernels_cpu::WeightType;
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::{writer, MetaValue};
use shards::Shards;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
pub use tensors::OutType;
use tensors::{GGML_F16, GGML_F32};

pub(crate) type Json = serde_json::Value;

/// The alignment the reference's GGUF writer uses.
const ALIGNMENT: u64 = 32;
/// The ggml quantization version written in `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;
/// Source bytes converted per write.
const SLAB_BYTES: usize = 8 << 20;

/// A tensor of a shard as the GPTQ/AWQ dequantizer reads it.
pub use quantized::RawTensor;

/// Dequantize the linear layer `prefix` (reading its parts through `get`) to its f32 weight,
/// shape [out_features, in_features].
/// (The parts borrow the mapped shards, so their lifetime is the getter's, not the name's.)
pub type Dequantize =
    Box<dyn for<'a> Fn(&str, &dyn Fn(&str) -> Option<RawTensor<'a>>) -> anyhow::Result<(Vec<usize>, Vec<f32>)>>;

/// The linear layer `prefix` as Q4_0 or Q4_1 blocks that hold its weights exactly, or `None`
/// (see [`quantized::exact_legacy_q4`]).
pub type ExactQ4 =
    Box<dyn for<'a> Fn(&str, &dyn Fn(&str) -> Option<RawTensor<'a>>, WeightType) -> anyhow::Result<Option<Vec<u8>>>>;

/// What the loader needs from a quantized-checkpoint reader: how to dequantize a layer, how to
/// map it onto Q4_0/Q4_1 blocks without rounding, and which tensor names are the quantization's
/// parts (`.qweight`, `.qzeros`, `.scales`, `.g_idx`).
pub struct Quantized {
    pub dequantize: Dequantize,
    pub exact_q4: ExactQ4,
    pub is_part: fn(&str) -> bool,
}

/// The quantization method of the checkpoint in `dir` (4-bit GPTQ or AWQ GEMM, see
/// [`quantized`]), if it is quantized; any other is refused naming the file and field.
fn detect_quantized(dir: &Path, config: &Json) -> anyhow::Result<Option<Quantized>> {
    Ok(quantized::method_from_dir(dir, config)?.map(|m| {
        let m2 = m.clone();
        Quantized {
            dequantize: Box::new(move |prefix, get| quantized::dequantize_linear(&m, prefix, get)),
            exact_q4: Box::new(move |prefix, get, to| quantized::exact_legacy_q4(&m2, prefix, get, to)),
            is_part: quantized::is_quantization_tensor,
        }
    }))
}

/// Where an output tensor's data comes from.
enum Source {
    /// A shard tensor (index in [`Shards::tensors`]), rows permuted for `Some(n_head)`, each
    /// value plus 1 for `plus_one` (Gemma's norms).
    Shard { index: usize, permute: Option<usize>, plus_one: bool },
    /// A quantized linear layer, dequantized when written, rows permuted for `Some(n_head)`.
    Dequantized { prefix: String, permute: Option<usize> },
    /// Computed here (the llama3 rope factors), f32.
    Generated(Vec<f32>),
}

struct Planned {
    name: String,
    /// HF order (rows first).
    shape: Vec<usize>,
    ggml_type: u32,
    size: u64,
    source: Source,
}

/// A checkpoint read and checked, its GGUF laid out: nothing is written yet.
pub struct HfPlan {
    shards: Shards,
    quantized: Option<Quantized>,
    header: Vec<u8>,
    tensors: Vec<Planned>,
    /// Bytes of the whole GGUF.
    pub size: u64,
    /// The GGUF architecture name.
    pub arch: &'static str,
}

/// Read and check the checkpoint in `dir` and lay out its GGUF, 2-D weights in `out_type`.
pub fn plan(dir: &Path, out_type: OutType) -> anyhow::Result<HfPlan> {
    if !dir.is_dir() {
        bail!("--hf {}: not a directory", escape_path(dir));
    }
    let cfg = Config::read(dir)?;
    let quantized = detect_quantized(dir, &cfg.json)?;
    refuse_variants(dir, &cfg)?;
    plan_with(dir, cfg, quantized, out_type)
}

fn plan_with(dir: &Path, cfg: Config, quantized: Option<Quantized>, out_type: OutType) -> anyhow::Result<HfPlan> {
    let shards = Shards::open(dir)?;
    // (gguf name, shape, source dtype, source)
    let mut items: Vec<(String, Vec<usize>, String, Source)> = Vec::new();
    if let Some(r) = cfg.llama3_rope {
        items.push((
            "rope_freqs.weight".into(),
            vec![cfg.head_dim / 2],
            "F32".into(),
            Source::Generated(llama3_factors(&cfg, r)),
        ));
    }
    if let Some(l) = cfg.phi3.as_ref().and_then(|p| p.longrope.as_ref()) {
        for (name, f) in [("rope_factors_long.weight", &l.long), ("rope_factors_short.weight", &l.short)] {
            items.push((name.into(), vec![f.len()], "F32".into(), Source::Generated(f.clone())));
        }
    }
    for (index, t) in shards.tensors.iter().enumerate() {
        let file = || escape_path(shards.file(t));
        let (hf_name, source, dtype, shape) = match &quantized {
            Some(q) if (q.is_part)(&t.name) => match t.name.strip_suffix(".qweight") {
                Some(prefix) => (
                    format!("{prefix}.weight"),
                    Source::Dequantized { prefix: prefix.to_string(), permute: None },
                    "F32".to_string(),
                    None,
                ),
                None => continue,
            },
            _ => (
                t.name.clone(),
                Source::Shard { index, permute: None, plus_one: false },
                t.dtype.clone(),
                Some(t.shape.clone()),
            ),
        };
        let Some((gguf_name, permute)) = tensors::map_name(&cfg, &hf_name).with_context(|| file().to_string())? else {
            continue;
        };
        let Some(want) = tensors::expected_shape(&cfg, &gguf_name) else {
            bail!("{}: tensor '{}' is not expected for {}", file(), escape(&hf_name), cfg.hf_arch);
        };
        if let Some(shape) = &shape {
            if tensors::float_size(&dtype).is_none() {
                bail!("{}: tensor '{}' has dtype {}, not F16, BF16 or F32", file(), escape(&t.name), escape(&dtype));
            }
            if *shape != want {
                bail!("{}: tensor '{}' has shape {:?}, config.json implies {:?}", file(), escape(&t.name), shape, want);
            }
        }
        let source = match source {
            // Gemma's RMSNorm multiplies by (1 + w): the reference stores 1 + w.
            Source::Shard { index, .. } => Source::Shard {
                index,
                permute,
                plus_one: matches!(cfg.arch, config::Arch::Gemma2 | config::Arch::Gemma3)
                    && hf_name.ends_with("norm.weight"),
            },
            Source::Dequantized { prefix, .. } => Source::Dequantized { prefix, permute },
            s => s,
        };
        items.push((gguf_name, want, dtype, source));
    }
    for required in ["token_embd.weight", "output_norm.weight"] {
        if !items.iter().any(|(n, ..)| n == required) {
            bail!("{}: the checkpoint has no tensor for {required}", escape_path(dir));
        }
    }
    // `--outtype auto` looks at the first 2-D tensor (F32 checkpoints become F16).
    let first_2d = items.iter().find(|(_, s, ..)| s.len() >= 2).map(|(_, _, d, _)| d.as_str()).unwrap_or("F16");
    let (weight_type, file_type) = out_type.weight_and_file_type(first_2d);
    let mut tensors_out = Vec::new();
    for (name, shape, _dtype, source) in items {
        let ggml_type = if shape.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
            GGML_F32
        } else {
            weight_type
        };
        // A type whose blocks do not fit the rows falls back to F16, as the converter's does.
        let (ggml_type, size) = match tensors::tensor_bytes(ggml_type, &shape) {
            Some(size) => (ggml_type, size),
            None => (GGML_F16, tensors::tensor_bytes(GGML_F16, &shape).context("tensor size overflows")?),
        };
        tensors_out.push(Planned { name, shape, ggml_type, size, source });
    }
    let total_params: u64 = tensors_out.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let arch = cfg.arch.gguf_name();
    let mut meta: Vec<(String, MetaValue)> = vec![("general.architecture".into(), MetaValue::String(arch.into()))];
    if let Some(p) = &cfg.phi3 {
        meta.extend(p.early_meta());
    }
    meta.extend(config::general_meta(dir, &cfg.json, total_params)?);
    meta.extend(cfg.model_meta(file_type));
    meta.push(("general.quantization_version".into(), MetaValue::U32(QUANTIZATION_VERSION)));
    let flavor = match cfg.arch {
        config::Arch::Llama => vocab::Flavor::Llama,
        config::Arch::Qwen2 | config::Arch::Qwen3 => vocab::Flavor::Plain,
        config::Arch::Phi3 => vocab::Flavor::Phi3,
        config::Arch::Gemma2 => vocab::Flavor::Gemma2,
        config::Arch::Gemma3 => vocab::Flavor::Gemma3,
    };
    meta.extend(vocab::tokenizer_meta(dir, &cfg.json, flavor)?);
    let meta_refs: Vec<(&str, MetaValue)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let dims: Vec<Vec<u64>> = tensors_out.iter().map(|t| t.shape.iter().rev().map(|&d| d as u64).collect()).collect();
    let infos: Vec<(&str, &[u64], u32, u64)> =
        tensors_out.iter().zip(&dims).map(|(t, d)| (t.name.as_str(), d.as_slice(), t.ggml_type, t.size)).collect();
    let header = writer::header(&meta_refs, &infos, ALIGNMENT);
    let size = header.len() as u64 + tensors_out.iter().map(|t| t.size.div_ceil(ALIGNMENT) * ALIGNMENT).sum::<u64>();
    Ok(HfPlan { shards, quantized, header, tensors: tensors_out, size, arch })
}

/// Checkpoints of a supported architecture that the reference converts otherwise (a Qwen3
/// reranker's classifier head, a sentence-transformers model's pooling): refused, not
/// converted as a plain language model.
fn refuse_variants(dir: &Path, cfg: &Config) -> anyhow::Result<()> {
    if dir.join("modules.json").is_file() {
        bail!(
            "{}: a sentence-transformers model (pooling) is not supported by pack --hf",
            escape_path(&dir.join("modules.json"))
        );
    }
    if matches!(cfg.arch, config::Arch::Gemma2 | config::Arch::Gemma3) {
        gemma::check(dir, cfg)?;
    }
    if cfg.arch == config::Arch::Qwen3 {
        let readme = card::readme_text(dir)?.unwrap_or_default().to_lowercase();
        let dir_name =
            std::fs::canonicalize(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()));
        let name_or_path = cfg.json.get("_name_or_path").and_then(|v| v.as_str()).unwrap_or("").to_lowercase();
        let hints = [dir_name.unwrap_or_default(), name_or_path];
        if readme.contains("# qwen3-reranker")
            || readme.contains("# qwen3-vl-reranker")
            || hints.iter().any(|h| h.contains("qwen3-reranker") || h.contains("qwen3-vl-reranker"))
        {
            bail!("{}: a Qwen3 reranker is not supported by pack --hf", escape_path(dir));
        }
    }
    Ok(())
}

/// The llama3 rope frequency factors (one per pair of dimensions), computed as the converter
/// computes them: in f32 throughout, comparisons included (torch arithmetic on f32 tensors
/// with Python scalars), so that the tensor is the reference's bit for bit.
fn llama3_factors(cfg: &Config, r: config::Llama3Rope) -> Vec<f32> {
    let dim = cfg.head_dim;
    // Python evaluates these in f64 before they meet a tensor.
    let low_wavelen = (r.original_max_position_embeddings / r.low_freq_factor) as f32;
    let high_wavelen = (r.original_max_position_embeddings / r.high_freq_factor) as f32;
    let span = (r.high_freq_factor - r.low_freq_factor) as f32;
    let (factor, low) = (r.factor as f32, r.low_freq_factor as f32);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0f32 / (r.base as f32).powf((2 * i) as f32 / dim as f32);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (r.original_max_position_embeddings as f32 / wavelen - low) / span;
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

impl HfPlan {
    /// Shard tensor `name` as the GPTQ/AWQ readers take it.
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let shards = &self.shards;
        shards.get(name).map(|s| RawTensor { dtype: s.dtype.as_str(), shape: s.shape.clone(), data: shards.data(s) })
    }

    /// Output tensor `name` as type `to` (Q4_0 or Q4_1) in blocks that decode exactly to the
    /// checkpoint's weights, rows in the GGUF's order; `None` for a tensor that is not a
    /// quantized linear layer, another type, or a layer whose groups do not fit the blocks.
    pub fn exact_blocks(&self, name: &str, to: WeightType) -> anyhow::Result<Option<Vec<u8>>> {
        if !matches!(to, WeightType::Q4_0 | WeightType::Q4_1) {
            return Ok(None);
        }
        let (Some(q), Some(t)) = (&self.quantized, self.tensors.iter().find(|t| t.name == name)) else {
            return Ok(None);
        };
        let Source::Dequantized { prefix, permute } = &t.source else { return Ok(None) };
        let Some(blocks) = (q.exact_q4)(prefix, &|n| self.raw(n), to)? else { return Ok(None) };
        let (rows, row_bytes) = (t.shape[0], to.row_bytes(t.shape[1]));
        if blocks.len() != rows * row_bytes {
            bail!("'{}': {} bytes of {to} blocks, expected {}", escape(prefix), blocks.len(), rows * row_bytes);
        }
        Ok(Some(match permute {
            // The same row order as the converted weight's.
            Some(h) => (0..rows)
                .flat_map(|r| {
                    let src = tensors::permuted_source_row(r, rows, *h);
                    &blocks[src * row_bytes..(src + 1) * row_bytes]
                })
                .copied()
                .collect(),
            None => blocks,
        }))
    }

    /// Names of the output tensors, in order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// Write the GGUF to `out`; `progress(done, total)` after each slab.
    pub fn write(&self, out: &mut dyn Write, progress: &mut dyn FnMut(u64, u64)) -> anyhow::Result<()> {
        let io = |e: std::io::Error| anyhow::Error::new(e).context("cannot write the output");
        out.write_all(&self.header).map_err(io)?;
        let total: u64 = self.tensors.iter().map(|t| t.size).sum();
        let mut done = 0u64;
        let mut buf = Vec::new();
        for t in &self.tensors {
            buf.clear();
            match &t.source {
                Source::Generated(v) => tensors::convert_f32_into(v, t.ggml_type, &mut buf),
                Source::Dequantized { prefix, permute } => {
                    let q = self.quantized.as_ref().expect("planned with a dequantizer");
                    let (shape, w) = (q.dequantize)(prefix, &|name| self.raw(name))?;
                    if shape != t.shape {
                        bail!(
                            "'{}': dequantized to shape {:?}, config.json implies {:?}",
                            escape(prefix),
                            shape,
                            t.shape
                        );
                    }
                    match permute {
                        // The q/k rows in the order the runtime's RoPE reads them, as for a float checkpoint.
                        Some(h) => {
                            let cols = shape[1];
                            for r in 0..shape[0] {
                                let src = tensors::permuted_source_row(r, shape[0], *h);
                                tensors::convert_f32_into(&w[src * cols..(src + 1) * cols], t.ggml_type, &mut buf);
                            }
                        }
                        None => tensors::convert_f32_into(&w, t.ggml_type, &mut buf),
                    }
                }
                Source::Shard { index, permute, plus_one } => {
                    let s = &self.shards.tensors[*index];
                    let data = self.shards.data(s);
                    let rows = t.shape[0];
                    let row_bytes = data.len() / rows.max(1);
                    let slab_rows = (SLAB_BYTES / row_bytes.max(1)).max(1);
                    for first in (0..rows).step_by(slab_rows) {
                        buf.clear();
                        for r in first..(first + slab_rows).min(rows) {
                            let src = match permute {
                                Some(h) => tensors::permuted_source_row(r, rows, *h),
                                None => r,
                            };
                            let row = &data[src * row_bytes..(src + 1) * row_bytes];
                            if *plus_one {
                                tensors::convert_plus_one_into(row, &s.dtype, t.ggml_type, &mut buf);
                            } else {
                                tensors::convert_into(row, &s.dtype, t.ggml_type, &mut buf);
                            }
                        }
                        out.write_all(&buf).map_err(io)?;
                        done += buf.len() as u64;
                        progress(done, total);
                    }
                    buf.clear();
                }
            }
            out.write_all(&buf).map_err(io)?;
            done += buf.len() as u64;
            let pad = t.size.div_ceil(ALIGNMENT) * ALIGNMENT - t.size;
            out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            progress(done, total);
        }
        out.flush().map_err(io)?;
        Ok(())
    }

    fn write_file(&self, f: &std::fs::File, show_progress: bool) -> anyhow::Result<()> {
        let bar = show_progress.then(|| {
            let b = indicatif::ProgressBar::new(self.size);
            b.set_style(
                indicatif::ProgressStyle::with_template("hf->gguf [{bar:40}] {bytes}/{total_bytes} {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        });
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        self.write(&mut w, &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })?;
        drop(w);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let size = f.metadata()?.len();
        if size != self.size {
            bail!("internal error: wrote {size} bytes where {} were planned", self.size);
        }
        Ok(())
    }
}

/// `pack --hf DIR --gguf-out OUT`: the converted GGUF as a plain file (written under a
/// temporary name, renamed at the end; nothing left on failure).
pub fn convert_to_gguf(
    dir: &Path,
    out_type: OutType,
    out: &Path,
    force: bool,
    show_progress: bool,
) -> anyhow::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let p = plan(dir, out_type)?;
    let (out_dir, out_name) = crate::check_output(out, force, &[])?;
    let (tmp, f) = crate::tmp_output::TmpOutput::create(&out_dir, &out_name)?;
    p.write_file(&f, show_progress)?;
    f.sync_all().with_context(|| format!("cannot flush {} to disk", escape_path(tmp.path())))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .context("cannot set the output's permissions")?;
    drop(f);
    tmp.persist(out)?;
    Ok(p.size)
}

/// A converted GGUF in a private directory beside the output, removed (with the directory)
/// when dropped: the input of the ordinary pack and quantize paths.
pub struct TempGguf {
    dir: PathBuf,
    pub path: PathBuf,
    plan: Rc<HfPlan>,
    /// A signal meanwhile removes both too.
    _on_signal: crate::tmp_output::TmpDirForSignal,
}

impl TempGguf {
    /// The quantizer's source of ready blocks for this checkpoint: its GPTQ/AWQ layers that
    /// map exactly onto Q4_0/Q4_1 ([`HfPlan::exact_blocks`]) go in as they are, not by way of
    /// the converted F16 values.
    pub fn precomputed(&self) -> crate::quantize::Precomputed {
        let plan = self.plan.clone();
        crate::quantize::Precomputed(Rc::new(move |name, to| plan.exact_blocks(name, to)))
    }
}

impl Drop for TempGguf {
    fn drop(&mut self) {
        // (`_on_signal` is dropped after this body: a signal meanwhile removes what is left.)
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Convert the checkpoint in `dir` to `<stem>.gguf` in a new hidden directory in `near` (the
/// output's directory: the same file system, so no other disk fills up).
pub fn convert_to_temp(
    dir: &Path,
    out_type: OutType,
    near: &Path,
    stem: &str,
    show_progress: bool,
) -> anyhow::Result<TempGguf> {
    let p = plan(dir, out_type)?;
    let tmp_dir = near.join(format!(".pack-hf.{}", std::process::id()));
    let path = tmp_dir.join(format!("{stem}.gguf"));
    // Registered before they exist: no moment when a signal would leave them behind.
    let on_signal = crate::tmp_output::TmpDirForSignal::register(&tmp_dir, &path);
    std::fs::create_dir(&tmp_dir).with_context(|| format!("cannot create {}", escape_path(&tmp_dir)))?;
    let t = TempGguf { path, dir: tmp_dir, plan: Rc::new(p), _on_signal: on_signal };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&t.path)
        .with_context(|| format!("cannot create {}", escape_path(&t.path)))?;
    t.plan.write_file(&f, show_progress)?;
    Ok(t)
}

/// The default output for `--hf DIR`: `<directory name>.llamafile` in the current directory.
pub fn default_out(dir: &Path) -> PathBuf {
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    PathBuf::from(format!("{name}.llamafile"))
}
