//! Hostile and mistaken inputs through the real binaries: each gets a non-zero exit and one
//! line on stderr that names the file or key, never an abort, a hang, unbounded memory or raw
//! control bytes on the terminal. Models are written by the runtime's own GGUF writer
//! (`gguf::writer::tiny_model`), so no fixtures are needed.

use llamafile_format::gguf::writer::{tiny_model, TensorSpec};
use llamafile_format::gguf::MetaValue;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run gave: exit code (None: killed by a signal), stdout, stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `bin args`, killing it after 60 s (a regression that blocks fails instead of hanging
/// the suite).
fn run(bin: &str, args: &[&str]) -> Ran {
    let mut child = Command::new(e2e::bin(bin))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{bin} {args:?} still running after 60 s (blocked on its input?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The run failed with exit 1 and exactly one line on stderr, which is returned.
fn one_line_error(r: &Ran) -> String {
    assert_eq!(r.code, Some(1), "exit code (stderr: {:?})", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {:?}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    lines[0].to_string()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "mkfifo {}", p.display());
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_tiny_model_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "tiny.gguf", &tiny_model(&[], &[]));
    let r = run("llamafile", &["-m", s(&m), "-p", "a b", "-n", "3", "--temp", "0"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn a_huge_block_count_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "blocks.gguf", &tiny_model(&[("llama.block_count", MetaValue::U32(u32::MAX))], &[]));
    let e = one_line_error(&run("llamafile", &["-m", s(&m), "-p", "a", "-n", "1"]));
    assert_eq!(
        e,
        format!("error: {}: reading llama hyperparameters: llama.block_count is 4294967295, but the tensor table holds 2 blocks (blk.0 to blk.1)", m.display())
    );
}

#[test]
fn a_context_larger_than_memory_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "tiny.gguf", &tiny_model(&[], &[]));
    let e = one_line_error(&run("llamafile", &["-m", s(&m), "-c", "1000000000", "-p", "a", "-n", "1"]));
    assert!(e.starts_with("error: a context of 1000000000 tokens needs "), "{e}");
    assert!(
        e.contains(" of memory for the KV cache and buffers, but ")
            && e.ends_with(" is available; choose a smaller context (-c)"),
        "{e}"
    );
}

#[test]
fn server_slots_larger_than_memory_are_an_error_before_serving() {
    // Each slot has its own KV cache: all of them are checked at load, not when a slot is made.
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "tiny.gguf", &tiny_model(&[], &[]));
    let e = one_line_error(&run(
        "llamafile",
        &["-m", s(&m), "--server", "--nobrowser", "--port", "0", "-np", "100000000", "-c", "100000"],
    ));
    assert!(e.contains("100000000 slots with a context of 100000 tokens each need "), "{e}");
    assert!(e.ends_with(" is available; choose fewer slots (--parallel) or a smaller context (-c)"), "{e}");
}

#[test]
fn invalid_metadata_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, want) in [
        (
            "llama.rope.freq_base",
            MetaValue::F32(f32::NAN),
            "llama.rope.freq_base is NaN: a positive finite number expected",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(0.0),
            "llama.attention.layer_norm_rms_epsilon is 0: a positive",
        ),
        ("llama.rope.dimension_count", MetaValue::U32(0), "llama.rope.dimension_count is 0: an even number"),
        (
            "llama.rope.scaling.type",
            MetaValue::String("yarn".into()),
            "llama.rope.scaling.type is 'yarn': only none and linear",
        ),
    ] {
        let m = write(dir.path(), "m.gguf", &tiny_model(&[(key, value)], &[]));
        let e = one_line_error(&run("llamafile", &["-m", s(&m), "-p", "a", "-n", "1"]));
        assert!(e.contains(want), "{key}: expected {want:?} in {e:?}");
    }
    let f = [0u8; 32];
    let m = write(
        dir.path(),
        "m.gguf",
        &tiny_model(&[], &[TensorSpec { name: "rope_freqs.weight", dims: &[8], ggml_type: 0, data: &f }]),
    );
    let e = one_line_error(&run("llamafile", &["-m", s(&m), "-p", "a", "-n", "1"]));
    // Llama 3's per-dimension frequency factors are implemented; zeros would divide by zero.
    assert!(e.contains("tensor rope_freqs.weight: factor 0 is 0, a positive finite number expected"), "{e}");
}

#[test]
fn overlapping_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_model(&[], &[]);
    // The second tensor's offset (right after its name, dims and type) set to the first's: 0.
    let name = b"output_norm.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 8 + 4;
    assert_ne!(b[at..at + 8], [0; 8]);
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    let m = write(dir.path(), "overlap.gguf", &b);
    let e = one_line_error(&run("llamafile", &["-m", s(&m), "--info"]));
    assert!(
        e.starts_with(&format!("error: {}: tensor 'output_norm.weight' data offset 0 is wrong", m.display())),
        "{e}"
    );
}

#[test]
fn special_files_as_models_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.fifo");
    mkfifo(&fifo);
    for args in [vec!["-m", s(&fifo), "-p", "a"], vec!["-m", s(&fifo), "--info"]] {
        let e = one_line_error(&run("llamafile", &args));
        assert_eq!(
            e,
            format!(
                "error: {}: a FIFO (named pipe), not a regular file: a model must be a regular file",
                fifo.display()
            )
        );
    }
    let e = one_line_error(&run("llamafile", &["-m", "/dev/zero", "-p", "a"]));
    assert_eq!(e, "error: /dev/zero: a character device, not a regular file: a model must be a regular file");
}

