//! llama.cpp/llamafile-compatible command line (clap). `.args` from the bundle are merged before
//! parsing, and llama.cpp's spellings rewritten (`spelling`). Each mode lives in its own file
//! with `pub fn run(args: &Args) -> anyhow::Result<i32>`:
//! - `info`      `--info`
//! - `verify`    `--verify [--pubkey KEY.pub]`
//! - `doctor`    `--doctor`
//! - `tokenize`  `--tokenize`
//! - `generate`  prompt, conversation, `--eval-tokens`, `--perplexity`, `--bench`
//! - server      no prompt / `--server`, in `crate::server`

pub mod conversation;
pub mod doctor;
pub mod generate;
pub mod info;
pub mod serve;
mod spelling;
pub mod structured;
pub mod tokenize;
pub mod verify;

use clap::{CommandFactory, FromArgMatches, Parser};
use llamafile_engine::sampler::{limits, SamplingOptions};
use llamafile_engine::SamplingParams;
use std::ffi::OsString;
use std::path::PathBuf;

/// `--version`: the package version and the commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LLAMAFILE_GIT_COMMIT"), ")");

const ABOUT: &str = "Run a language model from one file.

With no prompt (no -p, -f, --chat...), llamafile serves the chat page and an OpenAI-compatible \
API on http://127.0.0.1:8080 and opens the page in the browser. With -p and a model that has a \
chat template, the prompt is one user turn and the answer is printed (--no-conversation for raw \
text completion).

