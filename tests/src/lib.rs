//! Helpers for the end-to-end tests: where the built binaries and the shared fixtures are.

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `../shared` beside the checkout (CI lays it there too); `LLAMAFILE_SHARED` overrides.
pub fn shared() -> PathBuf {
    if let Ok(p) = std::env::var("LLAMAFILE_SHARED") {
        return PathBuf::from(p);
    }
    root().parent().unwrap().join("shared")
}

/// A binary built by the same `cargo` invocation profile as this test (`target/<profile>/NAME`):
/// the test executable lives in `target/<profile>/deps/`. `scripts/test` builds the binaries
/// first (`cargo build --bins`), since cargo does not build other packages' binaries for tests.
/// `LLAMAFILE_BIN_DIR` runs the suite on binaries from elsewhere (scripts/build-portable's).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = match std::env::var_os("LLAMAFILE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().unwrap().parent().unwrap().to_path_buf(),
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --profile <same> --bins` first (scripts/test does)", p.display());
    p
}
