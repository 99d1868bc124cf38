//! Kernel benchmark (a command, not a test):
//!
//! ```text
//! cargo run --profile release -p kernels-cpu --example bench [-- TYPE...] [--shape RxC] [--tokens N]
//! ```
//!
//! 1. A STREAM-like read bandwidth probe: sum of 1 GiB, 1 and 2 threads (best of 3).
//! 2. For Mistral-7B-sized matrices (14336x4096 and 4096x14336) and each weight type:
//!    `matvec` GB/s of weight bytes with 1 and 2 threads, and as a % of the read bandwidth
//!    probed *interleaved with it* (one 512 MiB probe pass, one matvec pass over all copies,
//!    20 rounds, best of each): this machine's memory bandwidth moves between ~45 and ~75 GB/s
//!    from one second to the next (other tenants), so a probe taken once at the start says
//!    little about the bandwidth a later matvec had;
//!    `matmul` with 512 tokens (`--tokens N`: N) in GFLOP/s (2 threads); fewer than
//!    `matmul::PANEL_MIN_TOKENS` measures the tile kernels instead of the panels.
//!
//! Weights are random rows quantized with this crate's quantizers, replicated to size, and
//! several copies (over 256 MiB in all) are cycled so that no matvec reads from cache.
//! `LLAMAFILE_ISA` lowers the instruction set as everywhere else.

use kernels_cpu::matmul::{self, Scratch};
use kernels_cpu::types::{quantize_row, WeightType};
use kernels_cpu::{kernels, Isa};
use std::time::{Duration, Instant};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}

/// splitmix64 noise in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// Read bandwidth in GB/s: sum every u64 of a 1 GiB buffer, split over the pool's threads.
fn bandwidth(threads: usize) -> f64 {
    let buf: Vec<u64> = (0..(1usize << 30) / 8).map(|i| i as u64).collect();
    let p = pool(threads);
    let best = (0..3).map(|_| probe_pass(&p, &buf)).fold(f64::MAX, f64::min);
    (1u64 << 30) as f64 / best / 1e9
}

/// One pass of the read probe over `buf` with the pool's threads, in seconds.
fn probe_pass(p: &rayon::ThreadPool, buf: &[u64]) -> f64 {
    use rayon::prelude::*;
    let t = Instant::now();
    let s: u64 = p.install(|| {
        buf.par_chunks(1 << 16)
            .map(|c| {
                let mut a = [0u64; 4];
                for q in c.chunks_exact(4) {
                    for k in 0..4 {
                        a[k] = a[k].wrapping_add(q[k]);
                    }
                }
                a[0].wrapping_add(a[1]).wrapping_add(a[2]).wrapping_add(a[3])
            })
            .reduce(|| 0, |a, b| a.wrapping_add(b))
    });
    std::hint::black_box(s);
    t.elapsed().as_secs_f64()
}

/// `copies` matrices of `rows x cols` in type `t` (one quantized 64-row slab, replicated).
fn weights(t: WeightType, rows: usize, cols: usize, copies: usize) -> Vec<Vec<u8>> {
    let slab_rows = 64.min(rows);
    let rb = t.row_bytes(cols);
    let mut slab = vec![0u8; rb * slab_rows];
    for r in 0..slab_rows {
        quantize_row(t, &noise(cols, r as u64 + 1), &mut slab[r * rb..(r + 1) * rb]);
    }
    (0..copies)
        .map(|_| {
            let mut m = Vec::with_capacity(rb * rows);
            while m.len() < rb * rows {
                let take = slab.len().min(rb * rows - m.len());
                m.extend_from_slice(&slab[..take]);
            }
            m
        })
        .collect()
}

/// CPU seconds used by this process so far (all threads), from /proc/self/stat (Linux;
/// 0 elsewhere). On a busy machine, work per CPU-second shows what the kernels do when they get
/// the cores, which wall time alone does not.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the ")" closing the command name: state is field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