Options llama.cpp spells with one dash are taken as it spells them (-ngl, -cnv, -sys, -fa...), \
and underscores as dashes (--ctx_size). Given twice, an option's last value wins: arguments \
after those of the bundle's .args override them.";

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "llamafile",
    version = VERSION,
    about = ABOUT,
    disable_help_subcommand = true,
    args_override_self = true,
    max_term_width = 100
)]
pub struct Args {
    // ---- Model
    /// Model: a .gguf, a zip or llamafile, or archive.zip@name.gguf (default: the weights inside this executable).
    #[arg(short = 'm', long = "model", help_heading = "Model")]
    pub model: Option<PathBuf>,
    /// Chat template: a built-in name (mistral, chatml, vicuna, gemma, llama3), a Jinja file or Jinja text (default: the model's).
    #[arg(long = "chat-template", alias = "chat-template-file", help_heading = "Model")]
    pub chat_template: Option<String>,
    /// Accepted for llama.cpp compatibility: chat templates are always Jinja here.
    #[arg(long = "jinja", help_heading = "Model")]
    pub jinja: bool,
    /// Context size in tokens (0 = the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0, value_parser = count, allow_negative_numbers = true, help_heading = "Model")]
    pub ctx_size: usize,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = positive, allow_negative_numbers = true, help_heading = "Model")]
    pub batch_size: usize,
    /// Physical batch size (no effect here: one batch size is used).
    #[arg(long = "ubatch-size", value_name = "N", help_heading = "Model")]
    pub ubatch_size: Option<String>,
    /// Threads (default: all cores).
    #[arg(short = 't', long = "threads", value_parser = positive, allow_negative_numbers = true, help_heading = "Model")]
    pub threads: Option<usize>,
    /// Threads for prompt processing (no effect here: --threads is used for both).
    #[arg(long = "threads-batch", value_name = "N", allow_negative_numbers = true, help_heading = "Model")]
    pub threads_batch: Option<String>,
    /// Lock the model in memory (no effect here).
    #[arg(long = "mlock", help_heading = "Model")]
    pub mlock: bool,
    /// Read the model instead of mapping it (no effect here: the weights are always mapped).
    #[arg(long = "no-mmap", help_heading = "Model")]
    pub no_mmap: bool,
    /// Print what the model is and where its weights are, then exit.
    #[arg(long = "info", help_heading = "Model")]
    pub info: bool,
    /// Print the prompt's token ids as a JSON array, then exit.
    #[arg(long = "tokenize", help_heading = "Model")]
    pub tokenize: bool,
    /// With --tokenize: treat special tokens in the text as plain text.
    #[arg(long = "no-parse-special", help_heading = "Model")]
    pub no_parse_special: bool,

    // ---- Generation
    /// Prompt. With a chat template it is one user turn (see --no-conversation).
    #[arg(short = 'p', long = "prompt", allow_hyphen_values = true, help_heading = "Generation")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", help_heading = "Generation")]
    pub file: Option<PathBuf>,
    /// System prompt of the conversation (and the server's default).
    #[arg(long = "system-prompt", alias = "system", allow_hyphen_values = true, help_heading = "Generation")]
    pub system: Option<String>,
    /// Read the system prompt from a file.
    #[arg(long = "system-prompt-file", help_heading = "Generation")]
    pub system_file: Option<PathBuf>,
    /// Tokens to generate (-1 or -2 = until an end token or the context is full).
    #[arg(short = 'n', long = "n-predict", aliases = ["predict", "max-tokens"], default_value_t = -1, value_parser = n_predict, allow_negative_numbers = true, help_heading = "Generation")]
    pub n_predict: i64,
    /// Interactive conversation through the chat template (the default with -p when the model has a template).
    #[arg(long = "conversation", aliases = ["chat", "cnv"], overrides_with = "no_conversation", help_heading = "Generation")]
    pub chat: bool,
    /// Raw text completion of the prompt, without the chat template.
    #[arg(long = "no-conversation", alias = "raw", overrides_with = "chat", help_heading = "Generation")]
    pub no_conversation: bool,
    /// Interactive: after the answer, read the next turn from the terminal (as --conversation).
    #[arg(short = 'i', long = "interactive", help_heading = "Generation")]
    pub interactive: bool,
    /// Interactive, waiting for the user before generating anything (as --conversation).
    #[arg(long = "interactive-first", help_heading = "Generation")]
    pub interactive_first: bool,
    /// In a conversation: answer one turn, then exit.
    #[arg(long = "single-turn", help_heading = "Generation")]
    pub single_turn: bool,
    /// Stop generating at this text (may be given several times).
    #[arg(short = 'r', long = "reverse-prompt", value_name = "TEXT", action = clap::ArgAction::Append, allow_hyphen_values = true, help_heading = "Generation")]
    pub reverse_prompt: Vec<String>,
    /// Text put before each user input of a conversation.
    #[arg(long = "in-prefix", value_name = "TEXT", allow_hyphen_values = true, help_heading = "Generation")]
    pub in_prefix: Option<String>,
    /// Text put after each user input of a conversation.
    #[arg(long = "in-suffix", value_name = "TEXT", allow_hyphen_values = true, help_heading = "Generation")]
    pub in_suffix: Option<String>,
    /// Process escapes (\n, \t, \", \\) in the prompt.
    #[arg(short = 'e', long = "escape", help_heading = "Generation")]
    pub escape: bool,
    /// Do not print the prompt before the generated text (raw completion).
    #[arg(long = "no-display-prompt", help_heading = "Generation")]
    pub no_display_prompt: bool,
    /// Read the conversation's input as plain lines, without line editing.
    #[arg(long = "simple-io", help_heading = "Generation")]
    pub simple_io: bool,
    /// Colored output (no effect here: output is plain text).
    #[arg(long = "color", value_name = "on|off|auto", num_args = 0..=1, default_missing_value = "on", help_heading = "Generation")]
    pub color: Option<String>,
    /// Skip the warm-up run (no effect here: there is none).
    #[arg(long = "no-warmup", help_heading = "Generation")]
    pub no_warmup: bool,
    /// More logs: prompt token ids, timings of every conversation turn, GPU details.
    #[arg(long = "verbose", short = 'v', help_heading = "Generation")]
    pub verbose: bool,
    /// No logs on stderr: only the generated text on stdout.
    #[arg(long = "log-disable", help_heading = "Generation")]
    pub log_disable: bool,

    // ---- Sampling
    /// Temperature (0 = greedy).
    #[arg(long = "temp", alias = "temperature", default_value_t = 0.8, value_parser = temperature, allow_negative_numbers = true, help_heading = "Sampling")]
    pub temp: f32,
    /// Top-k sampling (0 = off).
    #[arg(long = "top-k", default_value_t = 40, value_parser = top_k, allow_negative_numbers = true, help_heading = "Sampling")]
    pub top_k: usize,
    /// Top-p (nucleus) sampling (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95, value_parser = top_p, allow_negative_numbers = true, help_heading = "Sampling")]
    pub top_p: f32,
    /// Min-p sampling: drop tokens below this fraction of the likeliest one's probability (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05, value_parser = min_p, allow_negative_numbers = true, help_heading = "Sampling")]
    pub min_p: f32,
    /// Penalty for repeating the last --repeat-last-n tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0, value_parser = repeat_penalty, allow_negative_numbers = true, help_heading = "Sampling")]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at (0 = off).
    #[arg(long = "repeat-last-n", default_value_t = 64, value_parser = repeat_last_n, allow_negative_numbers = true, help_heading = "Sampling")]
    pub repeat_last_n: usize,
    /// RNG seed (-1 = random).
    #[arg(short = 's', long = "seed", default_value_t = -1, value_parser = seed, allow_negative_numbers = true, help_heading = "Sampling")]
    pub seed: i64,
    /// Keep generating after an end token.
    #[arg(long = "ignore-eos", help_heading = "Sampling")]
    pub ignore_eos: bool,

    // ---- Measurement
    /// Evaluation: comma-separated token ids; prints top-k logits per position, NLL and greedy tokens as JSON.
    #[arg(long = "eval-tokens", help_heading = "Measurement")]
    pub eval_tokens: Option<String>,
    /// With --eval-tokens: how many logits per position.
    #[arg(long = "top", default_value_t = 10, help_heading = "Measurement")]
    pub top: usize,
    /// Perplexity over the text of -f.
    #[arg(long = "perplexity", help_heading = "Measurement")]
    pub perplexity: bool,
    /// Benchmark: prompt processing of 512 tokens and generation of 128 (pp512/tg128), peak RSS.
    #[arg(long = "bench", help_heading = "Measurement")]
    pub bench: bool,
    /// With --bench: prompt tokens.
    #[arg(long = "bench-pp", default_value_t = 512, help_heading = "Measurement")]
    pub bench_pp: usize,
    /// With --bench: generated tokens.
    #[arg(long = "bench-tg", default_value_t = 128, help_heading = "Measurement")]
    pub bench_tg: usize,

    // ---- model architectures
    /// Full attention on every layer: ignore a sliding window the model declares
    /// (`<arch>.attention.sliding_window`, e.g. Mistral 7B v0.1). The reference engine ignores
    /// it for llama-architecture files anyway; this gives its answers there.
    #[arg(long = "swa-full", help_heading = "Generation")]
    pub swa_full: bool,

    // ---- GPU
    /// Layers to offload to the GPU.
    #[arg(long = "n-gpu-layers", alias = "gpu-layers", default_value_t = 0, value_parser = count, allow_negative_numbers = true, help_heading = "GPU")]
    pub n_gpu_layers: usize,
    /// GPU: auto, cuda or disable.
    #[arg(long = "gpu", default_value = "auto", help_heading = "GPU")]
    pub gpu: String,
    /// The GPU to use (no effect here: the first one is used).
    #[arg(long = "main-gpu", value_name = "N", help_heading = "GPU")]
    pub main_gpu: Option<String>,
    /// Split over several GPUs (no effect here: one GPU is used).
    #[arg(long = "tensor-split", value_name = "N0,N1,...", help_heading = "GPU")]
    pub tensor_split: Option<String>,
    /// How to split over several GPUs (no effect here: one GPU is used).
    #[arg(long = "split-mode", value_name = "none|layer|row", help_heading = "GPU")]
    pub split_mode: Option<String>,
    /// Devices to use (no effect here: see --gpu).
    #[arg(long = "device", value_name = "DEV", help_heading = "GPU")]
    pub device: Option<String>,
    /// Flash attention (no effect here: the engine's own attention is used).
    #[arg(long = "flash-attn", value_name = "on|off|auto", num_args = 0..=1, default_missing_value = "on", help_heading = "GPU")]
    pub flash_attn: Option<String>,

    // ---- Server
    /// Serve the chat page and the OpenAI-compatible API (the default without a prompt).
    #[arg(long = "server", help_heading = "Server")]
    pub server: bool,
    /// Address to listen on.
    #[arg(long = "host", default_value = "127.0.0.1", help_heading = "Server")]
    pub host: String,
    /// Port to listen on (the next free one if it is taken).
    #[arg(long = "port", default_value_t = 8080, help_heading = "Server")]
    pub port: u16,
    /// Do not open a browser when serving.
    #[arg(long = "nobrowser", alias = "no-browser", help_heading = "Server")]
    pub nobrowser: bool,
    /// How many conversations are served at once.
    #[arg(long = "parallel", default_value_t = 2, value_parser = positive, allow_negative_numbers = true, help_heading = "Server")]
    pub parallel: usize,

    // Server
    /// Server: the model's name in the API (/v1/models, each response's "model"; default: the model file's name without extension).
    #[arg(long = "alias", short = 'a', value_name = "NAME", help_heading = "Server")]
    pub alias: Option<String>,
    /// Server: let web pages from ORIGIN (e.g. http://localhost:3000; * for any) use the API. Repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN", help_heading = "Server")]
    pub cors_origin: Vec<String>,
    /// Server: seconds a connection has to send a request's headers (and body) after it opens or after its previous response; idle connections close then.
    #[arg(long = "header-timeout", value_name = "SECONDS", help_heading = "Server", default_value_t = crate::server::listen::DEFAULT_HEADER_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Server: most connections served at once; more are answered 503 (lowered to fit the open-file limit).
    #[arg(long = "max-connections", value_name = "N", help_heading = "Server", default_value_t = crate::server::listen::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    // Embeddings (see `server::embeddings`): the endpoints are always on.
    /// Accepted for llama.cpp compatibility: /v1/embeddings and /embedding are always served.
    #[arg(long = "embedding", alias = "embeddings", help_heading = "Embeddings")]
    pub embedding: bool,
    /// Pooling of the token vectors into one embedding: none (one per token), mean, cls (first token), last (default: the model's, else mean).
    #[arg(long = "pooling", value_name = "none|mean|cls|last", value_parser = pooling, help_heading = "Embeddings")]
    pub pooling: Option<llamafile_engine::embed::Pooling>,
    /// Normalization of embeddings: -1 none, 0 max absolute (int16 range), 1 taxicab, 2 euclidean (default), N > 2 p-norm.
    #[arg(long = "embd-normalize", value_name = "N", allow_negative_numbers = true, help_heading = "Embeddings")]
    pub embd_normalize: Option<i32>,
    // Server: metrics and API keys (server/metrics.rs, server/auth.rs)
    /// Server: serve Prometheus metrics at /metrics (llama.cpp's metric names).
    #[arg(long = "metrics", help_heading = "Server")]
    pub metrics: bool,
    /// Server: requests must carry this key (Authorization: Bearer KEY, or x-api-key: KEY); several comma-separated, or repeat the flag. /health and the chat page are open.
    #[arg(long = "api-key", value_name = "KEY", help_heading = "Server")]
    pub api_key: Vec<String>,
    /// Server: a file of API keys, one per line (as --api-key). Repeatable.
    #[arg(long = "api-key-file", value_name = "FILE", help_heading = "Server")]
    pub api_key_file: Vec<PathBuf>,

    // Structured output (see `structured`): what the generated text must match.
    /// A GBNF grammar (llama.cpp syntax, start rule `root`) the output must match.
    #[arg(long = "grammar", group = "structured", help_heading = "Structured output")]
    pub grammar: Option<String>,
    /// A file with a GBNF grammar.
    #[arg(long = "grammar-file", group = "structured", help_heading = "Structured output")]
    pub grammar_file: Option<PathBuf>,
    /// A JSON Schema the output must match, e.g. '{}' for any JSON object.
    #[arg(short = 'j', long = "json-schema", group = "structured", help_heading = "Structured output")]
    pub json_schema: Option<String>,
    /// A file with a JSON Schema (`-jf`).
    #[arg(long = "json-schema-file", group = "structured", help_heading = "Structured output")]
    pub json_schema_file: Option<PathBuf>,
    /// Evaluate the text a grammar forces one token at a time instead of ahead in one batch (the
    /// output is the same; for measuring the fast-forward).
    #[arg(long = "no-grammar-fast-forward", help_heading = "Structured output")]
    pub no_grammar_fast_forward: bool,

    // Integrity
    /// Check every zip entry's CRC-32 against its bytes (this file, or -m FILE), then exit.
    #[arg(long = "verify", help_heading = "Model")]
    pub verify: bool,

    // Distribution: signatures and the bug-report summary
    /// With --verify: also check the file's signature (`pack --sign`) with this minisign public key (NAME.pub).
    #[arg(long = "pubkey", value_name = "NAME.pub", requires = "verify", help_heading = "Model")]
    pub pubkey: Option<PathBuf>,
    /// Print what a bug report needs (CPU and kernels, memory for the model at -c, GPU backends searched, the file's integrity and signature, binfmt_misc), then exit. No network.
    #[arg(long = "doctor", help_heading = "Model")]
    pub doctor: bool,
}

