//! Compute cost of the one-token kernels, without memory in the way (a command, not a test):
//! a 128-row matrix (in L2) multiplied by one token over and over on one thread, reported as
//! nanoseconds per weight block and as the GB/s this would stream if memory kept up.
//!
//! ```text
//! cargo run --release -p kernels-cpu --example gemv_hot [-- TYPE... [--cols N]]
//! ```
//! Uses the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), so a busy machine does not
//! change the figure much.

use kernels_cpu::kernels;
use kernels_cpu::types::{quantize_row, WeightType};

fn thread_cpu_ns() -> f64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    unsafe {
        clock_gettime(3 /* CLOCK_THREAD_CPUTIME_ID */, &mut ts)
    };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cols = 14336usize;
    let mut types = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--cols" {
            cols = args[i + 1].parse().expect("--cols N");
            i += 2;
            continue;
        }
        types.push(
            kernels_cpu::types::TYPES
                .iter()
                .map(|t| t.ty)
                .find(|t| t.name() == args[i])
                .unwrap_or_else(|| panic!("unknown type {}", args[i])),
        );
        i += 1;
    }
    if types.is_empty() {
        types = vec![WeightType::Q2_K, WeightType::Q3_K, WeightType::Q4_K, WeightType::Q5_K, WeightType::Q6_K];
    }
    let rows = 128;
    let k = kernels();
    println!("isa {}, {rows} x {cols}, one thread, thread CPU time", k.isa.name());
    for t in types {
        let tk = k.get(t).expect("kernels");
        let rb = t.row_bytes(cols);
        let mut w = vec![0u8; rb * rows];
        let mut s = 0x1234_5678u64;
        let mut noise = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                })
                .collect()
        };
        for r in 0..rows {
            quantize_row(t, &noise(cols), &mut w[r * rb..(r + 1) * rb]);
        }
        let at = t.vec_dot_type();
        let mut x = vec![0u8; at.row_bytes(cols)];
        quantize_row(at, &noise(cols), &mut x);
        let mut out = vec![0f32; rows];
        let run = |out: &mut [f32]| match tk.gemv {
            Some(g) => g(cols, &w, rb, rows, &x, out),
            None => out.iter_mut().enumerate().for_each(|(r, o)| *o = (tk.vec_dot)(cols, &w[r * rb..], &x)),
        };
        for _ in 0..50 {
            run(&mut out);
        }
        let mut best = f64::MAX;
        for _ in 0..7 {
            let iters = 400;
            let c0 = thread_cpu_ns();
            for _ in 0..iters {
                run(&mut out);
                std::hint::black_box(&out);
            }
            best = best.min((thread_cpu_ns() - c0) / iters as f64);
        }
        let blocks = (rows * cols / t.block_size()) as f64;
        println!(
            "{:5} {:6.2} ns/block  {:6.1} GB/s of weights (compute bound, 1 thread)",
            t.name(),
            best / blocks,
            (rb * rows) as f64 / best
        );
    }
}