/// Run `f` repeatedly for at least `budget` (and at least `min_iters` times); (wall seconds,
/// CPU seconds) per call.
fn time(budget: Duration, min_iters: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    f(0); // warm up (grows the scratch, faults the pages)
    let t = Instant::now();
    let c = cpu_seconds();
    let mut i = 0;
    while i < min_iters || t.elapsed() < budget {
        f(i + 1);
        i += 1;
    }
    (t.elapsed().as_secs_f64() / i as f64, (cpu_seconds() - c) / i as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shapes = vec![(14336usize, 4096usize), (4096, 14336)];
    let mut only: Vec<WeightType> = Vec::new();
    let mut tokens = 512usize;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--tokens" {
            tokens = args.get(i + 1).and_then(|v| v.parse().ok()).filter(|&t| t > 0).expect("--tokens N (N > 0)");
            i += 2;
            continue;
        }
        if args[i] == "--shape" {
            let s = args.get(i + 1).expect("--shape RxC");
            let (r, c) = s.split_once('x').expect("--shape RxC");
            shapes = vec![(r.parse().expect("rows"), c.parse().expect("cols"))];
            i += 2;
            continue;
        }
        match kernels_cpu::types::TYPES.iter().find(|t| t.ty.name().eq_ignore_ascii_case(&args[i])) {
            Some(t) => only.push(t.ty),
            None => {
                eprintln!(
                    "bench: unknown type or option {:?} (types: F16 BF16 Q4_0 ... Q6_K; --shape RxC; --tokens N)",
                    args[i]
                );
                std::process::exit(2);
            }
        }
        i += 1;
    }
    use WeightType::*;
    let types = if only.is_empty() {
        vec![F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
    } else {
        only
    };

    println!("ISA: {} (best on this CPU: {})", kernels().isa.name(), Isa::detect().name());
    let bw1 = bandwidth(1);
    let bw2 = bandwidth(2);
    println!("read bandwidth (sum over 1 GiB): 1 thread {bw1:.1} GB/s, 2 threads {bw2:.1} GB/s\n");
    println!("Figures are per wall-clock second; in brackets, per CPU-second x threads (what the");
    println!("kernels do when they get the cores; equal on an idle machine).\n");
    println!("| shape | type | matvec 1T GB/s | matvec 2T GB/s | read probe 2T GB/s (interleaved) | % of probe | matmul {tokens} tok 2T GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    let probe: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    let (p1, p2) = (pool(1), pool(2));
    for &(rows, cols) in &shapes {
        let x1 = noise(cols, 99);
        let x_many = noise(tokens * cols, 7);
        for &t in &types {
            let bytes = t.row_bytes(cols) * rows;
            // BENCH_HOT=1: one copy, read from cache when it fits (to see compute alone).
            let hot = std::env::var_os("BENCH_HOT").is_some();
            let copies = if hot { 1 } else { (256usize << 20).div_ceil(bytes).max(2) };
            let copies = std::env::var("BENCH_COPIES").ok().and_then(|v| v.parse().ok()).unwrap_or(copies);
            let ws = weights(t, rows, cols, copies);
            let mut y = vec![0f32; rows * tokens];
            let mut s = Scratch::default();
            let per =
                |(wall, cpu): (f64, f64), threads: f64, work: f64| (work / wall, work / (cpu / threads).max(1e-9));
            let mut mv = |p: &rayon::ThreadPool, threads: f64| {
                let sec = p.install(|| {
                    time(Duration::from_millis(700), 10, |i| {
                        matmul::matvec(&ws[i % copies], t, rows, cols, &x1, &mut y[..rows], &mut s)
                    })
                });
                per(sec, threads, bytes as f64 / 1e9)
            };
            let g1 = mv(&p1, 1.0);
            let g2 = mv(&p2, 2.0);
            // Interleaved rounds: probe pass, 2-thread matvec pass over every copy; best of each.
            let (mut best_probe, mut best_mv) = (f64::MAX, f64::MAX);
            for _ in 0..20 {
                best_probe = best_probe.min(probe_pass(&p2, &probe));
                let t0 = Instant::now();
                p2.install(|| {
                    for w in &ws {
                        matmul::matvec(w, t, rows, cols, &x1, &mut y[..rows], &mut s);
                    }
                });
                best_mv = best_mv.min(t0.elapsed().as_secs_f64() / copies as f64);
            }
            let probe_gbs = (probe.len() * 8) as f64 / best_probe / 1e9;
            let mv_best = bytes as f64 / best_mv / 1e9;
            let sec = p2.install(|| {
                time(Duration::from_millis(1500), 2, |i| {
                    matmul::matmul(&ws[i % copies], t, rows, cols, &x_many, tokens, &mut y, &mut s)
                })
            });
            let gf = per(sec, 2.0, 2.0 * rows as f64 * cols as f64 * tokens as f64 / 1e9);
            println!(
                "| {rows}x{cols} | {} | {:.1} [{:.1}] | {:.1} [{:.1}], best pass {:.1} | {:.1} | {:.0}% | {:.0} [{:.0}] |",
                t.name(),
                g1.0,
                g1.1,
                g2.0,
                g2.1,
                mv_best,
                probe_gbs,
                100.0 * mv_best / probe_gbs,
                gf.0,
                gf.1
            );
        }
    }
}
