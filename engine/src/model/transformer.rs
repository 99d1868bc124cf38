//! The shared transformer block, driven by the architecture's `Recipe`: the order of operations
//! of one layer, written once (`layer`, over the `LayerOps` trait each backend implements: the
//! CPU below, the offload backend in `backend::gpu`), and the CPU's implementation of them.
//!
//! Every buffer is allocated once (`Workspace::new`, `LayerKv::new`) for at most `max_batch`
//! tokens and `n_ctx` positions; a forward pass allocates nothing. Shapes are written as
//! [rows x cols], row-major, one row per token unless said otherwise.
//!
//! Per layer (x = the residual stream [n x n_embd]):
//!   xn = rmsnorm(x) * attn_norm
//!   q = xn Wq^T (+bq) [n x n_head*hd]; k = xn Wk^T (+bk) [n x n_kv*hd]; v = xn Wv^T (+bv)
//!   (Gemma) q, k per head: rmsnorm * q_norm / k_norm
//!   RoPE(q, k) at positions pos..pos+n; k, v appended to the f16 cache
//!   att[t, h] = softmax(scale * q[t,h] . K[g(h)]^T over the visible positions) V[g(h)]
//!   (Gemma 2: each score s soft-capped, c * tanh(s / c))
//!   o = att Wo^T [n x n_embd]; (Gemma) o = rmsnorm(o) * post_attention_norm; x += o
//!   xn = rmsnorm(x) * ffn_norm; f = act(xn Wgate^T) * (xn Wup^T) [n x n_ff]
//!   o = f Wdown^T; (Gemma) o = rmsnorm(o) * post_ffw_norm; x += o
//! Output: logits = (rmsnorm(x) * output_norm) Wout^T [n x n_vocab].

use super::{FfnActivation, Hparams, LayerAttn, LayerWeights, Model, Weight};
use half::f16;
use kernels_cpu::matmul::{balanced_chunks, matmul, matmul_quantized, quantize_activations, Scratch, PANEL_MIN_TOKENS};
use kernels_cpu::ops;
use rayon::prelude::*;
use std::ops::Range;

/// The FFN runs over at most this many tokens at a time, so its two [n x n_ff] buffers stay
/// small (a 7B model's would be 58 MB for 512 tokens); each weight block is still reused for
/// this many tokens.
pub const FFN_CHUNK: usize = 128;

/// cos/sin of every position for one RoPE specification (`ops::Rope`): [n_ctx x n_rot/2] each,
/// computed once by `Rope::angles`, so every position is the specification's.
pub struct RopeTable {
    pub n_ctx: usize,
    pub half: usize,
    pub rope: ops::Rope,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(n_ctx: usize, rope: ops::Rope) -> RopeTable {
        let half = rope.n_rot / 2;
        let mut cos = vec![0f32; n_ctx * half];
        let mut sin = vec![0f32; n_ctx * half];
        for p in 0..n_ctx {
            rope.angles(p, &mut cos[p * half..(p + 1) * half], &mut sin[p * half..(p + 1) * half]);
        }
        RopeTable { n_ctx, half, rope, cos, sin }
    }

    /// Bytes `new(n_ctx, ..)` allocates for `n_rot` rotated dimensions (saturating: a size that
    /// overflows cannot fit).
    pub fn bytes_for(n_ctx: usize, n_rot: usize) -> u64 {
        (n_ctx as u64).saturating_mul((n_rot / 2) as u64).saturating_mul(2 * 4)
    }

    /// Rotate one head `x` (at least n_rot values) at position `p`.
    #[inline]
    pub fn apply(&self, x: &mut [f32], p: usize) {
        let c = &self.cos[p * self.half..(p + 1) * self.half];
        let s = &self.sin[p * self.half..(p + 1) * self.half];
        self.rope.rotate(x, c, s);
    }
}

/// One layer's cache: keys [n_ctx x k_dim] and values [n_ctx x v_dim], f16.
pub struct LayerKv {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

impl LayerKv {
    pub fn new(hp: &Hparams, n_ctx: usize) -> LayerKv {
        LayerKv { k: vec![f16::ZERO; n_ctx * hp.k_dim()], v: vec![f16::ZERO; n_ctx * hp.v_dim()] }
    }
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 2
    }
    /// Bytes `new(hp, n_ctx)` allocates (saturating).
    pub fn bytes_for(hp: &Hparams, n_ctx: usize) -> u64 {
        (n_ctx as u64).saturating_mul((hp.k_dim() + hp.v_dim()) as u64 * 2)
    }
}

/// Activation buffers for up to `max_batch` tokens, allocated once.
pub struct Workspace {
    pub max_batch: usize,
    pub n_ctx: usize,
    /// [B x n_embd] normalised input of the current sub-block.
    xn: Vec<f32>,
    /// [B x q_dim]
    q: Vec<f32>,
    /// [B x k_dim]
    k: Vec<f32>,
    /// [B x v_dim]
    v: Vec<f32>,
    /// [B x n_head*head_dim_v] attention output, token-major (input of Wo).
    att: Vec<f32>,
    /// [B x n_embd] output of Wo / Wdown.
    proj: Vec<f32>,
    /// [FFN_CHUNK x n_ff] each.
    gate: Vec<f32>,
    up: Vec<f32>,
    scratch: Scratch,
}

impl Workspace {
    pub fn new(hp: &Hparams, max_batch: usize, n_ctx: usize) -> Workspace {
        let b = max_batch.max(1);
        let fc = b.min(FFN_CHUNK);
        Workspace {
            max_batch: b,
            n_ctx,
            xn: vec![0.0; b * hp.n_embd],
            q: vec![0.0; b * hp.q_dim()],
            k: vec![0.0; b * hp.k_dim()],
            v: vec![0.0; b * hp.v_dim()],
            att: vec![0.0; b * hp.n_head * hp.head_dim_v],
            proj: vec![0.0; b * hp.n_embd],
            gate: vec![0.0; fc * hp.n_ff],
            up: vec![0.0; fc * hp.n_ff],
            scratch: Scratch::default(),
        }
    }
    /// Bytes `new(hp, max_batch, _)` allocates, the scratch for quantized activations counted
    /// at its largest (one byte per input value of the widest projection, plus block scales).
    pub fn bytes_for(hp: &Hparams, max_batch: usize) -> u64 {
        let b = max_batch.max(1) as u64;
        let fc = b.min(FFN_CHUNK as u64);
        let per_token = 2 * hp.n_embd + hp.q_dim() + hp.k_dim() + hp.v_dim() + hp.n_head * hp.head_dim_v;
        let scratch = b.saturating_mul(2 * hp.n_embd.max(hp.n_ff).max(hp.n_head * hp.head_dim_v) as u64);
        b.saturating_mul(4 * per_token as u64).saturating_add(fc * 8 * hp.n_ff as u64).saturating_add(scratch)
    }
    pub fn bytes(&self) -> usize {
        4 * (self.xn.len()
            + self.q.len()
            + self.k.len()
            + self.v.len()
            + self.att.len()
            + self.proj.len()
            + self.gate.len()
            + self.up.len())
            + self.scratch.quantized.len()
    }
}

