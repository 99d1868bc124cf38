//! `pack --quantize TYPE`: a GGUF's tensors re-encoded in a quantization mix ([`quant_mix`]),
//! written as a GGUF stream tensor by tensor (into the llamafile being packed, or a plain
//! `.gguf` with `--gguf-out`), so that only a slab of rows is in memory at a time.
//!
//! The output is laid out as the reference quantizer lays it out: the input's metadata in its
//! order, then `general.quantization_version` and `general.file_type`; the tensors in the
//! reference's order ([`quant_mix::reference_order`]); data at the input's alignment.
//!
//! [`quant_mix`]: crate::quant_mix

use crate::quant_mix::{self, Mix, ModelFacts, TensorIn};
use anyhow::{bail, Context};
use kernels_cpu::types::{dequantize_row, quantize_row_weighted, quantize_weights};
use kernels_cpu::WeightType;
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::{writer, GgufFile, MetaValue, TensorInfo};
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// The ggml quantization version of the blocks the kernels write (ggml's `GGML_QNT_VERSION`).
const QUANTIZATION_VERSION: u32 = 2;

/// Input and output bytes of one slab of rows (each at most this): large enough that every core
/// has many rows, small enough that the slab, its input pages and its f32 rows stay a few tens of
/// MiB whatever the model.
const SLAB_BYTES: usize = 16 << 20;

/// What `--quantize` asks for.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub mix: Mix,
    /// An importance-matrix file (`--imatrix`, see [`crate::imatrix`]): the Q4_K, Q5_K and Q6_K
    /// scale searches weigh each column's error by its importance.
    pub imatrix: Option<std::path::PathBuf>,
    /// Blocks made elsewhere for some tensors (see [`Precomputed`]), written in place of
    /// quantizing the input's values.
    pub precomputed: Option<Precomputed>,
}

/// A source of ready blocks: `(tensor name, target type)` gives `Some(bytes)`, the whole tensor
/// in that type, or `None` to quantize the tensor as usual. `pack --hf` of a GPTQ/AWQ checkpoint
/// answers with Q4_0/Q4_1 blocks that hold the checkpoint's weights exactly, which quantizing
/// the converted F16 values again would round a second time.
#[derive(Clone)]
pub struct Precomputed(pub Rc<PrecomputeFn>);

/// The function behind [`Precomputed`].
pub type PrecomputeFn = dyn Fn(&str, WeightType) -> anyhow::Result<Option<Vec<u8>>>;

impl std::fmt::Debug for Precomputed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Precomputed(..)")
    }
}

/// One output tensor: which input tensor, its output type id and data size.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub input: usize,
    pub ggml_type: u32,
    pub size: u64,
    /// The importance of each column (`--imatrix`), one row of them per expert.
    pub importance: Option<Arc<Vec<f32>>>,
}

/// Everything decided before a byte is written: the header and each tensor's type.
pub struct Plan {
    pub mix: Mix,
    pub header: Vec<u8>,
    pub tensors: Vec<PlannedTensor>,
    pub alignment: u64,
    /// Bytes of the whole output GGUF.
    pub size: u64,
    /// Input tensors that are already quantized and get another type (dequantized first).
    pub requantized: Vec<String>,
    /// Ready blocks asked for before a tensor is quantized.
    pub precomputed: Option<Precomputed>,
}

/// The facts the mix rules read, from `g`'s metadata and tensor names.
pub fn model_facts(g: &GgufFile) -> ModelFacts {
    let arch = g.architecture().unwrap_or("").to_string();
    let key = |k: &str| format!("{arch}.{k}");
    // Per-layer head counts are arrays in some models: the first layer's is the reference's.
    let first = |k: &str| match g.get(&key(k)) {
        Some(MetaValue::Array(a)) => a.first().and_then(|v| v.as_u64()),
        Some(v) => v.as_u64(),
        None => None,
    };
    let n_head = first("attention.head_count").unwrap_or(0);
    let n_head_kv = first("attention.head_count_kv").unwrap_or(n_head);
    let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0) as usize;
    let n_layer = g.get_u64(&key("block_count")).unwrap_or(0) as usize;
    let n_expert = g.get_u64(&key("expert_count")).unwrap_or(0) as usize;
    // The reference's 70B class: an 80-layer Llama with grouped KV heads (one without is the
    // 65B), or an 80-layer Qwen2.
    let is_70b = n_layer == 80 && ((arch == "llama" && n_head != n_head_kv) || arch == "qwen2");
    let tied_embeddings = g.tensor("output.weight").is_none();
    ModelFacts { arch, n_layer, n_gqa, n_expert, is_70b, tied_embeddings }
}

