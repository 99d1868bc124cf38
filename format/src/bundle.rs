//! Finding the weights and mapping exactly their bytes.
//!
//! A model is given as one of:
//! - a plain `.gguf` file;
//! - a zip or a llamafile (an executable with a zip appended, as `pack` and the upstream
//!   llamafile project make them): its single `.gguf` entry, which must be stored uncompressed;
//! - `archive.zip@name.gguf`: that entry of that zip (when no file of that literal name exists);
//! - nothing: the running executable's own embedded weights.
//!
//! The zip's central directory (EOCD, ZIP64 records, prefixed data) is read with the `zip` crate;
//! the entry's byte range is then mapped with memmap2 at an offset rounded down to 64 KiB (a
//! multiple of every page size Linux/macOS use), without copying or extracting anything.
//!
//! `.args` inside the executable's zip hold default arguments, merged before clap parses
//! (see [`parse_args_file`] and [`merge_args`]).

use crate::escape::{escape, escape_path};
use crate::input::open_regular;
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Mapping offsets are rounded down to this: a multiple of the 4 KiB, 16 KiB and 64 KiB pages
/// of the platforms we run on, so no runtime page-size query is needed.
pub const MAP_GRANULARITY: u64 = 65536;

/// Name of the default-arguments entry inside a llamafile.
pub const ARGS_ENTRY: &str = ".args";
/// The zip folder GPU backend libraries are stored in (`pack --gpu-backend`).
pub const GPU_DIR: &str = "gpu/";

/// Largest `.args` accepted (default arguments, not data).
pub const MAX_ARGS_BYTES: u64 = 1 << 20;

/// A mapped GGUF: `map[start..start + len]` is the GGUF, which begins at `file_offset` in the file.
pub struct Region {
    pub map: memmap2::Mmap,
    pub start: usize,
    pub len: usize,
    pub file_offset: u64,
    /// The zip entry's name, when the GGUF came from one.
    pub entry: Option<String>,
    pub path: PathBuf,
}

impl Region {
    /// How errors name what was opened: the path, and the entry when there is one (escaped).
    pub fn describe(&self) -> String {
        match &self.entry {
            Some(e) => format!("{}@{}", escape_path(&self.path), escape(e)),
            None => escape_path(&self.path),
        }
    }
}

/// One entry of a zip's central directory, with the absolute position of its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// Bytes as stored (equal to `size` for a stored entry).
    pub compressed_size: u64,
    /// Bytes once extracted.
    pub size: u64,
    /// Compression method as its zip name ("Stored", "Deflated"...).
    pub method: String,
    pub stored: bool,
    /// Absolute offset of the local file header in the file.
    pub header_offset: u64,
    /// Absolute offset of the entry's first data byte in the file.
    pub data_offset: u64,
    pub crc32: u32,
}

/// The central directory of the zip at the end of `path`, `Ok(None)` when the file has no zip
/// end-of-central-directory record (i.e. it is not a zip), an error when it has one that is broken.
pub fn zip_entries(path: &Path) -> anyhow::Result<Option<Vec<ZipEntry>>> {
    let file = open_regular(path, "a llamafile or zip")?;
    let shown = escape_path(path);
    let reader = std::io::BufReader::new(file);
    let mut archive = match zip::ZipArchive::new(reader) {
        Ok(a) => a,
        Err(_) if !has_eocd(path)? => return Ok(None),
        Err(e) => bail!("{shown}: broken zip: {}", escape(&e.to_string())),
    };
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive
            .by_index_raw(i)
            .map_err(|e| anyhow::anyhow!("{shown}: broken zip entry {i}: {}", escape(&e.to_string())))?;
        let name = f.name().map_err(|_| anyhow::anyhow!("{shown}: zip entry {i} has an unreadable name"))?.to_string();
        let data_offset = f
            .data_start()
            .ok_or_else(|| anyhow::anyhow!("{shown}: zip entry '{}' has no readable local header", escape(&name)))?;
        out.push(ZipEntry {
            name,
            compressed_size: f.compressed_size(),
            size: f.size(),
            method: format!("{:?}", f.compression()),
            stored: f.compression() == zip::CompressionMethod::Stored,
            header_offset: f.header_start(),
            data_offset,
            crc32: f.crc32(),
        });
    }
    Ok(Some(out))
}

