//! The portable build (`scripts/build-portable`): its `llamafile` and `pack` need glibc 2.17 at
//! most and only glibc's own libraries and libgcc_s, so they start on any x86-64 Linux since
//! RHEL/CentOS 7. `scripts/test-portable` runs this file (and the whole suite) with
//! `LLAMAFILE_BIN_DIR` at those binaries; without it only the reader itself is checked, on the
//! native build.

use object::read::elf::ElfFile64;
use object::{elf, Endianness};
use std::path::Path;

/// The newest glibc symbol version the portable binaries may need.
const MAX_GLIBC: [u32; 3] = [2, 17, 0];
/// The libraries they may link: glibc's (the dynamic loader among them) and libgcc_s, which
/// every glibc system has. Nothing else: no libstdc++, no OpenSSL, no CUDA (GPU backends are
/// opened at run time with dlopen).
const ALLOWED_LIBS: [&str; 6] =
    ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "libgcc_s.so.1", "ld-linux-x86-64.so.2"];

/// What an ELF executable needs from the system: DT_NEEDED libraries, and every
/// (library, symbol version) pair of its version-needs table.
struct Needs {
    libs: Vec<String>,
    versions: Vec<(String, String)>,
}

fn needs(path: &Path) -> Needs {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let data = &data[..];
    let file =
        ElfFile64::<Endianness>::parse(data).unwrap_or_else(|e| panic!("{}: not a 64-bit ELF: {e}", path.display()));
    let endian = file.endian();
    let sections = file.elf_section_table();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let table = sections.dynamic_table(endian, data).unwrap();
    let libs = table.iter().filter(|d| d.tag == elf::DT_NEEDED).map(|d| text(table.string(d).unwrap())).collect();
    let mut versions = Vec::new();
    if let Some((mut needs, link)) = sections.gnu_verneed(endian, data).unwrap() {
        let strings = sections.strings(endian, data, link).unwrap();
        while let Some((need, mut aux)) = needs.next().unwrap() {
            let lib = text(need.file(endian, strings).unwrap());
            while let Some(a) = aux.next().unwrap() {
                versions.push((lib.clone(), text(a.name(endian, strings).unwrap())));
            }
        }
    }
    Needs { libs, versions }
}

/// "GLIBC_2.2.5" -> [2, 2, 5]; other version names -> None. Compared as numbers: as text,
/// "2.2.5" sorts after "2.17".
fn glibc_version(name: &str) -> Option<[u32; 3]> {
    let mut v = [0u32; 3];
    let parts: Vec<&str> = name.strip_prefix("GLIBC_")?.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    for (slot, p) in v.iter_mut().zip(&parts) {
        *slot = p.parse().ok()?;
    }
    Some(v)
}

fn newest_glibc(n: &Needs) -> Option<[u32; 3]> {
    n.versions.iter().filter_map(|(_, v)| glibc_version(v)).max()
}

fn show(v: [u32; 3]) -> String {
    if v[2] == 0 {
        format!("{}.{}", v[0], v[1])
    } else {
        format!("{}.{}.{}", v[0], v[1], v[2])
    }
}

#[test]
fn glibc_versions_compare_as_numbers() {
    assert_eq!(glibc_version("GLIBC_2.2.5"), Some([2, 2, 5]));
    assert_eq!(glibc_version("GLIBC_2.17"), Some([2, 17, 0]));
    assert!(glibc_version("GLIBC_2.2.5") < glibc_version("GLIBC_2.17"));
    assert!(glibc_version("GLIBC_2.34") > Some(MAX_GLIBC));
    assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
    assert_eq!(glibc_version("GCC_3.0"), None);
}

/// The reader finds what any dynamically linked build needs (libc and its versioned symbols),
/// so the portable check below cannot pass by reading nothing.
#[test]
fn the_reader_finds_libc_and_its_versions_in_the_built_binaries() {
    for name in ["llamafile", "pack"] {
        let p = e2e::bin(name);
        let n = needs(&p);
        assert!(n.libs.iter().any(|l| l == "libc.so.6"), "{}: NEEDED {:?}", p.display(), n.libs);
        let newest =
            newest_glibc(&n).unwrap_or_else(|| panic!("{}: no GLIBC_ version found in {:?}", p.display(), n.versions));
        assert!(newest >= [2, 2, 5], "{}: {newest:?}", p.display());
        eprintln!("{}: needs glibc {} and {:?}", p.display(), show(newest), n.libs);
    }
}

#[test]
fn portable_binaries_need_glibc_2_17_and_base_libraries_only() {
    if std::env::var_os("LLAMAFILE_BIN_DIR").is_none() {
        eprintln!("SKIPPED: LLAMAFILE_BIN_DIR is not set (scripts/test-portable sets it to the portable build)");
        return;
    }
    for name in ["llamafile", "pack"] {
        let p = e2e::bin(name);
        let n = needs(&p);
        let newest = newest_glibc(&n).unwrap_or_else(|| panic!("{}: no GLIBC_ version found", p.display()));
        let too_new: Vec<&String> = n
            .versions
            .iter()
            .filter(|(_, v)| glibc_version(v).is_some_and(|g| g > MAX_GLIBC))
            .map(|(_, v)| v)
            .collect();
        assert!(
            newest <= MAX_GLIBC,
            "{}: needs glibc {} (symbol versions {too_new:?}); at most {} is allowed",
            p.display(),
            show(newest),
            show(MAX_GLIBC)
        );
        for lib in n.libs.iter().chain(n.versions.iter().map(|(l, _)| l)) {
            assert!(ALLOWED_LIBS.contains(&lib.as_str()), "{}: links {lib}, not one of {ALLOWED_LIBS:?}", p.display());
        }
        eprintln!("{}: glibc {} at most, libraries {:?}", p.display(), show(newest), n.libs);
    }
}
