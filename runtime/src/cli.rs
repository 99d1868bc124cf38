//! llama.cpp-compatible command line (clap). `.args` from the bundle are merged before parsing.

use std::ffi::OsString;

/// Run the program with these arguments (argv[0] included); returns the exit code.
pub fn run(args: Vec<OsString>) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
