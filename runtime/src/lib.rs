//! The llamafile application: the command line (`cli`) and the local server (`server`), on
//! top of the engine crate (`llamafile_engine`) and the container format (`llamafile_format`).
//! The binary (`main.rs`) only parses arguments, calls `cli::run`, prints the error chain and
//! sets the exit code.

pub mod cli;
pub mod server;
