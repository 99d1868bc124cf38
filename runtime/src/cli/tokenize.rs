//! (being written)

use super::Args;

pub fn run(args: &Args) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("tokenize: not implemented yet")
}
