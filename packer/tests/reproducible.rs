//! Reproducible packs: the same runtime, GGUF and `.args` give a byte-identical llamafile,
//! whatever the inputs' modification times, permissions and paths, and wherever `pack` runs.

use llamafile_format::gguf::writer::{build, TensorSpec};
use llamafile_format::gguf::MetaValue;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Copies of the inputs in `dir`, with the given modification time and mode.
fn inputs(
    dir: &Path,
    runtime: &[u8],
    gguf: &[u8],
    args: &str,
    mtime: SystemTime,
    mode: u32,
) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let mut paths = Vec::new();
    for (name, bytes) in [("llamafile", runtime), ("model.gguf", gguf), ("model.args", args.as_bytes())] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
        paths.push(p);
    }
    (paths[0].clone(), paths[1].clone(), paths[2].clone())
}

#[test]
fn packing_twice_gives_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Any executable stands in for the runtime: this test binary.
    let runtime = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let data: Vec<u8> = (0..4096u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let gguf = build(
        &[("general.architecture", MetaValue::String("llama".into())), ("general.name", MetaValue::String("r".into()))],
        &[TensorSpec { name: "w", dims: &[64, 64], ggml_type: 0, data: &data }],
        32,
    );
    let args = "-n 4\n--temp 0\n";
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let (rt_a, g_a, args_a) = inputs(&t.join("a"), &runtime, &gguf, args, old, 0o700);
    let (rt_b, g_b, args_b) = inputs(&t.join("b/deeper/path"), &runtime, &gguf, args, SystemTime::now(), 0o755);

    // First: absolute paths, run from the temporary folder. Second: relative paths, run from
    // the inputs' folder, a second later (a clock-dependent field would differ).
    let out_a = t.join("one.llamafile");
    let r = Command::new(env!("CARGO_BIN_EXE_pack"))
        .current_dir(t)
        .arg("--runtime")
        .arg(&rt_a)
        .arg("--gguf")
        .arg(&g_a)
        .arg("--args-file")
        .arg(&args_a)
        .arg("-o")
        .arg(&out_a)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::thread::sleep(Duration::from_millis(1100));
    let dir_b = rt_b.parent().unwrap();
    assert_eq!(args_b.parent().unwrap(), dir_b);
    let r = Command::new(env!("CARGO_BIN_EXE_pack"))
        .current_dir(dir_b)
        .args([
            "--runtime",
            "./llamafile",
            "--gguf",
            "model.gguf",
            "--args-file",
            "model.args",
            "-o",
            "../two.llamafile",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out_b = dir_b.parent().unwrap().join("two.llamafile");
    assert!(g_b.exists());

    let a = std::fs::read(&out_a).unwrap();
    let b = std::fs::read(&out_b).unwrap();
    assert_eq!(a.len(), b.len(), "the two packs differ in length");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("the two packs differ first at byte {i} of {}", a.len());
    }
    // No host data in what `pack` added after the runtime: no path of the inputs or the folder.
    let tail = &a[runtime.len()..];
    for host in [t.to_str().unwrap(), "deeper", "one.llamafile"] {
        assert!(!tail.windows(host.len()).any(|w| w == host.as_bytes()), "the zip holds {host:?}");
    }
    // The entries: fixed order and a fixed time stamp (1980-01-01 00:00, DOS date 0x0021,
    // time 0) in every local and central header.
    let entries = llamafile_format::bundle::zip_entries(&out_a).unwrap().unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["model.gguf", ".args"]);
    for e in &entries {
        let h = e.header_offset as usize;
        assert_eq!(&a[h..h + 4], b"PK\x03\x04");
        assert_eq!(&a[h + 10..h + 14], &[0, 0, 0x21, 0], "{}: local header time stamp", e.name);
    }
    let mut central = 0;
    for (i, w) in a.windows(4).enumerate().skip(runtime.len()) {
        if w == b"PK\x01\x02" {
            assert_eq!(&a[i + 12..i + 16], &[0, 0, 0x21, 0], "central header time stamp at {i}");
            central += 1;
        }
    }
    assert_eq!(central, entries.len());
}