/// `out = x / sqrt(mean(x^2) + eps) * w` for one row.
#[inline]
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    ops::rmsnorm(x, w, eps, out)
}

/// In place: `x = x / sqrt(mean(x^2) + eps) * w`.
#[inline]
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    ops::rmsnorm_inplace(x, w, eps)
}

/// y[n x w.rows] = x[n x w.cols] W^T, straight on the mapped bytes.
#[inline]
fn project(model: &Model, w: &Weight, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Scratch) {
    matmul(model.bytes(w), w.wtype, w.rows, w.cols, &x[..n * w.cols], n, &mut y[..n * w.rows], scratch);
}

/// One sequence's tokens in a batch: rows `first..first + len` of the residual stream, at
/// positions `pos..pos + len` (also their rows in the cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: usize,
    pub len: usize,
    pub pos: usize,
}

/// The activation buffers `layer` names (besides the residual stream x, the normalised input
/// xn and the projection output proj): one row per token, except `Gate` and `Up`, which hold
/// the current FFN chunk from row 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// [B x q_dim]
    Q,
    /// [B x k_dim]
    K,
    /// [B x v_dim]
    V,
    /// [B x n_head*head_dim_v], the attention output (input of Wo).
    Att,
    /// [chunk x n_ff]
    Gate,
    /// [chunk x n_ff]
    Up,
}

impl Buf {
    /// Values per row.
    pub fn cols(self, hp: &Hparams) -> usize {
        match self {
            Buf::Q => hp.q_dim(),
            Buf::K => hp.k_dim(),
            Buf::V => hp.v_dim(),
            Buf::Att => hp.n_head * hp.head_dim_v,
            Buf::Gate | Buf::Up => hp.n_ff,
        }
    }
}

/// The operations `layer` is written in. A backend implements them for one layer (it knows
/// that layer's cache and RoPE) on its own buffers and its own copy of the weights: the CPU
/// with its kernels (`CpuLayer` below), the offload backend with ABI calls (`backend::gpu`).
pub trait LayerOps {
    /// A weight matrix.
    type Mat;
    /// An f32 vector (norm weight, bias).
    type Vec;
    type Error;
    /// xn = rmsnorm(x) * w, rows 0..n.
    fn norm(&mut self, w: &Self::Vec, n: usize) -> Result<(), Self::Error>;
    /// For each (W, y): y[0..rows.len()] = xn[rows] W^T. The projections of one call share
    /// their input, so a backend may prepare it once.
    fn project_in(&mut self, ws: &[(&Self::Mat, Buf)], rows: Range<usize>) -> Result<(), Self::Error>;
    /// y += b on rows 0..n.
    fn add_bias(&mut self, y: Buf, b: &Self::Vec, n: usize) -> Result<(), Self::Error>;
    /// Each head of the span's rows of `y` (Q or K): rmsnorm(head) * w, in place.
    fn head_norm(&mut self, y: Buf, w: &Self::Vec, s: Span) -> Result<(), Self::Error>;
    /// RoPE on each head of the span's rows of `y` (Q or K), at positions s.pos...
    fn rope(&mut self, y: Buf, s: Span) -> Result<(), Self::Error>;
    /// The span's rows of k and v into the cache (f16) at positions s.pos...
    fn store_kv(&mut self, s: Span) -> Result<(), Self::Error>;
    /// att = attention of the span's queries over the cache (causal, the layer's window and
    /// the model's soft cap), for the span's rows.
    fn attention(&mut self, s: Span) -> Result<(), Self::Error>;
    /// proj[rows] = src[0..rows.len()] W^T.
    fn project_out(&mut self, w: &Self::Mat, src: Buf, rows: Range<usize>) -> Result<(), Self::Error>;
    /// x += proj, proj first normalised in place by `post_norm` (rmsnorm * w) if given; rows 0..n.
    fn residual(&mut self, post_norm: Option<&Self::Vec>, n: usize) -> Result<(), Self::Error>;
    /// Most tokens the `Gate`/`Up` buffers hold.
    fn ffn_chunk(&self) -> usize;
    /// gate = act(gate) * up, rows 0..m.
    fn glu(&mut self, act: FfnActivation, m: usize) -> Result<(), Self::Error>;
}

/// One layer over the tokens of `spans` (they cover the rows of x in order), as the module
/// comment writes it. The projections and the FFN run over every token at once; spans are
/// handled one after another, each writing its keys and attending right away, so spans may
/// share cache rows (several sequences each from position 0): a later span overwrites keys
/// that an earlier one no longer needs.
pub fn layer<O: LayerOps>(
    o: &mut O,
    hp: &Hparams,
    lw: &LayerWeights<O::Mat, O::Vec>,
    spans: &[Span],
) -> Result<(), O::Error> {
    let n = spans.last().map_or(0, |s| s.first + s.len);

    // ---- attention ----
    o.norm(&lw.attn_norm, n)?;
    o.project_in(&[(&lw.wq, Buf::Q), (&lw.wk, Buf::K), (&lw.wv, Buf::V)], 0..n)?;
    for (b, y) in [(&lw.bq, Buf::Q), (&lw.bk, Buf::K), (&lw.bv, Buf::V)] {
        if let Some(b) = b {
            o.add_bias(y, b, n)?;
        }
    }
    for &s in spans {
        for (norm, y) in [(&lw.q_norm, Buf::Q), (&lw.k_norm, Buf::K)] {
            if let Some(w) = norm {
                o.head_norm(y, w, s)?;
            }
            o.rope(y, s)?;
        }
        o.store_kv(s)?;
        o.attention(s)?;
    }
    o.project_out(&lw.wo, Buf::Att, 0..n)?;
    o.residual(lw.attn_post_norm.as_ref(), n)?;

    // ---- feed-forward, in chunks the Gate/Up buffers hold ----
    o.norm(&lw.ffn_norm, n)?;
    // No short last chunk: the matmul's arithmetic for a token would change with the cut.
    for c in balanced_chunks(n, o.ffn_chunk(), PANEL_MIN_TOKENS) {
        o.project_in(&[(&lw.ffn_gate, Buf::Gate), (&lw.ffn_up, Buf::Up)], c.clone())?;
        o.glu(hp.recipe.ffn_act, c.len())?;
        o.project_out(&lw.ffn_down, Buf::Gate, c)?;
    }
    o.residual(lw.ffn_post_norm.as_ref(), n)
}

/// Run layer `il` over `n` tokens at positions `pos..pos+n`: `x` [n x n_embd] in and out.
/// The layer's keys/values for these positions are written into `kv`.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    model: &Model,
    il: usize,
    x: &mut [f32],
    n: usize,
    pos: usize,
    kv: &mut LayerKv,
    ws: &mut Workspace,
    rope: &RopeTable,
) {
    layer_forward_spans(model, il, x, &[Span { first: 0, len: n, pos }], kv, ws, rope)
}