/// Whether the file ends with a zip end-of-central-directory record: its signature followed by
/// 18 bytes and a comment whose length field reaches exactly the end of the file. (The comment is
/// at most 65535 bytes, so only the last 64 KiB + 22 bytes need looking at; requiring the length
/// to match keeps a stray "PK\x05\x06" in an executable's data from counting.)
fn has_eocd(path: &Path) -> anyhow::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = open_regular(path, "a llamafile or zip")?;
    let len = f.metadata()?.len();
    let tail = len.min(65535 + 22);
    f.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    f.take(tail).read_to_end(&mut buf)?;
    Ok((0..buf.len().saturating_sub(21)).rev().any(|i| {
        buf[i..i + 4] == *b"PK\x05\x06" && i + 22 + u16::from_le_bytes([buf[i + 20], buf[i + 21]]) as usize == buf.len()
    }))
}

fn is_gguf_name(name: &str) -> bool {
    !name.ends_with('/') && name.to_ascii_lowercase().ends_with(".gguf")
}

/// Split `archive.zip@name.gguf` when `path` itself does not exist and the part before the last
/// `@` does.
fn split_entry(path: &Path) -> Option<(PathBuf, String)> {
    if path.exists() {
        return None;
    }
    let s = path.to_str()?;
    let (archive, entry) = s.rsplit_once('@')?;
    if archive.is_empty() || entry.is_empty() || !Path::new(archive).is_file() {
        return None;
    }
    Some((PathBuf::from(archive), entry.to_string()))
}

/// Which entry of `entries` holds the GGUF: `wanted`, or else the single `.gguf` entry.
pub fn select_gguf_entry<'a>(
    path: &Path,
    entries: &'a [ZipEntry],
    wanted: Option<&str>,
) -> anyhow::Result<&'a ZipEntry> {
    let ggufs: Vec<&ZipEntry> = entries.iter().filter(|e| is_gguf_name(&e.name)).collect();
    let names = |v: &[&ZipEntry]| v.iter().map(|e| escape(&e.name)).collect::<Vec<_>>().join(", ");
    let shown = escape_path(path);
    let e = match wanted {
        Some(w) => match entries.iter().find(|e| e.name == w) {
            Some(e) => e,
            None => bail!(
                "{shown}: no entry named '{}' in the zip (its .gguf entries: {})",
                escape(w),
                if ggufs.is_empty() { "none".to_string() } else { names(&ggufs) }
            ),
        },
        None => match ggufs.as_slice() {
            [] => bail!("{shown}: the zip has no .gguf entry ({} entries, none ending in .gguf)", entries.len()),
            [one] => one,
            many => bail!(
                "{shown}: the zip has {} .gguf entries ({}); choose one with {shown}@NAME.gguf",
                many.len(),
                names(many)
            ),
        },
    };
    if !e.stored {
        bail!(
            "{shown}: zip entry '{}' is compressed ({}); weights must be stored uncompressed to be mapped (zip -0, or use pack)",
            escape(&e.name),
            escape(&e.method)
        );
    }
    Ok(e)
}

/// Map `len` bytes at `offset` of `file`; returns the mapping and where the range starts in it.
fn map_range(file: &File, path: &Path, offset: u64, len: u64) -> anyhow::Result<(memmap2::Mmap, usize)> {
    let aligned = offset - offset % MAP_GRANULARITY;
    let delta = (offset - aligned) as usize;
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(delta))
        .context("entry too large to map on this platform")?;
    // SAFETY: a read-only private mapping of a range inside the file (checked by the callers
    // against its length); the file is not modified by this process. A model file truncated or
    // rewritten by another process while we run is outside what any mmap-based loader can guard.
    let map = unsafe { memmap2::MmapOptions::new().offset(aligned).len(total).map(file) }
        .with_context(|| format!("{}: cannot map {len} bytes at offset {offset}", escape_path(path)))?;
    Ok((map, delta))
}

