//! The llamafile runtime as a library: the binary (`main.rs`) only parses arguments, calls
//! `cli::run`, prints the error chain and sets the exit code.

/// The shared test fixtures (`../shared` beside the checkout; `LLAMAFILE_SHARED` overrides, as
/// `.ci/run` sets it for a clone made elsewhere). For the tests and the examples.
pub fn shared_fixtures() -> std::path::PathBuf {
    match std::env::var_os("LLAMAFILE_SHARED") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

pub mod backend;
pub mod bundle;
pub mod cli;
pub mod engine;
pub mod gguf;
pub mod grammar;
pub mod model;
pub mod server;
pub mod tokenizer;
