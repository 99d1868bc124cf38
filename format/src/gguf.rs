//! GGUF metadata and tensor table over gguf-rs-lib, with bounds-checked views into the mapped
//! bytes. The tokenizer, model and engine rely on the signatures below: they are extended, not
//! broken.
//!
//! Layout (GGUF v2/v3, little-endian): header (magic "GGUF", version u32, tensor count u64,
//! metadata count u64), the metadata key/value pairs, the tensor table (name, n_dims u32,
//! dims u64 x n_dims, ggml type u32, offset u64 relative to the data section), then the tensor
//! data section starting at the next multiple of `general.alignment` (default 32).
//!
//! What gguf-rs-lib does here and what it does not:
//! - Metadata scalar and string values and nested arrays are decoded by
//!   `gguf_rs_lib::format::MetadataValue::read_from`, and the sizes and names of ggml types the
//!   kernels don't implement come from its `GGUFTensorType` table. Flat arrays (the vocabulary)
//!   are decoded here: the library is ~3x slower on them (see `read_flat_array`).
//! - Its whole-file readers are not used, for reasons that matter to us: `Metadata` is a
//!   `HashMap` (the file order is lost, and we print metadata in file order), it rejects keys that
//!   are not lower_snake_case (llama.cpp accepts any key, and real files have such keys), its
//!   tensor-table reader fails on a tensor type id it does not know (we must open such files and
//!   let the model report the tensor only if it needs it), and its header reader accepts only
//!   version 3 (llama.cpp still reads version 2, which has the same encoding).
//!   So the header, the keys and the tensor table (a few fixed-size fields each) are read here.

use crate::escape::escape;
use anyhow::{bail, Context};
use ggml_types::WeightType;
use gguf_rs_lib::format::{GGUFTensorType, GGUFValueType, MetadataValue};
use gguf_rs_lib::GGUFError;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
/// Versions this reader understands (v1 used 32-bit counts and is long gone).
pub const SUPPORTED_VERSIONS: &[u32] = &[2, 3];
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's maximum number of dimensions.
const MAX_DIMS: u32 = 4;

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

impl MetaValue {
    /// Any integer type as u64 (`None` for negative values and non-integers).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type as i64 (`None` for a u64 above i64::MAX and for non-integers).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64).or(match *self {
                MetaValue::I8(v) => Some(v as i64),
                MetaValue::I16(v) => Some(v as i64),
                MetaValue::I32(v) => Some(v as i64),
                _ => None,
            }),
        }
    }
    /// Floats, and integers converted.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
    /// GGUF spelling of the value's type ("u32", "string", "array"...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
    /// From gguf-rs-lib's value, moving strings and array elements (no copies).
    fn from_lib(v: MetadataValue) -> MetaValue {
        match v {
            MetadataValue::U8(x) => MetaValue::U8(x),
            MetadataValue::I8(x) => MetaValue::I8(x),
            MetadataValue::U16(x) => MetaValue::U16(x),
            MetadataValue::I16(x) => MetaValue::I16(x),
            MetadataValue::U32(x) => MetaValue::U32(x),
            MetadataValue::I32(x) => MetaValue::I32(x),
            MetadataValue::U64(x) => MetaValue::U64(x),
            MetadataValue::I64(x) => MetaValue::I64(x),
            MetadataValue::F32(x) => MetaValue::F32(x),
            MetadataValue::F64(x) => MetaValue::F64(x),
            MetadataValue::Bool(x) => MetaValue::Bool(x),
            MetadataValue::String(s) => MetaValue::String(s),
            MetadataValue::Array(a) => MetaValue::Array(a.values.into_iter().map(MetaValue::from_lib).collect()),
        }
    }
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

impl TensorInfo {
    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// ggml name of the stored type ("Q4_K", "IQ2_XS"...), or "type#N" for an id nobody knows.
    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type)
    }
    /// The weight type, or an error naming the tensor and its type when the kernels lack it.
    pub fn weight_type(&self) -> anyhow::Result<WeightType> {
        self.wtype.ok_or_else(|| {
            anyhow::anyhow!(
                "tensor '{}' has weight type {} (ggml type id {}), which this engine does not support",
                escape(&self.name),
                self.type_name(),
                self.ggml_type
            )
        })
    }
}

/// ggml spelling of a type id: the kernels' table first, then gguf-rs-lib's (which knows the
/// types we don't implement), else "type#N".
pub fn ggml_type_name(id: u32) -> String {
    if let Some(w) = WeightType::from_ggml(id) {
        return w.name().to_string();
    }
    match GGUFTensorType::from_u32(id) {
        Ok(t) => t.name().to_string(),
        Err(_) => format!("type#{id}"),
    }
}

