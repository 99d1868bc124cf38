//! `--doctor`: what a user pastes into a bug report. It reads only this machine (no network) and
//! never fails on a section: what cannot be found is said in that section, and the exit code is 0.
//!
//! Sections: the build and system; the CPU and the kernels chosen for it; memory, and what the
//! model plus one session's KV cache at `-c` need (the engine's own estimate); each GPU backend
//! searched and why it would or would not be used, with the NVIDIA driver; the file (CRC-32 of
//! every entry, signature); on Linux, the binfmt_misc handlers that would run this file instead
//! of the kernel (a handler for `MZ` executables, such as WINE's or WSL's `run-detectors`, takes
//! over files that start with those bytes).

use super::Args;
use llamafile_engine::backend::gpu;
use llamafile_engine::{context_length, meminfo, session_bytes, show_bytes};
use llamafile_format::escape::{escape, escape_path};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn run(args: &Args) -> anyhow::Result<i32> {
    print!("{}", report(args));
    Ok(0)
}

/// The whole report.
pub fn report(args: &Args) -> String {
    let mut s = String::new();
    let exe = llamafile_format::bundle::own_executable().ok();
    let model = llamafile_format::bundle::model_path(args.model.as_deref());
    system(&mut s, exe.as_deref());
    cpu(&mut s);
    memory(&mut s, args, model.as_ref().ok().map(PathBuf::as_path), model.as_ref().err());
    gpus(&mut s, model.as_ref().ok().map(PathBuf::as_path));
    let file = match (&args.model, &exe) {
        (Some(_), _) => model.as_ref().ok().map(|p| split_archive(p)),
        (None, Some(e)) => Some(e.clone()),
        (None, None) => None,
    };
    file_section(&mut s, file.as_deref());
    binfmt(&mut s, file.as_deref().or(exe.as_deref()));
    s
}

/// `archive.zip@name.gguf` -> the archive.
fn split_archive(p: &Path) -> PathBuf {
    if !p.exists() {
        if let Some((archive, _)) = p.to_str().and_then(|s| s.rsplit_once('@')) {
            if Path::new(archive).is_file() {
                return PathBuf::from(archive);
            }
        }
    }
    p.to_path_buf()
}

fn heading(s: &mut String, title: &str) {
    let _ = writeln!(s, "\n== {title}");
}

fn system(s: &mut String, exe: Option<&Path>) {
    let _ = writeln!(s, "llamafile --doctor (no network is used; paste this into a bug report)");
    heading(s, "system");
    let _ = writeln!(s, "version:     {}", super::VERSION);
    let _ = writeln!(s, "executable:  {}", exe.map(escape_path).unwrap_or_else(|| "(unknown)".into()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let _ =
        writeln!(s, "os:          {} {} (kernel {})", std::env::consts::OS, std::env::consts::ARCH, escape(&kernel));
    let _ = writeln!(s, "libc:        {}", libc_version());
}

/// The C library the process runs with (glibc's `gnu_get_libc_version`).
fn libc_version() -> String {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn gnu_get_libc_version() -> *const libc::c_char;
        }
        // SAFETY: glibc returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
        format!("glibc {}", v.to_string_lossy())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        "(not glibc)".into()
    }
}

fn cpu(s: &mut String) {
    heading(s, "cpu");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "(unknown: no model name in /proc/cpuinfo)".into());
    let _ = writeln!(s, "model:       {}", escape(&model));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let _ = writeln!(s, "threads:     {threads} available to this process (the default -t)");
    let k = kernels_cpu::kernels();
    let best = kernels_cpu::Isa::detect();
    let _ = writeln!(s, "kernels:     {} (best this CPU has: {})", k.describe(), best.name());
    match std::env::var("LLAMAFILE_ISA") {
        Ok(v) => {
            let _ = writeln!(s, "             LLAMAFILE_ISA={} lowers the choice", escape(&v));
        }
        Err(_) => {
            let _ = writeln!(
                s,
                "             chosen at start from the CPU's features (LLAMAFILE_ISA=scalar|avx2|avx512 lowers it)"
            );
        }
    }
}

