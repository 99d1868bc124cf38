//! `pack`: the runtime executable + a GGUF (+ optional `.args`) -> one executable llamafile.
//!
//! Output layout: the runtime's bytes, then a zip whose GGUF entry is stored with its data at a
//! multiple of [`GGUF_ALIGN`] from the start of the file (so the runtime maps it in place), then
//! `.args` and any extra entries, the central directory, and ZIP64 records when needed. The file
//! is written under a temporary name in the output's directory and renamed at the end.

pub mod hf;
pub mod imatrix;
pub mod quant_mix;
pub mod quantize;
pub mod sign;
pub mod tmp_output;
pub mod upgrade;
pub mod validate;
pub mod zip_writer;

pub use tmp_output::remove_partial_output_on_signal;

use anyhow::{bail, Context};
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::input::{open_regular, read_regular, refuse_special};
use std::io::Write;
#[cfg(test)]
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zip_writer::{Source, ZipWriter};

/// Alignment of the GGUF data in the output (a multiple of every page size in use).
pub const GGUF_ALIGN: u64 = 65536;

/// An extra stored entry (e.g. a GPU backend library): name in the zip, file, alignment.
#[derive(Clone, Debug)]
pub struct ExtraEntry {
    pub name: String,
    pub path: PathBuf,
    pub align: u64,
}

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub runtime: PathBuf,
    pub gguf: PathBuf,
    pub out: PathBuf,
    /// Text of the `.args` entry (already read from `--args` or `--args-file`).
    pub args: Option<String>,
    pub extra: Vec<ExtraEntry>,
    pub force: bool,
    /// Show a progress bar (the caller decides: only on a terminal).
    pub progress: bool,
    /// Sign with this minisign secret key (`--sign`; see [`sign`]).
    pub sign: Option<PathBuf>,
}

/// What `pack` wrote.
#[derive(Clone, Debug)]
pub struct PackReport {
    pub out: PathBuf,
    pub size: u64,
    pub gguf_entry: String,
    pub gguf_offset: u64,
    pub gguf_size: u64,
    pub runtime: validate::RuntimeInfo,
}

/// The default output: `<gguf stem>.llamafile` in the current directory.
pub fn default_out(gguf: &Path) -> PathBuf {
    let name = gguf.to_string_lossy();
    // For `archive.zip@name.gguf` the stem is the entry's.
    let base = name.rsplit(['/', '@']).next().unwrap_or(&name);
    let stem = Path::new(base).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    PathBuf::from(format!("{stem}.llamafile"))
}

/// The default runtime: the `llamafile` binary beside this executable.
pub fn default_runtime() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the path of pack itself")?;
    Ok(exe.with_file_name("llamafile"))
}