/// `layer_forward` over independent sequences packed in one batch (`spans` cover the rows of
/// `x` in order; each attends only to its own keys, see `layer`).
#[allow(clippy::too_many_arguments)]
pub fn layer_forward_spans(
    model: &Model,
    il: usize,
    x: &mut [f32],
    spans: &[Span],
    kv: &mut LayerKv,
    ws: &mut Workspace,
    rope: &RopeTable,
) {
    debug_assert!(spans.last().is_none_or(|s| s.first + s.len <= ws.max_batch));
    debug_assert!(spans.iter().all(|s| s.pos + s.len <= ws.n_ctx && s.pos + s.len <= rope.n_ctx));
    let hp = &model.hp;
    let mut o = CpuLayer { model, la: hp.layers[il], x, kv, ws, rope };
    let Ok(()) = layer(&mut o, hp, &model.layers[il], spans);
}

/// `LayerOps` on the CPU for one layer: its cache and RoPE table, the residual stream `x` and
/// the workspace.
struct CpuLayer<'a> {
    model: &'a Model,
    la: LayerAttn,
    x: &'a mut [f32],
    kv: &'a mut LayerKv,
    ws: &'a mut Workspace,
    rope: &'a RopeTable,
}

impl CpuLayer<'_> {
    /// The buffer `b` and the rest of the workspace the projections use.
    fn buf(ws: &mut Workspace, b: Buf) -> (&mut [f32], &[f32], &mut Scratch) {
        let Workspace { xn, q, k, v, att, gate, up, scratch, .. } = ws;
        let y = match b {
            Buf::Q => q,
            Buf::K => k,
            Buf::V => v,
            Buf::Att => att,
            Buf::Gate => gate,
            Buf::Up => up,
        };
        (y, xn, scratch)
    }

    /// The span's rows of `y`, one head at a time (head_dim values each), with their positions.
    fn heads(&mut self, y: Buf, s: Span, mut f: impl FnMut(&mut [f32], usize)) {
        let hp = &self.model.hp;
        let d = y.cols(hp);
        let (buf, _, _) = Self::buf(self.ws, y);
        for t in s.first..s.first + s.len {
            let p = s.pos + (t - s.first);
            buf[t * d..(t + 1) * d].chunks_exact_mut(hp.head_dim).for_each(|h| f(h, p));
        }
    }
}

impl LayerOps for CpuLayer<'_> {
    type Mat = Weight;
    type Vec = Vec<f32>;
    type Error = std::convert::Infallible;

    fn norm(&mut self, w: &Vec<f32>, n: usize) -> Result<(), Self::Error> {
        let (e, eps) = (self.model.hp.n_embd, self.model.hp.rms_eps);
        for t in 0..n {
            rmsnorm(&mut self.ws.xn[t * e..(t + 1) * e], &self.x[t * e..(t + 1) * e], w, eps);
        }
        Ok(())
    }

    /// The activations are quantized once per activation format (q, k, v of a Q4_K_M model
    /// share one Q8_K quantization even when v is Q6_K).
    fn project_in(&mut self, ws: &[(&Weight, Buf)], rows: Range<usize>) -> Result<(), Self::Error> {
        let m = rows.len();
        for (i, &(w, y)) in ws.iter().enumerate() {
            let (y, xn, scratch) = Self::buf(self.ws, y);
            let at = w.wtype.vec_dot_type();
            if scratch.held() != Some((at, w.cols, m)) || i == 0 {
                quantize_activations(w.wtype, &xn[rows.start * w.cols..rows.end * w.cols], m, w.cols, scratch);
            }
            matmul_quantized(self.model.bytes(w), w.wtype, w.rows, w.cols, scratch, &mut y[..m * w.rows]);
        }
        Ok(())
    }

    fn add_bias(&mut self, y: Buf, b: &Vec<f32>, n: usize) -> Result<(), Self::Error> {
        let (y, _, _) = Self::buf(self.ws, y);
        for row in y.chunks_exact_mut(b.len()).take(n) {
            row.iter_mut().zip(b).for_each(|(v, bi)| *v += bi);
        }
        Ok(())
    }

    fn head_norm(&mut self, y: Buf, w: &Vec<f32>, s: Span) -> Result<(), Self::Error> {
        let eps = self.model.hp.rms_eps;
        self.heads(y, s, |h, _| rmsnorm_inplace(h, w, eps));
        Ok(())
    }

    fn rope(&mut self, y: Buf, s: Span) -> Result<(), Self::Error> {
        let rope = self.rope;
        self.heads(y, s, |h, p| rope.apply(h, p));
        Ok(())
    }

    fn store_kv(&mut self, s: Span) -> Result<(), Self::Error> {
        let (kd, vd) = (self.model.hp.k_dim(), self.model.hp.v_dim());
        let (ws, kv) = (&*self.ws, &mut *self.kv);
        for t in s.first..s.first + s.len {
            let p = s.pos + (t - s.first);
            ops::f32_to_f16_slice(&ws.k[t * kd..(t + 1) * kd], &mut kv.k[p * kd..(p + 1) * kd]);
            ops::f32_to_f16_slice(&ws.v[t * vd..(t + 1) * vd], &mut kv.v[p * vd..(p + 1) * vd]);
        }
        Ok(())
    }

    fn attention(&mut self, s: Span) -> Result<(), Self::Error> {
        let hp = &self.model.hp;
        let (qd, ao) = (hp.q_dim(), Buf::Att.cols(hp));
        let (q, att) = (&self.ws.q[s.first * qd..], &mut self.ws.att[s.first * ao..(s.first + s.len) * ao]);
        attention(hp, self.la, s.len, s.pos, self.kv, q, att);
        Ok(())
    }

    fn project_out(&mut self, w: &Weight, src: Buf, rows: Range<usize>) -> Result<(), Self::Error> {
        let e = self.model.hp.n_embd;
        let Workspace { att, gate, proj, scratch, .. } = &mut *self.ws;
        let src = if src == Buf::Att { att } else { gate };
        project(self.model, w, src, rows.len(), &mut proj[rows.start * e..], scratch);
        Ok(())
    }

    fn residual(&mut self, post_norm: Option<&Vec<f32>>, n: usize) -> Result<(), Self::Error> {
        let (e, eps) = (self.model.hp.n_embd, self.model.hp.rms_eps);
        for t in 0..n {
            let o = &mut self.ws.proj[t * e..(t + 1) * e];
            if let Some(w) = post_norm {
                rmsnorm_inplace(o, w, eps);
            }
            self.x[t * e..(t + 1) * e].iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    fn ffn_chunk(&self) -> usize {
        self.ws.gate.len() / self.model.hp.n_ff
    }

    fn glu(&mut self, act: FfnActivation, m: usize) -> Result<(), Self::Error> {
        let nf = self.model.hp.n_ff;
        let (gate, up) = (&mut self.ws.gate[..m * nf], &self.ws.up[..m * nf]);
        gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| match act {
            FfnActivation::Silu => ops::silu_mul(g, u),
            // GELU through the reference's f16 table (visible in Gemma's logits).
            FfnActivation::GeluTanh => ops::gelu_mul(g, u),
        });
        Ok(())
    }
}

