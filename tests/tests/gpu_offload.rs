//! GPU offload through the real ABI, at the library level: the CPU reference backend (a cdylib,
//! loaded with dlopen like any backend) runs the last N layers and the output of the tiny shared
//! models, and the logits must match the pure-CPU chain. Tokens are fed as one batch and then
//! one by one, so the device-side KV cache is exercised across calls.

use e2e::reference_lib;
use kernels_gpu::abi;
use llamafile_engine::backend::cpu::CpuBackend;
use llamafile_engine::backend::gpu::{self, Candidate, GpuBackend, GpuChoice};
use llamafile_engine::backend::{Backend, BackendState};
use llamafile_engine::model::Model;
use llamafile_format::gguf::GgufFile;
use serde_json::Value;
use std::sync::Arc;

mod arch_models;

fn tokens(model: &str, n: usize) -> Vec<u32> {
    let path = e2e::shared().join("reference").join(format!("{model}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == "long").unwrap();
    case["tokens"].as_array().unwrap().iter().take(n).map(|t| t.as_u64().unwrap() as u32).collect()
}

/// Logits of every position: the first `batch` tokens in one forward, the rest one at a time.
fn run(model: &Model, chain: &[Arc<dyn Backend>], toks: &[u32], batch: usize) -> Vec<f32> {
    let (e, nv) = (model.hp.n_embd, model.hp.n_vocab);
    let mut states: Vec<Box<dyn BackendState>> = chain.iter().map(|b| b.new_state(128, batch).unwrap()).collect();
    let mut out = vec![0f32; toks.len() * nv];
    let mut x = vec![0f32; batch * e];
    let mut pos = 0;
    while pos < toks.len() {
        let n = if pos == 0 { batch.min(toks.len()) } else { 1 };
        for t in 0..n {
            model.embed(toks[pos + t], &mut x[t * e..(t + 1) * e]).unwrap();
        }
        let last = states.len() - 1;
        for (i, st) in states.iter_mut().enumerate() {
            let logits = if i == last { Some(&mut out[pos * nv..(pos + n) * nv]) } else { None };
            st.forward(&mut x[..n * e], n, pos, logits).unwrap();
        }
        pos += n;
    }
    out
}

fn chosen() -> gpu::Chosen {
    let cand = Candidate { path: reference_lib(), origin: "test".into(), explicit: true };
    let mut why = Vec::new();
    let c =
        gpu::choose(&[cand], GpuChoice::Auto, &mut why).unwrap_or_else(|| panic!("reference backend refused: {why:?}"));
    assert_eq!(c.lib.name(), "reference");
    c
}

fn compare(name: &str, cpu: &[f32], ours: &[f32], nv: usize) {
    let n = cpu.len() / nv;
    let mut top1 = 0;
    let mut diff_top10 = 0.0f64;
    let mut max_diff = 0.0f32;
    for p in 0..n {
        let (c, o) = (&cpu[p * nv..(p + 1) * nv], &ours[p * nv..(p + 1) * nv]);
        let mut idx: Vec<usize> = (0..nv).collect();
        idx.sort_by(|&a, &b| c[b].total_cmp(&c[a]));
        let argmax_o = (0..nv).max_by(|&a, &b| o[a].total_cmp(&o[b])).unwrap();
        top1 += (argmax_o == idx[0]) as usize;
        diff_top10 += idx[..10].iter().map(|&i| (c[i] - o[i]).abs() as f64).sum::<f64>() / 10.0;
        max_diff = max_diff.max(c.iter().zip(o).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
    }
    let mean = diff_top10 / n as f64;
    eprintln!("{name}: mean |Δlogit| over top-10 {mean:.5}, max |Δlogit| {max_diff:.5}, top-1 {top1}/{n}");
    // The shared tolerances. (Measured: identical to the last bit today, since the reference
    // backend uses the CPU path's kernels and summation orders; but a one-ulp change upstream of
    // an activation quantization can move random-weight logits by ~0.3, so no tighter bound.)
    assert!(mean <= 0.15, "{name}: mean top-10 logit difference {mean}");
    assert!(top1 * 10 >= n * 9, "{name}: top-1 agreement {top1}/{n}");
}

#[test]
fn offload_matches_cpu_on_tiny_models() {
    let Some(_) = e2e::require_shared() else { return };
    let models = ["f16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]
        .map(|t| format!("tiny-mistral-{t}"));
    let ch = chosen();
    for m in &models {
        let path = e2e::shared().join("models").join(format!("{m}.gguf"));
        let model = Arc::new(Model::load(GgufFile::open(&path).unwrap()).unwrap());
        let n_layer = model.hp.n_layer;
        let toks = tokens(m, 40);
        let cpu: Vec<Arc<dyn Backend>> = vec![Arc::new(CpuBackend::new(model.clone(), 0..n_layer, true))];
        let want = run(&model, &cpu, &toks, 24);
        for ngl in [1usize, 2, n_layer] {
            // As backend::plan builds it: the output on the device only with every layer.
            let k = n_layer - ngl;
            let all = k == 0;
            let g = GpuBackend::new(model.clone(), &ch, k..n_layer, all).unwrap();
            let mut chain: Vec<Arc<dyn Backend>> = Vec::new();
            if k > 0 {
                chain.push(Arc::new(CpuBackend::new(model.clone(), 0..k, false)));
            }
            chain.push(Arc::new(g));
            if !all {
                chain.push(Arc::new(CpuBackend::new(model.clone(), n_layer..n_layer, true)));
            }
            let lines = gpu::describe_chain(&chain, n_layer);
            assert!(lines[n_layer - 1].contains("reference"), "{lines:?}");
            assert_eq!(lines[0].contains("reference"), all, "{lines:?}");
            assert_eq!(lines[n_layer].contains("reference"), all, "output: {lines:?}");
            let got = run(&model, &chain, &toks, 24);
            compare(&format!("{m} -ngl {ngl}"), &want, &got, model.hp.n_vocab);
        }
    }
}

/// The new operations of each architecture's recipe (Llama 3's RoPE factors, Qwen3's q/k norms
/// and head size, Gemma 2's soft-capped attention on alternating sliding windows) on the device
/// as on the CPU: the tiny layouts with the shared Mistral vocabulary.
#[test]
fn offload_matches_cpu_on_every_architecture_layout() {
    let Some(shared) = e2e::require_shared() else { return };
    let vocab = arch_models::vocab_of_gguf(&shared.join("models/tiny-mistral-f16.gguf"));
    let toks = tokens("tiny-mistral-f16", 80);
    let ch = chosen();
    for (name, layout) in [
        ("llama3", arch_models::llama3_layout()),
        ("qwen3", arch_models::qwen3_layout()),
        ("gemma2", arch_models::gemma2_layout()),
    ] {
        let bytes = arch_models::build(&layout, &vocab);
        let model = Arc::new(Model::load(GgufFile::from_bytes(name, bytes).unwrap()).unwrap());
        cpu_and_device_agree(name, &model, &ch, &toks);
    }
}

/// `toks` run through every layer on the CPU and on the device give the same logits (48 at a
/// time); returns the CPU's.
fn cpu_and_device_agree(name: &str, model: &Arc<Model>, ch: &gpu::Chosen, toks: &[u32]) -> Vec<f32> {
    let n_layer = model.hp.n_layer;
    let cpu: Vec<Arc<dyn Backend>> = vec![Arc::new(CpuBackend::new(model.clone(), 0..n_layer, true))];
    let want = run(model, &cpu, toks, 48);
    let g: Arc<dyn Backend> = Arc::new(GpuBackend::new(model.clone(), ch, 0..n_layer, true).unwrap());
    let got = run(model, &[g], toks, 48);
    compare(&format!("{name} on the device"), &want, &got, model.hp.n_vocab);
    want
}

/// Phi-3's LongRoPE (the attention factor, and each factor set as a context chooses it) on the
/// device as on the CPU.
#[test]
fn offload_matches_cpu_with_longrope() {
    let Some(shared) = e2e::require_shared() else { return };
    let vocab = arch_models::vocab_of_gguf(&shared.join("models/tiny-mistral-f16.gguf"));
    let toks = tokens("tiny-mistral-f16", 80);
    let ch = chosen();
    let bytes = arch_models::build(&arch_models::phi3_longrope_layout(), &vocab);
    let mut seen = Vec::new();
    for n_ctx in [1024, 2048] {
        let mut model = Model::load(GgufFile::from_bytes("phi3-longrope", bytes.clone()).unwrap()).unwrap();
        model.hp.choose_rope_factors(n_ctx);
        assert_ne!(model.hp.rope(0).attn_factor, 1.0);
        let name = format!("phi3 LongRoPE for a context of {n_ctx}");
        seen.push(cpu_and_device_agree(&name, &Arc::new(model), &ch, &toks));
    }
    assert_ne!(seen[0], seen[1], "the short and long factors give other logits");
}

#[test]
fn last_token_logits_only() {
    let Some(_) = e2e::require_shared() else { return };
    // A logits buffer of n_vocab values gets the last token's row.
    let m = "tiny-mistral-q8_0";
    let path = e2e::shared().join("models").join(format!("{m}.gguf"));
    let model = Arc::new(Model::load(GgufFile::open(&path).unwrap()).unwrap());
    let (n_layer, e, nv) = (model.hp.n_layer, model.hp.n_embd, model.hp.n_vocab);
    let toks = tokens(m, 6);
    let chain: Vec<Arc<dyn Backend>> =
        vec![Arc::new(GpuBackend::new(model.clone(), &chosen(), 0..n_layer, true).unwrap())];
    let all = run(&model, &chain, &toks, 6);
    let mut st = chain[0].new_state(16, 6).unwrap();
    let mut x = vec![0f32; 6 * e];
    for (t, id) in toks.iter().enumerate() {
        model.embed(*id, &mut x[t * e..(t + 1) * e]).unwrap();
    }
    let mut last = vec![0f32; nv];
    st.forward(&mut x, 6, 0, Some(&mut last)).unwrap();
    // The same row (one-token and many-token matrix kernels may round differently).
    let worst = last.iter().zip(&all[5 * nv..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "last-token logits differ from the last row by up to {worst}");
    // Too large a batch is a clear error, not a crash.
    let mut big = vec![0f32; 7 * e];
    let err = st.forward(&mut big, 7, 0, None).unwrap_err().to_string();
    assert!(err.contains("batch of 7"), "{err}");
}

#[test]
fn unsupported_weight_types_and_small_devices_are_refused() {
    let Some(_) = e2e::require_shared() else { return };
    // A device with less free memory than the weights: refused before anything is uploaded.
    let m = "tiny-mistral-q4_k_m";
    let path = e2e::shared().join("models").join(format!("{m}.gguf"));
    let model = Arc::new(Model::load(GgufFile::open(&path).unwrap()).unwrap());
    let mut ch = chosen();
    ch.info.free_memory = 1000;
    let err = GpuBackend::new(model.clone(), &ch, 0..model.hp.n_layer, true).err().expect("must not fit").to_string();
    assert!(err.contains("out of device memory"), "{err}");
    assert!(abi::name_str(&ch.info.name).starts_with("CPU reference"));
}

#[test]
fn sessions_on_one_device_run_concurrently() {
    let Some(_) = e2e::require_shared() else { return };
    // The server runs several sessions at once: each has its own stream and KV cache on the
    // device, the weights are shared. Four threads, different prompts, each must get exactly
    // what it gets alone.
    let m = "tiny-mistral-q4_k_m";
    let path = e2e::shared().join("models").join(format!("{m}.gguf"));
    let model = Arc::new(Model::load(GgufFile::open(&path).unwrap()).unwrap());
    let n_layer = model.hp.n_layer;
    let chain: Vec<Arc<dyn Backend>> =
        vec![Arc::new(GpuBackend::new(model.clone(), &chosen(), 0..n_layer, true).unwrap())];
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| tokens(m, 30 + 5 * i)[5 * i..].to_vec()).collect();
    let alone: Vec<Vec<f32>> = prompts.iter().map(|p| run(&model, &chain, p, 8)).collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = prompts.iter().map(|p| sc.spawn(|| run(&model, &chain, p, 8))).collect();
        for (h, want) in handles.into_iter().zip(&alone) {
            assert!(h.join().unwrap() == *want, "a concurrent session got other logits");
        }
    });
}