/// Map the GGUF that `path` designates: a plain .gguf, a zip/llamafile's single .gguf entry, or
/// `archive@entry`.
pub fn map_gguf(path: &Path) -> anyhow::Result<Region> {
    let (path, wanted) = match split_entry(path) {
        Some((archive, entry)) => (archive, Some(entry)),
        None => (path.to_path_buf(), None),
    };
    let file = open_regular(&path, "a model")?;
    let shown = escape_path(&path);
    let file_len = file.metadata().with_context(|| format!("{shown}: cannot stat"))?.len();
    if file_len == 0 {
        bail!("{shown}: the file is empty");
    }
    let mut head = [0u8; 4];
    let n = (&file).take(4).read(&mut head).with_context(|| format!("{shown}: cannot read"))?;
    if wanted.is_none() && head[..n] == *b"GGUF" {
        let (map, start) = map_range(&file, &path, 0, file_len)?;
        return Ok(Region { len: file_len as usize, map, start, file_offset: 0, entry: None, path });
    }
    let Some(entries) = zip_entries(&path)? else {
        bail!(
            "{shown}: not a model: not a GGUF file (it starts with \"{}\", not \"GGUF\"), nor a zip/llamafile holding one",
            head[..n].escape_ascii()
        );
    };
    let e = select_gguf_entry(&path, &entries, wanted.as_deref())?;
    let end = e.data_offset.checked_add(e.size);
    if end.is_none_or(|end| end > file_len) {
        bail!(
            "{shown}: zip entry '{}' ({} bytes at offset {}) extends past the end of the file ({} bytes): the file is truncated",
            escape(&e.name),
            e.size,
            e.data_offset,
            file_len
        );
    }
    let (map, start) = map_range(&file, &path, e.data_offset, e.size)?;
    Ok(Region { len: e.size as usize, map, start, file_offset: e.data_offset, entry: Some(e.name.clone()), path })
}

/// The running executable.
pub fn own_executable() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the path of the running executable")
}

/// What to open when the user gave `model` (`-m`) or not: the given path, else this executable
/// when it embeds a `.gguf`, else an error saying how to give a model.
/// A `-m NAME` that is not a file but names an entry of this executable's zip (optionally as
/// `/zip/NAME`, as upstream llamafiles' `.args` write it) means that entry.
pub fn model_path(model: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(m) = model {
        if !m.exists() {
            if let (Some(name), Ok(exe)) = (m.to_str(), own_executable()) {
                let name = name.strip_prefix("/zip/").unwrap_or(name);
                if let Ok(Some(entries)) = zip_entries(&exe) {
                    if entries.iter().any(|e| e.name == name) {
                        return Ok(PathBuf::from(format!("{}@{name}", exe.display())));
                    }
                }
            }
        }
        return Ok(m.to_path_buf());
    }
    let exe = own_executable()?;
    let embedded = zip_entries(&exe).ok().flatten().is_some_and(|es| es.iter().any(|e| is_gguf_name(&e.name)));
    if embedded {
        Ok(exe)
    } else {
        bail!(
            "no model: give one with -m FILE.gguf (or a .llamafile / archive.zip@name.gguf), or pack weights into this executable with `pack`"
        )
    }
}

/// The text of the `.args` entry of the zip in `path`, if any (stored or deflated is not
/// supported: `.args` must be stored, as `pack` and upstream's zipalign write it).
pub fn read_args_entry(path: &Path) -> anyhow::Result<Option<String>> {
    let Some(entries) = zip_entries(path)? else { return Ok(None) };
    let Some(e) = entries.iter().find(|e| e.name == ARGS_ENTRY) else { return Ok(None) };
    let shown = escape_path(path);
    if !e.stored {
        bail!("{shown}: the {ARGS_ENTRY} entry is compressed ({}); it must be stored", escape(&e.method));
    }
    if e.size > MAX_ARGS_BYTES {
        bail!("{shown}: the {ARGS_ENTRY} entry is {} bytes; at most 1 MiB expected", e.size);
    }
    use std::io::{Seek, SeekFrom};
    let mut f = open_regular(path, "a llamafile or zip")?;
    f.seek(SeekFrom::Start(e.data_offset))?;
    let mut buf = Vec::with_capacity(e.size as usize);
    f.take(e.size).read_to_end(&mut buf)?;
    if buf.len() as u64 != e.size {
        bail!("{shown}: the {ARGS_ENTRY} entry is truncated");
    }
    let text =
        String::from_utf8(buf).map_err(|_| anyhow::anyhow!("{shown}: the {ARGS_ENTRY} entry is not UTF-8 text"))?;
    Ok(Some(text))
}

