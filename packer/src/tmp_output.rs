//! The temporary file `pack` writes before renaming it over the output, and its removal on
//! SIGINT/SIGTERM/SIGHUP. The path is registered with the signal handler *before* the file is
//! created, so there is no moment when the file exists and a signal would leave it behind. The
//! GGUF `pack --hf` converts into a private directory before packing it is a second slot
//! ([`TmpDirForSignal`]): the file and its directory, removed by the same handler.

use anyhow::Context;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The temporary output being written, as a NUL-terminated path for the signal handler (null
/// when none). A raw pointer in an atomic: all that an async-signal-safe handler may touch.
static TMP_FOR_SIGNAL: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
/// The temporary GGUF of `pack --hf` and its directory, the same way.
static TMP_GGUF_FOR_SIGNAL: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static TMP_DIR_FOR_SIGNAL: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// SIGINT/SIGTERM/SIGHUP while packing: remove the temporary output (nothing half-written is
/// left behind, not even hidden), then die of the same signal (the default action).
extern "C" fn remove_tmp_and_reraise(sig: libc::c_int) {
    let p = TMP_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst);
    let gguf = TMP_GGUF_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst);
    let dir = TMP_DIR_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: unlink, rmdir, signal and raise are async-signal-safe; each pointer is null or a
    // NUL-terminated path leaked by a registration, never freed while registered (swapped out
    // first).
    unsafe {
        for f in [p, gguf] {
            if !f.is_null() {
                libc::unlink(f);
            }
        }
        if !dir.is_null() {
            libc::rmdir(dir);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// For the `pack` command: on SIGINT, SIGTERM or SIGHUP during `pack`, remove the temporary
/// output before exiting. (A library user that handles these signals itself should not call it.)
pub fn remove_partial_output_on_signal() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe { libc::signal(sig, remove_tmp_and_reraise as *const () as libc::sighandler_t) };
    }
}

fn register(path: &Path) {
    register_in(&TMP_FOR_SIGNAL, path);
}

fn unregister() {
    free_path(TMP_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst));
}

fn register_in(slot: &AtomicPtr<libc::c_char>, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        free_path(slot.swap(c.into_raw(), Ordering::SeqCst));
    }
}

/// While alive, a signal removes the file `file` and the directory `dir` (which holds nothing
/// else): `pack --hf`'s converted GGUF. Registered before either is created; dropping it
/// unregisters them (the owner removes them then).
pub struct TmpDirForSignal(());

impl TmpDirForSignal {
    pub fn register(dir: &Path, file: &Path) -> TmpDirForSignal {
        register_in(&TMP_DIR_FOR_SIGNAL, dir);
        register_in(&TMP_GGUF_FOR_SIGNAL, file);
        TmpDirForSignal(())
    }
}

impl Drop for TmpDirForSignal {
    fn drop(&mut self) {
        free_path(TMP_GGUF_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst));
        free_path(TMP_DIR_FOR_SIGNAL.swap(std::ptr::null_mut(), Ordering::SeqCst));
    }
}

fn free_path(p: *mut libc::c_char) {
    if !p.is_null() {
        // SAFETY: every non-null pointer stored in TMP_FOR_SIGNAL came from `CString::into_raw`
        // and was swapped out of it before this call, so it is freed exactly once.
        drop(unsafe { std::ffi::CString::from_raw(p) });
    }
}

/// Serializes the tests that create temporary outputs (the registration is process-wide).
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The path the signal handler would remove now.
#[cfg(test)]
fn registered() -> Option<PathBuf> {
    let p = TMP_FOR_SIGNAL.load(Ordering::SeqCst);
    // SAFETY: read while registered; the tests that call this run `create_with` on one thread.
    (!p.is_null()).then(|| PathBuf::from(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()))
}

/// A temporary file beside the output: removed when dropped (any error) or on a signal, unless
/// [`TmpOutput::persist`] renamed it over the output.
pub struct TmpOutput {
    path: PathBuf,
    done: bool,
}

impl TmpOutput {
    /// `.NAME.PID-N.tmp` in `dir`, created new (mode 0600 until the caller sets it).
    pub fn create(dir: &Path, out_name: &str) -> anyhow::Result<(TmpOutput, File)> {
        Self::create_with(dir, out_name, &mut |p| {
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(p)
        })
    }

    /// `create`, with the function that makes the file (the tests check what is registered when
    /// it runs).
    fn create_with(
        dir: &Path,
        out_name: &str,
        open: &mut dyn FnMut(&Path) -> std::io::Result<File>,
    ) -> anyhow::Result<(TmpOutput, File)> {
        let pid = std::process::id();
        for n in 0..1000 {
            let path = dir.join(format!(".{out_name}.{pid}-{n}.tmp"));
            // Registered first: a signal from here on removes the file if it was created.
            register(&path);
            match open(&path) {
                Ok(f) => return Ok((TmpOutput { path, done: false }, f)),
                Err(e) => {
                    unregister();
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e).with_context(|| {
                            format!("cannot create a temporary file in {}", llamafile_format::escape::escape_path(dir))
                        });
                    }
                }
            }
        }
        anyhow::bail!(
            "cannot create a temporary file in {}: every name is taken",
            llamafile_format::escape::escape_path(dir)
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rename the file over `out`.
    pub fn persist(mut self, out: &Path) -> anyhow::Result<()> {
        std::fs::rename(&self.path, out).with_context(|| {
            format!("cannot rename the temporary file to {}", llamafile_format::escape::escape_path(out))
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TmpOutput {
    fn drop(&mut self) {
        unregister();
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_registered_before_the_file_exists_and_removed_after() {
        let _one = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let (tmp, _f) = TmpOutput::create_with(dir.path(), "x.llamafile", &mut |p| {
            // When the file is about to be created, the handler already knows it.
            seen.push((registered(), p.exists()));
            std::fs::OpenOptions::new().write(true).create_new(true).open(p)
        })
        .unwrap();
        assert_eq!(seen, [(Some(tmp.path().to_path_buf()), false)]);
        assert_eq!(registered().as_deref(), Some(tmp.path()));
        let path = tmp.path().to_path_buf();
        drop(tmp);
        assert_eq!(registered(), None);
        assert!(!path.exists(), "dropped without persist: removed");
        // A name already taken is skipped, and left alone.
        let taken = dir.path().join(format!(".y.{}-0.tmp", std::process::id()));
        std::fs::write(&taken, "someone else's").unwrap();
        let (tmp, _f) = TmpOutput::create(dir.path(), "y").unwrap();
        assert_ne!(tmp.path(), taken);
        let out = dir.path().join("y");
        tmp.persist(&out).unwrap();
        assert!(out.exists() && taken.exists());
        assert_eq!(registered(), None);
    }
}