/// (device, inode) of an existing file, to tell whether two paths are the same file.
pub(crate) fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Check the output path (never an input, never a device, FIFO, socket or directory: renaming
/// over one would replace it; an existing file only with `force`) and return its directory and
/// file name.
/// `inputs`: (what it is, e.g. "GGUF", or "" for an unnamed input, path).
pub fn check_output(out: &Path, force: bool, inputs: &[(&str, &Path)]) -> anyhow::Result<(PathBuf, String)> {
    refuse_special(out, "the output")?;
    if let Some(id) = file_id(out) {
        if let Some((what, _)) = inputs.iter().find(|(_, p)| file_id(p) == Some(id)) {
            if what.is_empty() {
                bail!("output {} is one of the inputs; choose another -o", escape_path(out));
            }
            bail!("output {} is the {what} input; choose another -o", escape_path(out));
        }
        if !force {
            bail!("output {} already exists (use --force to replace it)", escape_path(out));
        }
    }
    output_place(out)
}

/// Check every input, then write the llamafile. Nothing is left behind on failure, nor on
/// SIGINT/SIGTERM/SIGHUP once [`remove_partial_output_on_signal`] is installed.
pub fn pack(o: &PackOptions) -> anyhow::Result<PackReport> {
    pack_with(o, None)
}

/// [`pack`], with the GGUF quantized on the way when `quant` is given (`--quantize`): its
/// tensors are converted and written into the output as they are done.
pub fn pack_with(o: &PackOptions, quant: Option<&quantize::QuantizeOptions>) -> anyhow::Result<PackReport> {
    // 1. Inputs, before anything is written.
    let key = o.sign.as_deref().map(sign::read_secret_key).transpose()?;
    let runtime_bytes = read_regular(&o.runtime, "the runtime")?;
    let runtime = validate::check_runtime(&o.runtime, &runtime_bytes)?;
    let gguf = validate::check_gguf(&o.gguf)?;
    if let Some(text) = &o.args {
        llamafile_format::bundle::parse_args_file(text).context("bad --args")?;
    }
    for e in &o.extra {
        open_regular(&e.path, "a packed file")?;
        if e.name == llamafile_format::bundle::ARGS_ENTRY
            || llamafile_format::signature::is_signature_entry(&e.name)
            || e.name.to_ascii_lowercase().ends_with(".gguf")
        {
            bail!("extra entry name '{}' is reserved", escape(&e.name));
        }
    }
    // 2. The output: never an input, never a device, FIFO, socket or directory.
    let mut inputs = vec![("runtime", o.runtime.as_path()), ("GGUF", gguf.file_path())];
    inputs.extend(o.extra.iter().map(|e| ("", e.path.as_path())));
    let (dir, out_name) = check_output(&o.out, o.force, &inputs)?;
    let plan = match quant {
        Some(q) => Some(quantize::plan(&gguf, q)?),
        None => None,
    };
    let entry_name = gguf.entry().map(|e| e.rsplit('/').next().unwrap_or(e).to_string()).unwrap_or_else(|| {
        gguf.file_path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.gguf".into())
    });
    let entry_name =
        if entry_name.to_ascii_lowercase().ends_with(".gguf") { entry_name } else { format!("{entry_name}.gguf") };
    // A quantized model is another file than the input: named after the output.
    let entry_name = match &plan {
        Some(_) => format!(
            "{}.gguf",
            Path::new(&out_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        ),
        None => entry_name,
    };

    // 3. Write under a temporary name (removed on drop if anything fails), then rename.
    let (tmp, mut f) = tmp_output::TmpOutput::create(&dir, &out_name)?;
    f.write_all(&runtime_bytes).with_context(|| format!("cannot write {}", escape_path(tmp.path())))?;
    let mut w = ZipWriter::new(f)?;
    let e = match &plan {
        Some(plan) => {
            quantize::warn_requantized(plan);
            let bar = quantize::progress_bar(o.progress, &plan.mix, gguf.tensors().iter().map(|t| t.size).sum());
            let e = w.add_stored_streamed(&entry_name, plan.size, GGUF_ALIGN, &mut |out| {
                // Whole slabs per write: the sink writes each at its offset.
                let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
                quantize::write(&gguf, plan, &mut out, &mut |done, _, name| {
                    if let Some(b) = &bar {
                        b.set_position(done);
                        b.set_message(escape(name));
                    }
                })
            })?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            e
        }
        None => copy_gguf(&mut w, &gguf, &entry_name, o.progress)?,
    };
    if let Some(text) = &o.args {
        w.add_stored(llamafile_format::bundle::ARGS_ENTRY, Source::Bytes(text.as_bytes()), 1, &mut |_, _| {})?;
    }
    for x in &o.extra {
        w.add_stored_entry(&x.name, &x.path, x.align)?;
    }
    if let Some(key) = &key {
        sign::add_signature(&mut w, key, runtime_bytes.len() as u64)?;
    }
    let size = finish_output(w, tmp, &o.out)?;
    Ok(PackReport {
        out: o.out.clone(),
        size,
        gguf_entry: entry_name,
        gguf_offset: e.data_offset,
        gguf_size: e.size,
        runtime,
    })
}

/// The directory the output goes to (its temporary file is written there) and its file name.
pub(crate) fn output_place(out: &Path) -> anyhow::Result<(PathBuf, String)> {
    let out_name = out
        .file_name()
        .with_context(|| format!("output {} has no file name", escape_path(out)))?
        .to_string_lossy()
        .into_owned();
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("output directory {} does not exist", escape_path(&dir));
    }
    Ok((dir, out_name))
}

/// A progress bar over `total` bytes (what `pack` shows on a terminal).
pub(crate) fn progress_bar(total: u64, message: &'static str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(message);
    b
}

/// Write the zip's central directory, flush the temporary output to disk, make it executable
/// and rename it over `out`; returns its size.
pub(crate) fn finish_output(w: ZipWriter, tmp: tmp_output::TmpOutput, out: &Path) -> anyhow::Result<u64> {
    let f = w.finish()?;
    // On disk before the rename makes it visible: a crash right after `pack` returns must not
    // leave an executable whose tail is still only in the page cache (lost: a truncated file).
    f.sync_all().with_context(|| format!("cannot flush {} to disk", escape_path(tmp.path())))?;
    let size = f.metadata()?.len();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .context("cannot make the output executable")?;
    drop(f);
    tmp.persist(out)?;
    Ok(size)
}

/// Store the GGUF as it is: two passes, the CRC-32 (reads), then the copy (by the kernel).
fn copy_gguf(
    w: &mut ZipWriter,
    gguf: &llamafile_format::gguf::GgufFile,
    entry_name: &str,
    show_progress: bool,
) -> anyhow::Result<zip_writer::EntryInfo> {
    let src = std::fs::File::open(gguf.file_path())
        .with_context(|| format!("cannot open {}", escape_path(gguf.file_path())))?;
    let bar = show_progress.then(|| progress_bar(gguf.len(), "checksum"));
    let mut last = 0u64;
    let mut progress = |done: u64, _: u64| {
        if let Some(b) = &bar {
            if done < last {
                b.set_message("copying");
            }
            last = done;
            b.set_position(done);
        }
    };
    let e = w.add_stored(
        entry_name,
        Source::Range { file: &src, offset: gguf.file_offset(), len: gguf.len() },
        GGUF_ALIGN,
        &mut progress,
    )?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(e)
}

/// Largest power of two dividing `offset`, capped at 1 MiB (0 counts as aligned to anything).
fn alignment_of(offset: u64) -> u64 {
    if offset == 0 {
        1 << 20
    } else {
        (1u64 << offset.trailing_zeros()).min(1 << 20)
    }
}

fn human_align(a: u64) -> String {
    if a >= 1 << 20 {
        "1 MiB+".into()
    } else if a >= 1024 {
        format!("{} KiB", a / 1024)
    } else {
        format!("{a} B")
    }
}

/// `pack --list`: the zip's entries (offsets, sizes, alignment), `.args`, and a GGUF summary.
pub fn list(path: &Path) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let len = open_regular(path, "a llamafile or zip")?
        .metadata()
        .with_context(|| format!("{}: cannot stat", escape_path(path)))?
        .len();
    let Some(entries) = llamafile_format::bundle::zip_entries(path)? else {
        bail!("{}: not a llamafile or zip (no zip end record at the end of the file)", escape_path(path));
    };
    let mut s = String::new();
    let prefix = entries.iter().map(|e| e.header_offset).min().unwrap_or(0);
    let _ = writeln!(
        s,
        "{}: {} bytes, {} zip entries after {} bytes of executable",
        escape_path(path),
        len,
        entries.len(),
        prefix
    );
    let _ = writeln!(s, "{:>14} {:>14} {:>8} {:>8}  name", "offset", "size", "method", "align");
    for e in &entries {
        let _ = writeln!(
            s,
            "{:>14} {:>14} {:>8} {:>8}  {}",
            e.data_offset,
            e.size,
            e.method,
            human_align(alignment_of(e.data_offset)),
            escape(&e.name)
        );
    }
    if let Some(args) = llamafile_format::bundle::read_args_entry(path)? {
        let _ = writeln!(s, "\n.args:");
        for line in args.lines() {
            let _ = writeln!(s, "  {}", escape(line));
        }
    }
    if entries.iter().any(|e| e.name.to_ascii_lowercase().ends_with(".gguf")) {
        let g = llamafile_format::gguf::GgufFile::open(path)?;
        let _ = writeln!(s, "\nGGUF entry {}:", escape(g.entry().unwrap_or("?")));
        for line in llamafile_format::describe::describe(&g).lines().filter(|l| !l.starts_with("file:")) {
            let _ = writeln!(s, "  {line}");
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamafile_format::gguf::writer::{build, TensorSpec};
    use llamafile_format::gguf::MetaValue;

    fn tiny_gguf(dir: &Path) -> PathBuf {
        let data: Vec<u8> = (0..64u32 * 4).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = build(
            &[
                ("general.architecture", MetaValue::String("llama".into())),
                ("general.name", MetaValue::String("t".into())),
            ],
            &[TensorSpec { name: "w", dims: &[64, 4], ggml_type: 0, data: &data }],
            32,
        );
        let p = dir.join("tiny.gguf");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn runtime() -> PathBuf {
        // Any x86-64/aarch64 executable stands in for the runtime here: this test binary.
        std::env::current_exe().unwrap()
    }

    #[test]
    fn packed_gguf_maps_to_the_same_bytes() {
        let _one = tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let gguf = tiny_gguf(dir.path());
        let out = dir.path().join("t.llamafile");
        let o = PackOptions {
            runtime: runtime(),
            gguf: gguf.clone(),
            out: out.clone(),
            args: Some("-n 4 ...\n".into()),
            extra: vec![],
            force: false,
            progress: false,
            sign: None,
        };
        let r = pack(&o).unwrap();
        assert_eq!(r.gguf_offset % GGUF_ALIGN, 0);
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o755);
        let g = llamafile_format::gguf::GgufFile::open(&out).unwrap();
        assert_eq!(g.file_offset(), r.gguf_offset);
        assert_eq!(g.bytes(), &std::fs::read(&gguf).unwrap()[..]);
        assert_eq!(llamafile_format::bundle::read_args_entry(&out).unwrap().as_deref(), Some("-n 4 ...\n"));
        let listing = list(&out).unwrap();
        assert!(
            listing.contains(&format!("{:>14} {:>14}   Stored", r.gguf_offset, r.gguf_size))
                && listing.contains("-n 4 ...")
                && listing.contains("architecture:    llama"),
            "{listing}"
        );
        // Again without --force: refused, the first output untouched; with --force: replaced.
        let e = pack(&o).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        pack(&PackOptions { force: true, ..o.clone() }).unwrap();
        // Repacking from the llamafile itself (its GGUF entry) into a new file works too.
        let again = dir.path().join("again.llamafile");
        pack(&PackOptions { gguf: out.clone(), out: again.clone(), args: None, ..o.clone() }).unwrap();
        assert_eq!(llamafile_format::gguf::GgufFile::open(&again).unwrap().bytes(), g.bytes());
        // Output = an input: refused even with --force.
        let e = pack(&PackOptions { out: gguf.clone(), force: true, ..o.clone() }).unwrap_err().to_string();
        assert!(e.contains("is the GGUF input"), "{e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "temporary file left: {names:?}");
    }

    #[test]
    fn bad_inputs_leave_nothing() {
        let _one = tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let gguf = tiny_gguf(dir.path());
        let out = dir.path().join("x.llamafile");
        let base = PackOptions {
            runtime: runtime(),
            gguf: gguf.clone(),
            out: out.clone(),
            args: None,
            extra: vec![],
            force: false,
            progress: false,
            sign: None,
        };
        let cases = [
            (PackOptions { runtime: gguf.clone(), ..base.clone() }, "GGUF model, not the runtime"),
            (PackOptions { gguf: runtime(), ..base.clone() }, "not a model"),
            (
                PackOptions { gguf: dir.path().join("missing.gguf"), ..base.clone() },
                "missing.gguf: cannot open: No such file",
            ),
            (PackOptions { args: Some("-p 'unclosed".into()), ..base.clone() }, "never closed"),
        ];
        for (o, want) in cases {
            let e = format!("{:#}", pack(&o).unwrap_err());
            assert!(e.contains(want), "expected {want:?} in {e:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
            assert!(!out.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the input is left");
    }

    #[test]
    fn special_files_are_refused_as_inputs_and_outputs() {
        let _one = tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let gguf = tiny_gguf(dir.path());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let base = PackOptions {
            runtime: runtime(),
            gguf: gguf.clone(),
            out: dir.path().join("x.llamafile"),
            args: None,
            extra: vec![],
            force: false,
            progress: false,
            sign: None,
        };
        let refused = |o: PackOptions| format!("{:#}", pack(&o).unwrap_err());
        let f = fifo.display();
        assert_eq!(
            refused(PackOptions { runtime: fifo.clone(), ..base.clone() }),
            format!("{f}: a FIFO (named pipe), not a regular file: the runtime must be a regular file")
        );
        assert_eq!(
            refused(PackOptions { gguf: fifo.clone(), ..base.clone() }),
            format!("{f}: a FIFO (named pipe), not a regular file: a model must be a regular file")
        );
        assert!(refused(PackOptions { runtime: "/dev/zero".into(), ..base.clone() })
            .starts_with("/dev/zero: a character device, not a regular file"));
        for force in [false, true] {
            assert_eq!(
                refused(PackOptions { out: fifo.clone(), force, ..base.clone() }),
                format!("{f}: a FIFO (named pipe), not a regular file: the output must be a regular file")
            );
            let e = refused(PackOptions { out: sub.clone(), force, ..base.clone() });
            assert!(e.ends_with("sub: a directory, not a regular file: the output must be a regular file"), "{e}");
        }
        // As root, /dev/null is writable and rename would replace it: refused before that.
        let e = refused(PackOptions { out: "/dev/null".into(), force: true, ..base.clone() });
        assert_eq!(e, "/dev/null: a character device, not a regular file: the output must be a regular file");
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["fifo", "sub", "tiny.gguf"], "nothing written");
    }

    #[test]
    fn listing_escapes_names_from_the_file() {
        let _one = tmp_output::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let gguf = tiny_gguf(dir.path());
        let out = dir.path().join("t.llamafile");
        let o = PackOptions {
            runtime: runtime(),
            gguf,
            out: out.clone(),
            args: Some("-p '\x1b]0;owned\x07'\n".into()),
            extra: vec![],
            force: false,
            progress: false,
            sign: None,
        };
        pack(&o).unwrap();
        let listing = list(&out).unwrap();
        assert!(listing.contains("-p '\\x1b]0;owned\\x07'"), "{listing}");
        assert!(!listing.chars().any(|c| c.is_control() && c != '\n'), "{listing:?}");
    }

    #[test]
    fn default_names() {
        assert_eq!(default_out(Path::new("/m/qwen2.5-coder.gguf")), PathBuf::from("qwen2.5-coder.llamafile"));
        assert_eq!(default_out(Path::new("a.zip@dir/x.gguf")), PathBuf::from("x.llamafile"));
        assert_eq!(alignment_of(65536 * 3), 65536);
        assert_eq!(alignment_of(96), 32);
    }
}
