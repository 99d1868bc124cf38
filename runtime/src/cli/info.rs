//! `--info`: what the model is and where its weights are. Opening the GGUF parses the whole
//! tensor table and checks every tensor's range against the mapped length, so a truncated file
//! is reported here as an error.

use super::Args;

pub fn run(args: &Args) -> anyhow::Result<i32> {
    let g = llamafile_format::gguf::GgufFile::open_model(args.model.as_deref())?;
    print!("{}", llamafile_format::describe::describe(&g));
    println!("kernels:         {}", kernels_cpu::kernels().describe());
    Ok(0)
}
