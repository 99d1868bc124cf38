//! `--imatrix FILE`: the reference's importance matrix (the GGUF that `llama-imatrix` writes):
//! per weight matrix `NAME`, the F32 tensors `NAME.in_sum2` (the sums of the squared activations
//! each column met, one row per expert) and `NAME.counts` (how many activations, one per
//! expert), and the keys `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`.
//! A column's importance is its sum divided by the count (1 where the count is 0), as the
//! reference's quantizer reads them. The legacy `.dat` format is not read.

use anyhow::bail;
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const SUMS: &str = ".in_sum2";
const COUNTS: &str = ".counts";

/// Importances by weight-matrix name: `n_expert * n_columns` values.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub entries: HashMap<String, Arc<Vec<f32>>>,
    /// The first of `imatrix.datasets` (the text it was computed on).
    pub dataset: Option<String>,
    /// `imatrix.chunk_count`.
    pub chunk_count: u64,
}

fn f32s(g: &GgufFile, name: &str) -> anyhow::Result<Vec<f32>> {
    let t = g.tensor(name).expect("listed tensor");
    if t.ggml_type != 0 {
        bail!("{}: tensor '{}' is {}, not F32", escape_path(g.path()), escape(name), t.type_name());
    }
    Ok(g.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Read an importance-matrix GGUF; every problem is one line naming the file.
pub fn load(path: &Path) -> anyhow::Result<Imatrix> {
    let g = GgufFile::open(path).map_err(|e| {
        anyhow::anyhow!(
            "--imatrix {}: not an importance-matrix GGUF ({e:#}); the legacy .dat format is not read",
            escape_path(path)
        )
    })?;
    for key in ["imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"] {
        if g.get(key).is_none() {
            bail!(
                "--imatrix {}: no '{key}' metadata: not an importance matrix written by llama-imatrix",
                escape_path(path)
            );
        }
    }
    let mut entries = HashMap::new();
    for t in g.tensors() {
        let Some(name) = t.name.strip_suffix(SUMS) else {
            if !t.name.ends_with(COUNTS) {
                bail!(
                    "--imatrix {}: tensor '{}' is neither NAME{SUMS} nor NAME{COUNTS}",
                    escape_path(path),
                    escape(&t.name)
                );
            }
            continue;
        };
        let counts_name = format!("{name}{COUNTS}");
        if g.tensor(&counts_name).is_none() {
            bail!("--imatrix {}: '{}' has no '{}'", escape_path(path), escape(&t.name), escape(&counts_name));
        }
        let sums = f32s(&g, &t.name)?;
        let counts = f32s(&g, &counts_name)?;
        if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
            bail!(
                "--imatrix {}: '{}' has {} values for {} counts",
                escape_path(path),
                escape(name),
                sums.len(),
                counts.len()
            );
        }
        let cols = sums.len() / counts.len();
        let mut v = sums;
        for (row, &c) in v.chunks_mut(cols).zip(&counts) {
            let c = c.round();
            for x in row.iter_mut() {
                *x = if c > 0.0 { *x / c } else { 1.0 };
            }
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            bail!("--imatrix {}: '{}' holds a non-finite value ({bad})", escape_path(path), escape(name));
        }
        entries.insert(name.to_string(), Arc::new(v));
    }
    if entries.is_empty() {
        bail!("--imatrix {}: no NAME{SUMS} tensors", escape_path(path));
    }
    let dataset = g.get_array("imatrix.datasets").and_then(|a| a.first()).and_then(|v| v.as_str()).map(str::to_string);
    let chunk_count = g.get_u64("imatrix.chunk_count").unwrap_or(0);
    Ok(Imatrix { entries, dataset, chunk_count })
}