/// Bytes of a tensor of `n_elements` elements whose row length is `ne0`, or why not.
/// `Ok(None)`: a type id nobody knows, so the size cannot be computed.
fn tensor_bytes(ggml_type: u32, ne0: u64, n_elements: u64) -> Result<Option<u64>, String> {
    let (block, bytes) = if let Some(w) = WeightType::from_ggml(ggml_type) {
        (w.block_size() as u64, w.type_size() as u64)
    } else {
        match GGUFTensorType::from_u32(ggml_type)
            .ok()
            .and_then(|t| Some((t.block_size() as u64, t.block_size_bytes()? as u64)))
        {
            Some((b, s)) if b > 0 => (b, s),
            _ => return Ok(None),
        }
    };
    if !ne0.is_multiple_of(block) {
        return Err(format!(
            "row length {ne0} is not a multiple of the {} block size {block}",
            ggml_type_name(ggml_type)
        ));
    }
    (n_elements / block).checked_mul(bytes).map(Some).ok_or_else(|| "size overflows".to_string())
}

/// Where the bytes live: a read-only mapping of the file (the normal case) or owned bytes
/// (tests and tools that build a GGUF in memory).
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

struct Inner {
    storage: Storage,
    /// The GGUF is `storage[start..start + len]`.
    start: usize,
    len: usize,
    file_offset: u64,
    path: PathBuf,
    /// The file the bytes are in (`path` without an `@entry` suffix).
    file_path: PathBuf,
    /// The zip entry the GGUF is, if any.
    entry: Option<String>,
    parsed: Parsed,
}

/// What the parser extracts from the GGUF's bytes.
struct Parsed {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// An opened GGUF: from a plain file, a zip/llamafile entry, or `archive.zip@name.gguf`.
/// Cheap to clone (the mapping is shared).
#[derive(Clone)]
pub struct GgufFile {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.inner.path)
            .field("file_offset", &self.inner.file_offset)
            .field("len", &self.inner.len)
            .field("tensors", &self.inner.parsed.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and map `path` (plain .gguf, zip or llamafile, or `archive@entry.gguf`), parse and
    /// bounds-check the header, metadata and every tensor's range.
    /// Open the model the user asked for: `-m FILE`, or the weights packed into this executable
    /// (see [`crate::bundle::model_path`]).
    pub fn open_model(model: Option<&Path>) -> anyhow::Result<GgufFile> {
        GgufFile::open(&crate::bundle::model_path(model)?)
    }

    pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
        let region = crate::bundle::map_gguf(path)?;
        let bytes = &region.map[region.start..region.start + region.len];
        let parsed = parse(bytes).with_context(|| region.describe())?;
        Ok(GgufFile {
            inner: Arc::new(Inner {
                start: region.start,
                len: region.len,
                file_offset: region.file_offset,
                path: path.to_path_buf(),
                file_path: region.path,
                entry: region.entry,
                storage: Storage::Mapped(region.map),
                parsed,
            }),
        })
    }
    /// Parse a GGUF held in memory (`name` is what errors and `path()` show).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> anyhow::Result<GgufFile> {
        let parsed = parse(&bytes).with_context(|| name.to_string())?;
        Ok(GgufFile {
            inner: Arc::new(Inner {
                start: 0,
                len: bytes.len(),
                file_offset: 0,
                path: PathBuf::from(name),
                file_path: PathBuf::from(name),
                entry: None,
                storage: Storage::Owned(bytes),
                parsed,
            }),
        })
    }
    /// The GGUF's bytes (the mapped range, exactly the entry).
    pub fn bytes(&self) -> &[u8] {
        &self.inner.storage.as_slice()[self.inner.start..self.inner.start + self.inner.len]
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.inner.parsed.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let p = &self.inner.parsed;
        p.meta_index.get(key).map(|&i| &p.metadata[i].1)
    }
    /// Any integer type converted; `None` if absent or not an integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
    /// f32 or f64 (and integers, converted); `None` if absent or not a number.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.get(key)?.as_array()
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.inner.parsed.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let p = &self.inner.parsed;
        p.tensor_index.get(name).map(|&i| &p.tensors[i])
    }
    /// The tensor's bytes inside the mapping (already bounds-checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        // Ranges were checked against the GGUF's length at open; a `TensorInfo` from another
        // file could still be out of range, and slicing then panics rather than reading garbage.
        &self.bytes()[t.offset as usize..(t.offset + t.size) as usize]
    }
    // --- Page advice for one pass over the tensors (pack --quantize streams a model far larger
    // than it wants resident).

    /// Start reading `bytes` (a sub-slice of [`bytes`](Self::bytes)) from disk ahead of use.
    /// Owned bytes: nothing to do.
    pub fn prefetch(&self, bytes: &[u8]) {
        if let Some((m, off)) = self.mapped_offset(bytes) {
            // Advice only: a kernel that ignores it reads the pages on first touch instead.
            let _ = m.advise_range(memmap2::Advice::WillNeed, off, bytes.len());
        }
    }

    /// Drop the pages holding `bytes` (a sub-slice of [`bytes`](Self::bytes)) from this process's
    /// resident set once they are read: a mapped file's pages stay in the page cache and fault
    /// back in, unchanged, if read again. Owned bytes are kept as they are.
    pub fn release(&self, bytes: &[u8]) {
        if let Some((m, off)) = self.mapped_offset(bytes) {
            // SAFETY: the mapping is a read-only map of a file, never written through, so
            // MADV_DONTNEED only unmaps pages whose next read returns the same file bytes (it
            // would zero an anonymous or written private page, which this map never has).
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, bytes.len()) };
        }
    }

    /// The mapping and `bytes`' offset in it, when the GGUF is mapped and `bytes` lies in it.
    fn mapped_offset(&self, bytes: &[u8]) -> Option<(&memmap2::Mmap, usize)> {
        let Storage::Mapped(m) = &self.inner.storage else { return None };
        let off = (bytes.as_ptr() as usize).checked_sub(m.as_ptr() as usize)?;
        (off.checked_add(bytes.len())? <= m.len()).then_some((m, off))
    }
    // --- end of page advice.

    /// Where the GGUF starts in the file that was opened (0 for a plain .gguf).
    pub fn file_offset(&self) -> u64 {
        self.inner.file_offset
    }
    /// The path that was opened.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    /// The file holding the GGUF: `path()` without an `@entry` suffix.
    pub fn file_path(&self) -> &Path {
        &self.inner.file_path
    }
    /// The zip entry holding the GGUF, when it came from a zip or llamafile.
    pub fn entry(&self) -> Option<&str> {
        self.inner.entry.as_deref()
    }
    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.inner.parsed.version
    }
    /// Alignment of the tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.inner.parsed.alignment
    }
    /// Offset of the tensor data section from the start of the GGUF.
    pub fn data_offset(&self) -> u64 {
        self.inner.parsed.data_offset
    }
    /// Length of the GGUF in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len as u64
    }
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
}