/// Largest `group * head_dim` (query heads per KV head x head size) the attention's on-stack
/// buffers hold; `Model::load` refuses larger models.
pub const MAX_GROUP_DIM: usize = 4096;
/// Largest head size.
pub const MAX_HEAD_DIM: usize = 512;

/// Round to the nearest f16-representable value (11 significant bits), in f32 arithmetic:
/// Veltkamp's split with 2^13 + 1 keeps the top 24 - 13 = 11 bits of the significand. Used to
/// hold the attention accumulator at f16 precision as the reference does, without a conversion
/// round trip per element. (Differs from a true f16 store only for |x| below f16's normal range,
/// 6.1e-5, and above its maximum, where nothing in an attention output lives.)
#[inline(always)]
fn round_f16(x: f32) -> f32 {
    let c = x * 8193.0;
    c - (c - x)
}

/// Causal attention of the `n` new queries (positions pos..pos+n) over the cache: `q`
/// [n x n_head*head_dim] in, `att` [n x n_head*head_dim_v] out. One rayon task per (token, KV
/// head): the query heads sharing a KV head read each cached key/value row once.
///
/// The numerics follow the reference engine's CPU flash attention with an f16 cache, because
/// they are visible in the logits (measured: 4x closer to the reference on the f16 tiny model
/// than an exact f32 softmax). The reference has two paths, chosen by the batch size:
/// - fewer than `FA_TILE` queries (generation, short prompts): the query is rounded to f16 and
///   dotted with the f16 keys (f32 sums); one pass keeps the running maximum M and sum S
///   (online softmax), and the value accumulator is held at f16 precision: rescaled by
///   exp(M_old - M) when the maximum grows, then `acc += v * exp(s - M)`, divided by S at the end;
/// - `FA_TILE` queries or more (prompt batches): the tiled kernel keeps the query and the
///   accumulator in f32 and updates the maximum once per tile of `FA_TILE` cache positions
///   (see `attend_group_tiled`). Measured on gemma-3-270m's 700-token case: mean |dlogit| 0.214
///   with the f16 path for every batch, 0.201 with f32 query and accumulator.
fn attention(hp: &Hparams, la: LayerAttn, n: usize, pos: usize, kv: &LayerKv, q: &[f32], att: &mut [f32]) {
    let group = hp.n_head / hp.n_head_kv;
    let n_kv = hp.n_head_kv;
    let avx2 = cfg!(target_arch = "x86_64") && kernels_cpu::kernels().isa >= kernels_cpu::Isa::Avx2;
    let tiled = n >= FA_TILE && hp.n_head / hp.n_head_kv <= MAX_TILED_GROUP;
    if tiled {
        return attention_tiled(hp, la, n, pos, kv, q, att);
    }
    att[..n * hp.n_head * hp.head_dim_v].par_chunks_mut(group * hp.head_dim_v).enumerate().for_each(|(i, out)| {
        let (t, g) = (i / n_kv, i % n_kv);
        let qt = &q[t * hp.q_dim()..(t + 1) * hp.q_dim()];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the kernels report AVX2 only when the CPU has AVX2, FMA and F16C.
            unsafe { attend_group_avx2(hp, la, pos + t, g, kv, qt, out) };
            return;
        }
        let _ = avx2;
        attend_group(hp, la, pos + t, g, kv, qt, out);
    });
}

/// `attend_group` compiled for AVX2 + FMA (the same code; wider vectors for its loops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_avx2(hp: &Hparams, la: LayerAttn, p: usize, g: usize, kv: &LayerKv, q: &[f32], out: &mut [f32]) {
    attend_group(hp, la, p, g, kv, q, out)
}

/// The first cache position the token at position `p` sees (its sliding window, if any).
fn window_start(la: LayerAttn, p: usize) -> usize {
    la.window.map_or(0, |w| (p + 1).saturating_sub(w))
}

/// Cache positions per tile (and the batch size from which the reference uses its tiled
/// flash attention: ggml's `GGML_FA_TILE_Q` = `GGML_FA_TILE_KV` = 64).
pub const FA_TILE: usize = 64;

/// The smallest batch from which a token's arithmetic no longer depends on the batch it is in:
/// the attention is tiled from `FA_TILE` queries and every projection then runs the panel
/// kernels (the feed-forward and matmul cuts keep each piece at least `PANEL_MIN_TOKENS` long).
/// Keys and values computed in such batches are bit-identical however the prompt was cut,
/// which is what lets a cached prefix give the same answer as a fresh evaluation.
pub const INVARIANT_BATCH: usize = FA_TILE;
const _: () = assert!(PANEL_MIN_TOKENS <= INVARIANT_BATCH && 2 * PANEL_MIN_TOKENS <= FFN_CHUNK);
/// Largest group (query heads per KV head) the tiled path's on-stack scores hold; larger
/// groups (none of the supported models) take the one-pass path.
const MAX_TILED_GROUP: usize = 16;

/// The specification of the tiled path (`attention_tiled` computes the same per query row,
/// blocked; the tests compare them). The query heads of KV head `g` for the token at position
/// `p`, as the reference's tiled flash attention computes a row of a prompt batch: the query stays f32; the cache is walked in
/// tiles of `FA_TILE` positions aligned to position 0; per tile, the scores `scale * q.k`, the
/// tile's maximum, and when it raises the running maximum M, the f32 accumulator and the sum S
/// are rescaled by exp(M_old - M); the tile's weights exp(s - M) are summed in f64 and added to
/// S, and `acc += w * v` with one fused multiply-add per element, position by position.
#[cfg_attr(not(test), allow(dead_code))]
fn attend_group_tiled(hp: &Hparams, la: LayerAttn, p: usize, g: usize, kv: &LayerKv, q: &[f32], out: &mut [f32]) {
    let (hd, hdv, kd, vd) = (hp.head_dim, hp.head_dim_v, hp.k_dim(), hp.v_dim());
    let group = hp.n_head / hp.n_head_kv;
    let (scale, cap) = score_scale(hp);
    let lo = window_start(la, p);
    let mut acc = [0f32; MAX_GROUP_DIM];
    let mut row = [0f32; MAX_HEAD_DIM];
    let mut sc = [0f32; MAX_TILED_GROUP * FA_TILE];
    let acc = &mut acc[..group * hdv];
    let qs = &q[g * group * hd..(g + 1) * group * hd];
    let mut m = [f32::NEG_INFINITY; MAX_TILED_GROUP];
    let mut sum = [0f32; MAX_TILED_GROUP];
    let mut t0 = lo / FA_TILE * FA_TILE;
    while t0 <= p {
        // the visible positions of this tile (the others are masked: weight 0)
        let (a, b) = (t0.max(lo), (t0 + FA_TILE).min(p + 1));
        let nb = b - a;
        for j in 0..nb {
            ops::f16_to_f32_slice(&kv.k[(a + j) * kd + g * hd..][..hd], &mut row[..hd]);
            for (hq, qh) in qs.chunks_exact(hd).enumerate() {
                sc[hq * FA_TILE + j] = cap_score(dot8(qh, &row[..hd]) * scale, cap);
            }
        }
        for hq in 0..group {
            let s = &mut sc[hq * FA_TILE..hq * FA_TILE + nb];
            let tile_max = s.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let m_new = m[hq].max(tile_max);
            if m_new > m[hq] {
                let ms = (m[hq] - m_new).exp();
                acc[hq * hdv..(hq + 1) * hdv].iter_mut().for_each(|x| *x *= ms);
                sum[hq] *= ms;
            }
            m[hq] = m_new;
            let mut tile_sum = 0f64;
            for x in s.iter_mut() {
                *x = (*x - m_new).exp();
                tile_sum += *x as f64;
            }
            sum[hq] += tile_sum as f32;
        }
        for j in 0..nb {
            ops::f16_to_f32_slice(&kv.v[(a + j) * vd + g * hdv..][..hdv], &mut row[..hdv]);
            let v = &row[..hdv];
            for (hq, acc_h) in acc.chunks_exact_mut(hdv).enumerate() {
                let w = sc[hq * FA_TILE + j];
                acc_h.iter_mut().zip(v).for_each(|(x, vv)| *x = w.mul_add(*vv, *x));
            }
        }
        t0 += FA_TILE;
    }
    for (hq, (o, a)) in out.chunks_exact_mut(hdv).zip(acc.chunks_exact(hdv)).enumerate() {
        let inv = if sum[hq] == 0.0 { 0.0 } else { 1.0 / sum[hq] };
        o.iter_mut().zip(a.iter()).for_each(|(o, a)| *o = a * inv);
    }
}

