//! The single-file container end to end, through the real binaries: `pack` each shared model,
//! check the packed GGUF bytes, the 64 KiB alignment, that Python's zipfile and `unzip -l` read
//! the result and that the packed file runs `--info` on itself; a sparse GGUF over 4 GiB (ZIP64);
//! every bad input: a non-zero exit, one line, no panic, no file left; the runtime's own errors
//! for models it cannot use; `.args` merged into the command line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pack() -> PathBuf {
    e2e::bin("pack")
}
fn runtime() -> PathBuf {
    e2e::bin("llamafile")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--help").output().is_ok()
}

/// A GGUF v3 header with the given metadata strings and one F32 tensor of `n` elements, laid
/// out as the format says (data at the next 32-byte boundary); the data is not written: the
/// caller sets the length (sparse) or appends it.
fn gguf_header(meta: &[(&str, &str)], n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    for (k, v) in meta {
        s(&mut b, k);
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, v);
    }
    s(&mut b, "big.weight");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32, 0);
    b
}

/// A small valid GGUF with 64 F32 values.
fn small_gguf(dir: &Path, name: &str) -> PathBuf {
    let mut b = gguf_header(&[("general.architecture", "llama"), ("general.name", "small")], 64);
    for i in 0..64 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

/// Python's zipfile: (name, header offset, size, crc ok) per entry.
fn python_zip_list(path: &Path) -> Option<Vec<(String, u64, u64)>> {
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor i in z.infolist(): print(i.filename, i.header_offset, i.file_size)";
    let out = Command::new("python3").arg("-c").arg(script).arg(path).output().ok()?;
    assert!(out.status.success(), "python zipfile failed on {}: {}", path.display(), text(&out.stderr));
    Some(
        text(&out.stdout)
            .lines()
            .map(|l| {
                let v: Vec<&str> = l.split(' ').collect();
                (v[0].to_string(), v[1].parse().unwrap(), v[2].parse().unwrap())
            })
            .collect(),
    )
}

/// Offset of the data of the entry whose local header is at `header`: 30 + name + extra.
fn data_offset(file: &Path, header: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).unwrap();
    let mut h = [0u8; 30];
    f.read_exact_at(&mut h, header).unwrap();
    assert_eq!(&h[..4], b"PK\x03\x04", "local header signature at {header}");
    header + 30 + u16::from_le_bytes([h[26], h[27]]) as u64 + u16::from_le_bytes([h[28], h[29]]) as u64
}

