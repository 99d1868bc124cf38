//! Opening the files a user names. Models, runtimes and other packed inputs must be regular
//! files: they are opened without blocking (a FIFO with no writer would otherwise hang the open)
//! and anything else (FIFO, device such as /dev/zero, socket, directory) is refused at once.
//! Text inputs (prompts) may come from pipes, so they are read with a size cap instead.
//! Errors name the path first, once: `PATH: cannot open: No such file or directory`.

use crate::escape::escape_path;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a file that is not a regular file is, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// `Err` naming what `path` is when it exists and is not a regular file (symlinks followed);
/// `Ok` when it is one or does not exist.
pub fn refuse_special(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            bail!("{}: {}, not a regular file: {what} must be a regular file", escape_path(path), kind(m.file_type()))
        }
        _ => Ok(()),
    }
}

/// Open `path` for reading, refusing anything but a regular file without ever blocking.
/// `what` says what the file is for ("a model", "the runtime").
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("{}: cannot open", escape_path(path)))?;
    let meta = file.metadata().with_context(|| format!("{}: cannot stat", escape_path(path)))?;
    if !meta.is_file() {
        bail!("{}: {}, not a regular file: {what} must be a regular file", escape_path(path), kind(meta.file_type()));
    }
    Ok(file)
}

/// The whole regular file at `path` (see [`open_regular`]).
pub fn read_regular(path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut f = open_regular(path, what)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).with_context(|| format!("{}: cannot read", escape_path(path)))?;
    Ok(buf)
}

/// The UTF-8 text of `path` (a file, a pipe, a device), read up to `max` bytes: a longer input is
/// an error naming `why` the limit is what it is, so that `-f /dev/zero` fails at once instead
/// of filling memory.
pub fn read_text_capped(path: &Path, max: u64, why: &str) -> Result<String> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", escape_path(path)))?;
    let mut buf = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .with_context(|| format!("{}: cannot read", escape_path(path)))?;
    if buf.len() as u64 > max {
        bail!("{}: more than {max} bytes: {why}", escape_path(path));
    }
    String::from_utf8(buf).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (invalid byte at {})", escape_path(path), e.utf8_error().valid_up_to())
    })
}

/// Bytes of prompt text per token of context accepted from a file: tokens average about 4
/// bytes of text, so 16 leaves room for text that tokenizes poorly.
pub const PROMPT_BYTES_PER_TOKEN: u64 = 16;

/// Largest text file read whole (perplexity corpora), independent of the context.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// A prompt file (`-f`) for a context of `n_ctx` tokens: at most
/// `PROMPT_BYTES_PER_TOKEN * n_ctx` bytes plus 4 KiB, since a longer prompt cannot fit anyway.
pub fn read_prompt_file(path: &Path, n_ctx: usize) -> Result<String> {
    let max = PROMPT_BYTES_PER_TOKEN.saturating_mul(n_ctx as u64).saturating_add(4096);
    read_text_capped(
        path,
        max,
        &format!("a prompt for a context of {n_ctx} tokens cannot be that long (use a larger -c)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let e = format!("{:#}", open_regular(&fifo, "a model").unwrap_err());
        assert_eq!(
            e,
            format!("{}: a FIFO (named pipe), not a regular file: a model must be a regular file", fifo.display())
        );
        let e = format!("{:#}", open_regular(Path::new("/dev/zero"), "the runtime").unwrap_err());
        assert!(e.starts_with("/dev/zero: a character device, not a regular file"), "{e}");
        let e = format!("{:#}", open_regular(dir.path(), "a model").unwrap_err());
        assert!(e.contains(": a directory, not a regular file"), "{e}");
        assert!(refuse_special(&fifo, "the output").is_err());
        assert!(refuse_special(&dir.path().join("absent"), "the output").is_ok());
        let e = format!("{:#}", open_regular(&dir.path().join("absent"), "a model").unwrap_err());
        assert_eq!(
            e,
            format!("{}: cannot open: No such file or directory (os error 2)", dir.path().join("absent").display())
        );
    }

    #[test]
    fn text_is_read_up_to_the_cap() {
        let e = format!("{:#}", read_text_capped(Path::new("/dev/zero"), 1000, "too long").unwrap_err());
        assert_eq!(e, "/dev/zero: more than 1000 bytes: too long");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.txt");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read_text_capped(&p, 5, "").unwrap(), "hello");
        assert!(read_text_capped(&p, 4, "").is_err());
    }
}
