//! `pack --runtime` takes a runtime for any target a llamafile can be built for: ELF (Linux),
//! PE (Windows), Mach-O (macOS, one CPU or universal), each for x86-64 or aarch64; libraries,
//! other CPUs and broken universal binaries are refused with one line. The fixtures are the
//! smallest headers `object` parses as each kind (no cross toolchain is needed to make them).

use llamafile_format::gguf::writer::{build, TensorSpec};
use llamafile_format::gguf::MetaValue;
use packer::validate::check_runtime;
use std::path::Path;

const MACHINE_AMD64: u16 = 0x8664;
const MACHINE_ARM64: u16 = 0xAA64;
const MACHINE_I386: u16 = 0x014C;
const CPU_X86_64: u32 = 0x0100_0007;
const CPU_ARM64: u32 = 0x0100_000C;
const CPU_POWERPC: u32 = 18;
const MH_EXECUTE: u32 = 2;
const MH_DYLIB: u32 = 6;

/// A PE32+ image: DOS header, "PE\0\0", COFF header, optional header with 16 data directories,
/// no sections. `dll` sets IMAGE_FILE_DLL (and an entry point, as DLLs have).
fn pe(machine: u16, dll: bool) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&64u32.to_le_bytes());
    b.extend_from_slice(b"PE\0\0");
    let characteristics: u16 = 0x0002 | 0x0020 | if dll { 0x2000 } else { 0 };
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // sections
    b.extend_from_slice(&[0u8; 12]); // time stamp, symbol table, symbol count
    b.extend_from_slice(&240u16.to_le_bytes()); // optional header size
    b.extend_from_slice(&characteristics.to_le_bytes());
    let mut opt = vec![0u8; 240];
    opt[..2].copy_from_slice(&0x20Bu16.to_le_bytes()); // PE32+
    opt[16..20].copy_from_slice(&0x1000u32.to_le_bytes()); // entry point
    opt[108..112].copy_from_slice(&16u32.to_le_bytes()); // data directories
    b.extend_from_slice(&opt);
    b
}

/// A 64-bit little-endian Mach-O header without load commands.
fn macho(cpu: u32, filetype: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0xFEED_FACFu32, cpu, 0, filetype, 0, 0, 0, 0] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// A universal (fat) binary of `slices`, each at a 4 KiB boundary; `cut` drops that many bytes
/// from the end (a slice then runs past the end of the file).
fn universal(slices: &[(u32, Vec<u8>)], cut: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xCAFE_BABEu32.to_be_bytes());
    b.extend_from_slice(&(slices.len() as u32).to_be_bytes());
    let mut offset = 4096u32;
    for (cpu, s) in slices {
        for w in [*cpu, 0, offset, s.len() as u32, 12] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        offset += 4096;
    }
    for (i, (_, s)) in slices.iter().enumerate() {
        b.resize(4096 * (i + 1), 0);
        b.extend_from_slice(s);
    }
    b.truncate(b.len() - cut);
    b
}

fn check(dir: &Path, name: &str, bytes: &[u8]) -> Result<(String, String), String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    check_runtime(&p, bytes).map(|r| (r.format, r.arch)).map_err(|e| {
        let msg = format!("{e:#}");
        assert!(!msg.contains('\n'), "{name}: error is not one line: {msg:?}");
        assert!(msg.contains(&p.display().to_string()), "{name}: error does not name the file: {msg:?}");
        msg
    })
}

