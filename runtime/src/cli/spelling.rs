//! llama.cpp's spellings that clap does not take as they are: long options written with one dash
//! (`-ngl 99`, `-cnv`, `-fa`) and underscores in long names (`--ctx_size`). They are rewritten to
//! their `--long-form` before clap parses, so that `-co` is never read as `-c o`, nor `-fa` as
//! `-f a`; a one-dash word that is no option at all is refused rather than split into letters.

use clap::Command;
use std::collections::HashMap;
use std::ffi::OsString;

/// llama.cpp's one-dash spellings (common/arg.cpp) and the long option each stands for. Those
/// whose long option this program has are rewritten to it; the others are refused by name.
pub const ONE_DASH: &[(&str, &str)] = &[
    ("ngl", "n-gpu-layers"),
    ("sys", "system-prompt"),
    ("sysf", "system-prompt-file"),
    ("cnv", "conversation"),
    ("no-cnv", "no-conversation"),
    ("st", "single-turn"),
    ("if", "interactive-first"),
    ("fa", "flash-attn"),
    ("tb", "threads-batch"),
    ("co", "color"),
    ("mg", "main-gpu"),
    ("np", "parallel"),
    ("ts", "tensor-split"),
    ("dev", "device"),
    ("sm", "split-mode"),
    ("ub", "ubatch-size"),
    ("jf", "json-schema-file"),
    ("to", "timeout"),
    ("lv", "verbosity"),
    ("sp", "special"),
    ("mli", "multiline-input"),
    ("ptc", "print-token-count"),
    ("bf", "binary-file"),
    ("ns", "sequences"),
    ("ctk", "cache-type-k"),
    ("ctv", "cache-type-v"),
    ("nkvo", "no-kv-offload"),
    ("nr", "no-repack"),
    ("cb", "cont-batching"),
    ("nocb", "no-cont-batching"),
    ("kvu", "kv-unified"),
    ("dt", "defrag-thold"),
    ("gan", "grp-attn-n"),
    ("gaw", "grp-attn-w"),
    ("ot", "override-tensor"),
    ("cmoe", "cpu-moe"),
    ("ncmoe", "n-cpu-moe"),
    ("mu", "model-url"),
    ("hf", "hf-repo"),
    ("hfr", "hf-repo"),
    ("hff", "hf-file"),
    ("hft", "hf-token"),
    ("hfd", "hf-repo-draft"),
    ("md", "model-draft"),
    ("td", "threads-draft"),
    ("ngld", "gpu-layers-draft"),
    ("devd", "device-draft"),
    ("mm", "mmproj"),
    ("mmu", "mmproj-url"),
    ("sps", "slot-prompt-similarity"),
    ("lcs", "lookup-cache-static"),
    ("lcd", "lookup-cache-dynamic"),
    ("Cr", "cpu-range"),
    ("Cb", "cpu-mask-batch"),
    ("Crb", "cpu-range-batch"),
];

/// The one-dash spellings of a long option, for `--help` (`-ngl` for `n-gpu-layers`).
pub fn one_dash_names(long: &str) -> impl Iterator<Item = &'static str> + '_ {
    ONE_DASH.iter().filter(move |(_, l)| *l == long).map(|(s, _)| *s)
}

/// What the parser needs to know of each option: whether the next argument is its value.
struct Options {
    /// Long names and aliases -> takes a value that must follow.
    long: HashMap<String, bool>,
    short: HashMap<char, bool>,
}

impl Options {
    fn of(cmd: &Command) -> Options {
        let mut long = HashMap::new();
        let mut short = HashMap::new();
        for a in cmd.get_arguments() {
            // An optional value (`-fa [on|off|auto]`) is only taken when it does not look like an
            // option, so the word after it is never skipped.
            let needs_value = a.get_action().takes_values() && a.get_num_args().is_none_or(|r| r.min_values() > 0);
            for l in a.get_long().into_iter().chain(a.get_all_aliases().into_iter().flatten()) {
                long.insert(l.to_string(), needs_value);
            }
            for s in a.get_short().into_iter().chain(a.get_all_short_aliases().into_iter().flatten()) {
                short.insert(s, needs_value);
            }
        }
        long.insert("help".into(), false);
        long.insert("version".into(), false);
        Options { long, short }
    }
}

/// Rewrite llama.cpp's spellings into the ones clap takes; `argv[0]` is kept. The values of
/// options are passed through untouched (`-p -cnv` keeps the prompt "-cnv"), and so is
/// everything after `--`.
pub fn rewrite(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let opts = Options::of(cmd);
    let mut it = argv.into_iter();
    let mut out: Vec<OsString> = it.next().into_iter().collect();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            out.extend(it.by_ref());
            break;
        }
        let value_follows = if let Some(body) = s.strip_prefix("--") {
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let dashed = name.replace('_', "-");
            let name =
                if !opts.long.contains_key(name) && opts.long.contains_key(&dashed) { dashed.as_str() } else { name };
            out.push(match value {
                Some(v) => format!("--{name}={v}").into(),
                None => format!("--{name}").into(),
            });
            value.is_none() && opts.long.get(name).copied().unwrap_or(false)
        } else if let Some(body) = s.strip_prefix('-').filter(|b| b.chars().count() >= 2) {
            if let Some((_, long)) = ONE_DASH.iter().find(|(one, _)| *one == body) {
                let Some(&needs_value) = opts.long.get(*long) else {
                    return Err(format!("'-{body}' (llama.cpp's --{long}) is not supported by this program"));
                };
                out.push(format!("--{long}").into());
                needs_value
            } else if body.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
                let hint =
                    if opts.long.contains_key(body) { format!(" (did you mean --{body}?)") } else { String::new() };
                return Err(format!("unknown option '-{body}'{hint}; options longer than one letter take two dashes"));
            } else {
                // A short option with its value attached (`-n64`, `-mmodel.gguf`).
                out.push(arg);
                false
            }
        } else if let Some(c) = s.strip_prefix('-').and_then(|b| b.chars().next()) {
            out.push(arg);
            opts.short.get(&c).copied().unwrap_or(false)
        } else {
            out.push(arg);
            false
        };
        if value_follows {
            out.extend(it.next());
        }
    }
    Ok(out)
}
