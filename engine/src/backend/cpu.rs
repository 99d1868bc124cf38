//! The CPU backend: `model::transformer` over a range of layers, with an f16 KV cache.
//! Threads: whatever rayon pool the caller runs in (the engine installs its `-t` pool).

use super::{Backend, BackendState};
use crate::model::transformer::{
    layer_forward, layer_forward_spans, output_forward, LayerKv, RopeTable, Span, Workspace,
};
use crate::model::Model;
use anyhow::{bail, Result};
use std::ops::Range;
use std::sync::Arc;

pub struct CpuBackend {
    model: Arc<Model>,
    layers: Range<usize>,
    output: bool,
}

impl CpuBackend {
    pub fn new(model: Arc<Model>, layers: Range<usize>, output: bool) -> CpuBackend {
        CpuBackend { model, layers, output }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({})", kernels_cpu::kernels().isa.name())
    }
    fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }
    fn runs_output(&self) -> bool {
        self.output
    }
    fn host_state_bytes(&self, n_ctx: usize, max_batch: usize) -> u64 {
        let hp = &self.model.hp;
        let mut tables: Vec<kernels_cpu::ops::Rope> = Vec::new();
        for il in self.layers.clone() {
            let r = hp.rope(il);
            if !tables.contains(&r) {
                tables.push(r);
            }
        }
        let kv = LayerKv::bytes_for(hp, n_ctx).saturating_mul(self.layers.len() as u64);
        let rope = RopeTable::bytes_for(n_ctx, hp.n_rot).saturating_mul(tables.len() as u64);
        kv.saturating_add(rope).saturating_add(Workspace::bytes_for(hp, max_batch))
    }
    fn new_state(&self, n_ctx: usize, max_batch: usize) -> Result<Box<dyn BackendState>> {
        let hp = &self.model.hp;
        // One RoPE table per distinct specification among this backend's layers (Gemma 3: two).
        let mut tables: Vec<Arc<RopeTable>> = Vec::new();
        let mut rope = Vec::with_capacity(self.layers.len());
        for il in self.layers.clone() {
            let r = hp.rope(il);
            let t = match tables.iter().find(|t| t.rope == r) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(RopeTable::new(n_ctx, r));
                    tables.push(t.clone());
                    t
                }
            };
            rope.push(t);
        }
        Ok(Box::new(CpuState {
            model: self.model.clone(),
            layers: self.layers.clone(),
            output: self.output,
            n_ctx,
            kv: self.layers.clone().map(|_| LayerKv::new(hp, n_ctx)).collect(),
            rope,
            ws: Workspace::new(hp, max_batch, n_ctx),
        }))
    }
}

pub struct CpuState {
    model: Arc<Model>,
    layers: Range<usize>,
    output: bool,
    n_ctx: usize,
    kv: Vec<LayerKv>,
    rope: Vec<Arc<RopeTable>>,
    ws: Workspace,
}

impl BackendState for CpuState {
    fn forward(&mut self, x: &mut [f32], n_tokens: usize, pos: usize, logits: Option<&mut [f32]>) -> Result<()> {
        let e = self.model.hp.n_embd;
        if n_tokens == 0 || n_tokens > self.ws.max_batch || x.len() < n_tokens * e {
            bail!("cpu backend: batch of {n_tokens} tokens (buffers hold {})", self.ws.max_batch);
        }
        if pos + n_tokens > self.n_ctx {
            bail!("cpu backend: positions {pos}..{} exceed the context of {}", pos + n_tokens, self.n_ctx);
        }
        for (i, il) in self.layers.clone().enumerate() {
            layer_forward(&self.model, il, x, n_tokens, pos, &mut self.kv[i], &mut self.ws, &self.rope[i]);
        }
        match (logits, self.output) {
            (Some(l), true) => output_forward(&self.model, x, n_tokens, l, &mut self.ws),
            (Some(_), false) => bail!("cpu backend asked for logits but does not run the output layer"),
            (None, _) => {}
        }
        Ok(())
    }
    /// The sequences share one batch: each layer's projections and FFN run over all of them
    /// at once (the weights are read once per layer, not once per sequence).
    fn forward_sequences(&mut self, x: &mut [f32], lens: &[usize]) -> Result<()> {
        let e = self.model.hp.n_embd;
        let mut spans = Vec::with_capacity(lens.len());
        let mut first = 0;
        for &len in lens.iter().filter(|l| **l > 0) {
            if len > self.n_ctx {
                bail!("cpu backend: a sequence of {len} tokens exceeds the context of {}", self.n_ctx);
            }
            spans.push(Span { first, len, pos: 0 });
            first += len;
        }
        if first == 0 {
            return Ok(());
        }
        if first > self.ws.max_batch || x.len() < first * e {
            bail!("cpu backend: batch of {first} tokens (buffers hold {})", self.ws.max_batch);
        }
        for (i, il) in self.layers.clone().enumerate() {
            layer_forward_spans(&self.model, il, x, &spans, &mut self.kv[i], &mut self.ws, &self.rope[i]);
        }
        Ok(())
    }
    fn truncate(&mut self, _pos: usize) {
        // Positions beyond `pos` are simply overwritten by the next forward; nothing to free.
    }
    fn bytes(&self) -> usize {
        self.kv.iter().map(|k| k.bytes()).sum::<usize>() + self.ws.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::RopeTable;
    use llamafile_format::gguf::{writer::tiny_model, GgufFile};

    #[test]
    fn the_memory_estimate_covers_what_a_state_allocates() {
        let model = Arc::new(Model::load(GgufFile::from_bytes("tiny", tiny_model(&[], &[])).unwrap()).unwrap());
        let b = CpuBackend::new(model.clone(), 0..2, true);
        for (ctx, batch) in [(16, 1), (256, 64), (1000, 512)] {
            let allocated = b.new_state(ctx, batch).unwrap().bytes() as u64 + RopeTable::bytes_for(ctx, model.hp.n_rot);
            let estimate = b.host_state_bytes(ctx, batch);
            assert!(
                estimate >= allocated && estimate < 2 * allocated,
                "ctx {ctx} batch {batch}: estimate {estimate}, allocated {allocated}"
            );
        }
        // Sizes that overflow saturate instead of wrapping to something small.
        assert_eq!(b.host_state_bytes(usize::MAX, 1), u64::MAX);
    }
}
