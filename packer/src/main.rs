//! `pack --runtime PATH --gguf PATH [-o OUT] [--args "ARGS" | --args-file FILE] [--gpu-backend FILE]... [--force]`
//! `pack --list FILE`
//! `pack --keygen NAME`; `pack ... --sign NAME.key`
//! `pack --upgrade FILE.llamafile --runtime NEW [-o OUT] [--sign NAME.key]`
//! `pack --gguf PATH --quantize TYPE [-o OUT | --gguf-out OUT.gguf] [--force]`
//! `pack --hf DIR [--outtype TYPE] [--quantize TYPE] [-o OUT | --gguf-out OUT.gguf] [--force]`

use anyhow::Context;
use clap::Parser;
use llamafile_format::escape::escape_path;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pack",
    version,
    about = "Make one executable file from the llamafile runtime and GGUF weights",
    after_help = "The output runs as `./OUT.llamafile -p \"...\"`; `pack --list OUT.llamafile` shows what is inside."
)]
struct Cli {
    /// The runtime executable (default: the `llamafile` binary beside `pack`).
    #[arg(long, value_name = "PATH")]
    runtime: Option<PathBuf>,
    /// The weights: a .gguf, or a llamafile/zip holding one, or archive.zip@name.gguf.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["list", "keygen", "upgrade", "hf"], conflicts_with_all = ["upgrade", "hf"])]
    gguf: Option<PathBuf>,
    /// Output file (default: <gguf stem>.llamafile in the current directory).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    out: Option<PathBuf>,
    /// Default arguments stored in the file (`.args`); `...` marks where the user's go.
    #[arg(long, value_name = "ARGS", conflicts_with = "args_file", allow_hyphen_values = true)]
    args: Option<String>,
    /// Like --args, read from a file (one or more per line, `#` comments, quotes).
    #[arg(long, value_name = "FILE")]
    args_file: Option<PathBuf>,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
    /// Embed a GPU backend library (e.g. libllamafile_gpu_cuda.so) as `gpu/<name>`: the
    /// llamafile then offloads with `-ngl N` wherever its device exists. Repeatable.
    #[arg(long = "gpu-backend", value_name = "FILE")]
    gpu_backend: Vec<PathBuf>,
    // --- quantization ---
    /// Quantize the GGUF's tensors on the way, in the reference quantizer's mix TYPE (Q4_K_M,
    /// Q5_K_M, Q6_K, Q8_0, Q4_0, ...; input F32/F16/BF16, or quantized: dequantized first).
    #[arg(long, value_name = "TYPE")]
    quantize: Option<String>,
    /// With --quantize: write the quantized model as a plain GGUF to OUT (no runtime, no zip).
    #[arg(long = "gguf-out", value_name = "OUT", conflicts_with_all = ["out", "args", "args_file", "gpu_backend", "runtime"])]
    gguf_out: Option<PathBuf>,
    /// An importance matrix for --quantize (the GGUF llama-imatrix writes): the Q4_K, Q5_K and
    /// Q6_K scale searches weigh each column by it.
    #[arg(long, value_name = "FILE", requires = "quantize")]
    imatrix: Option<PathBuf>,
    /// Threads for --quantize (default: one per core), as llama-quantize's thread count.
    #[arg(short = 't', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    threads: Option<u16>,
    // --- end quantization ---
    // --- Hugging Face checkpoints ---
    /// Convert a Hugging Face checkpoint directory (config.json, safetensors, tokenizer files)
    /// instead of reading --gguf, as the reference converter would (weights as --outtype); with
    /// --gguf-out the converted GGUF is written as it is.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["list", "keygen", "upgrade"])]
    hf: Option<PathBuf>,
    /// The type of the converted 2-D weights, as the reference converter's --outtype: auto (F16,
    /// or BF16 from a BF16 checkpoint), f32, f16, bf16 or q8_0. With --quantize, f32 keeps an
    /// F32 checkpoint's values exact up to the quantizer.
    #[arg(long, value_name = "TYPE", ignore_case = true, value_parser = outtype_parser())]
    outtype: Option<packer::hf::OutType>,
    // --- end Hugging Face checkpoints ---
    /// Print the entries of a llamafile or zip (offsets, sizes, alignment) and a GGUF summary.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["gguf", "runtime", "out", "args", "args_file", "force", "gpu_backend", "quantize"])]
    list: Option<PathBuf>,