fn is_float(t: WeightType) -> bool {
    matches!(t, WeightType::F32 | WeightType::F16 | WeightType::BF16)
}

/// Decide every tensor's type and lay out the output; refuses (one line) what cannot be done.
pub fn plan(g: &GgufFile, opts: &QuantizeOptions) -> anyhow::Result<Plan> {
    let imatrix = match &opts.imatrix {
        // The other mixes' main types have no weighted quantizer here (and the reference picks
        // other types for Q4_0/Q5_0 with one): refused before the file is read.
        Some(_) if !matches!(opts.mix.default, WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K) => bail!(
            "--imatrix with --quantize {}: importance matrices are taken by the Q4_K_S/M, Q5_K_S/M and Q6_K mixes only",
            opts.mix.name
        ),
        Some(p) => Some(crate::imatrix::load(p)?),
        None => None,
    };
    let all = g.tensors();
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    let order = quant_mix::reference_order(&names);
    // Tensors of a type the kernels do not know can be copied, never converted.
    for t in all {
        if t.wtype.is_none() && quant_mix::allows_quantization(&t.name, t.dims.len()) {
            bail!(
                "{}: tensor '{}' has type {}, which pack cannot dequantize to quantize it again",
                escape_path(g.path()),
                escape(&t.name),
                t.type_name()
            );
        }
    }
    let inputs: Vec<TensorIn> = order
        .iter()
        .map(|&i| TensorIn { name: &all[i].name, dims: &all[i].dims, ty: all[i].wtype.unwrap_or(WeightType::F32) })
        .collect();
    let chosen = quant_mix::choose(&opts.mix, &model_facts(g), &inputs);
    let mut tensors = Vec::with_capacity(all.len());
    let mut requantized = Vec::new();
    for (&i, &to) in order.iter().zip(&chosen) {
        let t = &all[i];
        let keep = t.wtype.is_none_or(|w| w == to);
        if keep {
            tensors.push(PlannedTensor { input: i, ggml_type: t.ggml_type, size: t.size, importance: None });
            continue;
        }
        let from = t.wtype.expect("unknown types are kept");
        if !is_float(from) {
            requantized.push(format!("{} ({from})", t.name));
        }
        let cols = t.dims[0];
        let rows: u64 = t.dims[1..].iter().product();
        let size = to
            .checked_row_bytes(cols)
            .and_then(|rb| rb.checked_mul(rows))
            .with_context(|| format!("tensor '{}': {cols} columns do not fit type {to}", escape(&t.name)))?;
        let importance = match imatrix.as_ref().and_then(|m| m.entries.get(&t.name)) {
            Some(v) => importance_for(t, to, v, opts)?,
            None => None,
        };
        tensors.push(PlannedTensor { input: i, ggml_type: to.id(), size, importance });
    }
    let alignment = g.alignment();
    let mut meta: Vec<(&str, MetaValue)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "general.quantization_version" | "general.file_type")
                && !k.starts_with("quantize.imatrix.")
        })
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    meta.push(("general.quantization_version", MetaValue::U32(QUANTIZATION_VERSION)));
    meta.push(("general.file_type", MetaValue::U32(opts.mix.file_type)));
    if let (Some(m), Some(path)) = (&imatrix, &opts.imatrix) {
        // What the reference's quantizer records of its importance matrix: the path as given
        // and the first dataset (each cut to 127 bytes, as its fixed buffers do), the counts.
        let cut = |s: &str| String::from_utf8_lossy(&s.as_bytes()[..s.len().min(127)]).into_owned();
        meta.push(("quantize.imatrix.file", MetaValue::String(cut(&path.to_string_lossy()))));
        if let Some(d) = &m.dataset {
            meta.push(("quantize.imatrix.dataset", MetaValue::String(cut(d))));
        }
        meta.push(("quantize.imatrix.entries_count", MetaValue::U32(m.entries.len() as u32)));
        if m.chunk_count > 0 {
            meta.push(("quantize.imatrix.chunks_count", MetaValue::U32(m.chunk_count as u32)));
        }
    }
    let infos: Vec<(&str, &[u64], u32, u64)> = tensors
        .iter()
        .map(|p| (all[p.input].name.as_str(), all[p.input].dims.as_slice(), p.ggml_type, p.size))
        .collect();
    let header = writer::header(&meta, &infos, alignment);
    // Every tensor's data is padded to the alignment, the last one's too (as the reference's).
    let size = header.len() as u64 + tensors.iter().map(|p| p.size.div_ceil(alignment) * alignment).sum::<u64>();
    Ok(Plan { mix: opts.mix, header, tensors, alignment, size, requantized, precomputed: opts.precomputed.clone() })
}