/// Query tokens per task of the tiled path: each tile of the cache is widened to f32 (keys
/// transposed) once for all of them, and the scores and the weighted sums of values are small
/// matrix products (`tile_scores`, `tile_pv`) instead of one dot product per (query, position).
const FA_QBLOCK: usize = 16;

thread_local! {
    /// Each thread's buffers for `attend_block_tiled` (grow to the largest shape, then reused).
    static FA_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The tiled path (prompt batches of `FA_TILE` tokens or more): tasks of `FA_QBLOCK` tokens,
/// every KV head, rayon over the tasks. Same arithmetic per query row as `attend_group_tiled`
/// (the specification, kept for the tests) except the order of the terms of each q.k sum.
#[allow(clippy::too_many_arguments)]
fn attention_tiled(hp: &Hparams, la: LayerAttn, n: usize, pos: usize, kv: &LayerKv, q: &[f32], att: &mut [f32]) {
    let isa = kernels_cpu::kernels().isa;
    let row_out = hp.n_head * hp.head_dim_v;
    let qd = hp.q_dim();
    att[..n * row_out].par_chunks_mut(FA_QBLOCK * row_out).enumerate().for_each(|(b, out)| {
        let t0 = b * FA_QBLOCK;
        let nq = out.len() / row_out;
        FA_SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            for g in 0..hp.n_head_kv {
                let qs = &q[t0 * qd..(t0 + nq) * qd];
                attend_block(isa, hp, la, pos + t0, nq, g, kv, qs, out, &mut buf);
            }
        });
    });
}

/// `attend_block_tiled` compiled for the best of `isa` (the process's kernel ISA, or one the
/// tests choose from `Isa::available()`).
#[allow(clippy::too_many_arguments)]
fn attend_block(
    isa: kernels_cpu::Isa,
    hp: &Hparams,
    la: LayerAttn,
    p0: usize,
    nq: usize,
    g: usize,
    kv: &LayerKv,
    q: &[f32],
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= kernels_cpu::Isa::Avx512 {
            // SAFETY: an ISA is reported (kernels table, `Isa::available`) only when the CPU has
            // it; Avx512 includes AVX-512 F and the AVX2/FMA/F16C set.
            return unsafe { attend_block_avx512(hp, la, p0, nq, g, kv, q, out, buf) };
        }
        if isa >= kernels_cpu::Isa::Avx2 {
            // SAFETY: as above; Avx2 means AVX2, FMA and F16C.
            return unsafe { attend_block_avx2(hp, la, p0, nq, g, kv, q, out, buf) };
        }
    }
    let _ = isa;
    attend_block_tiled::<2>(hp, la, p0, nq, g, kv, q, out, buf)
}

/// `attend_block_tiled` for AVX-512 (4 query rows per register block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_block_avx512(
    hp: &Hparams,
    la: LayerAttn,
    p0: usize,
    nq: usize,
    g: usize,
    kv: &LayerKv,
    q: &[f32],
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    attend_block_tiled::<4>(hp, la, p0, nq, g, kv, q, out, buf)
}

/// `attend_block_tiled` for AVX2 + FMA (2 query rows per register block: 16 registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_block_avx2(
    hp: &Hparams,
    la: LayerAttn,
    p0: usize,
    nq: usize,
    g: usize,
    kv: &LayerKv,
    q: &[f32],
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    attend_block_tiled::<2>(hp, la, p0, nq, g, kv, q, out, buf)
}

