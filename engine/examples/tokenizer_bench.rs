//! Tokenizer speed: building from each shared vocabulary and encoding 1 MB of English text.
//!
//! `cargo run --profile ci -p llamafile-engine --example tokenizer_bench [-- SHARED_DIR]`
//! (SHARED_DIR defaults to ../shared beside the checkout.) Targets: building the
//! 262,144-piece Gemma 3 vocabulary <= 300 ms; encoding 1 MB of English text <= 1 s.

use llamafile_engine::tokenizer::Tokenizer;
use llamafile_format::gguf::GgufFile;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let shared = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(test_support::shared);
    let long = std::fs::read_to_string(shared.join("reference/long.txt"))?;
    let mut text = String::with_capacity(1 << 20);
    while text.len() < 1 << 20 {
        text.push_str(&long);
    }
    println!("threads: {}", rayon::current_num_threads());
    println!("text: reference/long.txt repeated to {} bytes", text.len());
    for rel in ["vocab/gemma-3-270m.vocab.gguf", "models/tiny-mistral-q4_0.gguf", "vocab/qwen2.5-coder.vocab.gguf"] {
        let path = shared.join(rel);
        let t0 = Instant::now();
        let g = GgufFile::open(&path)?;
        let open = t0.elapsed();
        let mut builds = Vec::new();
        let mut tok = None;
        for _ in 0..5 {
            let t = Instant::now();
            tok = Some(Tokenizer::from_gguf(&g)?);
            builds.push(t.elapsed());
        }
        let tok = tok.unwrap();
        let mut encodes = Vec::new();
        let mut n = 0;
        for _ in 0..3 {
            let t = Instant::now();
            n = tok.encode(&text, true, true)?.len();
            encodes.push(t.elapsed());
        }
        let enc = median(encodes);
        // One copy only: every word is new to the per-call piece cache (the repeated megabyte
        // mostly hits it, as real text does for common words).
        let mut once = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            tok.encode(&long, true, true)?;
            once.push(t.elapsed());
        }
        let once = median(once);
        println!(
            "{rel}: {} tokens in vocab | open {:.1} ms | build {:.1} ms (median of 5) | encode 1 MB: {:.1} ms (median of 3), {n} tokens, {:.2} MB/s | one copy ({} bytes, cold cache): {:.2} ms, {:.2} MB/s",
            tok.vocab_size(),
            open.as_secs_f64() * 1e3,
            median(builds).as_secs_f64() * 1e3,
            enc.as_secs_f64() * 1e3,
            text.len() as f64 / 1e6 / enc.as_secs_f64(),
            long.len(),
            once.as_secs_f64() * 1e3,
            long.len() as f64 / 1e6 / once.as_secs_f64()
        );
    }
    Ok(())
}