#[test]
fn runtimes_for_every_target_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let host = if cfg!(target_arch = "aarch64") { "aarch64" } else { "x86-64" };
    let ok = |s: &str, t: &str| Ok((s.to_string(), t.to_string()));
    assert_eq!(check(d, "linux", &own), ok("ELF", host));
    assert_eq!(check(d, "win-x64.exe", &pe(MACHINE_AMD64, false)), ok("PE", "x86-64"));
    assert_eq!(check(d, "win-arm64.exe", &pe(MACHINE_ARM64, false)), ok("PE", "aarch64"));
    assert_eq!(check(d, "mac-x64", &macho(CPU_X86_64, MH_EXECUTE)), ok("Mach-O", "x86-64"));
    assert_eq!(check(d, "mac-arm64", &macho(CPU_ARM64, MH_EXECUTE)), ok("Mach-O", "aarch64"));
    let fat = universal(&[(CPU_X86_64, macho(CPU_X86_64, MH_EXECUTE)), (CPU_ARM64, macho(CPU_ARM64, MH_EXECUTE))], 0);
    assert_eq!(check(d, "mac-universal", &fat), ok("Mach-O universal", "x86-64 + aarch64"));
}

#[test]
fn libraries_other_cpus_and_broken_universal_binaries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // A DLL has an entry point (DllMain) but is no executable.
        ("lib.dll", pe(MACHINE_AMD64, true), "PE shared library for x86-64, not an executable"),
        ("win32.exe", pe(MACHINE_I386, false), "x86 (32-bit); llamafiles run on x86-64 or aarch64 only"),
        ("lib.dylib", macho(CPU_ARM64, MH_DYLIB), "Mach-O shared library for aarch64"),
        (
            "fat-ppc",
            universal(&[(CPU_X86_64, macho(CPU_X86_64, MH_EXECUTE)), (CPU_POWERPC, macho(CPU_POWERPC, MH_EXECUTE))], 0),
            "PowerPc",
        ),
        ("fat-dylib", universal(&[(CPU_ARM64, macho(CPU_ARM64, MH_DYLIB))], 0), "shared library"),
        ("fat-pe", universal(&[(CPU_X86_64, pe(MACHINE_AMD64, false))], 0), "universal binary with a PE slice"),
        ("fat-cut", universal(&[(CPU_X86_64, macho(CPU_X86_64, MH_EXECUTE))], 8), "slice past the end of the file"),
        ("fat-empty", [universal(&[], 0), vec![0; 64]].concat(), "without valid slices"),
        // A Java class file starts with the same magic; its version is no slice count.
        ("Hello.class", [&b"\xca\xfe\xba\xbe\0\0\0\x34"[..], &[0; 64]].concat(), "without valid slices"),
    ];
    for (name, bytes, want) in cases {
        match check(d, name, &bytes) {
            Ok(r) => panic!("{name}: accepted as {r:?}"),
            Err(e) => assert!(e.contains(want), "{name}: expected {want:?} in {e:?}"),
        }
    }
}

/// A Windows or macOS runtime packs like a Linux one: its bytes, then the zip.
#[test]
fn a_pe_and_a_universal_runtime_pack_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let gguf = d.join("m.gguf");
    let g = build(
        &[("general.architecture", MetaValue::String("llama".into()))],
        &[TensorSpec { name: "w", dims: &[64], ggml_type: 0, data: &data }],
        32,
    );
    std::fs::write(&gguf, g).unwrap();
    let fat = universal(&[(CPU_X86_64, macho(CPU_X86_64, MH_EXECUTE)), (CPU_ARM64, macho(CPU_ARM64, MH_EXECUTE))], 0);
    for (name, runtime, format) in [("win.exe", pe(MACHINE_AMD64, false), "PE"), ("mac", fat, "Mach-O universal")] {
        let rt = d.join(name);
        std::fs::write(&rt, &runtime).unwrap();
        let out = d.join(format!("{name}.llamafile"));
        let o = packer::PackOptions {
            runtime: rt,
            gguf: gguf.clone(),
            out: out.clone(),
            args: Some("-n 1\n".into()),
            extra: vec![],
            force: false,
            progress: false,
            sign: None,
        };
        let r = packer::pack(&o).unwrap();
        assert_eq!(r.runtime.format, format);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..runtime.len()], &runtime[..], "{name}: the runtime's bytes come first");
        let entries = llamafile_format::bundle::zip_entries(&out).unwrap().unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["m.gguf", ".args"], "{name}");
        assert_eq!(entries[0].data_offset % packer::GGUF_ALIGN, 0);
    }
}