/// KV head `g` for the `nq` tokens at positions `p0..p0+nq` (`q`: their query rows [nq x
/// q_dim]; `out`: their attention rows [nq x n_head*head_dim_v]). Rows r = t * group + hq.
/// Per cache tile of `FA_TILE` positions: the keys widened and transposed [hd x FA_TILE], the
/// values widened [FA_TILE x hdv] (positions no row can see: zeros); scores for every row;
/// per row the masked online-softmax update of `attend_group_tiled`; `acc += w * v`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_block_tiled<const RB: usize>(
    hp: &Hparams,
    la: LayerAttn,
    p0: usize,
    nq: usize,
    g: usize,
    kv: &LayerKv,
    q: &[f32],
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    let (hd, hdv, kd, vd, qd) = (hp.head_dim, hp.head_dim_v, hp.k_dim(), hp.v_dim(), hp.q_dim());
    let group = hp.n_head / hp.n_head_kv;
    let rows = nq * group;
    let row_out = hp.n_head * hdv;
    let lo_of = |p: usize| window_start(la, p);
    let need = hd * FA_TILE + FA_TILE * hdv + rows * (hd + FA_TILE + hdv + 2);
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let (kt, rest) = buf.split_at_mut(hd * FA_TILE);
    let (vt, rest) = rest.split_at_mut(FA_TILE * hdv);
    let (qs, rest) = rest.split_at_mut(rows * hd);
    let (sc, rest) = rest.split_at_mut(rows * FA_TILE);
    let (acc, rest) = rest.split_at_mut(rows * hdv);
    let (m, rest) = rest.split_at_mut(rows);
    let sum = &mut rest[..rows];
    for t in 0..nq {
        for hq in 0..group {
            let r = t * group + hq;
            qs[r * hd..(r + 1) * hd].copy_from_slice(&q[t * qd + (g * group + hq) * hd..][..hd]);
        }
    }
    acc.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    let (lo_min, p_max) = (lo_of(p0), p0 + nq - 1);
    let mut row = [0f32; MAX_HEAD_DIM];
    let mut t0 = lo_min / FA_TILE * FA_TILE;
    while t0 <= p_max {
        let (a, b) = (t0.max(lo_min), (t0 + FA_TILE).min(p_max + 1));
        // widen this tile's keys (transposed) and values; zeros where no row looks
        for j in 0..FA_TILE {
            let pj = t0 + j;
            if pj >= a && pj < b {
                ops::f16_to_f32_slice(&kv.k[pj * kd + g * hd..][..hd], &mut row[..hd]);
                for d in 0..hd {
                    kt[d * FA_TILE + j] = row[d];
                }
                ops::f16_to_f32_slice(&kv.v[pj * vd + g * hdv..][..hdv], &mut vt[j * hdv..(j + 1) * hdv]);
            } else {
                for d in 0..hd {
                    kt[d * FA_TILE + j] = 0.0;
                }
                vt[j * hdv..(j + 1) * hdv].fill(0.0);
            }
        }
        let (scale, cap) = score_scale(hp);
        tile_scores::<RB>(qs, hd, kt, sc, rows, scale, cap);
        for r in 0..rows {
            let p = p0 + r / group;
            let s = &mut sc[r * FA_TILE..(r + 1) * FA_TILE];
            let (va, vb) = (t0.max(lo_of(p)), (t0 + FA_TILE).min(p + 1));
            if va >= vb {
                s.fill(0.0);
                continue;
            }
            let (ja, jb) = (va - t0, vb - t0);
            let tile_max = s[ja..jb].iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let m_new = m[r].max(tile_max);
            if m_new > m[r] {
                let ms = (m[r] - m_new).exp();
                acc[r * hdv..(r + 1) * hdv].iter_mut().for_each(|x| *x *= ms);
                sum[r] *= ms;
            }
            m[r] = m_new;
            // four partial f64 sums (one chain of dependent adds was a tenth of the time);
            // in f64 the order does not show in the f32 result
            let mut ts = [0f64; 4];
            for (j, x) in s.iter_mut().enumerate() {
                if j < ja || j >= jb {
                    *x = 0.0;
                } else {
                    *x = (*x - m_new).exp();
                    ts[j % 4] += *x as f64;
                }
            }
            sum[r] += ((ts[0] + ts[1]) + (ts[2] + ts[3])) as f32;
        }
        tile_pv::<RB>(sc, vt, acc, rows, hdv);
        t0 += FA_TILE;
    }
    for r in 0..rows {
        let (t, hq) = (r / group, r % group);
        let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
        let o = &mut out[t * row_out + (g * group + hq) * hdv..][..hdv];
        o.iter_mut().zip(&acc[r * hdv..(r + 1) * hdv]).for_each(|(o, a)| *o = a * inv);
    }
}

/// `sc[r][j] = cap_score(scale * q_r . k_j, cap)` for `rows` query rows (`qs` [rows x hd]) and the `FA_TILE`
/// keys of a tile (`kt` [hd x FA_TILE], transposed): `RB` rows at a time, each score one
/// multiply-add chain over d, the `RB x FA_TILE` sums held in registers.
#[inline(always)]
fn tile_scores<const RB: usize>(qs: &[f32], hd: usize, kt: &[f32], sc: &mut [f32], rows: usize, scale: f32, cap: f32) {
    let kt = &kt[..hd * FA_TILE];
    let mut r = 0;
    while r < rows {
        let rb = RB.min(rows - r);
        // rows past `rows` (last block) repeat the last row: computed, never stored
        let q: [&[f32]; RB] = core::array::from_fn(|i| &qs[(r + i.min(rb - 1)) * hd..][..hd]);
        let mut acc = [[0f32; FA_TILE]; RB];
        for d in 0..hd {
            let k: &[f32; FA_TILE] = kt[d * FA_TILE..(d + 1) * FA_TILE].try_into().unwrap();
            for i in 0..RB {
                let qv = q[i][d];
                for j in 0..FA_TILE {
                    acc[i][j] = qv.mul_add(k[j], acc[i][j]);
                }
            }
        }
        for i in 0..RB {
            if i < rb {
                let o: &mut [f32; FA_TILE] = (&mut sc[(r + i) * FA_TILE..(r + i + 1) * FA_TILE]).try_into().unwrap();
                for j in 0..FA_TILE {
                    o[j] = cap_score(acc[i][j] * scale, cap);
                }
            }
        }
        r += rb;
    }
}

/// Values per step of `tile_pv` (a register block is `RB` rows x `PV_STEP`).
const PV_STEP: usize = 32;

/// `acc[r] += sum_j w[r][j] * v_j` over the tile, position by position (one multiply-add per
/// element and position, in position order), `RB` rows x `PV_STEP` values in registers.
#[inline(always)]
fn tile_pv<const RB: usize>(w: &[f32], vt: &[f32], acc: &mut [f32], rows: usize, hdv: usize) {
    const { assert!(RB == 2 || RB == 4) };
    let vt = &vt[..FA_TILE * hdv];
    let mut r = 0;
    while r < rows {
        let rb = RB.min(rows - r);
        // rows past `rows` (last block) repeat the last row: computed, never stored
        let wr: [&[f32; FA_TILE]; RB] =
            core::array::from_fn(|i| w[(r + i.min(rb - 1)) * FA_TILE..][..FA_TILE].try_into().unwrap());
        let mut d0 = 0;
        while d0 + PV_STEP <= hdv {
            // One named accumulator per row (a0..a3), so that the compiler keeps them in
            // registers (an array indexed by row was kept on the stack: load, FMA, store).
            let load =
                |i: usize| -> [f32; PV_STEP] { acc[(r + i.min(rb - 1)) * hdv + d0..][..PV_STEP].try_into().unwrap() };
            let (mut a0, mut a1, mut a2, mut a3) = (load(0), load(1), load(2), load(3));
            for j in 0..FA_TILE {
                let v: &[f32; PV_STEP] = vt[j * hdv + d0..][..PV_STEP].try_into().unwrap();
                let (w0, w1) = (wr[0][j], wr[1.min(RB - 1)][j]);
                for e in 0..PV_STEP {
                    a0[e] = w0.mul_add(v[e], a0[e]);
                    a1[e] = w1.mul_add(v[e], a1[e]);
                }
                if RB == 4 {
                    let (w2, w3) = (wr[2.min(RB - 1)][j], wr[3.min(RB - 1)][j]);
                    for e in 0..PV_STEP {
                        a2[e] = w2.mul_add(v[e], a2[e]);
                        a3[e] = w3.mul_add(v[e], a3[e]);
                    }
                }
            }
            for (i, a) in [a0, a1, a2, a3].iter().enumerate().take(rb) {
                acc[(r + i) * hdv + d0..][..PV_STEP].copy_from_slice(a);
            }
            d0 += PV_STEP;
        }
        // head sizes that are not a multiple of PV_STEP: the rest element by element
        for i in 0..rb {
            for j in 0..FA_TILE {
                let wv = wr[i][j];
                for e in d0..hdv {
                    let x = &mut acc[(r + i) * hdv + e];
                    *x = wv.mul_add(vt[j * hdv + e], *x);
                }
            }
        }
        r += rb;
    }
}