fn memory(s: &mut String, args: &Args, model: Option<&Path>, model_err: Option<&anyhow::Error>) {
    heading(s, "memory");
    let show = |v: Option<u64>| v.map(show_bytes).unwrap_or_else(|| "? (no /proc/meminfo)".into());
    let avail = meminfo("MemAvailable");
    let _ = writeln!(s, "total:       {}", show(meminfo("MemTotal")));
    let _ = writeln!(s, "available:   {}", show(avail));
    let Some(path) = model else {
        let why = model_err.map(|e| escape(&format!("{e:#}"))).unwrap_or_default();
        let _ = writeln!(s, "model:       none ({why})");
        return;
    };
    let loaded = llamafile_format::gguf::GgufFile::open(path).and_then(llamafile_engine::model::Model::load);
    let m = match loaded {
        Ok(m) => Arc::new(m),
        Err(e) => {
            let _ = writeln!(s, "model:       {}: cannot be loaded: {}", escape_path(path), escape(&format!("{e:#}")));
            return;
        }
    };
    let hp = &m.hp;
    let n_ctx = context_length(Some(args.ctx_size), hp.n_ctx_train);
    let n_batch = args.batch_size.clamp(1, n_ctx);
    // The engine's estimate of one session on the CPU (the chain `-ngl 0` gives).
    let chain: Vec<Arc<dyn llamafile_engine::backend::Backend>> =
        vec![Arc::new(llamafile_engine::backend::cpu::CpuBackend::new(m.clone(), 0..hp.n_layer, true))];
    let session = session_bytes(&chain, hp, n_ctx, n_batch);
    let weights = m.file.len();
    let _ = writeln!(s, "model:       {}", escape_path(path));
    let _ = writeln!(s, "weights:     {} (mapped from the file: page cache, shared)", show_bytes(weights));
    let _ = writeln!(
        s,
        "context:     {n_ctx} tokens{}",
        if args.ctx_size == 0 { " (the model's, capped; -c sets it)" } else { " (-c)" }
    );
    let _ = writeln!(
        s,
        "KV cache:    {} per conversation with its buffers (the server holds --parallel {} of them: {})",
        show_bytes(session),
        args.parallel,
        show_bytes(session.saturating_mul(args.parallel as u64))
    );
    let need = weights.saturating_add(session);
    let verdict = match avail {
        Some(a) if need <= a => "fits in the available memory".to_string(),
        Some(a) => format!("does NOT fit in the available {} (the weights would be read from disk again and again; use a smaller -c or model)", show_bytes(a)),
        None => "available memory unknown".to_string(),
    };
    let _ = writeln!(s, "needs:       {} for weights + one conversation: {verdict}", show_bytes(need));
}

