//! GPU offload end to end, through the `llamafile` binary: `-ngl`, `--gpu`, `--verbose`, the
//! backend search (LLAMAFILE_GPU_BACKEND, the zip, beside the executable) and every failure mode
//! (no symbol, wrong ABI version, init failure, too little device memory): one warning, then the
//! CPU result. The backend is the CPU reference cdylib (this machine has no GPU); it is
//! chosen explicitly since it reports score 0 (not an accelerator).

use e2e::reference_lib;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared tolerances of ../shared/README.md for the tiny models.
const MAX_MEAN_TOP10_DIFF: f64 = 0.15;
/// ... and for the real models.
const MAX_MEAN_TOP10_DIFF_REAL: f64 = 0.25;

fn model(name: &str) -> PathBuf {
    e2e::shared().join("models").join(format!("{name}.gguf"))
}

fn case_tokens(model: &str, case: &str) -> Vec<u32> {
    let path = e2e::shared().join("reference").join(format!("{model}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == case).unwrap();
    c["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

struct Eval {
    top: Vec<Vec<(u32, f32)>>,
    nll: Vec<f64>,
    stderr: String,
}

/// `llamafile -m MODEL --eval-tokens ... --top 20 -n 2 ARGS` with `env`; a clean environment
/// for the GPU variables (so the developer's own settings do not leak in).
fn eval(model: &Path, tokens: &[u32], args: &[&str], env: &[(&str, &str)]) -> Eval {
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let mut cmd = Command::new(e2e::bin("llamafile"));
    cmd.arg("-m").arg(model).args(["--eval-tokens", &list.join(","), "--top", "20", "-n", "2", "-t", "2"]).args(args);
    for v in ["LLAMAFILE_GPU_BACKEND", "LLAMAFILE_REFERENCE_FAULT", "LLAMAFILE_REFERENCE_MEMORY"] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("running llamafile");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "llamafile {args:?} {env:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    Eval {
        top: v["top10"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| (x[0].as_u64().unwrap() as u32, x[1].as_f64().unwrap() as f32))
                    .collect()
            })
            .collect(),
        nll: v["nll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
        stderr,
    }
}

/// Within the shared tolerances of the CPU run: mean |Δlogit| over the CPU's top-10 ids, top-1
/// agreement, mean NLL. Returns the mean difference.
fn assert_close(what: &str, cpu: &Eval, gpu: &Eval, max_mean: f64) -> f64 {
    assert_eq!(cpu.top.len(), gpu.top.len(), "{what}: positions");
    let (mut sum, mut n, mut top1) = (0.0f64, 0usize, 0usize);
    for (c, g) in cpu.top.iter().zip(&gpu.top) {
        top1 += (c[0].0 == g[0].0) as usize;
        let floor = g.last().unwrap().1;
        for (id, l) in c.iter().take(10) {
            let ours = g.iter().find(|(i, _)| i == id).map(|x| x.1).unwrap_or(floor - 1.0);
            sum += (ours - l).abs() as f64;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    let positions = cpu.top.len();
    let nll = |e: &Eval| e.nll.iter().sum::<f64>() / e.nll.len() as f64;
    let (nc, ng) = (nll(cpu), nll(gpu));
    eprintln!("{what}: mean |Δlogit| top-10 {mean:.5}, top-1 {top1}/{positions}, mean NLL {ng:.5} vs {nc:.5}");
    assert!(mean <= max_mean, "{what}: mean top-10 logit difference {mean}");
    assert!(top1 * 10 >= positions * 9 || top1 + 2 >= positions, "{what}: top-1 {top1}/{positions}");
    assert!((ng - nc).abs() <= 0.02 * nc.abs(), "{what}: mean NLL {ng} vs {nc}");
    mean
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("warning:")).collect()
}

#[test]
fn ngl_0_2_and_all_layers_match_the_cpu() {
    let Some(_) = e2e::require_shared() else { return };
    let lib = reference_lib();
    let lib = lib.to_str().unwrap();
    for m in ["tiny-mistral-q4_k_m", "tiny-mistral-q8_0", "tiny-mistral-q5_k_m"] {
        let path = model(m);
        let toks = case_tokens(m, "chat");
        let cpu = eval(&path, &toks, &[], &[]);
        for ngl in ["0", "2", "99"] {
            let g = eval(&path, &toks, &["-ngl", ngl], &[("LLAMAFILE_GPU_BACKEND", lib)]);
            assert!(warnings(&g.stderr).is_empty(), "-ngl {ngl}: {}", g.stderr);
            let d = assert_close(&format!("{m} -ngl {ngl}"), &cpu, &g, MAX_MEAN_TOP10_DIFF);
            if ngl == "0" {
                assert_eq!(d, 0.0, "-ngl 0 is the CPU path itself");
            }
        }
    }
}

#[test]
fn verbose_says_where_each_layer_runs() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("tiny-mistral-q4_0");
    let toks = case_tokens("tiny-mistral-q4_0", "fox");
    let g =
        eval(&m, &toks, &["-ngl", "2", "--verbose"], &[("LLAMAFILE_GPU_BACKEND", reference_lib().to_str().unwrap())]);
    let layer = |i: usize| {
        g.stderr
            .lines()
            .find(|l| l.starts_with(&format!("layer {i:>3}:")))
            .unwrap_or_else(|| panic!("no line for layer {i}:\n{}", g.stderr))
            .to_string()
    };
    assert!(layer(0).contains("cpu"), "{}", layer(0));
    assert!(layer(1).contains("cpu"), "{}", layer(1));
    assert!(layer(2).contains("reference"), "{}", layer(2));
    assert!(layer(3).contains("reference"), "{}", layer(3));
    let out = g.stderr.lines().find(|l| l.starts_with("output")).expect("output line");
    // Not every layer on the device: the output layer stays on the CPU (as in llama.cpp).
    assert!(out.contains("cpu"), "{out}");
    let all =
        eval(&m, &toks, &["-ngl", "4", "--verbose"], &[("LLAMAFILE_GPU_BACKEND", reference_lib().to_str().unwrap())]);
    let out = all.stderr.lines().find(|l| l.starts_with("output")).expect("output line");
    assert!(out.contains("reference"), "-ngl 4 of 4 layers: {out}");
    assert!(g.stderr.contains("gpu: reference backend from LLAMAFILE_GPU_BACKEND"), "{}", g.stderr);
}

/// A library that is not a backend, one with the wrong version, one whose init fails, a device
/// too small: each gives exactly one warning saying why, and exactly the CPU's answer.
#[test]
fn every_failure_warns_once_and_runs_on_the_cpu() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("tiny-mistral-q4_0");
    let toks = case_tokens("tiny-mistral-q4_0", "fox");
    let cpu = eval(&m, &toks, &[], &[]);
    let lib = reference_lib();
    let lib = lib.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let not_a_lib = dir.path().join("libllamafile_gpu_fake.so");
    std::fs::write(&not_a_lib, b"this is not an ELF file").unwrap();
    // A real shared library without the symbol: the C library this test runs with.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let libc = maps.split_whitespace().find(|w| w.contains("/libc.so") || w.contains("/libc-")).map(str::to_string);

    // (environment, extra arguments, what the warning must say)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<&'a str>, &'a str);
    // The reference backend's "version" fault reports the ABI version plus 1000.
    let bad_version = format!("ABI version {}", kernels_gpu::abi::ABI_VERSION + 1000);
    let mut cases: Vec<Case> = vec![
        (vec![("LLAMAFILE_GPU_BACKEND", not_a_lib.display().to_string())], vec![], "cannot load"),
        (
            vec![("LLAMAFILE_GPU_BACKEND", lib.into()), ("LLAMAFILE_REFERENCE_FAULT", "version".into())],
            vec![],
            bad_version.as_str(),
        ),
        (
            vec![("LLAMAFILE_GPU_BACKEND", lib.into()), ("LLAMAFILE_REFERENCE_FAULT", "init".into())],
            vec![],
            "initialisation failed",
        ),
        (
            vec![("LLAMAFILE_GPU_BACKEND", lib.into()), ("LLAMAFILE_REFERENCE_FAULT", "no-device".into())],
            vec![],
            "no device",
        ),
        (
            vec![("LLAMAFILE_GPU_BACKEND", lib.into()), ("LLAMAFILE_REFERENCE_MEMORY", "100000".into())],
            vec![],
            "out of device memory",
        ),
        (vec![("LLAMAFILE_GPU_BACKEND", lib.into())], vec!["--gpu", "cuda"], "is the reference backend, not cuda"),
        (vec![("LLAMAFILE_GPU_BACKEND", "/nonexistent/libllamafile_gpu_x.so".into())], vec![], "cannot load"),
    ];
    if let Some(c) = &libc {
        cases.push((vec![("LLAMAFILE_GPU_BACKEND", c.clone())], vec![], "no symbol `llamafile_gpu_backend`"));
    } else {
        eprintln!("note: libc not found in /proc/self/maps; the no-symbol case is covered by the ABI tests only");
    }
    for (env, extra, why) in &cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut args = vec!["-ngl", "99"];
        args.extend(extra);
        let g = eval(&m, &toks, &args, &env);
        let w = warnings(&g.stderr);
        assert_eq!(w.len(), 1, "{env:?}: expected one warning, got:\n{}", g.stderr);
        assert!(w[0].contains(why) && w[0].contains("running all 4 layers on the CPU"), "{env:?}: {}", w[0]);
        assert_eq!(g.top, cpu.top, "{env:?}: the fallback must be the CPU path");
    }
}

