//! Finding the GGUF: a plain file, an entry of a zip/llamafile, or `archive.zip@name.gguf`;
//! mapping exactly its byte range. (Zip reading is being written: plain files work now.)

use anyhow::{bail, Context};
use std::fs::File;
use std::path::Path;

/// A mapped GGUF: `map[start..start + len]` is the GGUF, which begins at `file_offset` in the file.
pub struct Region {
    pub map: memmap2::Mmap,
    pub start: usize,
    pub len: usize,
    pub file_offset: u64,
    /// The zip entry's name, when the GGUF came from one.
    pub entry: Option<String>,
    pub path: std::path::PathBuf,
}

impl Region {
    /// How errors name what was opened: the path, and the entry when there is one.
    pub fn describe(&self) -> String {
        match &self.entry {
            Some(e) => format!("{}@{}", self.path.display(), e),
            None => self.path.display().to_string(),
        }
    }
}

/// Map the GGUF that `path` designates.
pub fn map_gguf(path: &Path) -> anyhow::Result<Region> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    if len == 0 {
        bail!("{}: the file is empty", path.display());
    }
    // SAFETY: read-only private mapping; the file is not modified by this process, and a model
    // file changed underneath a running program is outside what any mmap-based loader guards.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    Ok(Region { len: map.len(), map, start: 0, file_offset: 0, entry: None, path: path.to_path_buf() })
}
