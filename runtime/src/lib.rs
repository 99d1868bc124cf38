//! The llamafile runtime as a library: the binary (`main.rs`) only parses arguments, calls
//! `cli::run`, prints the error chain and sets the exit code.

pub mod backend;
pub mod bundle;
pub mod cli;
pub mod engine;
pub mod escape;
pub mod gguf;
pub mod grammar;
pub mod input;
pub mod model;
pub mod server;
pub mod signature;
pub mod tokenizer;
