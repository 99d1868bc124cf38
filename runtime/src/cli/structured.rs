//! `--grammar`, `--grammar-file`, `--json-schema` (`-j`) and `--json-schema-file` (`-jf`), as in
//! llama.cpp: the generated text (each reply, in `--chat`) must match a GBNF grammar or a JSON
//! Schema (see `llamafile_engine::grammar`).

use super::Args;
use anyhow::{anyhow, Context, Result};
use llamafile_engine::grammar::Grammar;
use std::path::Path;

/// The grammar the options ask for, checked; `None` when none is given (clap refuses two).
pub fn grammar(args: &Args) -> Result<Option<Grammar>> {
    let read = |p: &Path, opt: &str| {
        std::fs::read_to_string(p).with_context(|| format!("{opt} {}: cannot read the file", p.display()))
    };
    let g = if let Some(src) = &args.grammar {
        Grammar::gbnf(src).context("--grammar")?
    } else if let Some(p) = &args.grammar_file {
        Grammar::gbnf(&read(p, "--grammar-file")?).with_context(|| format!("--grammar-file {}", p.display()))?
    } else if let Some(s) = &args.json_schema {
        schema(s).context("--json-schema")?
    } else if let Some(p) = &args.json_schema_file {
        schema(&read(p, "--json-schema-file")?).with_context(|| format!("--json-schema-file {}", p.display()))?
    } else {
        return Ok(None);
    };
    Ok(Some(g.with_fast_forward(!args.no_grammar_fast_forward)))
}

fn schema(text: &str) -> Result<Grammar> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    Grammar::json_schema(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(v: &[&str]) -> std::result::Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("llamafile").chain(v.iter().copied()))
    }

    #[test]
    fn options_give_a_checked_grammar() {
        assert!(grammar(&parse(&[]).unwrap()).unwrap().is_none());
        assert!(grammar(&parse(&["--grammar", "root ::= \"a\"\n"]).unwrap()).unwrap().is_some());
        assert!(grammar(&parse(&["-j", "{\"type\": \"integer\"}"]).unwrap()).unwrap().is_some());
        assert!(grammar(&parse(&["-j", "{}"]).unwrap()).unwrap().unwrap().fast_forward());
        assert!(!grammar(&parse(&["-j", "{}", "--no-grammar-fast-forward"]).unwrap()).unwrap().unwrap().fast_forward());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(&f, "{\"type\": \"object\", \"uniqueItems\": true}").unwrap();
        let e = grammar(&parse(&["--json-schema-file", f.to_str().unwrap()]).unwrap()).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("--json-schema-file ") && e.contains("uniqueItems"), "{e}");
        let e = format!("{:#}", grammar(&parse(&["--grammar", "root ::= (\"a\""]).unwrap()).unwrap_err());
        assert!(e.starts_with("--grammar: grammar: line 1, column"), "{e}");
        let e = format!("{:#}", grammar(&parse(&["--json-schema", "{nope"]).unwrap()).unwrap_err());
        assert!(e.starts_with("--json-schema: not valid JSON"), "{e}");
        let e = format!("{:#}", grammar(&parse(&["--grammar-file", "/nonexistent.gbnf"]).unwrap()).unwrap_err());
        assert!(e.starts_with("--grammar-file /nonexistent.gbnf: cannot read the file"), "{e}");
        // one constraint at a time
        assert!(parse(&["--grammar", "root ::= \"a\"", "-j", "{}"]).is_err());
    }
}
