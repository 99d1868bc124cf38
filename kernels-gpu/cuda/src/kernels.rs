//! The CUDA C sources embedded in the library, and their compilation to PTX with NVRTC (loaded
//! at run time), cached on disk so that later starts skip the compiler.

use ggml_types::WeightType;

/// Helpers every source starts with.
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// (name, source) of every kernel file; each is compiled as `COMMON + source`.
pub const SOURCES: &[(&str, &str)] =
    &[("matmul.cu", include_str!("kernels/matmul.cu")), ("ops.cu", include_str!("kernels/ops.cu"))];

/// The whole program the backend compiles (one module).
pub fn program() -> String {
    let mut s = String::from(COMMON);
    for (name, src) in SOURCES {
        s.push_str(&format!("\n// ---- {name} ----\n"));
        s.push_str(src);
    }
    s
}

/// PTX of [`program()`] for [`PREBUILT_ARCH`], compiled by build.rs when NVRTC was available at
/// build time (empty otherwise): the driver JIT-compiles it for the actual GPU, so a user
/// without NVRTC still runs.
pub const PREBUILT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/prebuilt.ptx"));
/// The program text PREBUILT_PTX was compiled from (empty when there is none).
pub const PREBUILT_SRC: &str = include_str!(concat!(env!("OUT_DIR"), "/prebuilt.src"));
pub const PREBUILT_ARCH: &str = "compute_61";

/// Name of the matrix kernel for weight type `t`: `matmul_` and the type's name in lower case
/// (`matmul_q4_k`), defined in `matmul.cu` by a `DEFINE_MATMUL(matmul_q4_k, ...)` line.
pub fn matmul_kernel(t: WeightType) -> String {
    format!("matmul_{}", t.name().to_ascii_lowercase())
}

/// The weight types with a matrix kernel: those of the type table whose kernel `matmul.cu`
/// defines (the others stay on the CPU). Read once, when the backend loads its kernels.
pub fn weight_types() -> Vec<WeightType> {
    let matmul = SOURCES.iter().find(|(name, _)| *name == "matmul.cu").map_or("", |(_, src)| *src);
    ggml_types::TYPES
        .iter()
        .map(|f| f.ty)
        .filter(|t| matmul.contains(&format!("DEFINE_MATMUL({},", matmul_kernel(*t))))
        .collect()
}

/// The other kernels the backend loads.
pub const OP_KERNELS: &[&str] =
    &["rmsnorm", "rope", "add", "mul", "add_rows", "scale", "glu", "copy_f32_f16", "copy_f32_f32", "attention"];

/// Cache folder for compiled PTX: `LLAMAFILE_CACHE`, `$XDG_CACHE_HOME/llamafile-rs` or
/// `~/.cache/llamafile-rs`, then `ptx/`.
pub fn ptx_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let root = if let Some(d) = std::env::var_os("LLAMAFILE_CACHE") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("llamafile-rs")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("llamafile-rs")
    };
    Some(root.join("ptx"))
}

/// Cache file name for `src` compiled for `arch` (e.g. "compute_86").
pub fn cache_key(src: &str, arch: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(arch.as_bytes());
    h.update([0]);
    h.update(src.as_bytes());
    let hex: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{arch}-{hex}.ptx")
}

#[cfg(feature = "cuda")]
pub mod nvrtc {
    //! Compilation with NVRTC (libnvrtc loaded at run time).
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

    /// Whether libnvrtc can be loaded (cudarc panics on first use when it cannot).
    pub fn available() -> bool {
        // SAFETY: only tries to dlopen the library by its usual names.
        unsafe { cudarc::nvrtc::sys::is_culib_present() }
    }

