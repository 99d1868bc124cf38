//! `--tokenize`: print the prompt's token ids as a JSON array on one line, like
//! `llama-tokenize --ids` (`[1, 22557, 1526]`). The BOS is added as the model's metadata says;
//! special tokens written in the text are recognised unless `--no-parse-special`. The prompt comes
//! from `-p TEXT` or `-f FILE` (with `-e`, `\n`-style escapes are processed). `--verbose` also
//! prints each id with its vocabulary text on stderr.

use super::Args;
use anyhow::{bail, Context, Result};
use llamafile_engine::tokenizer::Tokenizer;
use std::fmt::Write as _;

pub fn run(args: &Args) -> Result<i32> {
    let text = prompt_text(args)?;
    let g = llamafile_format::gguf::GgufFile::open_model(args.model.as_deref())?;
    let tok = Tokenizer::from_gguf(&g)?;
    let ids = tok.encode(&text, true, !args.no_parse_special)?;
    if args.verbose {
        for &id in &ids {
            eprintln!("{id:6} -> {:?}", tok.token_text(id));
        }
    }
    println!("{}", format_ids(&ids));
    Ok(0)
}

fn prompt_text(args: &Args) -> Result<String> {
    let text = match (&args.prompt, &args.file) {
        (Some(_), Some(_)) => bail!("--tokenize takes one prompt: -p TEXT or -f FILE, not both"),
        (Some(p), None) => p.clone(),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading the prompt file {}", f.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the prompt file {} is not valid UTF-8 (at byte {})",
                    f.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        (None, None) => bail!("--tokenize needs a prompt: -p TEXT or -f FILE"),
    };
    Ok(if args.escape { super::generate::process_escapes(&text) } else { text })
}

/// `[1, 22557, 1526]`: the format `llama-tokenize --ids` prints (and valid JSON).
pub fn format_ids(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 7 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{id}");
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_like_llama_tokenize() {
        assert_eq!(format_ids(&[]), "[]");
        assert_eq!(format_ids(&[1]), "[1]");
        assert_eq!(format_ids(&[1, 22557, 1526]), "[1, 22557, 1526]");
        let parsed: Vec<u32> = serde_json::from_str(&format_ids(&[5, 6])).unwrap();
        assert_eq!(parsed, [5, 6]);
    }
}