/// A little reader over the GGUF's bytes for the fixed-size fields this module reads itself.
struct Reader<'a> {
    cur: Cursor<&'a [u8]>,
}

impl<'a> Reader<'a> {
    fn pos(&self) -> u64 {
        self.cur.position()
    }
    fn take<const N: usize>(&mut self, what: &dyn Fn() -> String) -> anyhow::Result<[u8; N]> {
        let buf = *self.cur.get_ref();
        let pos = self.cur.position() as usize;
        match buf.get(pos..pos + N) {
            Some(s) => {
                self.cur.set_position((pos + N) as u64);
                Ok(s.try_into().expect("slice of length N"))
            }
            None => bail!("truncated GGUF: {} at byte {pos} runs past the end ({} bytes)", what(), buf.len()),
        }
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take::<4>(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take::<8>(what)?))
    }
    /// A GGUF string: u64 length then UTF-8 bytes; `max` bounds the length before anything is read.
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> anyhow::Result<String> {
        let n = self.u64(&|| format!("length of {}", what()))?;
        let buf = *self.cur.get_ref();
        let pos = self.cur.position() as usize;
        if n > max {
            bail!("{} at byte {pos} is {n} bytes long (at most {max} expected): the file is corrupt", what());
        }
        let end = pos.checked_add(n as usize).filter(|&e| e <= buf.len());
        let Some(end) = end else {
            bail!("truncated GGUF: {} at byte {pos} runs past the end ({} bytes)", what(), buf.len());
        };
        self.cur.set_position(end as u64);
        String::from_utf8(buf[pos..end].to_vec())
            .map_err(|_| anyhow::anyhow!("{} at byte {pos} is not valid UTF-8", what()))
    }
}

/// Arrays whose elements are not arrays (the vocabulary: tokens, scores, token types, merges),
/// decoded straight from the bytes; `None` for arrays of arrays, left to gguf-rs-lib.
///
/// Why not gguf-rs-lib here: it decodes each element through `Read` with a fresh chunked buffer
/// and then we convert its values to ours; on the 262,144-token Gemma vocabulary that took 56 ms
/// (best of 10) for the token strings alone, versus 23 ms for the whole file's metadata with
/// this function (same machine), and the tokenizer must be built in under 300 ms in total.
fn read_flat_array(r: &mut Reader, key: &str) -> anyhow::Result<Option<MetaValue>> {
    let key = &escape(key);
    let start = r.pos();
    let elem = r.u32(&|| format!("element type of metadata '{key}'"))?;
    let Ok(etype) = GGUFValueType::from_u32(elem) else {
        bail!("metadata '{key}' is an array of unknown value type id {elem}");
    };
    if etype == GGUFValueType::Array {
        r.cur.set_position(start);
        return Ok(None);
    }
    let n = r.u64(&|| format!("length of metadata array '{key}'"))?;
    let buf: &[u8] = r.cur.get_ref();
    let pos = r.pos() as usize;
    // Every element takes at least one byte (strings 8): a longer count is corruption, and
    // checking it first bounds the allocation below by the file's size.
    let min = etype.size_in_bytes().unwrap_or(8) as u64;
    if n.checked_mul(min).is_none_or(|need| need > (buf.len() - pos) as u64) {
        bail!(
            "truncated GGUF: metadata array '{key}' of {n} elements at byte {pos} runs past the end ({} bytes)",
            buf.len()
        );
    }
    let truncated = || {
        anyhow::anyhow!("truncated GGUF: metadata array '{key}' at byte {pos} runs past the end ({} bytes)", buf.len())
    };
    let mut p = pos;
    let mut take = |k: usize| -> anyhow::Result<&[u8]> {
        let s = buf.get(p..p + k).ok_or_else(truncated)?;
        p += k;
        Ok(s)
    };
    let mut out = Vec::with_capacity(n as usize);
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {
            for _ in 0..n {
                let b = take(std::mem::size_of::<$t>())?;
                out.push(MetaValue::$variant(<$t>::from_le_bytes(b.try_into().expect("sized"))));
            }
        };
    }
    match etype {
        GGUFValueType::U8 => fixed!(U8, u8),
        GGUFValueType::I8 => fixed!(I8, i8),
        GGUFValueType::U16 => fixed!(U16, u16),
        GGUFValueType::I16 => fixed!(I16, i16),
        GGUFValueType::U32 => fixed!(U32, u32),
        GGUFValueType::I32 => fixed!(I32, i32),
        GGUFValueType::U64 => fixed!(U64, u64),
        GGUFValueType::I64 => fixed!(I64, i64),
        GGUFValueType::F32 => fixed!(F32, f32),
        GGUFValueType::F64 => fixed!(F64, f64),
        GGUFValueType::Bool => {
            for i in 0..n {
                out.push(MetaValue::Bool(match take(1)?[0] {
                    0 => false,
                    1 => true,
                    v => bail!("metadata array '{key}' element {i} is a bool of value {v} (0 or 1 expected)"),
                }));
            }
        }
        GGUFValueType::String => {
            for i in 0..n {
                let len = u64::from_le_bytes(take(8)?.try_into().expect("sized"));
                let len = usize::try_from(len).ok().filter(|&l| l <= buf.len()).ok_or_else(truncated)?;
                let s = std::str::from_utf8(take(len)?)
                    .map_err(|_| anyhow::anyhow!("metadata array '{key}' element {i} is not valid UTF-8"))?;
                out.push(MetaValue::String(s.to_owned()));
            }
        }
        GGUFValueType::Array => unreachable!("handled above"),
    }
    r.cur.set_position(p as u64);
    Ok(Some(MetaValue::Array(out)))
}

