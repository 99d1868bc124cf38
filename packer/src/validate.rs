//! Input checks done before anything is written: the runtime is an executable for a CPU we run
//! on (parsed with `object`) and not already a llamafile; the GGUF parses (header, metadata,
//! tensor table and every tensor's range, via the runtime's reader over gguf-rs-lib).

use anyhow::bail;
use llamafile_format::escape::escape_path;
use object::{Architecture, BinaryFormat, Object, ObjectKind};
use std::path::Path;

/// What the runtime check found.
#[derive(Clone, Debug)]
pub struct RuntimeInfo {
    pub format: String,
    pub arch: String,
    pub size: u64,
}

fn arch_name(a: Architecture) -> String {
    match a {
        Architecture::X86_64 => "x86-64".into(),
        Architecture::Aarch64 => "aarch64".into(),
        Architecture::I386 => "x86 (32-bit)".into(),
        Architecture::Arm => "ARM (32-bit)".into(),
        a => format!("{a:?}"),
    }
}

/// Check `bytes` (the file at `path`) is an executable for x86-64 or aarch64 without a zip
/// already appended: ELF (Linux), PE (Windows) or Mach-O (macOS, one CPU or universal).
pub fn check_runtime(path: &Path, bytes: &[u8]) -> anyhow::Result<RuntimeInfo> {
    let (format, arch) = match object::FileKind::parse(bytes) {
        Ok(object::FileKind::MachOFat32) => {
            check_universal(path, object::read::macho::MachOFatFile32::parse(bytes).ok(), bytes)?
        }
        Ok(object::FileKind::MachOFat64) => {
            check_universal(path, object::read::macho::MachOFatFile64::parse(bytes).ok(), bytes)?
        }
        _ => check_image(path, bytes)?,
    };
    if let Ok(Some(entries)) = llamafile_format::bundle::zip_entries(path) {
        bail!(
            "runtime {}: it already has a zip appended ({} entries: it is a llamafile); give the bare runtime (target/release/llamafile)",
            escape_path(path),
            entries.len()
        );
    }
    Ok(RuntimeInfo { format, arch, size: bytes.len() as u64 })
}

/// Open and fully check the GGUF (plain, or inside a zip/llamafile, or `archive@entry`).
pub fn check_gguf(path: &Path) -> anyhow::Result<llamafile_format::gguf::GgufFile> {
    // The reader's errors already name the file.
    llamafile_format::gguf::GgufFile::open(path)
}

/// The format and CPU of one executable image, or why it cannot be a runtime.
fn check_image(path: &Path, bytes: &[u8]) -> anyhow::Result<(String, String)> {
    let obj = match object::File::parse(bytes) {
        Ok(o) => o,
        Err(_) => {
            let head: Vec<u8> = bytes.iter().take(4).copied().collect();
            if head.starts_with(b"GGUF") {
                bail!(
                    "runtime {}: this is a GGUF model, not the runtime executable (did you swap --runtime and --gguf?)",
                    escape_path(path)
                );
            }
            bail!(
                "runtime {}: not an executable (no ELF, Mach-O or PE header; it starts with \"{}\")",
                escape_path(path),
                head.escape_ascii()
            );
        }
    };
    let format = format!("{:?}", obj.format()).replace("MachO", "Mach-O").replace("Elf", "ELF").replace("Pe", "PE");
    let arch = arch_name(obj.architecture());
    let kind = obj.kind();
    // An ELF position-independent executable is a "dynamic" object with an entry point; a shared
    // library usually has none. A PE DLL or a Mach-O dylib is "dynamic" whatever its entry.
    let executable = kind == ObjectKind::Executable
        || (kind == ObjectKind::Dynamic && obj.format() == BinaryFormat::Elf && obj.entry() != 0);
    if !executable {
        let what = match kind {
            ObjectKind::Relocatable => "relocatable object file",
            ObjectKind::Dynamic => "shared library",
            ObjectKind::Core => "core dump",
            _ => "file of unknown kind",
        };
        bail!("runtime {}: an {format} {what} for {arch}, not an executable", escape_path(path));
    }
    if !matches!(obj.architecture(), Architecture::X86_64 | Architecture::Aarch64) {
        bail!(
            "runtime {}: {format} executable for {arch}; llamafiles run on x86-64 or aarch64 only",
            escape_path(path)
        );
    }
    Ok((format, arch))
}

/// A macOS universal binary: every slice a Mach-O executable for x86-64 or aarch64 (macOS picks
/// the slice; the runtime finds the zip at the end of the whole file either way).
fn check_universal<F: object::read::macho::FatArch>(
    path: &Path,
    fat: Option<object::read::macho::MachOFatFile<'_, F>>,
    bytes: &[u8],
) -> anyhow::Result<(String, String)> {
    let Some(fat) = fat.filter(|f| !f.arches().is_empty()) else {
        bail!("runtime {}: not an executable (a Mach-O universal header without valid slices)", escape_path(path));
    };
    let mut arches = Vec::new();
    for a in fat.arches() {
        let Ok(slice) = a.data(bytes) else {
            bail!("runtime {}: Mach-O universal binary with a slice past the end of the file", escape_path(path));
        };
        let (format, arch) = check_image(path, slice)?;
        if format != "Mach-O" {
            bail!("runtime {}: Mach-O universal binary with a {format} slice", escape_path(path));
        }
        arches.push(arch);
    }
    Ok(("Mach-O universal".into(), arches.join(" + ")))
}