fn gpus(s: &mut String, model: Option<&Path>) {
    heading(s, "gpu");
    match std::env::var_os(gpu::BACKEND_ENV) {
        Some(p) if !p.is_empty() => {
            let _ = writeln!(s, "{}: {}", gpu::BACKEND_ENV, escape(&p.to_string_lossy()));
        }
        _ => {
            let _ = writeln!(s, "{}: not set", gpu::BACKEND_ENV);
        }
    }
    let exe = llamafile_format::bundle::own_executable().ok();
    let mut zips: Vec<String> = exe.iter().map(|e| escape_path(e)).collect();
    if let Some(m) = model.map(split_archive) {
        if exe.as_deref() != Some(m.as_path()) {
            zips.push(escape_path(&m));
        }
    }
    let _ = writeln!(
        s,
        "searched:    {}* entries in {}",
        llamafile_format::bundle::GPU_DIR,
        if zips.is_empty() { "(nothing)".into() } else { zips.join(", ") }
    );
    if let Some(dir) = exe.as_ref().and_then(|e| e.parent()) {
        let _ = writeln!(
            s,
            "             {}/{}{}*{}",
            escape_path(dir),
            std::env::consts::DLL_PREFIX,
            gpu::LIB_STEM,
            std::env::consts::DLL_SUFFIX
        );
    }
    let mut why = Vec::new();
    let cands = gpu::candidates_for(model.map(split_archive).as_deref(), &mut why);
    if cands.is_empty() {
        let _ = writeln!(s, "backends:    none found (pack --gpu-backend FILE embeds one; -ngl N then offloads)");
    }
    for c in &cands {
        let _ = writeln!(s, "found:       {} ({})", escape_path(&c.path), escape(&c.origin));
    }
    if !cands.is_empty() {
        match gpu::choose(&cands, gpu::GpuChoice::Auto, &mut why) {
            Some(ch) => {
                let _ = writeln!(
                    s,
                    "would use:   {} device {}: {} ({} free of {}{}) with -ngl N",
                    escape(ch.lib.name()),
                    ch.device,
                    escape(&kernels_gpu::abi::name_str(&ch.info.name)),
                    show_bytes(ch.info.free_memory),
                    show_bytes(ch.info.total_memory),
                    if ch.info.compute_capability > 0 {
                        format!(
                            ", compute capability {}.{}",
                            ch.info.compute_capability / 10,
                            ch.info.compute_capability % 10
                        )
                    } else {
                        String::new()
                    }
                );
            }
            None => {
                let _ = writeln!(s, "would use:   none: the model would run on the CPU");
            }
        }
    }
    for w in &why {
        let _ = writeln!(s, "not used:    {}", escape(w));
    }
    match std::fs::read_to_string("/proc/driver/nvidia/version") {
        Ok(v) => {
            let line = v.lines().next().unwrap_or("").trim().to_string();
            let _ = writeln!(s, "nvidia:      {}", escape(&line));
        }
        Err(_) => {
            let _ = writeln!(s, "nvidia:      no NVIDIA kernel driver (/proc/driver/nvidia/version is absent)");
        }
    }
    // The CUDA backend loads the driver's library at run time: whether it would find it.
    // SAFETY: loading the NVIDIA driver library runs its initialisers, as the CUDA backend does.
    let libcuda = unsafe { libloading::Library::new("libcuda.so.1") };
    let _ = writeln!(
        s,
        "libcuda:     {}",
        match libcuda {
            Ok(_) => "libcuda.so.1 loads".to_string(),
            Err(e) => format!("libcuda.so.1 does not load ({})", escape(&e.to_string())),
        }
    );
}

fn file_section(s: &mut String, file: Option<&Path>) {
    heading(s, "file");
    let Some(path) = file else {
        let _ = writeln!(s, "file:        (none)");
        return;
    };
    let _ = writeln!(s, "file:        {}", escape_path(path));
    match llamafile_format::bundle::zip_entries(path) {
        Ok(Some(entries)) => {
            let _ = writeln!(s, "zip:         {} entries", entries.len());
            let crc = super::verify::verify(path)
                .map(|r| r.split_once(": OK: ").map(|(_, r)| format!("OK: {r}")).unwrap_or(r));
            let _ =
                writeln!(s, "intact:      {}", crc.unwrap_or_else(|e| format!("NO: {}", escape(&format!("{e:#}")))));
            let signed = match llamafile_format::signature::signer(path, &entries) {
                Ok(Some(id)) => format!("yes, by key {id} (check: --verify --pubkey KEY.pub)"),
                Ok(None) => "no".into(),
                Err(e) => format!("? ({})", escape(&format!("{e:#}"))),
            };
            let _ = writeln!(s, "signed:      {signed}");
        }
        Ok(None) => {
            let _ = writeln!(s, "zip:         none (a plain executable or GGUF: nothing embedded to check)");
        }
        Err(e) => {
            let _ = writeln!(s, "zip:         broken: {}", escape(&format!("{e:#}")));
        }
    }
}

/// One registered binfmt_misc handler.
#[derive(Debug, PartialEq)]
struct Handler {
    name: String,
    enabled: bool,
    interpreter: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Option<Vec<u8>>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Parse a file of /proc/sys/fs/binfmt_misc (`enabled`, `interpreter PATH`, `offset N`,
/// `magic HEX`, `mask HEX`); `None` for extension-based handlers (they match by name, not bytes).
fn parse_handler(name: &str, text: &str) -> Option<Handler> {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).map(str::trim));
    Some(Handler {
        name: name.to_string(),
        enabled: text.lines().next() == Some("enabled"),
        interpreter: field("interpreter ")?.to_string(),
        offset: field("offset ").and_then(|o| o.parse().ok()).unwrap_or(0),
        magic: unhex(field("magic ")?)?,
        mask: field("mask ").and_then(unhex),
    })
}