    // Distribution: signatures and runtime upgrades
    /// Write a new minisign key pair: NAME.key (secret, no password) and NAME.pub (never overwritten).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["gguf", "runtime", "out", "args", "args_file", "force", "gpu_backend", "list", "sign", "upgrade"])]
    keygen: Option<PathBuf>,
    /// Sign the output with this minisign secret key (a `.manifest` of SHA-256s and its `.signature`); `llamafile --verify --pubkey NAME.pub` checks it.
    #[arg(long, value_name = "NAME.key", conflicts_with = "list")]
    sign: Option<PathBuf>,
    /// Replace the runtime of this llamafile with --runtime, keeping every other byte (written over it, or to -o OUT).
    #[arg(long, value_name = "FILE", requires = "runtime", conflicts_with_all = ["list", "args", "args_file", "gpu_backend"])]
    upgrade: Option<PathBuf>,
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.into())
            .build_global()
            .context("--threads: starting the threads")?;
    }
    if let Some(path) = &cli.list {
        print!("{}", packer::list(path)?);
        return Ok(());
    }
    if let Some(name) = &cli.keygen {
        let (key, public, id) = packer::sign::keygen(name)?;
        eprintln!(
            "wrote {} (secret key, no password: keep it private) and {} (public key {id})",
            escape_path(&key),
            escape_path(&public)
        );
        return Ok(());
    }
    if let Some(file) = cli.upgrade.clone() {
        return upgrade(file, cli);
    }
    // --- Hugging Face checkpoints: converted first, then packed (or quantized) as a GGUF ---
    if cli.gguf_out.is_some() && cli.quantize.is_none() && cli.hf.is_none() {
        anyhow::bail!("--gguf-out needs --quantize (or --hf)");
    }
    // Checked here, not by clap's `requires`, which is not enforced beside --gguf (it conflicts
    // with --hf).
    if cli.outtype.is_some() && cli.hf.is_none() {
        anyhow::bail!("--outtype needs --hf (a GGUF's types change with --quantize)");
    }
    let (gguf, hf_precomputed, _hf_temp) = match cli.hf.clone() {
        Some(dir) => match hf_input(&dir, &mut cli)? {
            Some(t) => (t.path.clone(), Some(t.precomputed()), Some(t)),
            None => return Ok(()),
        },
        None => {
            (cli.gguf.clone().expect("clap requires --gguf without --list, --keygen, --upgrade or --hf"), None, None)
        }
    };
    // --- end Hugging Face checkpoints ---
    let quant = match &cli.quantize {
        Some(t) => Some(packer::quantize::QuantizeOptions {
            mix: packer::quant_mix::Mix::parse(t)?,
            imatrix: cli.imatrix.clone(),
            precomputed: hf_precomputed,
        }),
        None => None,
    };
    if let (Some(q), Some(out)) = (&quant, &cli.gguf_out) {
        let size = packer::quantize::quantize_to_gguf(&gguf, q, out, cli.force, std::io::stderr().is_terminal())?;
        eprintln!("wrote {} ({size} bytes): {}", escape_path(out), q.mix.name);
        return Ok(());
    }
    let runtime = match cli.runtime.take() {
        Some(r) => r,
        None => default_runtime()?,
    };
    let args = args_of(&cli)?;
    let extra = gpu_backends(&cli.gpu_backend)?;
    let out = cli.out.unwrap_or_else(|| packer::default_out(&gguf));
    let opts = packer::PackOptions {
        runtime,
        gguf,
        out,
        args,
        extra,
        force: cli.force,
        progress: std::io::stderr().is_terminal(),
        sign: cli.sign,
    };
    let r = packer::pack_with(&opts, quant.as_ref())?;
    eprintln!(
        "wrote {} ({} bytes): {} {} runtime, {} at offset {} ({} bytes)",
        escape_path(&r.out),
        r.size,
        r.runtime.format,
        r.runtime.arch,
        r.gguf_entry,
        r.gguf_offset,
        r.gguf_size
    );
    Ok(())
}

/// `--outtype`: one of the converter's names (clap lists them in its error and help).
fn outtype_parser() -> impl clap::builder::TypedValueParser<Value = packer::hf::OutType> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(packer::hf::OutType::ALL.map(|(name, _)| name))
        .map(|s| packer::hf::OutType::from_name(&s).expect("clap admits only the listed names"))
}

