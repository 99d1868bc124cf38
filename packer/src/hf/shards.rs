//! The safetensors files of a checkpoint: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` names, each memory-mapped and its header checked by the
//! `safetensors` crate. Tensors are listed in the reference converter's order: shard by shard
//! (sorted by file name), names sorted within a shard.

use anyhow::{bail, Context};
use llamafile_format::escape::{escape, escape_path};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One tensor of a shard: where its bytes are and what they are.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    /// The safetensors dtype name ("F16", "BF16", "F32", "I32", ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub shard: usize,
    /// Byte range in the shard's file.
    pub start: usize,
    pub end: usize,
}

/// The mapped shards and their tensors.
pub struct Shards {
    pub files: Vec<PathBuf>,
    maps: Vec<memmap2::Mmap>,
    /// In the converter's order.
    pub tensors: Vec<SourceTensor>,
    by_name: BTreeMap<String, usize>,
}

impl Shards {
    /// Open the checkpoint's safetensors files in `dir`; refuses (one line naming the file) a
    /// missing shard, a header the format does not allow, and an index that names tensors no
    /// shard holds.
    pub fn open(dir: &Path) -> anyhow::Result<Shards> {
        let index_path = dir.join("model.safetensors.index.json");
        let index = if index_path.is_file() { Some(read_index(&index_path)?) } else { None };
        let names = match &index {
            Some(wanted) => wanted.values().cloned().collect::<BTreeSet<String>>().into_iter().collect(),
            None => listed_shards(dir)?,
        };
        let mut s = Shards { files: Vec::new(), maps: Vec::new(), tensors: Vec::new(), by_name: BTreeMap::new() };
        for name in &names {
            s.add_shard(dir.join(name))?;
        }
        if let Some(wanted) = index {
            s.check_index(&index_path, &wanted)?;
        }
        Ok(s)
    }

    /// Map the shard at `path` and add its tensors (each name once over all shards).
    fn add_shard(&mut self, path: PathBuf) -> anyhow::Result<()> {
        if !path.is_file() {
            bail!("{}: missing shard (named by model.safetensors.index.json)", escape_path(&path));
        }
        let f = llamafile_format::input::open_regular(&path, "a safetensors shard")?;
        // SAFETY: the file is mapped read-only; pack does not write it, and a checkpoint
        // changed under a running conversion is outside what it promises.
        let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map {}", escape_path(&path)))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", escape_path(&path)))?;
        let data_start = 8 + header_len;
        let shard = self.maps.len();
        let mut here: Vec<SourceTensor> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| SourceTensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                shard,
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            })
            .collect();
        here.sort_by(|a, b| a.name.cmp(&b.name));
        for t in here {
            if t.end > map.len() {
                bail!("{}: tensor '{}' ends past the end of the file", escape_path(&path), escape(&t.name));
            }
            if self.by_name.insert(t.name.clone(), self.tensors.len()).is_some() {
                bail!("{}: tensor '{}' is also in another shard", escape_path(&path), escape(&t.name));
            }
            self.tensors.push(t);
        }
        self.files.push(path);
        self.maps.push(map);
        Ok(())
    }

    /// Every tensor the index names is in its shard, and every tensor of the shards is named.
    fn check_index(&self, index_path: &Path, wanted: &BTreeMap<String, String>) -> anyhow::Result<()> {
        for (name, file) in wanted {
            if !self.by_name.contains_key(name) {
                bail!(
                    "{}: tensor '{}' is not in {} (the index names it there)",
                    escape_path(index_path),
                    escape(name),
                    escape(file)
                );
            }
        }
        if let Some(t) = self.tensors.iter().find(|t| !wanted.contains_key(&t.name)) {
            bail!("{}: tensor '{}' is not in the index", escape_path(&self.files[t.shard]), escape(&t.name));
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&SourceTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t`.
    pub fn data(&self, t: &SourceTensor) -> &[u8] {
        &self.maps[t.shard][t.start..t.end]
    }

    /// The file `t` is in.
    pub fn file(&self, t: &SourceTensor) -> &Path {
        &self.files[t.shard]
    }
}

/// The index's `weight_map`: tensor name -> shard file name (a plain name in the directory).
fn read_index(index_path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = llamafile_format::input::read_text_capped(index_path, 64 << 20, "an index is at most 64 MiB")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", escape_path(index_path)))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("{}: no 'weight_map' object", escape_path(index_path));
    };
    let mut wanted = BTreeMap::new();
    for (k, f) in map {
        let Some(f) = f.as_str() else {
            bail!("{}: weight_map['{}'] is not a file name", escape_path(index_path), escape(k));
        };
        if f.contains('/') || f.starts_with('.') {
            bail!("{}: shard '{}' is not a file name in the directory", escape_path(index_path), escape(f));
        }
        wanted.insert(k.clone(), f.to_string());
    }
    Ok(wanted)
}

/// Without an index: the directory's `model*.safetensors`, in name order.
fn listed_shards(dir: &Path) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", escape_path(dir)))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut files: Vec<String> =
        names.iter().filter(|n| n.starts_with("model") && n.ends_with(".safetensors")).cloned().collect();
    files.sort();
    if files.is_empty() {
        // PyTorch's pickled checkpoints can run code when they are loaded: they are not read.
        let pickles = names.iter().any(|n| {
            (n.starts_with("pytorch_model") && n.ends_with(".bin"))
                || (n.starts_with("consolidated") && n.ends_with(".pth"))
        });
        if pickles {
            bail!(
                "{}: only PyTorch pickle weights (pytorch_model*.bin, consolidated*.pth), which pack --hf does not read (loading them can run code): \
                 use the repository's safetensors files, or convert the checkpoint to safetensors first",
                escape_path(dir)
            );
        }
        bail!(
            "{}: no model.safetensors or model.safetensors.index.json (pack --hf reads safetensors checkpoints)",
            escape_path(dir)
        );
    }
    Ok(files)
}