/// The importances `v` of tensor `t` (going to type `to`) to quantize it with, as the reference
/// uses them: not for types whose quantizer ignores them (Q8_0, floats), nor for a token
/// embedding of another size; refused for a type whose weighted quantizer pack lacks.
fn importance_for(
    t: &TensorInfo,
    to: WeightType,
    v: &Arc<Vec<f32>>,
    opts: &QuantizeOptions,
) -> anyhow::Result<Option<Arc<Vec<f32>>>> {
    if matches!(to, WeightType::Q8_0 | WeightType::F16 | WeightType::F32 | WeightType::BF16) {
        return Ok(None);
    }
    let experts = if t.dims.len() > 2 { t.dims[2] } else { 1 };
    let want = t.dims[0] * experts;
    if v.len() as u64 != want {
        if quant_mix::kind(&t.name) == quant_mix::Kind::TokenEmbd {
            return Ok(None);
        }
        bail!(
            "--imatrix: '{}' has {} importances, the tensor needs {want} ({} columns x {experts})",
            escape(&t.name),
            v.len(),
            t.dims[0]
        );
    }
    if !matches!(to, WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K) {
        bail!(
            "--imatrix with --quantize {}: tensor '{}' gets type {to}, whose quantizer takes no importance matrix here (Q4_K, Q5_K and Q6_K do); quantize without --imatrix",
            opts.mix.name,
            escape(&t.name)
        );
    }
    Ok(Some(v.clone()))
}

/// Called after each slab with (input bytes done, input bytes in all, tensor name).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, &str);