#[test]
fn a_prompt_file_is_read_up_to_what_the_context_holds() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "tiny.gguf", &tiny_model(&[], &[]));
    let e =
        one_line_error(&run("llamafile", &["-m", s(&m), "-c", "64", "-f", "/dev/zero", "-n", "1", "--log-disable"]));
    assert_eq!(e, "error: /dev/zero: more than 5120 bytes: a prompt for a context of 64 tokens cannot be that long (use a larger -c)");
}

#[test]
fn errors_name_the_path_once() {
    let e = one_line_error(&run("llamafile", &["-m", "/etc/passwd", "-p", "a"]));
    assert!(e.starts_with("error: /etc/passwd: not a model: not a GGUF file"), "{e}");
    assert_eq!(e.matches("/etc/passwd").count(), 1, "{e}");
    let e = one_line_error(&run("llamafile", &["-m", "/nonexistent.gguf", "-p", "a"]));
    assert_eq!(e, "error: /nonexistent.gguf: cannot open: No such file or directory (os error 2)");
    let e = one_line_error(&run("llamafile", &["-m", "/nonexistent.gguf", "--info"]));
    assert_eq!(e, "error: /nonexistent.gguf: cannot open: No such file or directory (os error 2)");
}

#[test]
fn control_bytes_from_the_file_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let evil = format!("\x1b]0;pwned\x07\x1b[2J\nfake: line\0{}", "A".repeat(5000));
    let m = write(dir.path(), "evil.gguf", &tiny_model(&[("general.name", MetaValue::String(evil.clone()))], &[]));
    let r = run("llamafile", &["-m", s(&m), "--info"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stdout.chars().any(|c| c.is_control() && c != '\n'), "{:?}", r.stdout);
    assert!(r.stdout.contains("name:            \\x1b]0;pwned\\x07\\x1b[2J\\nfake: line\\0AAA"), "{}", r.stdout);
    assert!(r.stdout.lines().all(|l| l.len() < 400), "cut");
    // A corrupted tensor name in an error.
    let f = [0u8; 4];
    let name = &evil[..1000];
    let m =
        write(dir.path(), "name.gguf", &tiny_model(&[], &[TensorSpec { name, dims: &[1], ggml_type: 0, data: &f }]));
    let e = one_line_error(&run("llamafile", &["-m", s(&m), "-p", "a"]));
    assert!(e.contains("tensor '\\x1b]0;pwned\\x07\\x1b[2J\\nfake: line\\0AAA"), "{e}");
    assert!(e.contains("…' is in the file but the llama architecture does not use it"), "{e}");
    assert!(!e.chars().any(|c| c.is_control()) && e.len() < 600, "{e:?}");
    // The packer's listing.
    let out = dir.path().join("evil.llamafile");
    let r = run(
        "pack",
        &[
            "--runtime",
            s(&e2e::bin("llamafile")),
            "--gguf",
            s(&dir.path().join("evil.gguf")),
            "-o",
            s(&out),
            "--args",
            "-p '\x1b[2J'",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run("pack", &["--list", s(&out)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stdout.chars().any(|c| c.is_control() && c != '\n'), "{:?}", r.stdout);
    assert!(r.stdout.contains("-p '\\x1b[2J'"), "{}", r.stdout);
}

#[test]
fn pack_refuses_special_inputs_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "tiny.gguf", &tiny_model(&[], &[]));
    let fifo = dir.path().join("p.fifo");
    mkfifo(&fifo);
    let rt = e2e::bin("llamafile");
    let out = dir.path().join("o.llamafile");
    let pack = |args: &[&str]| one_line_error(&run("pack", args));
    let f = fifo.display();
    assert_eq!(
        pack(&["--runtime", s(&fifo), "--gguf", s(&m), "-o", s(&out)]),
        format!("pack: error: {f}: a FIFO (named pipe), not a regular file: the runtime must be a regular file")
    );
    assert_eq!(
        pack(&["--runtime", "/dev/zero", "--gguf", s(&m), "-o", s(&out)]),
        "pack: error: /dev/zero: a character device, not a regular file: the runtime must be a regular file"
    );
    assert_eq!(
        pack(&["--runtime", s(&rt), "--gguf", s(&fifo), "-o", s(&out)]),
        format!("pack: error: {f}: a FIFO (named pipe), not a regular file: a model must be a regular file")
    );
    assert_eq!(
        pack(&["--runtime", s(&rt), "--gguf", s(&m), "-o", s(&out), "--gpu-backend", s(&fifo)]),
        format!("pack: error: {f}: a FIFO (named pipe), not a regular file: a GPU backend must be a regular file")
    );
    for force in [&[][..], &["--force"][..]] {
        fn with<'a>(rt: &'a str, m: &'a str, o: &'a str, force: &[&'a str]) -> Vec<&'a str> {
            [&["--runtime", rt, "--gguf", m, "-o", o][..], force].concat()
        }
        let with = |o| with(s(&rt), s(&m), o, force);
        assert_eq!(
            pack(&with(s(&fifo))),
            format!("pack: error: {f}: a FIFO (named pipe), not a regular file: the output must be a regular file")
        );
        let sub = dir.path().display().to_string();
        assert_eq!(
            pack(&with(&sub)),
            format!("pack: error: {sub}: a directory, not a regular file: the output must be a regular file")
        );
        assert_eq!(
            pack(&with("/dev/null")),
            "pack: error: /dev/null: a character device, not a regular file: the output must be a regular file"
        );
    }
    assert!(std::fs::metadata("/dev/null").map(|m| !m.is_file()).unwrap(), "/dev/null is still a device");
    assert!(!out.exists());
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["p.fifo", "tiny.gguf"], "nothing left behind");
}