/// Parse the header, metadata and tensor table of a GGUF held in `bytes`, and check the table
/// as llama.cpp does: every tensor lies in the data section at the offset its predecessors'
/// sizes put it.
fn parse(bytes: &[u8]) -> anyhow::Result<Parsed> {
    let mut r = Reader { cur: Cursor::new(bytes) };
    let (version, n_tensors, n_kv) = read_header(&mut r)?;
    let (metadata, meta_index) = read_metadata(&mut r, n_kv)?;
    let alignment = alignment(&metadata, &meta_index)?;
    let (mut tensors, tensor_index) = read_tensor_table(&mut r, n_tensors)?;
    let data_offset = r.pos().div_ceil(alignment) * alignment;
    place_tensors(&mut tensors, alignment, data_offset, bytes.len() as u64)?;
    Ok(Parsed { version, metadata, meta_index, tensors, tensor_index, alignment, data_offset })
}

/// Magic, version, tensor count and metadata count; the counts bounded by the file's size.
fn read_header(r: &mut Reader) -> anyhow::Result<(u32, u64, u64)> {
    let len = r.cur.get_ref().len();
    if len < 4 {
        bail!("not a GGUF file: {len} bytes long, too short for a GGUF header");
    }
    let magic = r.u32(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        bail!("not a GGUF file: it starts with \"{}\", not \"GGUF\"", magic.to_le_bytes().escape_ascii());
    }
    let version = r.u32(&|| "header (version)".into())?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        bail!("unsupported GGUF version {version} (this reader supports versions 2 and 3)");
    }
    let n_tensors = r.u64(&|| "header (tensor count)".into())?;
    let n_kv = r.u64(&|| "header (metadata count)".into())?;
    // Each entry takes at least a few bytes: counts beyond that are corruption, and bounding them
    // keeps the allocations that follow proportional to the file.
    let rest = (len as u64).saturating_sub(r.pos());
    if n_kv > rest / 12 {
        bail!("corrupt GGUF header: {n_kv} metadata entries cannot fit in {len} bytes");
    }
    if n_tensors > rest / 24 {
        bail!("corrupt GGUF header: {n_tensors} tensors cannot fit in {len} bytes");
    }
    Ok((version, n_tensors, n_kv))
}

/// Metadata in file order, and the index of each key.
type Metadata = (Vec<(String, MetaValue)>, HashMap<String, usize>);

/// The `n_kv` metadata key/value pairs, in file order, and their index by key.
fn read_metadata(r: &mut Reader, n_kv: u64) -> anyhow::Result<Metadata> {
    let len = r.cur.get_ref().len();
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut meta_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = r.string(65_535, &|| format!("key of metadata entry {i}"))?;
        let shown = escape(&key);
        let type_id = r.u32(&|| format!("type of metadata '{shown}'"))?;
        let vtype = GGUFValueType::from_u32(type_id)
            .map_err(|_| anyhow::anyhow!("metadata '{shown}' has unknown value type id {type_id}"))?;
        let at = r.pos();
        let flat = if vtype == GGUFValueType::Array { read_flat_array(r, &key)? } else { None };
        let value = match flat {
            Some(v) => v,
            None => MetaValue::from_lib(MetadataValue::read_from(&mut r.cur, vtype).map_err(|e| match e {
                GGUFError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    anyhow::anyhow!("truncated GGUF: metadata '{shown}' at byte {at} runs past the end ({len} bytes)")
                }
                GGUFError::UnexpectedEof => {
                    anyhow::anyhow!("truncated GGUF: metadata '{shown}' at byte {at} runs past the end ({len} bytes)")
                }
                e => anyhow::anyhow!("metadata '{shown}' at byte {at}: {}", escape(&e.to_string())),
            })?),
        };
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            bail!("metadata key '{shown}' appears twice");
        }
        metadata.push((key, value));
    }
    Ok((metadata, meta_index))
}