/// Write the quantized GGUF of `plan` to `out`, tensor by tensor, each in slabs of rows
/// quantized on all cores.
pub fn write(g: &GgufFile, plan: &Plan, out: &mut dyn Write, progress: Progress) -> anyhow::Result<()> {
    let all = g.tensors();
    let total: u64 = plan.tensors.iter().map(|p| all[p.input].size).sum();
    let mut done = 0u64;
    let mut written = plan.header.len() as u64;
    let io = |e: std::io::Error| anyhow::Error::new(e).context("cannot write the output");
    out.write_all(&plan.header).map_err(io)?;
    let mut slab: Vec<u8> = Vec::new();
    for p in &plan.tensors {
        let t = &all[p.input];
        let data = g.tensor_data(t);
        if p.ggml_type == t.ggml_type {
            for chunk in data.chunks(SLAB_BYTES) {
                out.write_all(chunk).map_err(io)?;
                g.release(chunk);
                done += chunk.len() as u64;
                progress(done, total, &t.name);
            }
        } else {
            let to = WeightType::from_ggml(p.ggml_type).expect("planned types are known");
            let ready = match &plan.precomputed {
                Some(h) => (h.0)(&t.name, to)?,
                None => None,
            };
            match ready {
                Some(bytes) => {
                    if bytes.len() as u64 != p.size {
                        bail!(
                            "internal error: {} bytes of ready {to} blocks for '{}', which takes {}",
                            bytes.len(),
                            escape(&t.name),
                            p.size
                        );
                    }
                    out.write_all(&bytes).map_err(io)?;
                    done += t.size;
                    progress(done, total, &t.name);
                }
                None => convert(
                    g,
                    t,
                    to,
                    p.importance.as_deref().map(|v| v.as_slice()),
                    &mut slab,
                    &mut |bytes, in_bytes| {
                        out.write_all(bytes).map_err(io)?;
                        done += in_bytes;
                        progress(done, total, &t.name);
                        Ok(())
                    },
                )?,
            }
        }
        written += p.size;
        let pad = written.div_ceil(plan.alignment) * plan.alignment - written;
        out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        written += pad;
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// Tensor `t` of `g` converted to type `to`, handed to `emit` a slab of rows at a time with the
/// input bytes the slab came from.
///
/// The input stays a memory map read once front to back: each slab's pages are asked for ahead
/// (the next slab is read from disk while this one is quantized) and dropped from the resident
/// set once quantized, so the process holds about two slabs of the input whatever the model's
/// size. The map (rather than reading slabs into a buffer) keeps one way of reading GGUFs and
/// costs no copy; the page cache, which the kernel frees as it needs, keeps what was read.
fn convert(
    g: &GgufFile,
    t: &TensorInfo,
    to: WeightType,
    importance: Option<&[f32]>,
    slab: &mut Vec<u8>,
    emit: &mut dyn FnMut(&[u8], u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let data = g.tensor_data(t);
    let from = t.wtype.expect("converted tensors have a known type");
    let cols = t.dims[0] as usize;
    let (rb_in, rb_out) = (from.row_bytes(cols), to.row_bytes(cols));
    let rows = data.len() / rb_in.max(1);
    // Rows per expert: an importance row applies to each expert's rows.
    let rows_per_expert = t.dims.get(1).copied().unwrap_or(1).max(1) as usize;
    let slab_rows = (SLAB_BYTES / rb_out.max(rb_in).max(1)).max(1);
    let slab_src = |first: usize| &data[first * rb_in..(first + slab_rows).min(rows) * rb_in];
    if rows > 0 {
        g.prefetch(slab_src(0));
    }
    for first in (0..rows).step_by(slab_rows) {
        let n = slab_rows.min(rows - first);
        let src = slab_src(first);
        if first + n < rows {
            g.prefetch(slab_src(first + n));
        }
        slab.resize(n * rb_out, 0);
        slab.par_chunks_mut(rb_out).zip(src.par_chunks(rb_in)).enumerate().with_min_len(4).for_each_init(
            || vec![0f32; cols],
            |row, (r, (dst, src))| {
                dequantize_row(from, src, row);
                match importance {
                    Some(v) => {
                        let e = (first + r) / rows_per_expert;
                        let done = quantize_row_weighted(to, row, dst, &v[e * cols..(e + 1) * cols]);
                        debug_assert!(done, "the plan gives importances only to types that take them");
                    }
                    None => quantize_weights(to, row, dst),
                }
            },
        );
        g.release(src);
        emit(slab, src.len() as u64)?;
    }
    Ok(())
}

/// A progress bar on stderr for quantizing (when `show`), and the callback that moves it.
pub fn progress_bar(show: bool, mix: &Mix, total_hint: u64) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let b = indicatif::ProgressBar::new(total_hint);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta} {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_prefix(mix.name.to_string());
        b
    })
}

/// Print the one warning about tensors quantized twice.
pub fn warn_requantized(plan: &Plan) {
    if let Some(first) = plan.requantized.first() {
        eprintln!(
            "pack: warning: {} tensor(s) are already quantized (first: {}): they are dequantized and quantized again as {}, which loses more than quantizing the F16/F32 original",
            plan.requantized.len(),
            escape(first),
            plan.mix.name
        );
    }
}

/// `pack --quantize TYPE --gguf-out OUT`: the quantized GGUF as a plain file, written beside
/// `out` under a temporary name and renamed at the end (nothing left on failure).
pub fn quantize_to_gguf(
    input: &Path,
    opts: &QuantizeOptions,
    out: &Path,
    force: bool,
    show_progress: bool,
) -> anyhow::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let g = crate::validate::check_gguf(input)?;
    let plan = plan(&g, opts)?;
    let (dir, out_name) = crate::check_output(out, force, &[("GGUF", g.file_path())])?;
    warn_requantized(&plan);
    let (tmp, f) = crate::tmp_output::TmpOutput::create(&dir, &out_name)?;
    let bar = progress_bar(show_progress, &plan.mix, g.tensors().iter().map(|t| t.size).sum());
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
    write(&g, &plan, &mut w, &mut |done, _, name| {
        if let Some(b) = &bar {
            b.set_position(done);
            b.set_message(escape(name));
        }
    })?;
    drop(w);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    f.sync_all().with_context(|| format!("cannot flush {} to disk", escape_path(tmp.path())))?;
    let size = f.metadata()?.len();
    if size != plan.size {
        bail!("internal error: wrote {size} bytes where {} were planned", plan.size);
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .context("cannot set the output's permissions")?;
    drop(f);
    tmp.persist(out)?;
    Ok(size)
}
