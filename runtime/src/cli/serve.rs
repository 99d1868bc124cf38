//! The server's options from the command line: what `llamafile` with no prompt (a
//! double-click) or `--server` starts.

use super::generate::load_options;
use super::Args;
use crate::server::ServerOptions;
use llamafile_engine::LoadOptions;
use std::path::Path;
use std::time::Duration;

pub fn run(args: &Args) -> anyhow::Result<i32> {
    crate::server::run(options(args)?)
}

pub fn options(args: &Args) -> anyhow::Result<ServerOptions> {
    // `-m`, else the weights inside this executable (one clear line when there are none).
    let path = llamafile_format::bundle::model_path(args.model.as_deref())?;
    if args.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    let model_id = match &args.alias {
        Some(a) if a.trim().is_empty() => anyhow::bail!("--alias must not be empty"),
        Some(a) => a.clone(),
        None => model_id(&path),
    };
    Ok(ServerOptions {
        load: LoadOptions { n_sessions: args.parallel, ..load_options(args, &path) },
        model_path: path,
        parallel: args.parallel,
        model_id,
        host: args.host.clone(),
        port: args.port,
        cors_origin: args.cors_origin.clone(),
        api_keys: args.api_key.clone(),
        api_key_files: args.api_key_file.clone(),
        // The command line's sampling flags, checked as a request's fields are; without -s each
        // request draws its own seed.
        sampling: args.sampling()?,
        default_max_tokens: (args.n_predict > 0).then_some(args.n_predict as usize),
        system_prompt: args.system.clone(),
        log: !args.log_disable,
        pooling: args.pooling,
        embd_normalize: args.embd_normalize,
        metrics: args.metrics,
        header_timeout: Duration::from_secs(args.header_timeout),
        max_connections: args.max_connections,
        open_browser: !args.nobrowser,
    })
}

/// The model's default id, as llama.cpp's: the file name without its extension
/// (`qwen2.5-coder-0.5b-instruct-q4_k_m` for `…/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`); for
/// `archive.zip@name.gguf`, the entry's.
fn model_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.rsplit_once('@').map_or(name.as_str(), |(_, entry)| entry);
    let stem = Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem.is_empty() {
        "model".to_string()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::model_id;
    use std::path::Path;

    #[test]
    fn file_stem() {
        assert_eq!(
            model_id(Path::new("/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")),
            "qwen2.5-coder-0.5b-instruct-q4_k_m"
        );
        assert_eq!(model_id(Path::new("mistral-7b-instruct.Q4_K_M.llamafile")), "mistral-7b-instruct.Q4_K_M");
        assert_eq!(model_id(Path::new("/x/archive.zip@weights/tiny.gguf")), "tiny");
        assert_eq!(model_id(Path::new("/usr/bin/mymodel")), "mymodel");
        assert_eq!(model_id(Path::new("/")), "model");
    }
}
