//! The chat page and the OpenAI-compatible HTTP API (issue #6). Talks to `crate::engine` only.

pub fn run(args: &crate::cli::Args) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("server: not implemented yet")
}