/// A number as clap hands it over (the message is what follows "invalid value 'X' for '--flag'").
fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| "not a number".to_string())
}

/// 0 or more.
fn count(s: &str) -> Result<usize, String> {
    let v: i64 = number(s)?;
    usize::try_from(v).map_err(|_| format!("must be 0 or more, got {v}"))
}

/// `--pooling`.
fn pooling(s: &str) -> Result<llamafile_engine::embed::Pooling, String> {
    llamafile_engine::embed::Pooling::parse(s).map_err(|e| e.to_string())
}

/// 1 or more.
fn positive(s: &str) -> Result<usize, String> {
    match count(s)? {
        0 => Err("must be 1 or more, got 0".into()),
        v => Ok(v),
    }
}

/// -1 and -2 (llama.cpp's "until the context is full") mean no limit.
fn n_predict(s: &str) -> Result<i64, String> {
    let v: i64 = number(s)?;
    if v < -2 {
        return Err(format!("must be -1 (no limit) or 0 or more, got {v}"));
    }
    Ok(if v == -2 { -1 } else { v })
}

fn temperature(s: &str) -> Result<f32, String> {
    limits::temperature(number(s)?)
}
fn top_k(s: &str) -> Result<usize, String> {
    limits::top_k(number(s)?)
}
fn top_p(s: &str) -> Result<f32, String> {
    limits::top_p(number(s)?)
}
fn min_p(s: &str) -> Result<f32, String> {
    limits::min_p(number(s)?)
}
fn repeat_penalty(s: &str) -> Result<f32, String> {
    limits::repeat_penalty(number(s)?)
}
fn repeat_last_n(s: &str) -> Result<usize, String> {
    limits::repeat_last_n(number(s)?)
}
fn seed(s: &str) -> Result<i64, String> {
    let v: i64 = number(s)?;
    limits::seed(v).map(|_| v)
}