/// `general.alignment` (a power of two), or the default.
fn alignment(metadata: &[(String, MetaValue)], meta_index: &HashMap<String, usize>) -> anyhow::Result<u64> {
    match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
            _ => bail!("general.alignment must be a power of two, found {}", escape(&format!("{v:?}"))),
        },
    }
}

/// The `n_tensors` entries of the tensor table (offsets still relative to the data section),
/// and their index by name.
fn read_tensor_table(r: &mut Reader, n_tensors: u64) -> anyhow::Result<(Vec<TensorInfo>, HashMap<String, usize>)> {
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(4096, &|| format!("name of tensor {i}"))?;
        let shown = escape(&name);
        let n_dims = r.u32(&|| format!("dimension count of tensor '{shown}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            bail!("tensor '{shown}' has {n_dims} dimensions (1 to {MAX_DIMS} expected): the tensor table is corrupt");
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor '{shown}'"))?);
        }
        let ggml_type = r.u32(&|| format!("type of tensor '{shown}'"))?;
        let offset = r.u64(&|| format!("offset of tensor '{shown}'"))?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow::anyhow!("tensor '{shown}' has dimensions {dims:?} whose product overflows"))?;
        let size = tensor_bytes(ggml_type, dims[0], n_elements)
            .map_err(|e| anyhow::anyhow!("tensor '{shown}' {dims:?}: {e}"))?;
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            bail!("tensor '{shown}' appears twice in the tensor table");
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            wtype: WeightType::from_ggml(ggml_type),
            offset,
            // Unknown type id: its size cannot be known; `wtype` is None, so whoever needs the
            // tensor reports it (see `place_tensors` for the layout check).
            size: size.unwrap_or(0),
        });
    }
    Ok((tensors, tensor_index))
}

/// Check the layout as llama.cpp's loader does and make the offsets absolute: each tensor's data
/// starts exactly where the previous one's ends, padded to `alignment` (so data offsets are in
/// table order, aligned and never overlap, and each tensor has exactly its type's size), and
/// ends inside the GGUF (`len` bytes). After a tensor of an unknown type (its size unknown) the
/// next one may start anywhere later.
fn place_tensors(tensors: &mut [TensorInfo], alignment: u64, data_offset: u64, len: u64) -> anyhow::Result<()> {
    let mut expected = 0u64;
    let mut size_known = true;
    for t in tensors.iter_mut() {
        let shown = escape(&t.name);
        if t.offset % alignment != 0 {
            bail!("tensor '{shown}' data offset {} is not a multiple of the alignment {alignment}", t.offset);
        }
        if (size_known && t.offset != expected) || t.offset < expected {
            bail!(
                "tensor '{shown}' data offset {} is wrong: the tensors before it end at {expected} \
                 (tensor data lies in table order, each padded to {alignment} bytes): the tensor table is corrupt",
                t.offset
            );
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(s), Some(e)) if e <= len => {
                expected = (t.offset + t.size).div_ceil(alignment) * alignment;
                size_known = t.wtype.is_some() || t.size > 0;
                t.offset = s;
            }
            _ => bail!(
                "truncated GGUF: tensor '{shown}' ({} bytes at data offset {}) ends past the end of the file ({len} bytes)",
                t.size,
                t.offset
            ),
        }
    }
    Ok(())
}

