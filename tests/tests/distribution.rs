//! Signed llamafiles and runtime upgrades: `pack --keygen`, `pack --sign`, `llamafile --verify
//! --pubkey`, `pack --upgrade`, on the runtime's own tiny model. Where the `minisign` tool is
//! installed (CI installs it), it verifies the signature `pack` made.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// A failure: non-zero, one line on stderr containing `want`, nothing on stdout.
fn one_line_error(o: &Output, want: &str) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "succeeded: {}{err}", text(&o.stdout));
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(want) && !err.contains("panicked"), "expected {want:?} in {err:?}");
    assert!(o.stdout.is_empty(), "nothing on stdout: {:?}", text(&o.stdout));
}

fn pack() -> Command {
    Command::new(e2e::bin("pack"))
}

fn llamafile() -> Command {
    Command::new(e2e::bin("llamafile"))
}

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    p
}

fn pack_tiny(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(out);
    ok(&run(pack()
        .arg("--runtime")
        .arg(e2e::bin("llamafile"))
        .arg("--gguf")
        .arg(tiny(dir))
        .args(["--args", "-n 4 --temp 0 --ignore-eos", "-o"])
        .arg(&out)
        .args(extra)));
    out
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

fn read_entry(path: &Path, name: &str) -> Vec<u8> {
    let e = llamafile_format::bundle::zip_entries(path).unwrap().unwrap().into_iter().find(|e| e.name == name).unwrap();
    let mut buf = vec![0u8; e.size as usize];
    std::fs::File::open(path).unwrap().read_exact_at(&mut buf, e.data_offset).unwrap();
    buf
}

#[test]
fn sign_and_verify_with_a_key_and_reject_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = d.join("me");
    let o = run(pack().arg("--keygen").arg(&name));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pub_text = std::fs::read_to_string(d.join("me.pub")).unwrap();
    let id = pub_text.lines().next().unwrap().rsplit(' ').next().unwrap().to_string();
    assert_eq!(id.len(), 16, "{pub_text}");
    assert!(text(&o.stderr).contains(&id));
    // Never overwritten.
    let o = run(pack().arg("--keygen").arg(&name));
    assert!(!o.status.success() && text(&o.stderr).contains("already exists"), "{}", text(&o.stderr));

    let signed = pack_tiny(d, "signed.llamafile", &["--sign", d.join("me.key").to_str().unwrap()]);
    // Checked: the key, and the manifest (the runtime's size and hash, every entry's).
    let runtime_len = std::fs::metadata(e2e::bin("llamafile")).unwrap().len();
    let mut by_runtime = llamafile();
    by_runtime.arg("-m").arg(&signed).args(["--verify", "--pubkey"]).arg(d.join("me.pub"));
    let mut by_itself = Command::new(&signed);
    by_itself.args(["--verify", "--pubkey"]).arg(d.join("me.pub"));
    for mut cmd in [by_runtime, by_itself] {
        let out = ok(&run(&mut cmd));
        assert!(out.contains(&format!("signature OK: key {id}")), "{out}");
        assert!(out.contains(&format!("  runtime {runtime_len} ")), "{out}");
        assert!(out.contains(" tiny.gguf\n") && out.contains(" .args"), "{out}");
    }
    // Without a key: who signed it, unchecked.
    let out = ok(&run(llamafile().arg("-m").arg(&signed).arg("--verify")));
    assert!(out.contains(&format!("signed by key {id} (not checked")), "{out}");

    // The real minisign tool verifies the manifest with the signature, as README shows.
    let manifest = read_entry(&signed, ".manifest");
    std::fs::write(d.join("m"), &manifest).unwrap();
    std::fs::write(d.join("m.minisig"), read_entry(&signed, ".signature")).unwrap();
    match Command::new("minisign").arg("-Vm").arg(d.join("m")).arg("-p").arg(d.join("me.pub")).output() {
        Ok(o) => assert!(
            o.status.success()
                && (text(&o.stderr) + &text(&o.stdout)).contains("Signature and comment signature verified"),
            "minisign: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        ),
        Err(_) => e2e::skip("the minisign tool", "apt-get install minisign"),
    }

    // Another key: refused, naming both key IDs.
    ok(&run(pack().arg("--keygen").arg(d.join("other"))));
    one_line_error(
        &run(llamafile().arg("-m").arg(&signed).args(["--verify", "--pubkey"]).arg(d.join("other.pub"))),
        &format!("signed by key {id}, not by the given key"),
    );
    // Not a key file; an unsigned file.
    one_line_error(
        &run(llamafile().arg("-m").arg(&signed).args(["--verify", "--pubkey"]).arg(d.join("m"))),
        "not a minisign public key",
    );
    let plain = pack_tiny(d, "plain.llamafile", &[]);
    one_line_error(
        &run(llamafile().arg("-m").arg(&plain).args(["--verify", "--pubkey"]).arg(d.join("me.pub"))),
        "not signed",
    );

    // Tampering: a byte of the runtime (no CRC covers it: the signature does), a byte of the
    // manifest (CRC fixed up, so only the signature catches it), an entry added after signing.
    let entries = llamafile_format::bundle::zip_entries(&signed).unwrap().unwrap();
    let bad = d.join("bad.llamafile");
    std::fs::copy(&signed, &bad).unwrap();
    flip(&bad, runtime_len / 2);
    one_line_error(
        &run(llamafile().arg("-m").arg(&bad).args(["--verify", "--pubkey"]).arg(d.join("me.pub"))),
        "runtime differs from the signed manifest",
    );

    let m = entries.iter().find(|e| e.name == ".manifest").unwrap();
    let mut forged = manifest.clone();
    let at = forged.iter().position(|&b| b == b'\n').unwrap() + 10; // inside the runtime line's hash or size
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    std::fs::copy(&signed, &bad).unwrap();
    std::fs::File::options().write(true).open(&bad).unwrap().write_all_at(&forged, m.data_offset).unwrap();
    fix_crc(&bad, ".manifest", &forged);
    one_line_error(
        &run(llamafile().arg("-m").arg(&bad).args(["--verify", "--pubkey"]).arg(d.join("me.pub"))),
        "BAD signature",
    );

    // Upgrading without --sign drops the signature (with a warning); the result is unsigned.
    let up = d.join("up.llamafile");
    let o = run(pack().arg("--upgrade").arg(&signed).arg("--runtime").arg(e2e::bin("llamafile")).arg("-o").arg(&up));
    assert!(
        o.status.success() && text(&o.stderr).contains(&format!("warning: the signature of key {id} is dropped")),
        "{}",
        text(&o.stderr)
    );
    one_line_error(
        &run(llamafile().arg("-m").arg(&up).args(["--verify", "--pubkey"]).arg(d.join("me.pub"))),
        "not signed",
    );
}

/// Rewrite the CRC-32 of entry `name` in its local header and the central directory (as a
/// forger would, so that only the signature can tell).
fn fix_crc(path: &Path, name: &str, data: &[u8]) {
    let e = llamafile_format::bundle::zip_entries(path).unwrap().unwrap().into_iter().find(|e| e.name == name).unwrap();
    let f = std::fs::File::options().read(true).write(true).open(path).unwrap();
    let crc = {
        // CRC-32 (IEEE), bitwise: enough for a few hundred bytes.
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
        }
        !c
    };
    f.write_all_at(&crc.to_le_bytes(), e.header_offset + 14).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let old = e.crc32.to_le_bytes();
    // The central directory record: "PK\1\2", then the CRC at +16; found by its name after it.
    let cd = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x01\x02")
        .map(|(i, _)| i)
        .find(|&i| bytes[i + 46..].starts_with(name.as_bytes()))
        .unwrap();
    assert_eq!(bytes[cd + 16..cd + 20], old);
    f.write_all_at(&crc.to_le_bytes(), cd as u64 + 16).unwrap();
}

