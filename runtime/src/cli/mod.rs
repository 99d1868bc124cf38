//! llama.cpp/llamafile-compatible command line (clap). `.args` from the bundle are merged before
//! parsing. Each mode lives in its own file with `pub fn run(args: &Args) -> anyhow::Result<i32>`:
//! - `info`      `--info` (container, issue #2)
//! - `tokenize`  `--tokenize` (issue #4)
//! - `generate`  prompt, `--chat`, `--eval-tokens`, `--perplexity`, `--bench` (issue #5)
//! - server      no prompt / `--server` (issue #6), in `crate::server`

pub mod generate;
pub mod info;
pub mod tokenize;
pub mod verify;

use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone, Default)]
#[command(name = "llamafile", version, about = "Run a language model from one file", disable_help_subcommand = true)]
pub struct Args {
    /// Model: a .gguf, a zip or llamafile, or archive.zip@name.gguf (default: the weights inside this executable).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Prompt.
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Tokens to generate (-1 = until the end token or the context is full).
    #[arg(short = 'n', long = "n-predict", alias = "max-tokens", default_value_t = -1, allow_hyphen_values = true)]
    pub n_predict: i64,
    /// Context size (0 = the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// RNG seed (-1 = random).
    #[arg(short = 's', long = "seed", default_value_t = -1, allow_hyphen_values = true)]
    pub seed: i64,
    /// Threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Process escapes (\n, \t, \", \\) in the prompt.
    #[arg(short = 'e', long = "escape")]
    pub escape: bool,
    #[arg(long = "no-display-prompt")]
    pub no_display_prompt: bool,
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Interactive conversation using the chat template.
    #[arg(long = "chat", alias = "conversation", alias = "cnv")]
    pub chat: bool,
    /// System prompt for --chat (and the server's default).
    #[arg(long = "system", alias = "system-prompt", alias = "sys")]
    pub system: Option<String>,
    /// Chat template: a built-in name (mistral, chatml, vicuna, gemma, llama3) or a Jinja file.
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    #[arg(long = "verbose", short = 'v')]
    pub verbose: bool,
    #[arg(long = "log-disable")]
    pub log_disable: bool,

    /// Print what the model is and where its weights are, then exit.
    #[arg(long = "info")]
    pub info: bool,
    /// Print the prompt's token ids as a JSON array, then exit.
    #[arg(long = "tokenize")]
    pub tokenize: bool,
    /// With --tokenize: treat special tokens in the text as plain text.
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,

    /// Evaluation: comma-separated token ids; prints top-k logits per position, NLL and greedy tokens as JSON.
    #[arg(long = "eval-tokens")]
    pub eval_tokens: Option<String>,
    /// With --eval-tokens: how many logits per position.
    #[arg(long = "top", default_value_t = 10)]
    pub top: usize,
    /// Perplexity over the text of -f.
    #[arg(long = "perplexity")]
    pub perplexity: bool,
    /// Benchmark: prompt processing of 512 tokens and generation of 128 (pp512/tg128), peak RSS.
    #[arg(long = "bench")]
    pub bench: bool,
    #[arg(long = "bench-pp", default_value_t = 512)]
    pub bench_pp: usize,
    #[arg(long = "bench-tg", default_value_t = 128)]
    pub bench_tg: usize,

    /// Layers to offload to the GPU.
    #[arg(long = "n-gpu-layers", alias = "ngl", alias = "gpu-layers", default_value_t = 0)]
    pub n_gpu_layers: usize,
    /// GPU: auto, cuda or disable.
    #[arg(long = "gpu", default_value = "auto")]
    pub gpu: String,

    /// Serve the chat page and the OpenAI-compatible API.
    #[arg(long = "server")]
    pub server: bool,
    #[arg(long = "host", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long = "port", default_value_t = 8080)]
    pub port: u16,
    /// Do not open a browser when serving.
    #[arg(long = "nobrowser", alias = "no-browser")]
    pub nobrowser: bool,
    /// Server: how many conversations are served at once.
    #[arg(long = "parallel", alias = "np", default_value_t = 2)]
    pub parallel: usize,

    /// Check every zip entry's CRC-32 against its bytes (this file, or -m FILE), then exit.
    #[arg(long = "verify")]
    pub verify: bool,
}

/// llama.cpp spells some long options with one dash (`-ngl 99`, `-sys`, `-cnv`, `-np`): clap
/// only takes one-letter short options, so these are rewritten to their long form first.
fn rewrite_llama_cpp_spellings(args: Vec<OsString>) -> Vec<OsString> {
    const ONE_DASH: &[&str] = &["ngl", "sys", "cnv", "np"];
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(s) if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") && ONE_DASH.contains(&&s[1..]) => {
                OsString::from(format!("-{s}"))
            }
            _ => a,
        })
        .collect()
}

/// Run the program with these arguments (argv[0] included); returns the exit code.
pub fn run(args: Vec<OsString>) -> anyhow::Result<i32> {
    // `.args` embedded in the bundle are merged here (issue #2: crate::bundle).
    let args = crate::bundle::with_embedded_args(args)?;
    let args = rewrite_llama_cpp_spellings(args);
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            // --help / --version print and exit 0; real errors print clap's message and exit 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            e.print()?;
            return Ok(code);
        }
    };
    dispatch(&args)
}

pub fn dispatch(args: &Args) -> anyhow::Result<i32> {
    if args.verify {
        return verify::run(args);
    }
    if args.info {
        return info::run(args);
    }
    if args.tokenize {
        return tokenize::run(args);
    }
    let wants_generation = args.prompt.is_some()
        || args.file.is_some()
        || args.chat
        || args.eval_tokens.is_some()
        || args.perplexity
        || args.bench;
    if wants_generation && !args.server {
        return generate::run(args);
    }
    crate::server::run(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(v: &[&str]) -> Args {
        let v: Vec<OsString> = v.iter().map(OsString::from).collect();
        Args::try_parse_from(rewrite_llama_cpp_spellings(v)).unwrap()
    }
    #[test]
    fn llama_cpp_spellings() {
        let a = parse(&["llamafile", "-m", "x.gguf", "-ngl", "99", "-n", "-1", "-s", "7", "--temp", "0"]);
        assert_eq!(a.n_gpu_layers, 99);
        assert_eq!(a.n_predict, -1);
        assert_eq!(a.seed, 7);
        assert_eq!(a.temp, 0.0);
        assert_eq!(a.model.as_deref(), Some(std::path::Path::new("x.gguf")));
    }
}
