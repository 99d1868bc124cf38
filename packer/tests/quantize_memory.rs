//! `pack --quantize` streams the model: the peak resident memory of the `pack` process stays a
//! small fraction of the input GGUF's size (the input's pages leave the resident set once
//! quantized; the output is written out slab by slab).

use llamafile_format::gguf::writer::header;
use llamafile_format::gguf::MetaValue;
use std::io::Write;
use std::path::Path;

/// F16 values as bytes, deterministic and finite (magnitudes about 2^-7 to 2^-5, both signs).
fn f16_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let bits = ((s >> 32) as u16 & 0x87FF) | 0x2000;
        out.extend_from_slice(&bits.to_le_bytes());
    }
    out
}

/// A Llama-shaped F16 GGUF of about `layers` x 90 MB written to `path` a tensor at a time (the
/// test itself never holds the model either); returns its size.
fn write_model(path: &Path, layers: usize) -> u64 {
    let (embd, ff, kv, vocab) = (2048u64, 5632u64, 512u64, 8192u64);
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![embd, vocab])];
    for b in 0..layers {
        for (n, dims) in [
            ("attn_norm.weight", vec![embd]),
            ("attn_q.weight", vec![embd, embd]),
            ("attn_k.weight", vec![embd, kv]),
            ("attn_v.weight", vec![embd, kv]),
            ("attn_output.weight", vec![embd, embd]),
            ("ffn_norm.weight", vec![embd]),
            ("ffn_gate.weight", vec![embd, ff]),
            ("ffn_up.weight", vec![embd, ff]),
            ("ffn_down.weight", vec![ff, embd]),
        ] {
            shapes.push((format!("blk.{b}.{n}"), dims));
        }
    }
    shapes.push(("output_norm.weight".into(), vec![embd]));
    shapes.push(("output.weight".into(), vec![embd, vocab]));
    let meta: Vec<(&str, MetaValue)> = vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("general.name", MetaValue::String("quantize-memory".into())),
        ("llama.context_length", MetaValue::U32(256)),
        ("llama.embedding_length", MetaValue::U32(embd as u32)),
        ("llama.block_count", MetaValue::U32(layers as u32)),
        ("llama.feed_forward_length", MetaValue::U32(ff as u32)),
        ("llama.attention.head_count", MetaValue::U32(16)),
        ("llama.attention.head_count_kv", MetaValue::U32(4)),
        ("llama.rope.dimension_count", MetaValue::U32(128)),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5)),
        ("general.file_type", MetaValue::U32(1)),
    ];
    // Norms are F32, matrices F16.
    let typed: Vec<(u32, u64)> = shapes
        .iter()
        .map(|(_, d)| {
            let n: u64 = d.iter().product();
            if d.len() == 1 {
                (0, 4 * n)
            } else {
                (1, 2 * n)
            }
        })
        .collect();
    let infos: Vec<(&str, &[u64], u32, u64)> =
        shapes.iter().zip(&typed).map(|((n, d), &(t, size))| (n.as_str(), d.as_slice(), t, size)).collect();
    let align = 32u64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let head = header(&meta, &infos, align);
    f.write_all(&head).unwrap();
    let mut size = head.len() as u64;
    for (i, (&(t, bytes), (_, d))) in typed.iter().zip(&shapes).enumerate() {
        let n = d.iter().product::<u64>() as usize;
        let data = if t == 0 { 1f32.to_le_bytes().repeat(n) } else { f16_bytes(n, i as u64 + 1) };
        assert_eq!(data.len() as u64, bytes);
        let padded = bytes.div_ceil(align) * align;
        f.write_all(&data).unwrap();
        f.write_all(&vec![0u8; (padded - bytes) as usize]).unwrap();
        size += padded;
    }
    f.flush().unwrap();
    size
}

/// Run `cmd` to its end; its exit status and peak resident set in bytes (the kernel's own
/// high-water mark for that process, from `wait4`).
fn run_measured(cmd: &mut std::process::Command) -> (i32, u64) {
    // Reaped by the `wait4` below, which also gives its resource use (`Child::wait` does not).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a plain `wait4` on our own child, with pointers to locals; `child` is never waited
    // for again (its drop does not wait).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "pack did not exit normally (status {status:#x})");
    // Linux reports ru_maxrss in KiB.
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

#[test]
fn quantizing_holds_a_small_part_of_the_model_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big-f16.gguf");
    let size = write_model(&src, 3);
    assert!(size > 300 << 20, "the model is {size} bytes: too small to tell streaming from loading");
    let out = dir.path().join("big-q8_0.gguf");
    let (code, peak) = run_measured(
        std::process::Command::new(env!("CARGO_BIN_EXE_pack"))
            .arg("--gguf")
            .arg(&src)
            .args(["--quantize", "Q8_0", "--gguf-out"])
            .arg(&out)
            .env("RAYON_NUM_THREADS", "2")
            .stderr(std::process::Stdio::null()),
    );
    assert_eq!(code, 0, "pack --quantize Q8_0 failed");
    let written = std::fs::metadata(&out).unwrap().len();
    assert!(written > size / 2, "the output is {written} bytes for {size} of F16");
    // The program and its slabs are tens of MiB; a process that keeps what it read holds the
    // whole input (and one that buffers its output, half of it more).
    let limit = size / 4;
    eprintln!("peak resident set {} MiB, model {} MiB", peak >> 20, size >> 20);
    assert!(
        peak < limit,
        "pack's peak resident set is {} MiB for a {} MiB model (limit {} MiB)",
        peak >> 20,
        size >> 20,
        limit >> 20
    );
}
