//! The tiny Hugging Face checkpoints of tests/fixtures/make_hf_checkpoint.py (real tokenizers,
//! seeded weights) and `pack --hf` run on them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The tokenizer file (fetched by scripts/fetch-model) each fixture architecture uses.
fn tokenizer_for(arch: &str) -> &'static str {
    match arch {
        "qwen2" | "qwen3" | "phi4-mini" => "qwen2.5-tokenizer.json",
        "llama3" => "llama-3.2-tokenizer.json",
        // No SmolLM2 tokenizer.json is reachable: the script writes one from this GGUF's
        // vocabulary and merges (the converter's fingerprint of it is SmolLM's).
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        // No Gemma tokenizer.model is reachable: the script writes one from this GGUF's
        // vocabulary (Gemma 3's pieces, scores and types).
        "gemma2" | "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        // Phi-3's SentencePiece vocabulary is Llama 2's 32000 pieces; Mistral's real one of the
        // same kind stands in, with Phi-3's added tokens over it.
        _ => "mistral-7b-v0.1-tokenizer.model",
    }
}

/// A new checkpoint of `arch` (llama, llama3, smollm2, mistral, nemo, qwen2, qwen3, phi3, phi3-longrope, phi4-mini, gemma2, gemma3) in a temporary directory, or `None`
/// (the skip recorded) without its tokenizer or without python3 and numpy.
pub fn checkpoint(arch: &str) -> Option<tempfile::TempDir> {
    let tokenizer = e2e::require_model(tokenizer_for(arch))?;
    let numpy = Command::new("python3").args(["-c", "import numpy"]).output();
    if !numpy.is_ok_and(|o| o.status.success()) {
        e2e::skip("python3 with numpy", "python3 -m pip install numpy");
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(e2e::root().join("tests/fixtures/make_hf_checkpoint.py"))
        .arg(arch)
        .arg(d.path().join(arch))
        .arg("--tokenizer")
        .arg(&tokenizer)
        .output()
        .expect("running make_hf_checkpoint.py");
    assert!(out.status.success(), "make_hf_checkpoint.py {arch}: {}", String::from_utf8_lossy(&out.stderr));
    Some(d)
}

/// The checkpoint directory inside the temporary directory `checkpoint` made.
pub fn dir(d: &tempfile::TempDir, arch: &str) -> PathBuf {
    d.path().join(arch)
}

/// `pack --hf DIR ARGS...`.
pub fn pack_hf(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(e2e::bin("pack")).arg("--hf").arg(dir).args(args).output().expect("running pack")
}
