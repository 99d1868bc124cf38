//! One-token matrix products streaming from memory, best of many short passes (a command, not a
//! test): on a shared, noisy machine the best pass approximates what a quiet one does.
//!
//! ```text
//! cargo run --release -p kernels-cpu --example gemv_stream -- TYPE [ROWSxCOLS] [THREADS]
//! ```
//! Also prints the read bandwidth probed the same way (best of many passes over 512 MiB).

use kernels_cpu::matmul::{self, Scratch};
use kernels_cpu::types::quantize_row;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = kernels_cpu::types::TYPES.iter().map(|i| i.ty).find(|t| Some(t.name()) == args.first().map(|s| s.as_str())).expect("TYPE");
    let (rows, cols) = args
        .get(1)
        .and_then(|s| s.split_once('x'))
        .map(|(r, c)| (r.parse().unwrap(), c.parse().unwrap()))
        .unwrap_or((4096usize, 14336usize));
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let rb = t.row_bytes(cols);
    let mut slab = vec![0u8; rb * 64];
    let mut s = 0x9e37_79b9u64;
    for r in 0..64 {
        let v: Vec<f32> = (0..cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        quantize_row(t, &v, &mut slab[r * rb..(r + 1) * rb]);
    }
    let copies = ((512usize << 20) / (rb * rows)).max(2);
    let ws: Vec<Vec<u8>> = (0..copies).map(|_| slab.iter().cycle().take(rb * rows).copied().collect()).collect();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut y = vec![0f32; rows];
    let mut sc = Scratch::new();
    let mut best = f64::MAX;
    pool.install(|| {
        for pass in 0..40 {
            let t0 = Instant::now();
            for w in &ws {
                matmul::matvec(w, t, rows, cols, &x, &mut y, &mut sc);
            }
            if pass > 0 {
                best = best.min(t0.elapsed().as_secs_f64() / copies as f64);
            }
        }
    });
    let buf: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    let mut bw_best = f64::MAX;
    pool.install(|| {
        use rayon::prelude::*;
        for _ in 0..15 {
            let t0 = Instant::now();
            let s: u64 = buf
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut a = [0u64; 4];
                    for q in c.chunks_exact(4) {
                        for k in 0..4 {
                            a[k] = a[k].wrapping_add(q[k]);
                        }
                    }
                    a[0].wrapping_add(a[1]).wrapping_add(a[2]).wrapping_add(a[3])
                })
                .reduce(|| 0, |a, b| a.wrapping_add(b));
            std::hint::black_box(s);
            bw_best = bw_best.min(t0.elapsed().as_secs_f64());
        }
    });
    let gbs = (rb * rows) as f64 / best / 1e9;
    let bw = (512usize << 20) as f64 / bw_best / 1e9;
    println!("{} {rows}x{cols} {threads}T: matvec {gbs:.1} GB/s, read bandwidth {bw:.1} GB/s, {:.0}%", t.name(), 100.0 * gbs / bw);
}