impl Args {
    /// The sampling settings of the command line, checked as the server checks a request's;
    /// `-s -1` stays `RANDOM_SEED` (the server draws one per request, the CLI one per run).
    pub fn sampling(&self) -> anyhow::Result<SamplingParams> {
        let opts = SamplingOptions {
            temperature: Some(self.temp),
            top_k: Some(self.top_k as i64),
            top_p: Some(self.top_p),
            min_p: Some(self.min_p),
            repeat_penalty: Some(self.repeat_penalty),
            repeat_last_n: Some(self.repeat_last_n as i64),
            seed: Some(self.seed),
        };
        opts.resolve(&SamplingParams::default())
            .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.message))
    }

    /// The options given that are accepted for llama.cpp compatibility but change nothing here.
    pub fn without_effect(&self) -> Vec<&'static str> {
        [
            (self.mlock, "--mlock"),
            (self.no_mmap, "--no-mmap"),
            (self.no_warmup, "--no-warmup"),
            (self.color.is_some(), "--color"),
            (self.ubatch_size.is_some(), "--ubatch-size"),
            (self.threads_batch.is_some(), "--threads-batch"),
            (self.main_gpu.is_some(), "--main-gpu"),
            (self.tensor_split.is_some(), "--tensor-split"),
            (self.split_mode.is_some(), "--split-mode"),
            (self.device.is_some(), "--device"),
            (self.flash_attn.is_some(), "--flash-attn"),
            (self.embedding, "--embedding"),
        ]
        .into_iter()
        .filter_map(|(given, name)| given.then_some(name))
        .collect()
    }
}