/// f32 dot product with 8 independent sums (vectorises without reassociation).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (x, y) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// The multiplier of q.k and the soft cap (0: none) of the attention scores: a score is
/// `scale * q.k`, or with a cap c (Gemma 2's `attn_logit_softcapping`)
/// `c * tanh(scale * q.k / c)`, computed as the reference does, the scale divided by c first.
#[inline(always)]
fn score_scale(hp: &Hparams) -> (f32, f32) {
    if hp.attn_softcap > 0.0 {
        (hp.attn_scale / hp.attn_softcap, hp.attn_softcap)
    } else {
        (hp.attn_scale, 0.0)
    }
}

/// A score (already multiplied by `score_scale`'s scale) soft-capped by `cap` (0: as it is).
#[inline(always)]
fn cap_score(s: f32, cap: f32) -> f32 {
    if cap > 0.0 {
        cap * s.tanh()
    } else {
        s
    }
}

/// Positions handled per step: their scores and weights are computed together.
const ATT_BLOCK: usize = 32;

/// The query heads of KV head `g` for the token at position `p` (`q` = that token's queries):
/// writes `out` [group x head_dim_v].
#[inline(always)]
fn attend_group(hp: &Hparams, la: LayerAttn, p: usize, g: usize, kv: &LayerKv, q: &[f32], out: &mut [f32]) {
    let (hd, hdv, kd, vd) = (hp.head_dim, hp.head_dim_v, hp.k_dim(), hp.v_dim());
    let group = hp.n_head / hp.n_head_kv;
    let (scale, cap) = score_scale(hp);
    let lo = window_start(la, p);
    // this group's queries rounded to f16 (kept as f32), accumulators, widened K/V rows
    let mut qs = [0f32; MAX_GROUP_DIM];
    let mut acc = [0f32; MAX_GROUP_DIM];
    let mut row = [0f32; MAX_HEAD_DIM];
    let mut q16 = [f16::ZERO; MAX_HEAD_DIM];
    let (qs, acc) = (&mut qs[..group * hd], &mut acc[..group * hdv]);
    for (hq, qh) in qs.chunks_exact_mut(hd).enumerate() {
        ops::f32_to_f16_slice(&q[(g * group + hq) * hd..][..hd], &mut q16[..hd]);
        ops::f16_to_f32_slice(&q16[..hd], qh);
    }
    let mut m = [f32::NEG_INFINITY; 64];
    let mut sum = [0f32; 64];
    // per block: scores [group x ATT_BLOCK], then the rescale (ms) and weight (vs) of each
    // position exactly as the one-position-at-a-time online softmax defines them
    let mut sc = [0f32; 64 * ATT_BLOCK];
    let mut ms = [1f32; 64 * ATT_BLOCK];
    let mut vs = [1f32; 64 * ATT_BLOCK];
    let mut j0 = lo;
    while j0 <= p {
        let nb = ATT_BLOCK.min(p + 1 - j0);
        for b in 0..nb {
            ops::f16_to_f32_slice(&kv.k[(j0 + b) * kd + g * hd..][..hd], &mut row[..hd]);
            for (hq, qh) in qs.chunks_exact(hd).enumerate() {
                sc[hq * ATT_BLOCK + b] = cap_score(dot8(qh, &row[..hd]) * scale, cap);
            }
        }
        for (hq, mh) in m[..group].iter_mut().enumerate() {
            let base = hq * ATT_BLOCK;
            for b in 0..nb {
                let s = sc[base + b];
                if s > *mh {
                    ms[base + b] = if *mh == f32::NEG_INFINITY { 0.0 } else { (*mh - s).exp() };
                    vs[base + b] = 1.0;
                    *mh = s;
                } else {
                    ms[base + b] = 1.0;
                    vs[base + b] = (s - *mh).exp();
                }
            }
        }
        for b in 0..nb {
            ops::f16_to_f32_slice(&kv.v[(j0 + b) * vd + g * hdv..][..hdv], &mut row[..hdv]);
            let v = &row[..hdv];
            for (hq, a) in acc.chunks_exact_mut(hdv).enumerate() {
                let (msc, w) = (ms[hq * ATT_BLOCK + b], vs[hq * ATT_BLOCK + b]);
                if msc != 1.0 {
                    a.iter_mut().for_each(|x| *x = round_f16(*x * msc));
                }
                a.iter_mut().zip(v).for_each(|(x, vv)| *x = round_f16(*x + vv * w));
                sum[hq] = sum[hq] * msc + w;
            }
        }
        j0 += nb;
    }
    for (hq, (o, a)) in out.chunks_exact_mut(hdv).zip(acc.chunks_exact(hdv)).enumerate() {
        let inv = if sum[hq] == 0.0 { 0.0 } else { 1.0 / sum[hq] };
        o.iter_mut().zip(a.iter()).for_each(|(o, a)| *o = a * inv);
    }
}