    /// Compiles `src` to PTX for `arch` ("compute_86"); the error carries NVRTC's log.
    pub fn compile(src: &str, arch: &'static str) -> Result<String, String> {
        if !available() {
            return Err("libnvrtc not found (install the CUDA runtime compiler, e.g. `pip install nvidia-cuda-nvrtc-cu12` and add its lib folder to LD_LIBRARY_PATH)".into());
        }
        let opts = CompileOptions { arch: Some(arch), use_fast_math: Some(false), ..Default::default() };
        match compile_ptx_with_opts(src, opts) {
            Ok(ptx) => Ok(ptx.to_src()),
            Err(CompileError::CompileError { log, .. }) => Err(format!("NVRTC: {}", log.to_string_lossy())),
            Err(e) => Err(format!("NVRTC: {e}")),
        }
    }

    /// PTX for the device: from the cache, else compiled by NVRTC for `arch` and cached, else
    /// the PTX embedded at build time (JIT-compiled by the driver).
    pub fn ptx_for_device(src: &str, arch: &'static str) -> Result<String, String> {
        match compile_cached(src, arch) {
            Ok(p) => Ok(p),
            Err(_) if !super::PREBUILT_PTX.is_empty() && src == super::PREBUILT_SRC => {
                Ok(super::PREBUILT_PTX.to_string())
            }
            Err(e) => Err(format!("{e}; and this library was built without prebuilt PTX")),
        }
    }

    /// PTX for `src` and `arch` from the cache, or compiled and stored there.
    pub fn compile_cached(src: &str, arch: &'static str) -> Result<String, String> {
        let path = super::ptx_cache_dir().map(|d| d.join(super::cache_key(src, arch)));
        if let Some(p) = &path {
            if let Ok(ptx) = std::fs::read_to_string(p) {
                if ptx.contains(".entry") {
                    return Ok(ptx);
                }
            }
        }
        let ptx = compile(src, arch)?;
        if let Some(p) = &path {
            // A cache that cannot be written only costs a compile next time.
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &ptx).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
        Ok(ptx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_matmul_kernel_in_the_sources_is_of_a_listed_type() {
        let prog = program();
        // Every DEFINE_MATMUL(name, ...) line (but the macro's own definition) names the kernel
        // of a type in the table: a misspelt or unlisted one would never be loaded.
        let mut defined: Vec<&str> = prog
            .split("DEFINE_MATMUL(")
            .skip(1)
            .filter_map(|rest| rest.split_once(',').map(|(name, _)| name.trim()))
            .filter(|name| *name != "NAME")
            .collect();
        let mut listed: Vec<String> = weight_types().into_iter().map(matmul_kernel).collect();
        defined.sort_unstable();
        listed.sort_unstable();
        assert_eq!(defined, listed, "DEFINE_MATMUL lines vs the weight types found");
        assert!(listed.len() >= 12, "{listed:?}");
        assert!(!weight_types().contains(&WeightType::Q3_K), "Q3_K has no kernel (falls back to the CPU)");
        for k in OP_KERNELS {
            assert!(prog.contains(&format!("void {k}(")), "{k} missing");
        }
    }

    #[test]
    fn prebuilt_ptx_is_of_these_sources() {
        if PREBUILT_PTX.is_empty() {
            eprintln!("note: built without NVRTC: no prebuilt PTX (users then need NVRTC)");
            return;
        }
        assert_eq!(PREBUILT_SRC, program(), "build.rs assembled another program than kernels::program()");
        let matmul: Vec<String> = weight_types().into_iter().map(matmul_kernel).collect();
        for k in OP_KERNELS.iter().copied().chain(matmul.iter().map(String::as_str)) {
            assert!(PREBUILT_PTX.contains(&format!(".entry {k}(")), "{k} missing from the prebuilt PTX");
        }
        assert!(PREBUILT_PTX.contains(".target sm_61"));
    }

    #[test]
    fn cache_keys_depend_on_source_and_arch() {
        assert_ne!(cache_key("a", "compute_86"), cache_key("b", "compute_86"));
        assert_ne!(cache_key("a", "compute_86"), cache_key("a", "compute_75"));
        assert!(cache_key("a", "compute_86").starts_with("compute_86-"));
    }
}