/// The `weights offset:` value of `--info`.
fn info_offset(info: &str) -> u64 {
    let line = info
        .lines()
        .find(|l| l.starts_with("weights offset:"))
        .unwrap_or_else(|| panic!("no weights offset in:\n{info}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn check_packed(packed: &Path, original: &Path) {
    let entry = original.file_name().unwrap().to_str().unwrap();
    // Mode 0755.
    assert_eq!(std::fs::metadata(packed).unwrap().permissions().mode() & 0o777, 0o755);
    // The packed file runs --info from itself (no -m): the runtime maps its own tail.
    let info = run(Command::new(packed).arg("--info"));
    let info_text = text(&info.stdout);
    assert!(info.status.success(), "{} --info: {}", packed.display(), text(&info.stderr));
    assert!(info_text.contains("architecture:    llama"), "{info_text}");
    let offset = info_offset(&info_text);
    assert_eq!(offset % 65536, 0, "GGUF data at {offset}, not 64 KiB-aligned");
    // The bytes there are the original's, byte for byte.
    let orig = std::fs::read(original).unwrap();
    let all = std::fs::read(packed).unwrap();
    assert!(all.len() as u64 >= offset + orig.len() as u64);
    assert!(
        all[offset as usize..offset as usize + orig.len()] == orig[..],
        "{}: packed GGUF bytes differ",
        packed.display()
    );
    // Python's zipfile finds the entry at that offset with that size.
    if let Some(list) = python_zip_list(packed) {
        let (_, header, size) =
            list.iter().find(|(n, _, _)| n == entry).unwrap_or_else(|| panic!("{entry} not in {list:?}"));
        assert_eq!(*size, orig.len() as u64);
        assert_eq!(data_offset(packed, *header), offset);
    } else {
        e2e::skip("python3 (the zipfile check)", "install python3");
    }
    // unzip -l lists it.
    if have("unzip") {
        let out = run(Command::new("unzip").arg("-l").arg(packed));
        let t = text(&out.stdout);
        assert!(
            out.status.success() && t.contains(entry) && t.contains(&orig.len().to_string()),
            "unzip -l: {t}{}",
            text(&out.stderr)
        );
    } else {
        e2e::skip("unzip (the `unzip -l` check)", "apt-get install unzip");
    }
}

#[test]
fn packs_every_shared_model() {
    let Some(shared) = e2e::require_shared() else { return };
    let models = shared.join("models");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap_or_else(|e| panic!("{}: {e}", models.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "expected the 9 tiny models in {}", models.display());
    let dir = tempfile::tempdir().unwrap();
    for p in &paths {
        let out = dir.path().join(format!("{}.llamafile", p.file_stem().unwrap().to_str().unwrap()));
        let r = run(Command::new(pack()).arg("--runtime").arg(runtime()).arg("--gguf").arg(p).arg("-o").arg(&out));
        assert!(r.status.success(), "pack {}: {}", p.display(), text(&r.stderr));
        assert!(r.stdout.is_empty(), "pack prints its summary on stderr");
        check_packed(&out, p);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn default_output_name_runtime_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_gguf(dir.path(), "small-model.gguf");
    // No --runtime: the llamafile beside pack; no -o: <stem>.llamafile in the current directory.
    let r = run(Command::new(pack()).current_dir(dir.path()).arg("--gguf").arg(&g).args(["--args", "--info ..."]));
    assert!(r.status.success(), "{}", text(&r.stderr));
    let out = dir.path().join("small-model.llamafile");
    assert!(out.exists());
    // `.args` holds --info: running it with no arguments prints the info.
    let info = run(&mut Command::new(&out));
    assert!(info.status.success(), "{}", text(&info.stderr));
    assert!(text(&info.stdout).contains("name:            small"), "{}", text(&info.stdout));
    // `-m NAME` naming the embedded entry (upstream llamafiles' .args say `-m /zip/NAME.gguf`).
    for m in ["small-model.gguf", "/zip/small-model.gguf"] {
        let r = run(Command::new(&out).current_dir(std::env::temp_dir()).args(["-m", m]));
        assert!(r.status.success(), "-m {m}: {}", text(&r.stderr));
        assert!(text(&r.stdout).contains("name:            small"));
    }
    // --list: entries with offsets, sizes and alignment, .args, a GGUF summary.
    let l = run(Command::new(pack()).arg("--list").arg(&out));
    let t = text(&l.stdout);
    assert!(l.status.success(), "{}", text(&l.stderr));
    let row = t.lines().find(|l| l.ends_with("  small-model.gguf")).unwrap_or_else(|| panic!("{t}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let (offset, size): (u64, u64) = (cols[0].parse().unwrap(), cols[1].parse().unwrap());
    assert_eq!(offset % 65536, 0);
    assert_eq!(size, std::fs::metadata(&g).unwrap().len());
    assert_eq!(cols[2], "Stored");
    assert!(t.contains(".args:\n  --info ...") && t.contains("architecture:    llama"), "{t}");
}

/// Ctrl-C (SIGINT) or SIGTERM in the middle of packing a big input leaves nothing behind: no
/// output, and no hidden temporary file either; `pack` dies of the signal.
#[test]
fn interrupted_pack_leaves_no_partial_output() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [libc_sig::INT, libc_sig::TERM] {
        let dir = tempfile::tempdir().unwrap();
        // 1 GiB of F32 data, written out: pack checksums and copies holes without touching
        // them (a sparse 4 GiB input packs in ~0.1 s, faster than the signal can be sent),
        // data it must read and copy (about a second here)
        let n: u64 = (1u64 << 30) / 4;
        let header = gguf_header(&[("general.architecture", "llama"), ("general.name", "big")], n);
        let g = dir.path().join("big.gguf");
        {
            let f = std::fs::File::create(&g).unwrap();
            use std::io::Write;
            let mut w = std::io::BufWriter::new(f);
            w.write_all(&header).unwrap();
            let chunk = vec![0x5au8; 4 << 20];
            for _ in 0..(4 * n) / chunk.len() as u64 {
                w.write_all(&chunk).unwrap();
            }
            w.flush().unwrap();
        }
        let out = dir.path().join("big.llamafile");
        let mut child = Command::new(pack())
            .arg("--runtime")
            .arg(runtime())
            .arg("--gguf")
            .arg(&g)
            .arg("-o")
            .arg(&out)
            .spawn()
            .unwrap();
        // Wait until the temporary output exists (pack is then writing), then interrupt.
        let t = std::time::Instant::now();
        let tmp_exists = || {
            std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        };
        while !tmp_exists() && t.elapsed() < std::time::Duration::from_secs(20) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_some() {
            eprintln!("SKIPPED (signal {sig}): pack finished before it could be interrupted");
            continue;
        }
        assert!(tmp_exists(), "pack made no temporary output within 20 s");
        let killed = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "pack should die of signal {sig}: {status:?}");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["big.gguf".to_string()], "files left after signal {sig}");
    }
}

/// Signal numbers (Linux, x86-64 and the others this project builds for).
mod libc_sig {
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}

#[test]
fn sparse_gguf_over_4_gib_packs_with_zip64() {
    let dir = tempfile::tempdir().unwrap();
    let n: u64 = (4u64 << 30) / 4 + 1024 * 1024; // F32 elements: 4 GiB + 4 MiB of data
    let header = gguf_header(&[("general.architecture", "llama"), ("general.name", "big")], n);
    let g = dir.path().join("big.gguf");
    {
        let f = std::fs::File::create(&g).unwrap();
        use std::io::Write;
        (&f).write_all(&header).unwrap();
        f.set_len(header.len() as u64 + 4 * n).unwrap();
    }
    let gguf_len = std::fs::metadata(&g).unwrap().len();
    assert!(gguf_len > 4 << 30);
    let out = dir.path().join("big.llamafile");
    let t = std::time::Instant::now();
    let r = run(Command::new(pack())
        .arg("--runtime")
        .arg(runtime())
        .arg("--gguf")
        .arg(&g)
        .arg("-o")
        .arg(&out)
        .args(["--args", "-n 1"]));
    assert!(r.status.success(), "{}", text(&r.stderr));
    eprintln!("packed a sparse {gguf_len}-byte GGUF in {:.2} s", t.elapsed().as_secs_f64());
    let m = std::fs::metadata(&out).unwrap();
    assert!(m.len() > gguf_len);
    let in_disk = std::fs::metadata(&g).unwrap().blocks() * 512;
    if in_disk < 1 << 20 {
        // The input is really sparse here: the output must have kept the holes.
        assert!(m.blocks() * 512 < 256 << 20, "output uses {} bytes on disk: holes were filled", m.blocks() * 512);
    }
    // Python's zipfile (ZIP64 size and offsets) and unzip -l read it; the runtime maps it.
    if let Some(list) = python_zip_list(&out) {
        let big = list.iter().find(|(n, _, _)| n == "big.gguf").unwrap();
        assert_eq!(big.2, gguf_len);
        assert_eq!(data_offset(&out, big.1) % 65536, 0);
        let args = list.iter().find(|(n, _, _)| n == ".args").unwrap();
        assert!(args.1 > 4 << 30, ".args after the big entry needs a ZIP64 offset");
    }
    if have("unzip") {
        let l = run(Command::new("unzip").arg("-l").arg(&out));
        assert!(
            l.status.success() && text(&l.stdout).contains(&gguf_len.to_string()),
            "{}{}",
            text(&l.stdout),
            text(&l.stderr)
        );
    }
    let l = run(Command::new(pack()).arg("--list").arg(&out));
    assert!(
        l.status.success() && text(&l.stdout).contains(&format!(" {gguf_len} ")),
        "{}{}",
        text(&l.stdout),
        text(&l.stderr)
    );
    let info = run(Command::new(runtime()).arg("-m").arg(&out).arg("--info"));
    assert!(
        info.status.success() && text(&info.stdout).contains("parameters:      1.07 B"),
        "{}{}",
        text(&info.stdout),
        text(&info.stderr)
    );
}

/// A minimal ELF header: 32-bit ARM executable with an entry point and no sections.
fn arm_elf() -> Vec<u8> {
    let mut h = vec![0u8; 52];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 1; // 32-bit
    h[5] = 1; // little-endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..28].copy_from_slice(&0x8000u32.to_le_bytes()); // entry
    h[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
    h
}

/// Expect failure: non-zero exit, exactly one line on stderr containing `want`, no panic.
fn expect_one_line_error(out: &Output, want: &str, what: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded; stderr: {err}");
    assert!(!err.contains("panicked") && !text(&out.stdout).contains("panicked"), "{what}: panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {err:?}");
    assert!(err.contains(want), "{what}: expected {want:?} in {err:?}");
}

#[test]
fn bad_pack_inputs_fail_cleanly_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = small_gguf(d, "good.gguf");
    let orig = std::fs::read(&good).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut bad_magic = orig.clone();
    bad_magic[..4].copy_from_slice(b"GGUX");
    let mut bad_version = orig.clone();
    bad_version[4] = 7;
    let header_len = gguf_header(&[("general.architecture", "llama"), ("general.name", "small")], 64).len();
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (vec!["--gguf".into(), write("magic.gguf", &bad_magic).display().to_string()], "not a GGUF", "bad magic"),
        (
            vec!["--gguf".into(), write("version.gguf", &bad_version).display().to_string()],
            "unsupported GGUF version 7",
            "bad version",
        ),
        (
            vec!["--gguf".into(), write("header.gguf", &orig[..20]).display().to_string()],
            "truncated",
            "truncated header",
        ),
        (
            vec!["--gguf".into(), write("table.gguf", &orig[..header_len - 40]).display().to_string()],
            "truncated",
            "truncated tensor table",
        ),
        (
            vec!["--gguf".into(), write("data.gguf", &orig[..orig.len() - 1]).display().to_string()],
            "'big.weight'",
            "truncated tensor data",
        ),
        (vec!["--gguf".into(), d.join("missing.gguf").display().to_string()], "missing.gguf", "missing GGUF"),
        (
            vec!["--gguf".into(), d.display().to_string()],
            "a directory, not a regular file: a model must be a regular file",
            "directory as GGUF",
        ),
        (
            vec!["--gguf".into(), good.display().to_string(), "--runtime".into(), d.join("nope").display().to_string()],
            "nope: cannot open: No such file",
            "missing runtime",
        ),
        (
            vec![
                "--gguf".into(),
                good.display().to_string(),
                "--runtime".into(),
                write("text.sh", b"#!/bin/sh\necho hi\n").display().to_string(),
            ],
            "not an executable",
            "text file as runtime",
        ),
        (
            vec!["--gguf".into(), good.display().to_string(), "--runtime".into(), good.display().to_string()],
            "GGUF model, not the runtime",
            "GGUF as runtime",
        ),
        (
            vec![
                "--gguf".into(),
                good.display().to_string(),
                "--runtime".into(),
                write("arm", &arm_elf()).display().to_string(),
            ],
            "ARM (32-bit)",
            "other CPU",
        ),
        (
            vec!["--gguf".into(), good.display().to_string(), "--args".into(), "-p 'oops".into()],
            "never closed",
            "bad --args",
        ),
        (
            vec![
                "--gguf".into(),
                good.display().to_string(),
                "--args-file".into(),
                d.join("none.args").display().to_string(),
            ],
            "--args-file: ",
            "missing --args-file",
        ),
    ];
    let before: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    let out = d.join("out.llamafile");
    for (args, want, what) in &cases {
        let mut cmd = Command::new(pack());
        if !args.iter().any(|a| a == "--runtime") {
            cmd.arg("--runtime").arg(runtime());
        }
        let r = run(cmd.args(args).arg("-o").arg(&out));
        expect_one_line_error(&r, want, what);
        assert!(!out.exists(), "{what}: output left behind");
    }
    let after: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before.len(), after.len(), "files left behind: {after:?}");

    // A packed file as runtime (already a llamafile); an existing output without --force; the
    // output being an input.
    let r = run(Command::new(pack()).arg("--runtime").arg(runtime()).arg("--gguf").arg(&good).arg("-o").arg(&out));
    assert!(r.status.success(), "{}", text(&r.stderr));
    let r = run(Command::new(pack())
        .arg("--runtime")
        .arg(&out)
        .arg("--gguf")
        .arg(&good)
        .arg("-o")
        .arg(d.join("x.llamafile")));
    expect_one_line_error(&r, "already has a zip appended", "llamafile as runtime");
    let r = run(Command::new(pack()).arg("--runtime").arg(runtime()).arg("--gguf").arg(&good).arg("-o").arg(&out));
    expect_one_line_error(&r, "already exists (use --force", "existing output");
    let r = run(Command::new(pack())
        .arg("--runtime")
        .arg(runtime())
        .arg("--gguf")
        .arg(&good)
        .arg("-o")
        .arg(&good)
        .arg("--force"));
    expect_one_line_error(&r, "is the GGUF input", "output = input");
    assert_eq!(std::fs::read(&good).unwrap(), orig, "the input was not touched");
    assert!(!d.join("x.llamafile").exists());
    let tmp_left = std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    assert!(!tmp_left, "temporary file left behind");
}

/// Build a zip with Python (stored or deflated entries) for the runtime's error cases.
fn python_zip(path: &Path, entries: &[(&str, &Path, bool)]) -> bool {
    let mut script = String::from("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\n");
    for (name, src, deflate) in entries {
        let method = if *deflate { "zipfile.ZIP_DEFLATED" } else { "zipfile.ZIP_STORED" };
        script += &format!("z.write({:?}, {:?}, compress_type={method})\n", src.display().to_string(), name);
    }
    script += "z.close()\n";
    Command::new("python3").arg("-c").arg(script).arg(path).status().is_ok_and(|s| s.success())
}

#[test]
fn runtime_model_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The bare runtime has no weights: one line saying how to give a model.
    let r = run(Command::new(runtime()).arg("--info"));
    expect_one_line_error(&r, "give one with -m", "no model");
    let r = run(Command::new(runtime()).arg("-m").arg(d.join("missing.gguf")).arg("--info"));
    expect_one_line_error(&r, "missing.gguf", "missing model");
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "not a model").unwrap();
    let r = run(Command::new(runtime()).arg("-m").arg(&notes).arg("--info"));
    expect_one_line_error(&r, "not a model", "text file as model");

    let a = small_gguf(d, "a.gguf");
    let b = small_gguf(d, "b.gguf");
    let z = |name: &str, entries: &[(&str, &Path, bool)]| {
        let p = d.join(name);
        python_zip(&p, entries).then_some(p)
    };
    let Some(two) = z("two.zip", &[("a.gguf", &a, false), ("b.gguf", &b, false)]) else {
        e2e::skip("python3 (the zip error cases)", "install python3");
        return;
    };
    let r = run(Command::new(runtime()).arg("-m").arg(&two).arg("--info"));
    expect_one_line_error(&r, "2 .gguf entries (a.gguf, b.gguf)", "several GGUFs");
    // archive@entry picks one (the zip convention upstream llamafile uses too).
    let r = run(Command::new(runtime()).arg("-m").arg(format!("{}@b.gguf", two.display())).arg("--info"));
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("name:            small"));
    let r = run(Command::new(runtime()).arg("-m").arg(format!("{}@c.gguf", two.display())).arg("--info"));
    expect_one_line_error(&r, "no entry named 'c.gguf'", "missing entry");
    let deflated = z("deflated.zip", &[("a.gguf", &a, true)]).unwrap();
    let r = run(Command::new(runtime()).arg("-m").arg(&deflated).arg("--info"));
    expect_one_line_error(&r, "is compressed", "compressed entry");
    let none = z("none.zip", &[("notes.txt", &notes, false)]).unwrap();
    let r = run(Command::new(runtime()).arg("-m").arg(&none).arg("--info"));
    expect_one_line_error(&r, "no .gguf entry", "no GGUF entry");
    // A plain zip with one stored GGUF works like a llamafile.
    let one = z("one.zip", &[("dir/a.gguf", &a, false)]).unwrap();
    let r = run(Command::new(runtime()).arg("-m").arg(&one).arg("--info"));
    assert!(r.status.success(), "{}", text(&r.stderr));
    // A truncated llamafile: the zip directory is gone, so it is not recognised as one.
    let packed = d.join("p.llamafile");
    let r = run(Command::new(pack()).arg("--runtime").arg(runtime()).arg("--gguf").arg(&a).arg("-o").arg(&packed));
    assert!(r.status.success(), "{}", text(&r.stderr));
    let bytes = std::fs::read(&packed).unwrap();
    std::fs::write(&packed, &bytes[..bytes.len() - 100]).unwrap();
    let r = run(Command::new(runtime()).arg("-m").arg(&packed).arg("--info"));
    expect_one_line_error(&r, "p.llamafile", "truncated llamafile");
}

#[test]
fn real_models_pack_and_describe_themselves() {
    let models = [("gemma-3-270m-q4_k_m.gguf", "gemma3"), ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2")];
    let dir = tempfile::tempdir().unwrap();
    for (file, arch) in models {
        let Some(g) = e2e::require_model(file) else { continue };
        let out = dir.path().join("m.llamafile");
        let r = run(Command::new(pack())
            .arg("--runtime")
            .arg(runtime())
            .arg("--gguf")
            .arg(&g)
            .arg("-o")
            .arg(&out)
            .arg("--force"));
        assert!(r.status.success(), "{}", text(&r.stderr));
        let info = run(Command::new(&out).arg("--info"));
        let t = text(&info.stdout);
        assert!(info.status.success(), "{}", text(&info.stderr));
        assert!(t.contains(&format!("architecture:    {arch}")), "{t}");
        assert_eq!(info_offset(&t) % 65536, 0);
        // Compare the packed bytes with the original without holding both in memory twice.
        let packed = std::fs::read(&out).unwrap();
        let orig = std::fs::read(&g).unwrap();
        let off = info_offset(&t) as usize;
        assert!(packed[off..off + orig.len()] == orig[..], "{file}: packed bytes differ");
    }
}
