//! Embeds PTX compiled at build time, when NVRTC can be loaded here, so that users of the
//! library need only the NVIDIA driver (its JIT turns PTX into machine code); where NVRTC is
//! installed at run time, the backend still compiles for the exact device and caches the result.
//!
//! NVRTC is called through five C functions with libloading rather than through cudarc: a
//! build dependency on cudarc would compile all of it a second time for the build script.
//! Without NVRTC (or with LLAMAFILE_NO_PREBUILT_PTX set) an empty PTX is embedded and the backend
//! needs NVRTC at run time.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

/// The oldest architecture the kernels support (warp shuffles with masks): PTX for it is
/// JIT-compiled by the driver for any newer GPU.
const ARCH: &str = "compute_61";

const FILES: &[&str] = &["src/kernels/common.cuh", "src/kernels/matmul.cu", "src/kernels/ops.cu"];

type CreateFn = unsafe extern "C" fn(
    *mut *mut c_void,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;

/// The program exactly as `kernels::program()` assembles it (a test checks they agree).
fn program() -> String {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f}: {e}"));
    let mut s = read(FILES[0]);
    for f in &FILES[1..] {
        let name = f.rsplit('/').next().unwrap();
        s.push_str(&format!("\n// ---- {name} ----\n"));
        s.push_str(&read(f));
    }
    s
}

fn compile(src: &str) -> Result<String, String> {
    let names =
        ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11", "nvrtc64_120_0.dll", "libnvrtc.dylib"];
    // SAFETY: loading NVRTC runs only its own initialisers.
    let lib = names.iter().find_map(|n| unsafe { libloading::Library::new(*n) }.ok()).ok_or("libnvrtc not found")?;
    // SAFETY: the signatures are NVRTC's documented C API; every pointer passed is valid for the
    // call, and the program handle is destroyed once.
    unsafe {
        let create: libloading::Symbol<CreateFn> = lib.get(b"nvrtcCreateProgram\0").map_err(|e| e.to_string())?;
        let comp: libloading::Symbol<CompileFn> = lib.get(b"nvrtcCompileProgram\0").map_err(|e| e.to_string())?;
        let ptx_size: libloading::Symbol<SizeFn> = lib.get(b"nvrtcGetPTXSize\0").map_err(|e| e.to_string())?;
        let get_ptx: libloading::Symbol<GetFn> = lib.get(b"nvrtcGetPTX\0").map_err(|e| e.to_string())?;
        let log_size: libloading::Symbol<SizeFn> = lib.get(b"nvrtcGetProgramLogSize\0").map_err(|e| e.to_string())?;
        let get_log: libloading::Symbol<GetFn> = lib.get(b"nvrtcGetProgramLog\0").map_err(|e| e.to_string())?;
        let destroy: libloading::Symbol<DestroyFn> = lib.get(b"nvrtcDestroyProgram\0").map_err(|e| e.to_string())?;
        let csrc = CString::new(src).map_err(|e| e.to_string())?;
        let name = CString::new("llamafile_kernels.cu").unwrap();
        let mut prog: *mut c_void = std::ptr::null_mut();
        if create(&mut prog, csrc.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) != 0 {
            return Err("nvrtcCreateProgram failed".into());
        }
        let opt = CString::new(format!("--gpu-architecture={ARCH}")).unwrap();
        let opts = [opt.as_ptr()];
        let status = comp(prog, 1, opts.as_ptr());
        let result = if status != 0 {
            let mut n = 0usize;
            log_size(prog, &mut n);
            let mut buf = vec![0 as c_char; n.max(1)];
            get_log(prog, buf.as_mut_ptr());
            Err(format!("NVRTC: {}", CStr::from_ptr(buf.as_ptr()).to_string_lossy()))
        } else {
            let mut n = 0usize;
            ptx_size(prog, &mut n);
            let mut buf = vec![0 as c_char; n.max(1)];
            get_ptx(prog, buf.as_mut_ptr());
            Ok(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
        };
        destroy(&mut prog);
        result
    }
}

fn main() {
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    println!("cargo:rerun-if-env-changed=LLAMAFILE_NO_PREBUILT_PTX");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let src = program();
    let ptx = if std::env::var_os("LLAMAFILE_NO_PREBUILT_PTX").is_some() {
        String::new()
    } else {
        match compile(&src) {
            Ok(p) => p,
            Err(e) => {
                if e != "libnvrtc not found" {
                    println!("cargo:warning=CUDA kernels: {}", e.replace('\n', " "));
                }
                String::new()
            }
        }
    };
    std::fs::write(out.join("prebuilt.ptx"), &ptx).unwrap();
    std::fs::write(out.join("prebuilt.src"), if ptx.is_empty() { "" } else { &src }).unwrap();
}
