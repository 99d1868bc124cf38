//! Where things are: the workspace, the shared fixtures, the real models, the built binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The shared fixtures (tiny models, vocabularies, reference answers): `../shared` beside the
/// checkout; `LLAMAFILE_SHARED` overrides (`.ci/run` sets it for a clone made elsewhere).
/// Tests call [`crate::require_shared`], which skips when they are absent.
pub fn shared() -> PathBuf {
    match std::env::var_os("LLAMAFILE_SHARED") {
        Some(p) => PathBuf::from(p),
        None => root().parent().unwrap().join("shared"),
    }
}

/// Where `scripts/fetch-model` caches the real models: `$LLAMAFILE_RS_MODELS`, else
/// `~/.cache/llamafile-rs/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LLAMAFILE_RS_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llamafile-rs/models"),
    }
}

/// A binary built by the same `cargo` profile as this test (`target/<profile>/NAME`): the test
/// executable lives in `target/<profile>/deps/`. `scripts/test` builds the binaries first
/// (`cargo build --bins`), since cargo does not build other packages' binaries for tests.
/// `LLAMAFILE_BIN_DIR` runs the suite on binaries from elsewhere (scripts/build-portable's).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = match std::env::var_os("LLAMAFILE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().unwrap().parent().unwrap().to_path_buf(),
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --profile <same> --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A `cdylib` of the workspace built for this test (a dev-dependency), by crate name, e.g.
/// `llamafile_gpu_reference`: in `target/<profile>/deps/` or `target/<profile>/`.
pub fn cdylib(crate_name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}{crate_name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join(&name).exists() {
            return dir.join(&name);
        }
    }
    panic!("{name} not built beside {}", exe.display());
}

/// Copy the executable (or library) `src` to `dst`, ready to run at once.
///
/// The bytes are written by a `cp` child process, never through a file descriptor of this
/// process: tests run in parallel threads and spawn processes, and a child forked while this
/// process holds `dst` open for writing inherits that descriptor until it calls exec. Running
/// `dst` in that window fails with "Text file busy" (ETXTBSY). Writing to a temporary name,
/// closing and renaming does not help, since the inherited descriptor still refers to the same
/// file; only a writer outside this process leaves nothing to inherit.
pub fn copy_executable(src: &Path, dst: &Path) {
    let out = Command::new("cp").arg(src).arg(dst).output().unwrap_or_else(|e| panic!("cannot run cp: {e}"));
    assert!(out.status.success(), "cp {} {}: {}", src.display(), dst.display(), String::from_utf8_lossy(&out.stderr));
    set_executable(dst);
}

/// Write `bytes` (e.g. a shell script) to `dst` as an executable that can be run at once: the
/// bytes go to a side file first and [`copy_executable`] makes `dst` from it (see there why).
pub fn write_executable(dst: &Path, bytes: &[u8]) {
    let mut side = dst.as_os_str().to_owned();
    side.push(".src");
    let side = PathBuf::from(side);
    std::fs::write(&side, bytes).unwrap_or_else(|e| panic!("{}: {e}", side.display()));
    copy_executable(&side, dst);
    std::fs::remove_file(&side).unwrap();
}

/// Write `bytes` to `dst` so that a reader never sees a partial file: to a temporary name unique
/// to this call, then renamed. Tests running at once in one process may write the same fixture;
/// each rename replaces the file whole.
pub fn write_atomically(dst: &Path, bytes: &[u8]) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(format!(".partial.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, dst).unwrap_or_else(|e| panic!("{} -> {}: {e}", tmp.display(), dst.display()));
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}
