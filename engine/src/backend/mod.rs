//! Where the layers run: the seam between the engine and the devices (the GPU offload
//! implements it in `gpu.rs`).
//!
//! The engine turns token ids into embeddings (`Model::embed`) and then hands the residual stream
//! to a chain of backends, each owning a contiguous range of layers, in layer order:
//!
//! ```text
//!   ids -> embed -> [CPU: layers 0..k] -> [offload: layers k..n_layer + output] -> logits
//! ```
//!
//! - With `-ngl 0` the chain is a single `CpuBackend` over every layer and the output: no copies,
//!   no indirection beyond one virtual call per batch.
//! - With `-ngl N` the offload backend takes the last N layers (all of them when N >= n_layer) and
//!   the output layer (`runs_output`); the CPU runs the rest. Exactly one backend in the chain runs
//!   the output, and it is the last one.
//! - Each backend keeps its own KV cache for its own layers (`BackendState`), sized at session
//!   creation for `n_ctx` positions and batches of at most `max_batch` tokens: a forward pass
//!   allocates nothing.
//!
//! A backend runs the layer recipe from `crate::model` (public `Hparams`, `Recipe`,
//! `LayerAttn` per layer, `LayerWeights` with `Weight` views whose bytes are
//! `Model::bytes(w)`, straight from the mmap): `model::transformer::layer` writes the order of
//! operations once (see its module comment), and a backend implements its `LayerOps`.
//!
//! To plug in the GPU: `plan()` below is the one place that decides the chain (`-ngl`, `--gpu`).

pub mod cpu;
pub mod gpu;

use crate::model::Model;
use anyhow::Result;
use std::ops::Range;
use std::sync::Arc;

/// A device that runs a contiguous range of layers (and maybe the output layer) of a model.
pub trait Backend: Send + Sync {
    /// For logs: "cpu", "cuda:0 (RTX 4090)", ...
    fn name(&self) -> String;
    /// The layers it runs, e.g. `0..32`.
    fn layers(&self) -> Range<usize>;
    /// Whether it applies the final norm and the output matrix (then it is last in the chain).
    fn runs_output(&self) -> bool;
    /// A KV cache for `n_ctx` positions and buffers for batches of up to `max_batch` tokens.
    fn new_state(&self, n_ctx: usize, max_batch: usize) -> Result<Box<dyn BackendState>>;
    /// Host memory `new_state(n_ctx, max_batch)` allocates, for refusing a context that cannot
    /// fit before allocating it; 0 for a backend whose state lives on a device.
    fn host_state_bytes(&self, _n_ctx: usize, _max_batch: usize) -> u64 {
        0
    }
}

/// One session's state on a backend: its layers' KV cache and activation buffers.
pub trait BackendState: Send {
    /// Run this backend's layers over `n_tokens` tokens at positions `pos..pos + n_tokens`:
    /// `x` is the residual stream [n_tokens x n_embd], updated in place (the next backend
    /// continues from it). Keys/values of these positions are stored in the cache; earlier
    /// positions must already be there.
    ///
    /// `logits` (only for a backend that `runs_output`): a buffer of `n_vocab` values gets the
    /// last token's logits; one of `n_tokens * n_vocab` gets every token's, row by row.
    fn forward(&mut self, x: &mut [f32], n_tokens: usize, pos: usize, logits: Option<&mut [f32]>) -> Result<()>;
    /// Run this backend's layers over independent sequences packed in `x` (`lens[i]` tokens
    /// each, in order; `x` holds exactly their rows), every one from position 0, as for
    /// embeddings: nothing is kept for later (the cache rows are overwritten). The default
    /// runs them one after another through `forward`; a backend that can batch them overrides it.
    fn forward_sequences(&mut self, x: &mut [f32], lens: &[usize]) -> Result<()> {
        let total: usize = lens.iter().sum();
        if total == 0 {
            return Ok(());
        }
        let e = x.len() / total;
        let mut first = 0;
        for &len in lens {
            self.forward(&mut x[first * e..(first + len) * e], len, 0, None)?;
            first += len;
        }
        Ok(())
    }
    /// Forget positions `pos..` (the next forward starts at `pos`).
    fn truncate(&mut self, pos: usize);
    /// Bytes held (KV cache + buffers), for logs.
    fn bytes(&self) -> usize {
        0
    }
}

/// What the chain should look like, from the load options.
pub struct PlanOptions<'a> {
    pub n_gpu_layers: usize,
    /// `--gpu auto|cuda|disable`.
    pub gpu: &'a str,
    pub verbose: bool,
}

/// Decide which backend runs which layers. The CPU takes every layer the offload backend does
/// not. Returns the chain in layer order; the last element runs the output.
pub fn plan(model: &Arc<Model>, opts: &PlanOptions) -> Result<Vec<Arc<dyn Backend>>> {
    let n_layer = model.hp.n_layer;
    // GPU offload (`gpu.rs`): the last min(ngl, n_layer) layers + the output on the
    // backend; on any failure one warning and the CPU runs everything.
    let mut chain: Option<Vec<Arc<dyn Backend>>> = None;
    let choice = gpu::parse_choice(opts.gpu)?; // a misspelt --gpu is an error, not a warning
    if opts.n_gpu_layers > 0 && choice != gpu::GpuChoice::Disable {
        match gpu::plan_offload(model, opts) {
            Ok(c) => chain = Some(c),
            Err(e) => eprintln!("warning: GPU offload unavailable: {e:#}; running all {n_layer} layers on the CPU"),
        }
    }
    let chain = chain.unwrap_or_else(|| vec![Arc::new(cpu::CpuBackend::new(model.clone(), 0..n_layer, true))]);
    if opts.verbose {
        for line in gpu::describe_chain(&chain, n_layer) {
            eprintln!("{line}");
        }
    }
    Ok(chain)
}