/// One item of a parsed `.args`: an argument, or the `...` marker for the user's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgItem {
    Arg(String),
    UserArgs,
}

/// Parse `.args` text: arguments separated by whitespace (newlines included); `'single'` quotes
/// take everything literally, `"double"` quotes honour `\"` and `\\`; quoted and unquoted parts
/// next to each other join into one argument (`--prompt="a b"`); `#` at the start of an
/// argument comments out the rest of the line; an unquoted `...` marks where the user's own
/// arguments go.
pub fn parse_args_file(text: &str) -> anyhow::Result<Vec<ArgItem>> {
    let mut lx = ArgsLexer { chars: text.chars().peekable(), line: 1 };
    let mut out = Vec::new();
    loop {
        lx.skip_whitespace();
        match lx.chars.peek() {
            None => break,
            Some('#') => lx.skip_line(),
            Some(_) => {
                let (arg, quoted) = lx.word()?;
                out.push(if !quoted && arg == "..." { ArgItem::UserArgs } else { ArgItem::Arg(arg) });
            }
        }
    }
    Ok(out)
}

/// The steps of [`parse_args_file`], over its characters; `line` is counted for errors.
struct ArgsLexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl ArgsLexer<'_> {
    fn next(&mut self) -> Option<char> {
        let c = self.chars.next();
        self.line += (c == Some('\n')) as usize;
        c
    }

    fn skip_whitespace(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.next();
        }
    }

    /// A comment: up to the end of the line.
    fn skip_line(&mut self) {
        while self.next().is_some_and(|c| c != '\n') {}
    }

    /// One argument, up to unquoted whitespace; and whether any of it was quoted.
    fn word(&mut self) -> anyhow::Result<(String, bool)> {
        let mut arg = String::new();
        let mut quoted = false;
        while let Some(c) = self.chars.peek().copied().filter(|c| !c.is_whitespace()) {
            self.next();
            match c {
                '\'' | '"' => {
                    quoted = true;
                    self.quoted(c, &mut arg)?;
                }
                c => arg.push(c),
            }
        }
        Ok((arg, quoted))
    }

    /// The rest of a quoted part, its opening `quote` read: `'` takes everything literally,
    /// `"` honours `\"` and `\\`.
    fn quoted(&mut self, quote: char, arg: &mut String) -> anyhow::Result<()> {
        let start = self.line;
        loop {
            match self.next() {
                Some(c) if c == quote => return Ok(()),
                Some('\\') if quote == '"' && matches!(self.chars.peek(), Some('"' | '\\')) => arg.extend(self.next()),
                Some(c) => arg.push(c),
                None => {
                    let kind = if quote == '"' { "double" } else { "single" };
                    bail!(".args: the {kind} quote opened on line {start} is never closed")
                }
            }
        }
    }
}

/// Put the `.args` items around the user's arguments: `argv[0]`, the items before `...`, the
/// user's arguments, the items after it; without `...` the user's arguments come last.
pub fn merge_args(items: &[ArgItem], argv: Vec<OsString>) -> Vec<OsString> {
    let mut argv = argv.into_iter();
    let mut out: Vec<OsString> = argv.next().into_iter().collect();
    let user: Vec<OsString> = argv.collect();
    let mut user = Some(user);
    for it in items {
        match it {
            ArgItem::Arg(a) => out.push(OsString::from(a)),
            ArgItem::UserArgs => {
                // A second `...` inserts nothing more.
                if let Some(u) = user.take() {
                    out.extend(u);
                }
            }
        }
    }
    if let Some(u) = user {
        out.extend(u);
    }
    out
}