/// The command line's definition, with llama.cpp's one-dash spellings shown in `--help`.
pub fn command() -> clap::Command {
    let mut cmd = Args::command();
    let longs: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let mut names: Vec<&str> = one_dash_names(long).collect();
            for alias in a.get_all_aliases().into_iter().flatten() {
                names.extend(one_dash_names(alias));
            }
            (!names.is_empty())
                .then(|| (a.get_id().to_string(), names.iter().map(|n| format!("-{n}")).collect::<Vec<_>>().join(", ")))
        })
        .collect();
    for (id, names) in longs {
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [also: {names}]"))
        });
    }
    cmd
}

use spelling::one_dash_names;

/// Parse a command line (argv[0] included, `.args` already merged): llama.cpp's spellings are
/// rewritten first, then clap parses.
pub fn parse(argv: Vec<OsString>) -> Result<Args, clap::Error> {
    let mut cmd = command();
    cmd.build();
    let argv = spelling::rewrite(&cmd, argv).map_err(|m| cmd.error(clap::error::ErrorKind::UnknownArgument, m))?;
    let matches = cmd.try_get_matches_from_mut(argv).map_err(escape_error)?;
    Args::from_arg_matches(&matches).map_err(escape_error)
}

/// Clap quotes the offending argument as given: from `.args` in a file it may hold control
/// characters or run to kilobytes, so each quoted value is escaped and cut before it is shown.
fn escape_error(mut e: clap::Error) -> clap::Error {
    use clap::error::ContextValue;
    let quoted: Vec<_> = e
        .context()
        .filter_map(|(kind, value)| match value {
            ContextValue::String(s) => Some((kind, ContextValue::String(llamafile_format::escape::escape(s)))),
            ContextValue::Strings(v) => {
                Some((kind, ContextValue::Strings(v.iter().map(|s| llamafile_format::escape::escape(s)).collect())))
            }
            _ => None,
        })
        .collect();
    for (kind, value) in quoted {
        e.insert(kind, value);
    }
    e
}

/// Run the program with these arguments (argv[0] included); returns the exit code.
pub fn run(args: Vec<OsString>) -> anyhow::Result<i32> {
    let args = llamafile_format::bundle::with_embedded_args(args)?;
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            // --help / --version print and exit 0; real errors print clap's message and exit 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            e.print()?;
            return Ok(code);
        }
    };
    if !args.log_disable {
        for flag in args.without_effect() {
            eprintln!("note: {flag} is accepted for llama.cpp compatibility and has no effect here");
        }
    }
    dispatch(&args)
}

pub fn dispatch(args: &Args) -> anyhow::Result<i32> {
    if args.doctor {
        return doctor::run(args);
    }
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
        || args.interactive
        || args.interactive_first
        || args.eval_tokens.is_some()
        || args.perplexity
        || args.bench;
    if wants_generation && !args.server {
        return generate::run(args);
    }
    serve::run(args)
}

#[cfg(test)]
mod tests;