impl Handler {
    fn matches(&self, head: &[u8]) -> bool {
        let Some(bytes) = head.get(self.offset..self.offset + self.magic.len()) else {
            return false;
        };
        bytes.iter().zip(&self.magic).enumerate().all(|(i, (b, m))| {
            let mask = self.mask.as_ref().and_then(|k| k.get(i)).copied().unwrap_or(0xFF);
            b & mask == m & mask
        })
    }
}

fn binfmt(s: &mut String, file: Option<&Path>) {
    if !cfg!(target_os = "linux") {
        return;
    }
    heading(s, "binfmt_misc");
    const DIR: &str = "/proc/sys/fs/binfmt_misc";
    let status = match std::fs::read_to_string(format!("{DIR}/status")) {
        Ok(st) => st.trim().to_string(),
        Err(_) => {
            let _ = writeln!(s, "status:      not mounted ({DIR}/status absent): the kernel runs executables itself");
            return;
        }
    };
    let _ = writeln!(s, "status:      {}", escape(&status));
    let mut head = vec![0u8; 256];
    let n = file.and_then(|f| std::fs::File::open(f).ok()).map(|f| {
        use std::io::Read;
        let mut f = f;
        f.read(&mut head).unwrap_or(0)
    });
    head.truncate(n.unwrap_or(0));
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "status" && n != "register")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut any = false;
    for name in names {
        let Some(h) = std::fs::read_to_string(format!("{DIR}/{name}")).ok().and_then(|t| parse_handler(&name, &t))
        else {
            continue;
        };
        let mz = h.magic.starts_with(b"MZ") && h.offset == 0;
        let this = !head.is_empty() && h.matches(&head);
        let detectors = h.interpreter.contains("run-detectors");
        if !(mz || this || detectors) {
            continue;
        }
        any = true;
        let mut notes = Vec::new();
        if mz {
            notes.push("takes MZ executables (Windows/APE files)");
        }
        if detectors {
            notes.push("binfmt-support's run-detectors");
        }
        if this && h.enabled && status == "enabled" {
            notes.push("WOULD RUN THIS FILE instead of the kernel");
        } else if this {
            notes.push("matches this file (disabled)");
        }
        let _ = writeln!(
            s,
            "handler:     {} ({}) -> {}: {}",
            escape(&h.name),
            if h.enabled { "enabled" } else { "disabled" },
            escape(&h.interpreter),
            notes.join("; ")
        );
    }
    if !any {
        let _ = writeln!(s, "handlers:    none for MZ executables, run-detectors or this file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binfmt_handlers_parse_and_match_by_magic_and_mask() {
        let wine = "enabled\ninterpreter /usr/lib/binfmt-support/run-detectors\nflags: \noffset 0\nmagic 4d5a\n";
        let h = parse_handler("wine", wine).unwrap();
        assert_eq!(
            (h.enabled, h.offset, h.magic.as_slice(), h.interpreter.as_str()),
            (true, 0, &b"MZ"[..], "/usr/lib/binfmt-support/run-detectors")
        );
        assert!(h.matches(b"MZqFpD='\n"));
        assert!(!h.matches(b"\x7fELF\x02\x01"));
        assert!(!h.matches(b"M"));
        let masked = "disabled\ninterpreter /usr/bin/qemu\nflags: F\noffset 1\nmagic 454c46\nmask ffdfff\n";
        let h = parse_handler("q", masked).unwrap();
        assert!(!h.enabled);
        assert!(h.matches(b"\x7fELF") && h.matches(b"\x7fElF"), "the mask clears the case bit of the L");
        assert!(!h.matches(b"\x7fEXF"));
        assert_eq!(parse_handler("ext", "enabled\ninterpreter /x\nflags: \nextension .exe\n"), None);
    }
}