/// The command line with this executable's `.args` merged in (unchanged when it has none).
pub fn with_embedded_args(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let exe = own_executable()?;
    match read_args_entry(&exe)? {
        None => Ok(argv),
        Some(text) => {
            let items = parse_args_file(&text).with_context(|| format!("{}: bad {ARGS_ENTRY}", exe.display()))?;
            Ok(merge_args(&items, argv))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[ArgItem]) -> Vec<String> {
        v.iter()
            .map(|a| match a {
                ArgItem::Arg(s) => s.clone(),
                ArgItem::UserArgs => "<...>".into(),
            })
            .collect()
    }

    #[test]
    fn args_whitespace_comments_and_marker() {
        let t = "-m\tmodel.gguf  # the weights\n# a whole-line comment -n 5\n-c 2048\n...\n--temp 0\n";
        assert_eq!(args(&parse_args_file(t).unwrap()), ["-m", "model.gguf", "-c", "2048", "<...>", "--temp", "0"]);
    }

    #[test]
    fn args_quotes() {
        let t = r#"-p "hello world" --system 'it''s \n raw' "say \"hi\" \\ ok" --x="a b"c '...' "#;
        assert_eq!(
            args(&parse_args_file(t).unwrap()),
            ["-p", "hello world", "--system", r"its \n raw", r#"say "hi" \ ok"#, "--x=a bc", "..."]
        );
        // A quoted `...` is an argument, not the marker; an empty quoted string is an argument.
        assert_eq!(parse_args_file("'...' ''").unwrap(), [ArgItem::Arg("...".into()), ArgItem::Arg(String::new())]);
        // `#` inside an argument or quotes is not a comment.
        assert_eq!(args(&parse_args_file("a#b '#c' \"# d\"").unwrap()), ["a#b", "#c", "# d"]);
        // Quotes may span lines.
        assert_eq!(args(&parse_args_file("-p 'line one\nline two'").unwrap()), ["-p", "line one\nline two"]);
    }

    #[test]
    fn args_unclosed_quote_is_an_error() {
        let e = parse_args_file("-m x\n-p \"oops\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("never closed"), "{e}");
        assert!(parse_args_file("'x").is_err());
        assert!(parse_args_file("").unwrap().is_empty());
        assert!(parse_args_file("  # only a comment").unwrap().is_empty());
    }

    #[test]
    fn merge_places_user_args_at_the_marker_or_last() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let items = parse_args_file("-m w.gguf ... -n 8").unwrap();
        assert_eq!(
            merge_args(&items, argv(&["prog", "-p", "hi"])),
            argv(&["prog", "-m", "w.gguf", "-p", "hi", "-n", "8"])
        );
        let items = parse_args_file("-m w.gguf").unwrap();
        assert_eq!(merge_args(&items, argv(&["prog", "-p", "hi"])), argv(&["prog", "-m", "w.gguf", "-p", "hi"]));
        assert_eq!(merge_args(&items, argv(&["prog"])), argv(&["prog", "-m", "w.gguf"]));
        let items = parse_args_file("... -a ...").unwrap();
        assert_eq!(merge_args(&items, argv(&["prog", "-x"])), argv(&["prog", "-x", "-a"]));
    }

    fn entry(name: &str, stored: bool) -> ZipEntry {
        ZipEntry {
            name: name.into(),
            compressed_size: 10,
            size: 10,
            method: if stored { "Stored" } else { "Deflated" }.into(),
            stored,
            header_offset: 0,
            data_offset: 30,
            crc32: 0,
        }
    }

    #[test]
    fn entry_selection_errors() {
        let p = Path::new("x.zip");
        let e = |v: &[ZipEntry], w: Option<&str>| {
            select_gguf_entry(p, v, w).map(|e| e.name.clone()).map_err(|e| e.to_string())
        };
        assert_eq!(e(&[entry(".args", true), entry("a.gguf", true)], None).unwrap(), "a.gguf");
        assert!(e(&[entry(".args", true)], None).unwrap_err().contains("no .gguf entry"));
        let many = e(&[entry("a.gguf", true), entry("b.GGUF", true)], None).unwrap_err();
        assert!(
            many.contains("2 .gguf entries") && many.contains("a.gguf, b.GGUF") && many.contains("x.zip@NAME.gguf"),
            "{many}"
        );
        assert_eq!(e(&[entry("a.gguf", true), entry("b.gguf", true)], Some("b.gguf")).unwrap(), "b.gguf");
        assert!(e(&[entry("a.gguf", true)], Some("c.gguf")).unwrap_err().contains("no entry named 'c.gguf'"));
        assert!(e(&[entry("a.gguf", false)], None).unwrap_err().contains("compressed (Deflated)"));
    }
}
