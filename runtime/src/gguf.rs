//! GGUF metadata and tensor table over gguf-rs-lib, with bounds-checked views into the mapped
//! bytes. CONTRACT used by the tokenizer, model and engine (owner: container issue #2):
//! the signatures below are relied on by other modules; extend, don't break.

use kernels_cpu::WeightType;
use std::path::Path;
use std::sync::Arc;

/// A metadata value (GGUF value types 0-12).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

/// One tensor of the table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] = ne0 = the contiguous (row) length.
    pub dims: Vec<u64>,
    /// Raw ggml type id as stored.
    pub ggml_type: u32,
    /// `None` for a type the kernels do not know (an error when the model needs the tensor).
    pub wtype: Option<WeightType>,
    /// Offset of the data from the start of the GGUF (not of the tensor data section).
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

/// An opened GGUF: from a plain file, a zip/llamafile entry, or `archive.zip@name.gguf`.
/// Cheap to clone (the mapping is shared).
#[derive(Clone)]
pub struct GgufFile {
    _private: Arc<()>,
}

impl GgufFile {
    /// Open and map `path` (plain .gguf, zip or llamafile, or `archive@entry.gguf`), parse and
    /// bounds-check the header, metadata and every tensor's range.
    pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
        let _ = path;
        todo!()
    }
    /// The GGUF's bytes (the mapped range, exactly the entry).
    pub fn bytes(&self) -> &[u8] {
        todo!()
    }
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        todo!()
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let _ = key;
        todo!()
    }
    /// Any integer type converted; `None` if absent or not an integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let _ = key;
        todo!()
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        let _ = key;
        todo!()
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        let _ = key;
        todo!()
    }
    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        let _ = key;
        todo!()
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        todo!()
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let _ = name;
        todo!()
    }
    /// The tensor's bytes inside the mapping (already bounds-checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let _ = t;
        todo!()
    }
    /// Where the GGUF starts in the file that was opened (0 for a plain .gguf).
    pub fn file_offset(&self) -> u64 {
        todo!()
    }
    /// The path that was opened.
    pub fn path(&self) -> &Path {
        todo!()
    }
}
