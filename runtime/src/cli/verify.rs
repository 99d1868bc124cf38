//! `--verify`: check every zip entry of a llamafile (this executable, or `-m FILE`) against the
//! CRC-32 its central directory records. It reads every byte of every entry, so a flipped bit
//! anywhere in the weights, `.args` or a GPU backend is found. The runtime's own bytes before the
//! zip have no checksum in the format, and the report says so. With `--pubkey KEY.pub` the
//! signature `pack --sign` adds is checked too (see `llamafile_format::signature`), which covers the runtime.

use super::Args;
use anyhow::{bail, Context};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub fn run(args: &Args) -> anyhow::Result<i32> {
    let path = file_to_verify(args.model.as_deref())?;
    // The key first: a bad --pubkey is reported before minutes of reading weights.
    let key = args.pubkey.as_deref().map(llamafile_format::signature::read_public_key).transpose()?;
    // Both checks before anything is printed: a failure is one line on stderr.
    let crc = verify(&path)?;
    let signature = signature_report(&path, key.as_ref())?;
    println!("{crc}\n{signature}");
    Ok(0)
}

/// The signature part of `--verify`: with a key, the checked manifest and who signed it; without
/// one, who the file says signed it (unchecked) or that it is not signed.
fn signature_report(path: &Path, key: Option<&llamafile_format::signature::PublicKey>) -> anyhow::Result<String> {
    let shown = llamafile_format::escape::escape_path(path);
    let entries = llamafile_format::bundle::zip_entries(path)?.unwrap_or_default();
    let Some(key) = key else {
        return Ok(match llamafile_format::signature::signer(path, &entries)? {
            Some(id) => {
                format!("{shown}: signed by key {id} (not checked: give --pubkey KEY.pub to check the signature)")
            }
            None => format!("{shown}: not signed"),
        });
    };
    let signed = llamafile_format::signature::check(path, &entries, key)?;
    let mut s = format!(
        "{shown}: signature OK: key {}, trusted comment: {}\nsigned manifest ({} entry of the file):",
        signed.key_id,
        llamafile_format::escape::escape(&signed.trusted_comment),
        llamafile_format::signature::MANIFEST_ENTRY
    );
    for line in signed.manifest.lines() {
        s.push_str("\n  ");
        s.push_str(&llamafile_format::escape::escape(line));
    }
    Ok(s)
}

/// The file itself: `-m FILE` (for `archive.zip@name.gguf`, the archive), else this executable.
fn file_to_verify(model: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(m) = model else {
        return llamafile_format::bundle::own_executable();
    };
    if !m.exists() {
        if let Some((archive, _)) = m.to_str().and_then(|s| s.rsplit_once('@')) {
            if Path::new(archive).is_file() {
                return Ok(PathBuf::from(archive));
            }
        }
    }
    Ok(m.to_path_buf())
}

/// Check every entry of the zip at the end of `path`; the summary, or an error naming the first
/// entry whose bytes do not match.
pub fn verify(path: &Path) -> anyhow::Result<String> {
    let Some(entries) = llamafile_format::bundle::zip_entries(path)? else {
        bail!(
            "{}: not a llamafile or zip (no zip end record at the end of the file): nothing to verify",
            path.display()
        );
    };
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let mut bytes = 0u64;
    let mut skipped = Vec::new();
    for e in &entries {
        let name = e.name.escape_debug();
        if !e.stored {
            // Only stored entries can be checked without a decompressor; `pack` writes no other.
            skipped.push(format!("'{name}' ({})", e.method));
            continue;
        }
        if e.data_offset.checked_add(e.size).is_none_or(|end| end > len) {
            bail!(
                "{}: entry '{name}' runs past the end of the file ({} bytes at offset {}, file {len} bytes)",
                path.display(),
                e.size,
                e.data_offset
            );
        }
        let crc = crc32_of(&file, e.data_offset, e.size)
            .with_context(|| format!("{}: cannot read entry '{name}'", path.display()))?;
        if crc != e.crc32 {
            bail!(
                "{}: entry '{name}' is corrupt: CRC-32 of its {} bytes is {crc:08x}, the zip records {:08x}",
                path.display(),
                e.size,
                e.crc32
            );
        }
        bytes += e.size;
    }
    let prefix = entries.iter().map(|e| e.header_offset).min().unwrap_or(0);
    let checked = entries.len() - skipped.len();
    let what = if checked == 1 { "entry" } else { "entries" };
    let mut s = format!("{}: OK: CRC-32 of {checked} stored {what} ({bytes} bytes) as recorded", path.display());
    if !skipped.is_empty() {
        s.push_str(&format!("; not checked (compressed): {}", skipped.join(", ")));
    }
    s.push_str(&format!("; the {prefix} bytes before the zip (the runtime) have no checksum"));
    Ok(s)
}

fn crc32_of(file: &File, offset: u64, len: u64) -> std::io::Result<u32> {
    const CHUNK: u64 = 4 << 20;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut h = crc32fast::Hasher::new();
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finalize())
}