/// Logits of the last token (`logits.len() == n_vocab`) or of every token
/// (`logits.len() == n * n_vocab`) from the residual stream `x` [n x n_embd].
pub fn output_forward(model: &Model, x: &[f32], n: usize, logits: &mut [f32], ws: &mut Workspace) {
    let hp = &model.hp;
    let e = hp.n_embd;
    let nv = hp.n_vocab;
    let (first, rows) = if logits.len() == nv { (n - 1, 1) } else { (0, n) };
    assert_eq!(logits.len(), rows * nv, "logits buffer must hold n_vocab or n_tokens * n_vocab values");
    for r in 0..rows {
        let t = first + r;
        rmsnorm(&mut ws.xn[r * e..(r + 1) * e], &x[t * e..(t + 1) * e], &model.output_norm, hp.rms_eps);
    }
    project(model, &model.output, &ws.xn, rows, logits, &mut ws.scratch);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_table_holds_the_specifications_angles() {
        // base 10000, 4 dims: pair i rotates by p * 10000^(-2i/4).
        let t = RopeTable::new(8, ops::Rope::normal(4, 10000.0));
        let mut x = [1.0, 0.0, 1.0, 0.0];
        t.apply(&mut x, 3);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        let a = 3.0 * 0.01f32;
        assert!((x[2] - a.cos()).abs() < 1e-6 && (x[3] - a.sin()).abs() < 1e-6);
        // NEOX pairs (0,2) and (1,3).
        let t = RopeTable::new(8, ops::Rope::neox(4, 10000.0));
        let mut y = [1.0, 1.0, 0.0, 0.0];
        t.apply(&mut y, 3);
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[2] - 3f32.sin()).abs() < 1e-6);
        assert!((y[1] - a.cos()).abs() < 1e-6 && (y[3] - a.sin()).abs() < 1e-6);
        // every position as the specification rotates it, factors included
        let spec = ops::Rope { factors: Some(vec![1.0, 4.0]), freq_scale: 0.25, ..ops::Rope::normal(4, 10000.0) };
        let t = RopeTable::new(8, spec.clone());
        for p in 0..8 {
            let (mut u, mut v) = ([0.3, -0.7, 1.1, 2.0], [0.3, -0.7, 1.1, 2.0]);
            t.apply(&mut u, p);
            spec.apply(&mut v, 1, 4, p);
            assert_eq!(u, v, "position {p}");
        }
    }

    /// Attention-only hyper-parameters for the tests (one layer, head sizes as given).
    fn attn_hparams(n_head: usize, n_kv: usize, hd: usize, attn_scale: f32) -> Hparams {
        Hparams {
            arch: "test".into(),
            n_layer: 1,
            n_embd: n_head * hd,
            n_ff: 1,
            n_head,
            n_head_kv: n_kv,
            head_dim: hd,
            head_dim_v: hd,
            n_vocab: 1,
            n_ctx_train: 512,
            rms_eps: 1e-6,
            n_rot: hd,
            attn_scale,
            attn_softcap: 0.0,
            final_softcap: 0.0,
            layers: vec![],
            rope_factors: None,
            longrope: None,
            rope_attn_factor: 1.0,
            recipe: crate::model::gemma3::RECIPE,
        }
    }

    /// Uniform values in [-2, 2) from a linear congruential generator.
    fn lcg(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        }
    }

    /// A cache of `n_ctx` positions filled with random f16 keys and values.
    fn random_kv(hp: &Hparams, n_ctx: usize, rnd: &mut impl FnMut() -> f32) -> LayerKv {
        let mut kv = LayerKv::new(hp, n_ctx);
        kv.k.iter_mut().chain(kv.v.iter_mut()).for_each(|x| *x = f16::from_f32(rnd()));
        kv
    }

    /// Both attention paths (one-pass f16, tiled f32) against an exact f64 softmax attention,
    /// causal and with a sliding window, over several tiles of the cache.
    /// Both attention paths (one-pass f16, tiled f32) against an exact f64 softmax attention,
    /// causal and with a sliding window, over several tiles of the cache, without and with a
    /// soft cap on the scores.
    #[test]
    fn attention_paths_match_exact_softmax() {
        let (n_head, n_kv, hd) = (4, 2, 16);
        for cap in [0.0f64, 1.5] {
            let hp = Hparams { attn_softcap: cap as f32, ..attn_hparams(n_head, n_kv, hd, 0.25) };
            let mut rnd = lcg(12345);
            let kv = random_kv(&hp, 200, &mut rnd);
            let q: Vec<f32> = (0..hp.q_dim()).map(|_| rnd()).collect();
            for window in [None, Some(70)] {
                let la = LayerAttn { rope_base: 1e4, rope_freq_scale: 1.0, window };
                for p in [0usize, 5, 63, 64, 150, 199] {
                    let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                    for g in 0..n_kv {
                        let group = n_head / n_kv;
                        let mut one = vec![0f32; group * hd];
                        let mut tiled = vec![0f32; group * hd];
                        attend_group(&hp, la, p, g, &kv, &q, &mut one);
                        attend_group_tiled(&hp, la, p, g, &kv, &q, &mut tiled);
                        for hq in 0..group {
                            let qh = &q[(g * group + hq) * hd..][..hd];
                            let s: Vec<f64> = (lo..=p)
                                .map(|j| {
                                    let k = &kv.k[j * hp.k_dim() + g * hd..][..hd];
                                    let s = 0.25 * qh.iter().zip(k).map(|(a, b)| *a as f64 * b.to_f64()).sum::<f64>();
                                    if cap > 0.0 {
                                        cap * (s / cap).tanh()
                                    } else {
                                        s
                                    }
                                })
                                .collect();
                            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                            for d in 0..hd {
                                let want: f64 = (lo..=p)
                                    .zip(&s)
                                    .map(|(j, sj)| (sj - mx).exp() / z * kv.v[j * hp.v_dim() + g * hd + d].to_f64())
                                    .sum();
                                let (a, b) = (one[hq * hd + d] as f64, tiled[hq * hd + d] as f64);
                                // f16 query and accumulator: ~1e-3 relative; f32 path: ~1e-6.
                                assert!((a - want).abs() < 1e-2, "one-pass p={p} {window:?} cap {cap}: {a} vs {want}");
                                assert!((b - want).abs() < 1e-5, "tiled p={p} {window:?} cap {cap}: {b} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The blocked tiled path (`attention_tiled`, every ISA) against its per-row specification
    /// (`attend_group_tiled`): batches that start mid-cache, end mid-block and mid-tile, with
    /// and without a sliding window, GQA groups of 1 and 3, head sizes that are and are not a
    /// multiple of the value step.
    #[test]
    fn blocked_tiled_attention_matches_its_specification() {
        for (n_head, n_kv, hd, cap) in [(6usize, 2usize, 40usize, 0.0f32), (2, 2, 64, 0.0), (2, 1, 32, 2.0)] {
            let hp = Hparams { attn_softcap: cap, ..attn_hparams(n_head, n_kv, hd, 0.3) };
            let mut rnd = lcg(777);
            let kv = random_kv(&hp, 300, &mut rnd);
            let (pos, n) = (37usize, 203usize);
            let q: Vec<f32> = (0..n * hp.q_dim()).map(|_| rnd()).collect();
            let row_out = n_head * hd;
            for window in [None, Some(70)] {
                let la = LayerAttn { rope_base: 1e4, rope_freq_scale: 1.0, window };
                for isa in kernels_cpu::Isa::available() {
                    let mut got = vec![0f32; n * row_out];
                    let mut buf = Vec::new();
                    for (b, out) in got.chunks_mut(FA_QBLOCK * row_out).enumerate() {
                        let t0 = b * FA_QBLOCK;
                        let nq = out.len() / row_out;
                        for g in 0..n_kv {
                            let qs = &q[t0 * hp.q_dim()..(t0 + nq) * hp.q_dim()];
                            attend_block(isa, &hp, la, pos + t0, nq, g, &kv, qs, out, &mut buf);
                        }
                    }
                    let group = n_head / n_kv;
                    for t in 0..n {
                        for g in 0..n_kv {
                            let mut want = vec![0f32; group * hd];
                            attend_group_tiled(
                                &hp,
                                la,
                                pos + t,
                                g,
                                &kv,
                                &q[t * hp.q_dim()..(t + 1) * hp.q_dim()],
                                &mut want,
                            );
                            let have = &got[t * row_out + g * group * hd..][..group * hd];
                            for (a, b) in have.iter().zip(&want) {
                                assert!(
                                    (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                                    "{isa:?} t={t} g={g} {window:?}: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rmsnorm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, -4.0];
        let w = [1.0f32, 2.0, 0.5, 1.0];
        let mut out = [0f32; 4];
        rmsnorm(&mut out, &x, &w, 0.0);
        let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32).sqrt();
        for i in 0..4 {
            assert!((out[i] - x[i] / rms * w[i]).abs() < 1e-6);
        }
    }
}