#[test]
fn auto_skips_a_non_accelerator_and_disable_loads_nothing() {
    let Some(_) = e2e::require_shared() else { return };
    let m = model("tiny-mistral-q4_0");
    let toks = case_tokens("tiny-mistral-q4_0", "fox");
    let lib = reference_lib();
    let dir = tempfile::tempdir().unwrap();
    // Beside a copy of the executable: found, but score 0 is only used when named.
    let exe = dir.path().join("llamafile");
    e2e::copy_executable(&e2e::bin("llamafile"), &exe);
    e2e::copy_executable(&lib, &dir.path().join(lib.file_name().unwrap()));
    let run_status = |args: &[&str]| {
        let list: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
        let out = Command::new(&exe)
            .arg("-m")
            .arg(&m)
            .args(["--eval-tokens", &list.join(","), "--top", "5", "-n", "1"])
            .args(args)
            .env_remove("LLAMAFILE_GPU_BACKEND")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let run = |args: &[&str]| {
        let (ok, stderr) = run_status(args);
        assert!(ok, "{args:?}: {stderr}");
        stderr
    };
    let auto = run(&["-ngl", "99"]);
    let w = warnings(&auto);
    assert_eq!(w.len(), 1, "{auto}");
    assert!(w[0].contains("not an accelerator"), "{}", w[0]);
    // Named: used, no warning.
    let named = run(&["-ngl", "99", "--gpu", "reference", "--verbose"]);
    assert!(warnings(&named).is_empty(), "{named}");
    assert!(named.contains("beside the executable"), "{named}");
    // Disabled, or -ngl 0: nothing is looked for, nothing said.
    assert!(warnings(&run(&["-ngl", "99", "--gpu", "disable"])).is_empty());
    assert!(warnings(&run(&[])).is_empty());
    // An unknown --gpu value is an error on one clear line.
    let (ok, bad) = run_status(&["-ngl", "99", "--gpu", "tpu"]);
    assert!(!ok && bad.trim().lines().count() == 1 && bad.contains("--gpu tpu"), "{bad}");
}

/// The two real models (after scripts/fetch-model): Qwen2 (q/k/v biases, NEOX RoPE) and Gemma 3
/// (q/k norms, post norms, GELU, sliding windows, two RoPE bases) offloaded in part and in full,
/// within the shared tolerance for real models (0.25) of the CPU run.
#[test]
fn real_models_offload_match_the_cpu() {
    let Some(_) = e2e::require_shared() else { return };
    let lib = reference_lib();
    for m in ["qwen2.5-coder-0.5b-instruct-q4_k_m", "gemma-3-270m-q4_k_m"] {
        let Some(path) = e2e::require_model(&format!("{m}.gguf")) else { continue };
        let toks = case_tokens(m, "code");
        let cpu = eval(&path, &toks, &[], &[]);
        for ngl in ["3", "99"] {
            let g = eval(&path, &toks, &["-ngl", ngl], &[("LLAMAFILE_GPU_BACKEND", lib.to_str().unwrap())]);
            assert!(warnings(&g.stderr).is_empty(), "{}", g.stderr);
            assert_close(&format!("{m} -ngl {ngl}"), &cpu, &g, MAX_MEAN_TOP10_DIFF_REAL);
        }
    }
}