#[test]
fn upgrade_swaps_the_runtime_and_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(pack().arg("--keygen").arg(d.join("k"))));
    let old = pack_tiny(d, "old.llamafile", &[]);
    // Another runtime: the same program with 70001 more bytes (over 64 KiB), so that every offset moves by an
    // amount that is not a multiple of the alignment.
    let new_rt = d.join("llamafile-new");
    let mut bytes = std::fs::read(e2e::bin("llamafile")).unwrap();
    bytes.extend(std::iter::repeat_n(0x5Au8, 70001));
    e2e::write_executable(&new_rt, &bytes);

    let info = |f: &Path| {
        ok(&run(Command::new(f).arg("--info")))
            .lines()
            .filter(|l| !l.starts_with("file:") && !l.starts_with("weights offset:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let generate = |f: &Path| ok(&run(Command::new(f).args(["-p", "a b", "--no-conversation", "--log-disable"])));
    let (info_before, text_before) = (info(&old), generate(&old));

    // To -o, signed again.
    let up = d.join("up.llamafile");
    let o = run(pack()
        .arg("--upgrade")
        .arg(&old)
        .arg("--runtime")
        .arg(&new_rt)
        .arg("-o")
        .arg(&up)
        .arg("--sign")
        .arg(d.join("k.key")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let before = llamafile_format::bundle::zip_entries(&old).unwrap().unwrap();
    let after = llamafile_format::bundle::zip_entries(&up).unwrap().unwrap();
    assert_eq!(
        after.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["tiny.gguf", ".args", ".manifest", ".signature"]
    );
    let up_bytes = std::fs::read(&up).unwrap();
    let old_bytes = std::fs::read(&old).unwrap();
    assert_eq!(&up_bytes[..bytes.len()], &bytes[..], "the new runtime first");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.name, b.size, b.crc32), (&a.name, a.size, a.crc32));
        assert_eq!(
            &old_bytes[b.data_offset as usize..][..b.size as usize],
            &up_bytes[a.data_offset as usize..][..a.size as usize],
            "{} byte for byte",
            b.name
        );
    }
    assert_eq!(after[0].data_offset % 65536, 0, "the weights stay aligned");
    assert_ne!(after[0].data_offset, before[0].data_offset, "the offsets moved");
    assert_eq!(info(&up), info_before);
    assert_eq!(generate(&up), text_before);
    let v = ok(&run(Command::new(&up).args(["--verify", "--pubkey"]).arg(d.join("k.pub"))));
    assert!(v.contains("OK: CRC-32 of 4 stored entries") && v.contains(&format!("runtime {} ", bytes.len())), "{v}");

    // In place, back to the original runtime: the file is replaced, nothing else is left.
    let o = run(pack().arg("--upgrade").arg(&up).arg("--runtime").arg(e2e::bin("llamafile")));
    assert!(o.status.success() && text(&o.stderr).contains("warning: the signature of key"), "{}", text(&o.stderr));
    assert_eq!(generate(&up), text_before);
    ok(&run(Command::new(&up).arg("--verify")));
    let names: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    // Bad input: one line, nothing written or changed.
    let snapshot = std::fs::read(&up).unwrap();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec![up.clone().into(), "--runtime".into(), tiny(d).into()], "GGUF model, not the runtime"),
        (vec![tiny(d).into(), "--runtime".into(), new_rt.clone().into()], "not a llamafile"),
        (vec![up.clone().into(), "--runtime".into(), up.clone().into()], "already has a zip appended"),
        (
            vec![up.clone().into(), "--runtime".into(), new_rt.clone().into(), "-o".into(), old.clone().into()],
            "already exists",
        ),
        (
            vec![
                up.clone().into(),
                "--runtime".into(),
                new_rt.clone().into(),
                "-o".into(),
                new_rt.clone().into(),
                "--force".into(),
            ],
            "is the runtime input",
        ),
        (
            vec![up.clone().into(), "--runtime".into(), new_rt.clone().into(), "--sign".into(), d.join("k.pub").into()],
            "not a minisign secret key",
        ),
    ];
    for (args, want) in cases {
        let o = run(pack().arg("--upgrade").args(&args));
        let err = text(&o.stderr);
        assert!(
            !o.status.success() && err.lines().count() == 1 && err.contains(want),
            "{args:?}: expected {want:?} in {err:?}"
        );
    }
    assert_eq!(std::fs::read(&up).unwrap(), snapshot);
    let names: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn doctor_reports_every_section_on_the_binary_and_on_a_packed_llamafile() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(pack().arg("--keygen").arg(d.join("k"))));
    let packed = pack_tiny(d, "doc.llamafile", &["--sign", d.join("k.key").to_str().unwrap()]);
    let sections = [
        "== system",
        "== cpu",
        "kernels:",
        "== memory",
        "available:",
        "== gpu",
        "searched:",
        "nvidia:",
        "== file",
        "== binfmt_misc",
    ];
    // The plain binary: no model, nothing embedded.
    let plain = ok(&run(llamafile().arg("--doctor")));
    for want in sections.iter().chain(&["model:       none", "zip:         none"]) {
        assert!(plain.contains(want), "missing {want:?} in:\n{plain}");
    }
    // The packed llamafile (its `.args` merged), and the same file through -m: the model's
    // memory at -c, the file intact and signed.
    let mut via_m = llamafile();
    via_m.arg("-m").arg(&packed).args(["--doctor", "-c", "128"]);
    let mut itself = Command::new(&packed);
    itself.args(["--doctor", "-c", "128"]);
    for mut cmd in [via_m, itself] {
        let out = ok(&run(&mut cmd));
        for want in sections.iter().chain(&[
            "context:     128 tokens (-c)",
            "KV cache:",
            "needs:",
            "intact:      OK: CRC-32 of 4 stored entries",
            "signed:      yes, by key",
        ]) {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(out.contains(&packed.display().to_string()), "{out}");
    }
    // A corrupted byte in the weights: reported in the file section, still exit 0.
    let e = llamafile_format::bundle::zip_entries(&packed)
        .unwrap()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "tiny.gguf")
        .unwrap();
    flip(&packed, e.data_offset + e.size - 1);
    let out = ok(&run(llamafile().arg("-m").arg(&packed).arg("--doctor")));
    assert!(out.contains("intact:      NO: ") && out.contains("entry 'tiny.gguf' is corrupt"), "{out}");
}
