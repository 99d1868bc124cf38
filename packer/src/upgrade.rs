//! `pack --upgrade FILE.llamafile --runtime NEW [-o OUT] [--sign KEY]`: the same llamafile with
//! another runtime. Every entry (weights, `.args`, GPU backends...) is copied byte for byte in
//! its order by `copy_file_range` (reflinked where the filesystem can), with the CRC-32 its
//! central directory records, so nothing is read and a 5 GB file costs what the kernel's copy
//! costs. Offsets are recomputed for the new runtime's size, and every entry whose data was on a
//! page boundary (4 KiB or more) is put on the same boundary again (weights are mapped in place).
//! The old signature no longer covers the file: it is dropped, or replaced with `--sign`.
//! The output is written beside its final path and renamed (over FILE itself without `-o`).

use crate::zip_writer::{Source, ZipWriter};
use crate::{file_id, finish_output, output_place, progress_bar, sign, tmp_output, validate, GGUF_ALIGN};
use anyhow::{bail, Context};
use llamafile_format::escape::{escape, escape_path};
use llamafile_format::input::{open_regular, read_regular, refuse_special};
use std::io::Write;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct UpgradeOptions {
    /// The llamafile to upgrade.
    pub file: PathBuf,
    /// The new runtime executable.
    pub runtime: PathBuf,
    /// Where to write (default: over `file`).
    pub out: Option<PathBuf>,
    /// Replace `out` if it exists (never needed for `file` itself).
    pub force: bool,
    /// Sign the result with this minisign secret key.
    pub sign: Option<PathBuf>,
    pub progress: bool,
}

/// What `--upgrade` did.
#[derive(Clone, Debug)]
pub struct UpgradeReport {
    pub out: PathBuf,
    pub size: u64,
    /// Bytes before the zip in the old file (its runtime and padding).
    pub old_prefix: u64,
    pub runtime: validate::RuntimeInfo,
    /// Entries copied.
    pub entries: usize,
    /// The key ID of the signature that was dropped (not re-signed).
    pub dropped_signature: Option<String>,
    /// The key ID the result is signed with.
    pub signed_by: Option<String>,
}

/// The alignment an entry keeps: the page-or-larger boundary its data was on (64 KiB at most,
/// what `pack` gives the weights); smaller ones are happenstance and not kept.
fn kept_alignment(data_offset: u64) -> u64 {
    let a = if data_offset == 0 { GGUF_ALIGN } else { (1u64 << data_offset.trailing_zeros()).min(GGUF_ALIGN) };
    if a >= 4096 {
        a
    } else {
        1
    }
}

pub fn upgrade(o: &UpgradeOptions) -> anyhow::Result<UpgradeReport> {
    // 1. Inputs, before anything is written.
    let runtime_bytes = read_regular(&o.runtime, "the runtime")?;
    let runtime = validate::check_runtime(&o.runtime, &runtime_bytes)?;
    let key = o.sign.as_deref().map(sign::read_secret_key).transpose()?;
    let src = open_regular(&o.file, "a llamafile")?;
    let shown = escape_path(&o.file);
    let len = src.metadata().with_context(|| format!("{shown}: cannot stat"))?.len();
    let Some(entries) = llamafile_format::bundle::zip_entries(&o.file)? else {
        bail!("{shown}: not a llamafile (no zip at the end of the file): nothing to upgrade");
    };
    if entries.is_empty() {
        bail!("{shown}: its zip has no entries: nothing to upgrade");
    }
    for e in &entries {
        if !e.stored {
            bail!(
                "{shown}: entry '{}' is compressed ({}); only stored entries are copied (repack it with pack)",
                escape(&e.name),
                escape(&e.method)
            );
        }
        if e.data_offset.checked_add(e.size).is_none_or(|end| end > len) {
            bail!(
                "{shown}: entry '{}' runs past the end of the file ({} bytes at offset {}): the file is truncated",
                escape(&e.name),
                e.size,
                e.data_offset
            );
        }
    }
    let old_prefix = entries.iter().map(|e| e.header_offset).min().unwrap_or(0);
    let old_signer = llamafile_format::signature::signer(&o.file, &entries)?;

    // 2. The output: FILE itself by default; another path must not be an input and needs
    //    --force to be replaced.
    // (Through a symlink: the file it points to is replaced, not the link.)
    let out = o.out.clone().unwrap_or_else(|| std::fs::canonicalize(&o.file).unwrap_or_else(|_| o.file.clone()));
    refuse_special(&out, "the output")?;
    if let Some(id) = file_id(&out) {
        if file_id(&o.runtime) == Some(id) {
            bail!("output {} is the runtime input; choose another -o", escape_path(&out));
        }
        if file_id(&o.file) != Some(id) && !o.force {
            bail!("output {} already exists (use --force to replace it)", escape_path(&out));
        }
    }
    let (dir, out_name) = output_place(&out)?;

    // 3. The new runtime, every entry copied in order, the signature if asked; then the rename.
    let (tmp, mut f) = tmp_output::TmpOutput::create(&dir, &out_name)?;
    f.write_all(&runtime_bytes).with_context(|| format!("cannot write {}", escape_path(tmp.path())))?;
    let mut w = ZipWriter::new(f)?;
    let kept: Vec<_> = entries.iter().filter(|e| !llamafile_format::signature::is_signature_entry(&e.name)).collect();
    let total: u64 = kept.iter().map(|e| e.size).sum();
    let bar = o.progress.then(|| progress_bar(total, "copying"));
    let mut before = 0u64;
    for e in &kept {
        let mut progress = |done: u64, _: u64| {
            if let Some(b) = &bar {
                b.set_position(before + done);
            }
        };
        let src = Source::Range { file: &src, offset: e.data_offset, len: e.size };
        w.add_stored_with_crc(&e.name, src, kept_alignment(e.data_offset), e.crc32, &mut progress)?;
        before += e.size;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(key) = &key {
        sign::add_signature(&mut w, key, runtime_bytes.len() as u64)?;
    }
    let size = finish_output(w, tmp, &out)?;
    Ok(UpgradeReport {
        out,
        size,
        old_prefix,
        runtime,
        entries: kept.len(),
        dropped_signature: if key.is_some() { None } else { old_signer },
        signed_by: key.map(|k| k.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_kept_is_a_page_or_more() {
        assert_eq!(kept_alignment(65536 * 7), 65536);
        assert_eq!(kept_alignment(1 << 20), 65536);
        assert_eq!(kept_alignment(4096 * 3), 4096);
        assert_eq!(kept_alignment(8192 + 4096), 4096);
        assert_eq!(kept_alignment(2048), 1);
        assert_eq!(kept_alignment(1234567), 1);
    }
}
