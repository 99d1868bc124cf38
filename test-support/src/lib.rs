//! What every crate's tests share: where the shared fixtures, the real models and the built
//! binaries are, skips that are recorded (not hidden as `ok`), a small HTTP client, and copies
//! of executables that can be run at once.
//!
//! A test that needs something absent returns early through one of the `require_*` functions:
//! the skip is printed and appended to the file `$LLAMAFILE_SKIP_LOG` names (set by
//! `scripts/test`, which counts the skips at the end of the run and, under CI, fails on them).

pub mod http;
mod paths;
mod skip;

pub use paths::{bin, cdylib, copy_executable, models_dir, root, shared, write_atomically, write_executable};
pub use skip::{require_model, require_shared, skip, skip_without_gpu};