/// Writes GGUF files for tests (of this crate and others): metadata in the order given,
/// tensors laid out at `alignment`, data as given.
pub mod writer {
    use super::MetaValue;

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn type_id(v: &MetaValue) -> u32 {
        match v {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }
    fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.push(*x as u8),
            MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(*x as u8),
            MetaValue::String(s) => put_str(out, s),
            MetaValue::Array(a) => {
                // An empty array is written as an array of u8.
                out.extend_from_slice(&a.first().map(type_id).unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    put_value(out, x);
                }
            }
        }
    }

    /// One tensor to write: name, dims (ggml order), ggml type id, data bytes.
    #[derive(Clone, Copy)]
    pub struct TensorSpec<'a> {
        pub name: &'a str,
        pub dims: &'a [u64],
        pub ggml_type: u32,
        pub data: &'a [u8],
    }

    /// The part of a GGUF v3 before the tensor data: header, metadata, tensor infos (data
    /// offsets laid out at `alignment`) and the padding up to the data section. `tensors`: name,
    /// dims (ggml order), ggml type id, data length in bytes. For writers that stream the data.
    pub fn header(metadata: &[(&str, MetaValue)], tensors: &[(&str, &[u64], u32, u64)], alignment: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type, len) in tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + len).div_ceil(alignment) * alignment;
        }
        out.resize((out.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
        out
    }

    /// A complete GGUF v3 in memory.
    pub fn build(metadata: &[(&str, MetaValue)], tensors: &[TensorSpec], alignment: u64) -> Vec<u8> {
        let infos: Vec<(&str, &[u64], u32, u64)> =
            tensors.iter().map(|t| (t.name, t.dims, t.ggml_type, t.data.len() as u64)).collect();
        let mut out = header(metadata, &infos, alignment);
        let data_start = out.len() as u64;
        let mut off = 0u64;
        for t in tensors {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(t.data);
            off = (off + t.data.len() as u64).div_ceil(alignment) * alignment;
        }
        out
    }

    /// A complete, loadable `llama` model with F32 weights of tiny sizes (2 blocks, embedding
    /// 32, 2 query heads of 16 sharing 1 KV head, FFN 64, 8 tokens), for tests of what the loader
    /// accepts: `meta` replaces metadata entries of the same key or adds them, `extra` adds
    /// tensors after the model's. The weights are small deterministic values; the SentencePiece
    /// vocabulary spells "a b" and little else.
    pub fn tiny_model(meta: &[(&str, MetaValue)], extra: &[TensorSpec]) -> Vec<u8> {
        use MetaValue::*;
        let (e, ff, q, kv, vocab, blocks) = (32u64, 64u64, 32u64, 16u64, 8u64, 2);
        let mut md: Vec<(&str, MetaValue)> = vec![
            ("general.architecture", String("llama".into())),
            ("general.name", String("tiny".into())),
            ("llama.context_length", U32(256)),
            ("llama.embedding_length", U32(e as u32)),
            ("llama.block_count", U32(blocks)),
            ("llama.feed_forward_length", U32(ff as u32)),
            ("llama.attention.head_count", U32(2)),
            ("llama.attention.head_count_kv", U32(1)),
            ("llama.rope.freq_base", F32(10000.0)),
            ("llama.attention.layer_norm_rms_epsilon", F32(1e-5)),
            ("tokenizer.ggml.model", String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Array(
                    ["<unk>", "<s>", "</s>", "\u{2581}a", "\u{2581}b", "a", "b", "\u{2581}"]
                        .map(|t| String(t.into()))
                        .to_vec(),
                ),
            ),
            ("tokenizer.ggml.scores", Array((0..vocab).map(|i| F32(-(i as f32))).collect())),
            ("tokenizer.ggml.token_type", Array([2, 3, 3, 1, 1, 1, 1, 1].map(I32).to_vec())),
            ("tokenizer.ggml.unknown_token_id", U32(0)),
            ("tokenizer.ggml.bos_token_id", U32(1)),
            ("tokenizer.ggml.eos_token_id", U32(2)),
        ];
        for (k, v) in meta {
            match md.iter_mut().find(|(mk, _)| mk == k) {
                Some(slot) => slot.1 = v.clone(),
                None => md.push((k, v.clone())),
            }
        }
        let mut shapes: Vec<(std::string::String, Vec<u64>)> =
            vec![("token_embd.weight".into(), vec![e, vocab]), ("output_norm.weight".into(), vec![e])];
        for b in 0..blocks {
            for (n, dims) in [
                ("attn_norm.weight", vec![e]),
                ("attn_q.weight", vec![e, q]),
                ("attn_k.weight", vec![e, kv]),
                ("attn_v.weight", vec![e, kv]),
                ("attn_output.weight", vec![q, e]),
                ("ffn_norm.weight", vec![e]),
                ("ffn_gate.weight", vec![e, ff]),
                ("ffn_up.weight", vec![e, ff]),
                ("ffn_down.weight", vec![ff, e]),
            ] {
                shapes.push((format!("blk.{b}.{n}"), dims));
            }
        }
        let data: Vec<Vec<u8>> = shapes
            .iter()
            .map(|(_, d)| {
                (0..d.iter().product::<u64>()).flat_map(|i| (((i % 7) as f32 - 3.0) * 0.05).to_le_bytes()).collect()
            })
            .collect();
        let mut tensors: Vec<TensorSpec> = shapes
            .iter()
            .zip(&data)
            .map(|((name, dims), data)| TensorSpec { name, dims, ggml_type: 0, data })
            .collect();
        tensors.extend_from_slice(extra);
        build(&md, &tensors, 32)
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{build, TensorSpec};
    use super::*;

    fn small() -> Vec<u8> {
        let q8 = vec![7u8; 34 * 2]; // two Q8_0 blocks
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        build(
            &[
                ("general.architecture", MetaValue::String("llama".into())),
                ("llama.context_length", MetaValue::U32(4096)),
                ("llama.rope.freq_base", MetaValue::F32(10000.0)),
                ("Weird-Key.OK", MetaValue::I32(-3)),
                (
                    "tokenizer.ggml.tokens",
                    MetaValue::Array(vec![MetaValue::String("a".into()), MetaValue::String("b".into())]),
                ),
            ],
            &[
                TensorSpec { name: "w", dims: &[64], ggml_type: 8, data: &q8 },
                TensorSpec { name: "v", dims: &[3], ggml_type: 0, data: &f32s },
            ],
            32,
        )
    }

    #[test]
    fn parses_metadata_in_order_and_tensors() {
        let g = GgufFile::from_bytes("small", small()).unwrap();
        assert_eq!(g.version(), 3);
        let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "general.architecture",
                "llama.context_length",
                "llama.rope.freq_base",
                "Weird-Key.OK",
                "tokenizer.ggml.tokens"
            ]
        );
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_u64("llama.context_length"), Some(4096));
        assert_eq!(g.get_f32("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(g.get_u64("Weird-Key.OK"), None, "negative is not a u64");
        assert_eq!(g.get("Weird-Key.OK").and_then(|v| v.as_i64()), Some(-3));
        assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), 2);
        assert_eq!(g.get_str("missing"), None);
        let w = g.tensor("w").unwrap();
        assert_eq!((w.wtype, w.size, w.offset % 32), (Some(WeightType::Q8_0), 68, 0));
        assert_eq!(g.tensor_data(w), &[7u8; 68][..]);
        let v = g.tensor("v").unwrap();
        assert_eq!(v.offset, g.data_offset() + 96, "second tensor after 68 bytes padded to 96");
        let vals: Vec<f32> = g.tensor_data(v).chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(vals, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn every_value_type_round_trips_including_nested_arrays() {
        use MetaValue::*;
        let values = vec![
            ("a.u8", U8(200)),
            ("a.i8", I8(-5)),
            ("a.u16", U16(60000)),
            ("a.i16", I16(-300)),
            ("a.u32", U32(4_000_000_000)),
            ("a.i32", I32(-7)),
            ("a.u64", U64(1 << 40)),
            ("a.i64", I64(-(1 << 40))),
            ("a.f32", F32(0.5)),
            ("a.f64", F64(-2.25)),
            ("a.bool", Bool(true)),
            ("a.str", String("héllo".into())),
            ("a.empty", Array(vec![])),
            ("a.ints", Array(vec![I32(1), I32(-2)])),
            ("a.bools", Array(vec![Bool(false), Bool(true)])),
            ("a.f64s", Array(vec![F64(1.5), F64(2.5)])),
            (
                "a.nested",
                Array(vec![Array(vec![String("x".into())]), Array(vec![String("y".into()), String("z".into())])]),
            ),
        ];
        let g = GgufFile::from_bytes("all", build(&values, &[], 32)).unwrap();
        assert_eq!(g.metadata().len(), values.len());
        for ((k, v), (k2, v2)) in values.iter().zip(g.metadata()) {
            assert_eq!((*k, v), (k2.as_str(), v2));
        }
        assert_eq!(g.get_u64("a.u8"), Some(200));
        assert_eq!(g.get_u64("a.i64"), None);
        assert_eq!(g.get_f32("a.f64"), Some(-2.25));
        assert_eq!(g.get_f32("a.i32"), Some(-7.0));
        assert_eq!(g.get_bool("a.bool"), Some(true));
        assert_eq!(g.get_str("a.str"), Some("héllo"));
        // A bool array element that is neither 0 nor 1 is an error.
        let mut b = build(&[("b", Array(vec![Bool(true)]))], &[], 32);
        let at = 24 + (8 + 1) + 4 + 4 + 8; // header, key "b", value type, element type, count
        assert_eq!(b[at], 1);
        b[at] = 2;
        let e = format!("{:#}", GgufFile::from_bytes("b", b).unwrap_err());
        assert!(e.contains("bool of value 2"), "{e}");
    }

    #[test]
    fn unknown_type_id_opens_and_is_reported_on_use() {
        let data = vec![0u8; 64];
        // 16 = IQ2_XXS (gguf-rs-lib knows its size, the kernels don't); 250 = nobody knows.
        let iq = vec![0u8; 66];
        let bytes = build(
            &[],
            &[
                TensorSpec { name: "iq", dims: &[256], ggml_type: 16, data: &iq },
                TensorSpec { name: "odd", dims: &[16], ggml_type: 250, data: &data },
            ],
            32,
        );
        let g = GgufFile::from_bytes("u", bytes).unwrap();
        let iq = g.tensor("iq").unwrap();
        assert_eq!((iq.wtype, iq.size), (None, 66));
        assert_eq!(iq.type_name(), "IQ2_XXS");
        let e = g.tensor("odd").unwrap().weight_type().unwrap_err().to_string();
        assert!(e.contains("'odd'") && e.contains("type#250"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = small();
        for n in 0..full.len() {
            let e = GgufFile::from_bytes("cut", full[..n].to_vec());
            assert!(e.is_err(), "truncated at {n} of {} opened", full.len());
        }
        let msg = format!("{:#}", GgufFile::from_bytes("cut", full[..full.len() - 1].to_vec()).unwrap_err());
        assert!(msg.contains("truncated") && msg.contains("'v'"), "{msg}");
    }

    /// Where the tensor table stores `name`'s data offset in `b`.
    fn offset_field(b: &[u8], name: &str) -> usize {
        let mut key = (name.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        let at = b.windows(key.len()).position(|w| w == key).expect("tensor in the table") + key.len();
        let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        at + 4 + 8 * n_dims + 4
    }

    fn set_offset(b: &mut [u8], name: &str, offset: u64) {
        let at = offset_field(b, name);
        b[at..at + 8].copy_from_slice(&offset.to_le_bytes());
    }

    #[test]
    fn tensor_data_must_follow_the_table_exactly() {
        let open = |b: Vec<u8>| GgufFile::from_bytes("t", b).map(|_| ()).map_err(|e| format!("{e:#}"));
        assert_eq!(open(small()), Ok(()));
        // 'v' placed on top of 'w'.
        let mut b = small();
        set_offset(&mut b, "v", 0);
        let e = open(b).unwrap_err();
        assert_eq!(e, "t: tensor 'v' data offset 0 is wrong: the tensors before it end at 96 (tensor data lies in table order, each padded to 32 bytes): the tensor table is corrupt");
        // 'v' moved by 32 bytes (still aligned and inside the file once the file is longer).
        let mut b = small();
        set_offset(&mut b, "v", 128);
        b.extend_from_slice(&[0; 64]);
        assert!(open(b).unwrap_err().contains("tensor 'v' data offset 128 is wrong: the tensors before it end at 96"));
        // Misaligned.
        let mut b = small();
        set_offset(&mut b, "v", 100);
        assert!(open(b).unwrap_err().contains("tensor 'v' data offset 100 is not a multiple of the alignment 32"));
        // The first tensor not at the start of the data section.
        let mut b = small();
        set_offset(&mut b, "w", 32);
        assert!(open(b).unwrap_err().contains("tensor 'w' data offset 32 is wrong: the tensors before it end at 0"));
    }

    #[test]
    fn names_from_the_file_are_escaped_in_errors() {
        let q8 = vec![0u8; 34];
        let name = format!("evil\x1b]0;title\x07\n{}", "z".repeat(1000));
        let b = build(&[], &[TensorSpec { name: &name, dims: &[33], ggml_type: 8, data: &q8 }], 32);
        let e = format!("{:#}", GgufFile::from_bytes("r", b).unwrap_err());
        assert!(e.contains("tensor 'evil\\x1b]0;title\\x07\\nzzz"), "{e}");
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert!(e.len() < 400, "cut: {} bytes", e.len());
        let b = build(&[("bad\u{1b}[2Jkey", MetaValue::U32(1)), ("bad\u{1b}[2Jkey", MetaValue::U32(2))], &[], 32);
        let e = format!("{:#}", GgufFile::from_bytes("k", b).unwrap_err());
        assert_eq!(e, "k: metadata key 'bad\\x1b[2Jkey' appears twice");
    }

    #[test]
    fn bad_magic_and_version() {
        let mut b = small();
        b[0] = b'X';
        let e = format!("{:#}", GgufFile::from_bytes("m", b).unwrap_err());
        assert!(e.contains("not a GGUF"), "{e}");
        let mut b = small();
        b[4] = 9;
        let e = format!("{:#}", GgufFile::from_bytes("v", b).unwrap_err());
        assert!(e.contains("unsupported GGUF version 9"), "{e}");
    }

    #[test]
    fn misaligned_rows_and_huge_counts_are_rejected() {
        let q8 = vec![0u8; 34];
        let b = build(&[], &[TensorSpec { name: "w", dims: &[33], ggml_type: 8, data: &q8 }], 32);
        let e = format!("{:#}", GgufFile::from_bytes("r", b).unwrap_err());
        assert!(e.contains("not a multiple"), "{e}");
        let mut b = small();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::from_bytes("h", b).is_err());
    }

    #[test]
    fn shared_models_open_with_in_range_tensors() {
        let Some(shared) = test_support::require_shared() else { return };
        let dir = shared.join("models");
        let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "gguf") {
                continue;
            }
            let g = GgufFile::open(&p).unwrap();
            assert_eq!(g.architecture(), Some("llama"));
            assert_eq!(g.get_u64("llama.block_count"), Some(4));
            assert_eq!(g.get_array("tokenizer.ggml.tokens").map(|a| a.len()), Some(32000));
            assert!(g.tensor("output.weight").is_some());
            for t in g.tensors() {
                assert!(t.wtype.is_some(), "{}: {}", p.display(), t.name);
                assert!(t.offset + t.size <= g.len());
                assert_eq!(t.offset % g.alignment(), 0);
            }
            n += 1;
        }
        assert!(n >= 9, "expected the 9 tiny models, found {n}");
    }

    #[test]
    fn gemma_vocab_parses_quickly() {
        let Some(shared) = test_support::require_shared() else { return };
        let p = shared.join("vocab/gemma-3-270m.vocab.gguf");
        let t = std::time::Instant::now();
        let g = GgufFile::open(&p).unwrap();
        let ms = t.elapsed().as_millis();
        eprintln!("opened the gemma vocab (262,144 tokens) in {ms} ms");
        assert_eq!(g.architecture(), Some("gemma3"));
        assert_eq!(g.get_array("tokenizer.ggml.tokens").map(|a| a.len()), Some(262_144));
        assert_eq!(g.get_array("tokenizer.ggml.scores").map(|a| a.len()), Some(262_144));
        // Generous bound for a loaded 2-core CI machine; ~40 ms measured when idle.
        assert!(ms < 1000, "opening the gemma vocab took {ms} ms");
    }
}
