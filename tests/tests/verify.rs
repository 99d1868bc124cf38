//! `llamafile --verify`: every zip entry's CRC-32 checked against its bytes, for the llamafile
//! itself or `-m FILE`; one corrupted byte anywhere in an entry gives one line and a non-zero exit.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pack(dir: &Path, gguf: &Path) -> PathBuf {
    let out = dir.join("tiny.llamafile");
    let r = Command::new(e2e::bin("pack"))
        .arg("--runtime")
        .arg(e2e::bin("llamafile"))
        .arg("--gguf")
        .arg(gguf)
        .args(["--args", "-n 4", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "pack: {}", text(&r.stderr));
    out
}

fn verify(cmd: &mut Command) -> Output {
    cmd.arg("--verify").output().unwrap()
}

fn expect_corrupt(out: &Output, entry: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "corrupt file verified: {}{err}", text(&out.stdout));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {err:?}");
    assert!(err.contains(&format!("entry '{entry}' is corrupt")) && !err.contains("panicked"), "{err:?}");
}

#[test]
fn verify_checks_every_entry_and_finds_one_flipped_byte() {
    // The runtime's own tiny model: what is checked is the container, not the weights.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("tiny.gguf");
    std::fs::write(&plain, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    let packed = pack(dir.path(), &plain);
    let entries = llamafile_format::bundle::zip_entries(&packed).unwrap().unwrap();
    let gguf_bytes: u64 = entries.iter().map(|e| e.size).sum();

    // Intact: `-m FILE`, and the llamafile on itself (its `.args` do not get in the way).
    for out in [verify(Command::new(e2e::bin("llamafile")).arg("-m").arg(&packed)), verify(&mut Command::new(&packed))]
    {
        let s = text(&out.stdout);
        assert!(out.status.success(), "{s}{}", text(&out.stderr));
        assert!(s.contains("OK: CRC-32 of 2 stored entries") && s.contains(&format!("({gguf_bytes} bytes)")), "{s}");
        assert!(s.contains(&packed.display().to_string()), "{s}");
    }

    // One byte flipped in the middle of the weights, then the last of `.args` ("-n 4" becomes
    // "-n 5": still arguments the embedded run accepts, so it is --verify that fails).
    for (entry, at) in [("tiny.gguf", 0.5), (".args", 1.0)] {
        let bad = dir.path().join(format!("bad{}.llamafile", entry.len()));
        std::fs::copy(&packed, &bad).unwrap();
        let e = entries.iter().find(|e| e.name == entry).unwrap();
        let pos = e.data_offset + ((e.size - 1) as f64 * at) as u64;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&bad).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, pos).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], pos).unwrap();
        drop(f);
        expect_corrupt(&verify(Command::new(e2e::bin("llamafile")).arg("-m").arg(&bad)), entry);
        expect_corrupt(&verify(&mut Command::new(&bad)), entry);
    }

    // A plain GGUF has no zip to verify: one line, non-zero.
    let out = verify(Command::new(e2e::bin("llamafile")).arg("-m").arg(&plain));
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains("nothing to verify"), "{err:?}");
}