/// `--hf DIR`: with only `--gguf-out`, converted into it (`None`: done); else converted to a
/// temporary GGUF beside the output, to be packed or quantized from there (the output named
/// after the checkpoint when none is given).
fn hf_input(dir: &std::path::Path, cli: &mut Cli) -> anyhow::Result<Option<packer::hf::TempGguf>> {
    let out_type = cli.outtype.unwrap_or_default();
    if cli.quantize.is_none() {
        if let Some(out) = &cli.gguf_out {
            let size = packer::hf::convert_to_gguf(dir, out_type, out, cli.force, std::io::stderr().is_terminal())?;
            eprintln!("wrote {} ({size} bytes)", escape_path(out));
            return Ok(None);
        }
    }
    let out = cli.gguf_out.clone().or_else(|| cli.out.clone()).unwrap_or_else(|| packer::hf::default_out(dir));
    packer::check_output(&out, cli.force, &[])?;
    let near = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    if cli.out.is_none() && cli.gguf_out.is_none() {
        cli.out = Some(out);
    }
    Ok(Some(packer::hf::convert_to_temp(dir, out_type, &near, &stem, std::io::stderr().is_terminal())?))
}

/// `--upgrade FILE`: the llamafile's weights and files onto `--runtime`.
fn upgrade(file: PathBuf, cli: Cli) -> anyhow::Result<()> {
    let o = packer::upgrade::UpgradeOptions {
        file,
        runtime: cli.runtime.expect("clap requires --runtime with --upgrade"),
        out: cli.out,
        force: cli.force,
        sign: cli.sign,
        progress: std::io::stderr().is_terminal(),
    };
    let r = packer::upgrade::upgrade(&o)?;
    if let Some(id) = &r.dropped_signature {
        eprintln!("warning: the signature of key {id} is dropped (it covered the old runtime); give --sign KEY to sign the result");
    }
    eprintln!(
        "wrote {} ({} bytes): {} {} runtime ({} bytes, was {} bytes before the zip), {} {} copied{}",
        escape_path(&r.out),
        r.size,
        r.runtime.format,
        r.runtime.arch,
        r.runtime.size,
        r.old_prefix,
        r.entries,
        if r.entries == 1 { "entry" } else { "entries" },
        r.signed_by.map(|id| format!(", signed by key {id}")).unwrap_or_default()
    );
    Ok(())
}

/// The llamafile binary beside pack, when no `--runtime` is given.
fn default_runtime() -> anyhow::Result<PathBuf> {
    let r = packer::default_runtime()?;
    if !r.exists() {
        anyhow::bail!(
            "no --runtime given and no llamafile binary beside pack ({}); build it with `cargo build --release`",
            escape_path(&r)
        );
    }
    Ok(r)
}

/// The default arguments to embed: `--args`, or `--args-file`'s text (at most 1 MiB).
fn args_of(cli: &Cli) -> anyhow::Result<Option<String>> {
    Ok(match (&cli.args, &cli.args_file) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(f)) => Some(
            llamafile_format::input::read_text_capped(
                f,
                llamafile_format::bundle::MAX_ARGS_BYTES,
                "an .args file holds at most 1 MiB",
            )
            .context("--args-file")?,
        ),
        (None, None) => None,
    })
}

/// The `--gpu-backend` files, checked to be loadable backends of this ABI before packing.
fn gpu_backends(paths: &[PathBuf]) -> anyhow::Result<Vec<packer::ExtraEntry>> {
    let mut extra: Vec<packer::ExtraEntry> = Vec::new();
    for path in paths {
        // A FIFO or device would block or fill memory in the loader: refused first.
        llamafile_format::input::open_regular(path, "a GPU backend")?;
        let name = check_backend_file(path)?;
        if extra.iter().any(|e| e.name == name) {
            anyhow::bail!("--gpu-backend {}: a backend named {name} is already given", escape_path(path));
        }
        extra.push(packer::ExtraEntry { name, path: path.clone(), align: 4096 });
    }
    Ok(extra)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    packer::remove_partial_output_on_signal();
    if let Err(e) = run(cli) {
        // The whole chain on one line (newlines inside messages would break "one line").
        eprintln!("pack: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// For `--gpu-backend FILE`: checks that FILE is a backend the runtime can load (the symbol, ABI
/// version and table size: no device is needed) and returns the zip entry name to store it
/// under (`gpu/<file name>`).
fn check_backend_file(path: &std::path::Path) -> anyhow::Result<String> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("--gpu-backend {}: not a file name", escape_path(path)))?;
    if !kernels_gpu::client::is_library_name(file_name) {
        anyhow::bail!(
            "--gpu-backend {}: a backend library must end in {}",
            escape_path(path),
            std::env::consts::DLL_SUFFIX
        );
    }
    if !path.is_file() {
        anyhow::bail!("--gpu-backend {}: no such file", escape_path(path));
    }
    kernels_gpu::client::Library::open(path)
        .map_err(|e| anyhow::anyhow!("--gpu-backend {}: {e}", escape_path(path)))?;
    Ok(format!("{}{file_name}", llamafile_format::bundle::GPU_DIR))
}
