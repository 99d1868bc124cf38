//! `pack --gpu-backend FILE`: the backend travels inside the llamafile, is extracted once to the
//! cache (keyed by its hash) and used for `-ngl`; a file that is not a backend is refused at
//! pack time with one line and nothing left behind.

use e2e::reference_lib;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pack(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(e2e::bin("pack")).args(args).output().expect("running pack")
}

fn top1(stdout: &[u8]) -> Vec<u64> {
    let v: Value = serde_json::from_slice(stdout).expect("JSON");
    v["top10"].as_array().unwrap().iter().map(|p| p[0][0].as_u64().unwrap()).collect()
}

fn run(exe: &Path, cache: &Path, args: &[&str]) -> (Vec<u64>, String) {
    // `-m` names the llamafile itself (its own weights); the backend search looks in the zips of
    // both the executable and the model.
    let out = Command::new(exe)
        .arg("-m")
        .arg(exe)
        .args(["--eval-tokens", "1,415,2936,9060,285,1142,461,10575", "--top", "3", "-n", "1", "-t", "2"])
        .args(args)
        .env("LLAMAFILE_CACHE", cache)
        .env_remove("LLAMAFILE_GPU_BACKEND")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (top1(&out.stdout), stderr)
}

#[test]
fn embedded_backend_is_extracted_once_and_used() {
    let Some(_) = e2e::require_shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.llamafile");
    let gguf = e2e::shared().join("models/tiny-mistral-q4_k_m.gguf");
    let lib = reference_lib();
    let o = pack(&[
        "--gguf".as_ref(),
        gguf.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--gpu-backend".as_ref(),
        lib.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let entry = format!("gpu/{}", lib.file_name().unwrap().to_string_lossy());
    let list = pack(&["--list".as_ref(), out.as_os_str()]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&entry), "{}", String::from_utf8_lossy(&list.stdout));

    let cache = dir.path().join("cache");
    let (cpu, _) = run(&out, &cache, &[]);
    assert!(!cache.join("gpu").exists(), "nothing extracted without -ngl");
    // Named explicitly (the reference reports score 0): used, from the zip.
    let (gpu, stderr) = run(&out, &cache, &["-ngl", "99", "--gpu", "reference", "--verbose"]);
    assert!(stderr.contains("reference backend from embedded in"), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert_eq!(gpu, cpu, "top-1 tokens with every layer offloaded");
    let extracted: Vec<PathBuf> = std::fs::read_dir(cache.join("gpu"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join(lib.file_name().unwrap()))
        .collect();
    assert_eq!(extracted.len(), 1);
    assert_eq!(std::fs::read(&extracted[0]).unwrap(), std::fs::read(&lib).unwrap());
    let mtime = std::fs::metadata(&extracted[0]).unwrap().modified().unwrap();
    // Second start: the cached copy is reused, not rewritten.
    run(&out, &cache, &["-ngl", "2", "--gpu", "reference"]);
    assert_eq!(std::fs::metadata(&extracted[0]).unwrap().modified().unwrap(), mtime);
    // With --gpu auto a score-0 backend is not used: one warning, CPU.
    let (auto, stderr) = run(&out, &cache, &["-ngl", "99"]);
    assert_eq!(stderr.lines().filter(|l| l.starts_with("warning:")).count(), 1, "{stderr}");
    assert!(stderr.contains("not an accelerator"), "{stderr}");
    assert_eq!(auto, cpu);
}

#[test]
fn pack_refuses_what_is_not_a_backend() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.llamafile");
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    let fake = dir.path().join("libllamafile_gpu_fake.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let wrong_ext = dir.path().join("backend.txt");
    std::fs::write(&wrong_ext, b"x").unwrap();
    for (bad, why) in
        [(&fake, "cannot load"), (&wrong_ext, "must end in"), (&dir.path().join("missing.so"), "No such file")]
    {
        let o = pack(&[
            "--gguf".as_ref(),
            gguf.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--gpu-backend".as_ref(),
            bad.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(why) && !stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "nothing is written");
    }
}
