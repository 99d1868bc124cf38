//! Model architectures: from a GGUF's metadata and tensor table to `Model` (hyperparameters and
//! views of the weights where they lie in the mapping).
//!
//! Adding an architecture = one file (its hyperparameters and its `Recipe`) + one line in
//! `ARCHITECTURES`. Tensor names are GGUF's standard ones (`blk.N.attn_q.weight`...); the shared
//! transformer block (`transformer.rs`) runs every architecture, driven by the `Recipe`.
//!
//! The hyperparameters (`Hparams`) and per-layer tensor views (`LayerWeights`) are public: an
//! offload backend composes the same recipe from its own operations (see `crate::backend`).

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod transformer;

use anyhow::{anyhow, bail, Context, Result};
use kernels_cpu::WeightType;
use llamafile_format::escape::escape;
use llamafile_format::gguf::GgufFile;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};

/// How RoPE pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// ggml mode 0: rotates adjacent pairs (x[2i], x[2i+1]) (llama/Mistral as stored in GGUF).
    Normal,
    /// ggml NEOX mode: rotates (x[i], x[i + n_rot/2]) (Qwen2, Gemma).
    Neox,
}

/// The gated FFN's activation: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnActivation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// What the shared transformer block does for an architecture.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    pub rope: RopeStyle,
    pub ffn_act: FfnActivation,
    /// q/k/v projections have biases (`blk.N.attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// RMSNorm of each head of q and k before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs before the residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Multiply the embeddings by sqrt(n_embd) (Gemma).
    pub scale_embeddings: bool,
    /// Per-dimension RoPE frequency factors (`rope_freqs.weight`, Llama 3.1+) are read when the
    /// file has them; an architecture without this flag refuses the tensor as unused.
    pub rope_factors: bool,
    /// LongRoPE's two sets of frequency factors (`rope_factors_short.weight`,
    /// `rope_factors_long.weight`, Phi-3 128k) are read when the file has them; the others refuse
    /// them as unused.
    pub longrope: bool,
}

/// LongRoPE: two sets of per-dimension frequency divisors, the short ones for contexts up to the
/// one the model was first trained with and the long ones beyond it.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
    /// `rope.scaling.original_context_length` (default: the training context).
    pub n_ctx_orig: usize,
}

/// Per-layer attention parameters (they differ between layers in Gemma 3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerAttn {
    pub rope_base: f32,
    /// Linear RoPE scaling: position multiplier (1.0 = none).
    pub rope_freq_scale: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Size of one query/key head (`key_length`, default n_embd / n_head).
    pub head_dim: usize,
    /// Size of one value head (`value_length`, default head_dim).
    pub head_dim_v: usize,
    pub n_vocab: usize,
    /// Context the model was trained with.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    /// Dimensions of each head that RoPE rotates (`rope.dimension_count`, default head_dim).
    pub n_rot: usize,
    /// Multiplier of q·k before the softmax.
    pub attn_scale: f32,
    /// Attention scores soft-capped to (-c, c) as `c * tanh(s / c)` (`attn_logit_softcapping`);
    /// 0: none.
    pub attn_softcap: f32,
    /// Logits soft-capped the same way (`final_logit_softcapping`); 0: none.
    pub final_softcap: f32,
    pub layers: Vec<LayerAttn>,
    /// Per-dimension RoPE frequency divisors, n_rot/2 values, every layer: `rope_freqs.weight`,
    /// or LongRoPE's set chosen for the context (`choose_rope_factors`).
    pub rope_factors: Option<Vec<f32>>,
    /// LongRoPE's factor sets, when the model has them.
    pub longrope: Option<LongRope>,
    /// Multiplier of RoPE's cos and sin (`rope.scaling.attn_factor`; 1.0 when absent).
    pub rope_attn_factor: f32,
    pub recipe: Recipe,
}

impl Hparams {
    /// Width of the query projection output (n_head * head_dim).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of one token's keys in the cache (n_head_kv * head_dim).
    pub fn k_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    /// Width of one token's values in the cache (n_head_kv * head_dim_v).
    pub fn v_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }
    /// Attention over the whole context on every layer (`--swa-full`): the sliding windows the
    /// model declares are dropped.
    pub fn full_attention(&mut self) {
        self.layers.iter_mut().for_each(|l| l.window = None);
    }
    /// Choose LongRoPE's factors for sessions of `n_ctx` positions, as the reference does: the
    /// long ones when the context exceeds the original one, else the short ones. (The reference
    /// compares its context rounded up to a multiple of 256, the same choice whenever the original
    /// context is such a multiple, as Phi-3's 4096 is.) Without LongRoPE nothing changes.
    pub fn choose_rope_factors(&mut self, n_ctx: usize) {
        if let Some(l) = &self.longrope {
            let f = if n_ctx > l.n_ctx_orig { &l.long } else { &l.short };
            self.rope_factors = Some(f.clone());
        }
    }
    /// Layer `il`'s RoPE, as every backend applies it.
    pub fn rope(&self, il: usize) -> kernels_cpu::ops::Rope {
        let la = &self.layers[il];
        kernels_cpu::ops::Rope {
            n_rot: self.n_rot,
            base: la.rope_base,
            freq_scale: la.rope_freq_scale,
            neox: self.recipe.rope == RopeStyle::Neox,
            factors: self.rope_factors.clone(),
            attn_factor: self.rope_attn_factor,
        }
    }
}

/// A weight matrix where it lies in the GGUF bytes: `rows` rows of `cols` elements
/// (ggml's dims[1] x dims[0]), `len` bytes at `offset` from the start of the GGUF.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub len: usize,
}

impl Weight {
    /// Rows `first..first + count` of this matrix (a part of a fused tensor): whole rows are
    /// whole blocks, so the part is a contiguous range of the same bytes.
    pub fn rows(&self, first: usize, count: usize) -> Weight {
        let row_bytes = self.len / self.rows;
        Weight {
            name: format!("{} rows {first}..{}", self.name, first + count),
            wtype: self.wtype,
            rows: count,
            cols: self.cols,
            offset: self.offset + first * row_bytes,
            len: count * row_bytes,
        }
    }
}

/// One transformer block's tensors. Norm weights and biases are small and copied to f32;
/// matrices stay in the mapping. A backend holding its own copy names its matrix and vector
/// types (`M`, `V`: the offload backend's are in device memory), so the layer recipe
/// (`transformer::layer`) reads the same fields whoever runs it.
#[derive(Clone, Debug)]
pub struct LayerWeights<M = Weight, V = Vec<f32>> {
    pub attn_norm: V,
    /// [q_dim x n_embd]
    pub wq: M,
    /// [k_dim x n_embd]
    pub wk: M,
    /// [v_dim x n_embd]
    pub wv: M,
    /// [n_embd x n_head*head_dim_v]
    pub wo: M,
    pub bq: Option<V>,
    pub bk: Option<V>,
    pub bv: Option<V>,
    /// [head_dim], applied to each head.
    pub q_norm: Option<V>,
    pub k_norm: Option<V>,
    pub attn_post_norm: Option<V>,
    pub ffn_norm: V,
    /// [n_ff x n_embd]
    pub ffn_gate: M,
    /// [n_ff x n_embd]
    pub ffn_up: M,
    /// [n_embd x n_ff]
    pub ffn_down: M,
    pub ffn_post_norm: Option<V>,
}

/// A loaded model: the mapping, hyperparameters and tensor views.
pub struct Model {
    pub file: GgufFile,
    pub hp: Hparams,
    /// [n_vocab x n_embd]
    pub token_embd: Weight,
    pub output_norm: Vec<f32>,
    /// [n_vocab x n_embd]; `token_embd` itself when the output is tied.
    pub output: Weight,
    pub layers: Vec<LayerWeights>,
}

/// An architecture: reads its hyperparameters from the metadata and says which recipe it runs.
pub trait Architecture: Sync {
    /// `general.architecture` value.
    fn name(&self) -> &'static str;
    fn hparams(&self, g: &GgufFile) -> Result<Hparams>;
}

/// Every supported architecture, keyed by `general.architecture`.
pub static ARCHITECTURES: &[&dyn Architecture] =
    &[&llama::Llama, &qwen2::Qwen2, &qwen3::Qwen3, &gemma2::Gemma2, &gemma3::Gemma3, &phi3::Phi3];

pub fn find_architecture(name: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.name() == name)
}

// ---- metadata helpers shared by the architectures ----

pub(crate) fn req_u64(g: &GgufFile, key: &str) -> Result<usize> {
    g.get_u64(key).map(|v| v as usize).ok_or_else(|| anyhow!("missing or non-integer metadata key {key}"))
}

pub(crate) fn opt_u64(g: &GgufFile, key: &str) -> Option<usize> {
    g.get_u64(key).map(|v| v as usize)
}

/// The hyperparameters every architecture here shares, read from `<arch>.*` keys; the
/// architecture then adjusts what differs (recipe, per-layer RoPE/windows, scale).
pub(crate) fn common_hparams(g: &GgufFile, arch: &str, recipe: Recipe) -> Result<Hparams> {
    let k = |s: &str| format!("{arch}.{s}");
    refuse_unimplemented(g, arch)?;
    let n_vocab = g
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| anyhow!("missing tensor token_embd.weight"))? as usize;
    let n_layer = req_u64(g, &k("block_count"))?;
    match blocks_in_table(g)? {
        blocks if blocks == n_layer => {}
        0 => bail!("{} is {n_layer}, but the tensor table holds no blocks (no blk.N tensors)", k("block_count")),
        blocks => bail!(
            "{} is {n_layer}, but the tensor table holds {blocks} blocks (blk.0 to blk.{})",
            k("block_count"),
            blocks - 1
        ),
    }
    let n_embd = req_u64(g, &k("embedding_length"))?;
    let n_ff = req_u64(g, &k("feed_forward_length"))?;
    let n_head = req_u64(g, &k("attention.head_count"))?;
    let n_head_kv = opt_u64(g, &k("attention.head_count_kv")).unwrap_or(n_head);
    if n_layer == 0 || n_embd == 0 || n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!(
            "inconsistent hyperparameters: {n_layer} blocks, embedding {n_embd}, {n_head} heads, {n_head_kv} KV heads"
        );
    }
    let head_dim = opt_u64(g, &k("attention.key_length")).unwrap_or(n_embd / n_head);
    let head_dim_v = opt_u64(g, &k("attention.value_length")).unwrap_or(head_dim);
    // Products the tensor shapes are checked against later must not overflow first.
    if [head_dim, head_dim_v].iter().any(|d| d.checked_mul(n_head).is_none_or(|q| q > u32::MAX as usize)) {
        bail!("inconsistent hyperparameters: {n_head} heads of size {head_dim}/{head_dim_v}");
    }
    let n_rot = opt_u64(g, &k("rope.dimension_count")).unwrap_or(head_dim);
    if head_dim == 0 {
        bail!("inconsistent hyperparameters: head size 0");
    }
    if n_rot == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
        bail!(
            "{} is {n_rot}: an even number of dimensions from 2 to the head size {head_dim} expected",
            k("rope.dimension_count")
        );
    }
    let n_ctx_train = opt_u64(g, &k("context_length")).unwrap_or(2048);
    let rms_eps = positive_f32(g, &k("attention.layer_norm_rms_epsilon"), 1e-5)?;
    let rope_base = positive_f32(g, &k("rope.freq_base"), 10000.0)?;
    let rope_freq_scale = rope_linear_scale(g, arch)?;
    let window = opt_u64(g, &k("attention.sliding_window")).filter(|w| *w > 0);
    Ok(Hparams {
        arch: arch.to_string(),
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        n_vocab,
        n_ctx_train,
        rms_eps,
        n_rot,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        attn_softcap: non_negative_f32(g, &k("attn_logit_softcapping"))?,
        final_softcap: non_negative_f32(g, &k("final_logit_softcapping"))?,
        layers: vec![LayerAttn { rope_base, rope_freq_scale, window }; n_layer],
        rope_factors: None,
        longrope: None,
        rope_attn_factor: positive_f32(g, &k("rope.scaling.attn_factor"), 1.0)?,
        recipe,
    })
}

/// A float key that must be finite and not negative when present (0: absent).
fn non_negative_f32(g: &GgufFile, key: &str) -> Result<f32> {
    match g.get(key) {
        None => Ok(0.0),
        Some(v) => match v.as_f32() {
            Some(x) if x >= 0.0 && x.is_finite() => Ok(x),
            Some(x) => bail!("{key} is {x}: a finite number >= 0 expected"),
            None => bail!("{key} is a {}, not a number", v.type_name()),
        },
    }
}

/// A float key that must be positive and finite when present, else `default`.
pub(crate) fn positive_f32(g: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match g.get(key) {
        None => Ok(default),
        Some(v) => match v.as_f32() {
            Some(x) if x > 0.0 && x.is_finite() => Ok(x),
            Some(x) => bail!("{key} is {x}: a positive finite number expected"),
            None => bail!("{key} is a {}, not a number", v.type_name()),
        },
    }
}

/// `rope.scaling.type = linear` (or absent) with `rope.scaling.factor` (or the older
/// `rope.scale_linear`) f: positions are multiplied by 1/f. `none` or no factor: 1.
pub(crate) fn rope_linear_scale(g: &GgufFile, arch: &str) -> Result<f32> {
    let ty = g.get_str(&format!("{arch}.rope.scaling.type"));
    if ty == Some("none") {
        return Ok(1.0);
    }
    let key = format!("{arch}.rope.scaling.factor");
    let key = if g.get(&key).is_some() { key } else { format!("{arch}.rope.scale_linear") };
    let factor = positive_f32(g, &key, 1.0)?;
    Ok(1.0 / factor)
}

/// The `<arch>.rope.*` keys the RoPE specification (`kernels_cpu::ops::Rope`) implements; any
/// other (YaRN's parameters, separate sliding-window bases, multi-section RoPE...)
/// changes the positions in a way it does not, so a file declaring one is refused.
const ROPE_KEYS: &[&str] = &[
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "rope.scaling.attn_factor",
    // the context the scaling was made for (LongRoPE's switch between its factor sets), and
    // whether the model was fine-tuned with it (informational)
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
];

/// `(architecture, rope key)` pairs an architecture's own `hparams` reads beyond [`ROPE_KEYS`]:
/// Gemma 3's local layers take their base from `rope.freq_base_swa`.
const ARCH_ROPE_KEYS: &[(&str, &str)] = &[("gemma3", "rope.freq_base_swa")];

/// Metadata that changes the maths in ways the shared block does not implement: a model that
/// declares it would load and run silently wrong, so it is refused, naming the key. (Logit
/// soft-capping is implemented for every architecture: `Hparams::attn_softcap`, `final_softcap`.)
fn refuse_unimplemented(g: &GgufFile, arch: &str) -> Result<()> {
    let key = format!("{arch}.rope.scaling.type");
    match g.get(&key) {
        None => {}
        Some(v) => match v.as_str() {
            Some("none" | "linear") => {}
            Some("llama3") => bail!(
                "{key} is 'llama3': Llama 3 scaling is read from the tensor rope_freqs.weight, as the reference converter writes it, not from this key"
            ),
            Some(other) => bail!("{key} is '{}': only none and linear RoPE scaling are implemented", escape(other)),
            None => bail!("{key} is a {}, not a string", v.type_name()),
        },
    }
    let prefix = format!("{arch}.rope.");
    for (k, _) in g.metadata() {
        let key = &k[arch.len() + 1..];
        if k.starts_with(&prefix) && !ROPE_KEYS.contains(&key) && !ARCH_ROPE_KEYS.contains(&(arch, key)) {
            bail!("{} is not implemented (RoPE keys understood: {})", escape(k), ROPE_KEYS.join(", "));
        }
    }
    Ok(())
}

/// How many transformer blocks the tensor table holds: the `blk.N.` prefixes, which must be
/// 0..count with none missing.
fn blocks_in_table(g: &GgufFile) -> Result<usize> {
    let blocks: BTreeSet<usize> =
        g.tensors().iter().filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse().ok()).collect();
    match blocks.last() {
        None => Ok(0),
        Some(&last) if last + 1 == blocks.len() => Ok(blocks.len()),
        Some(&last) => {
            let missing = (0..last).find(|i| !blocks.contains(i)).unwrap_or(last);
            bail!("the tensor table has tensors of block {last} but none of block {missing}")
        }
    }
}

// ---- loading ----

impl Model {
    /// Read the architecture's hyperparameters and locate every tensor, checking names, shapes and
    /// types. Nothing is copied but norm weights and biases.
    pub fn load(file: GgufFile) -> Result<Model> {
        let arch_name =
            file.architecture().ok_or_else(|| anyhow!("no general.architecture in the metadata"))?.to_string();
        let arch = find_architecture(&arch_name).ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name()).collect();
            anyhow!("unsupported architecture '{}' (supported: {})", escape(&arch_name), known.join(", "))
        })?;
        let mut hp = arch.hparams(&file).with_context(|| format!("reading {arch_name} hyperparameters"))?;
        let group = hp.n_head / hp.n_head_kv;
        if hp.head_dim.max(hp.head_dim_v) > transformer::MAX_HEAD_DIM
            || group * hp.head_dim.max(hp.head_dim_v) > transformer::MAX_GROUP_DIM
            || group > 64
        {
            bail!(
                "attention shape not supported: head size {}/{}, {} query heads per KV head",
                hp.head_dim,
                hp.head_dim_v,
                group
            );
        }
        let r = hp.recipe;
        let g = &Tensors { file: &file, used: RefCell::new(HashSet::new()) };
        if r.rope_factors && file.tensor(ROPE_FACTORS).is_some() {
            hp.rope_factors = Some(rope_factors(g, ROPE_FACTORS, hp.n_rot / 2)?);
        }
        if r.longrope && (file.tensor(ROPE_FACTORS_SHORT).is_some() || file.tensor(ROPE_FACTORS_LONG).is_some()) {
            let key = format!("{arch_name}.rope.scaling.original_context_length");
            let n_ctx_orig = match file.get(&key) {
                None => hp.n_ctx_train,
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => n as usize,
                    _ => bail!("{}: a positive whole number expected", escape(&key)),
                },
            };
            hp.longrope = Some(LongRope {
                short: rope_factors(g, ROPE_FACTORS_SHORT, hp.n_rot / 2)?,
                long: rope_factors(g, ROPE_FACTORS_LONG, hp.n_rot / 2)?,
                n_ctx_orig,
            });
            // until a context is chosen: the model's original one
            hp.choose_rope_factors(n_ctx_orig);
        }
        let e = hp.n_embd;
        let token_embd = weight(g, "token_embd.weight", hp.n_vocab, e)?;
        let output_norm = vector(g, "output_norm.weight", e)?;
        let output = if g.file.tensor("output.weight").is_some() {
            weight(g, "output.weight", hp.n_vocab, e)?
        } else {
            token_embd.clone()
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let opt_vec = |s: &str, len: usize, wanted: bool| -> Result<Option<Vec<f32>>> {
                if wanted {
                    vector(g, &n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            // q, k and v stacked in one matrix (`attn_qkv`, Phi-3; the reference accepts it for
            // every architecture): three row ranges of it.
            let (q, k, v) = (hp.q_dim(), hp.k_dim(), hp.v_dim());
            let (wq, wk, wv) = if file.tensor(&n("attn_qkv.weight")).is_some() {
                let qkv = weight(g, &n("attn_qkv.weight"), q + k + v, e)?;
                (qkv.rows(0, q), qkv.rows(q, k), qkv.rows(q + k, v))
            } else {
                (
                    weight(g, &n("attn_q.weight"), q, e)?,
                    weight(g, &n("attn_k.weight"), k, e)?,
                    weight(g, &n("attn_v.weight"), v, e)?,
                )
            };
            // No `ffn_gate`: `ffn_up` holds the gate's rows, then the up projection's (Phi-3).
            let (ffn_gate, ffn_up) =
                if file.tensor(&n("ffn_gate.weight")).is_none() && file.tensor(&n("ffn_up.weight")).is_some() {
                    let both = weight(g, &n("ffn_up.weight"), 2 * hp.n_ff, e)?;
                    (both.rows(0, hp.n_ff), both.rows(hp.n_ff, hp.n_ff))
                } else {
                    (weight(g, &n("ffn_gate.weight"), hp.n_ff, e)?, weight(g, &n("ffn_up.weight"), hp.n_ff, e)?)
                };
            layers.push(LayerWeights {
                attn_norm: vector(g, &n("attn_norm.weight"), e)?,
                wq,
                wk,
                wv,
                wo: weight(g, &n("attn_output.weight"), e, hp.n_head * hp.head_dim_v)?,
                bq: opt_vec("attn_q.bias", hp.q_dim(), r.qkv_bias)?,
                bk: opt_vec("attn_k.bias", hp.k_dim(), r.qkv_bias)?,
                bv: opt_vec("attn_v.bias", hp.v_dim(), r.qkv_bias)?,
                q_norm: opt_vec("attn_q_norm.weight", hp.head_dim, r.qk_norm)?,
                k_norm: opt_vec("attn_k_norm.weight", hp.head_dim, r.qk_norm)?,
                attn_post_norm: opt_vec("post_attention_norm.weight", e, r.post_norms)?,
                ffn_norm: vector(g, &n("ffn_norm.weight"), e)?,
                ffn_gate,
                ffn_up,
                ffn_down: weight(g, &n("ffn_down.weight"), e, hp.n_ff)?,
                ffn_post_norm: opt_vec("post_ffw_norm.weight", e, r.post_norms)?,
            });
        }
        g.check_all_used(&arch_name)?;
        Ok(Model { file, hp, token_embd, output_norm, output, layers })
    }

    /// The bytes of a weight inside the mapping.
    pub fn bytes(&self, w: &Weight) -> &[u8] {
        &self.file.bytes()[w.offset..w.offset + w.len]
    }

    /// Write token `id`'s embedding (dequantized, scaled for Gemma) into `out` [n_embd].
    pub fn embed(&self, id: u32, out: &mut [f32]) -> Result<()> {
        let w = &self.token_embd;
        let id = id as usize;
        if id >= w.rows {
            bail!("token id {id} is outside the vocabulary ({} tokens)", w.rows);
        }
        let row_bytes = w.len / w.rows;
        let bytes = self.bytes(w);
        kernels_cpu::types::dequantize_row(w.wtype, &bytes[id * row_bytes..(id + 1) * row_bytes], out);
        if self.hp.recipe.scale_embeddings {
            let s = (self.hp.n_embd as f32).sqrt();
            out.iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// Soft-cap the logits (`final_logit_softcapping`, Gemma 2), as the reference does:
    /// multiplied by 1/c, tanh, multiplied by c.
    pub fn softcap_logits(&self, logits: &mut [f32]) {
        let c = self.hp.final_softcap;
        if c > 0.0 {
            let inv = 1.0 / c;
            logits.iter_mut().for_each(|x| *x = (*x * inv).tanh() * c);
        }
    }

    /// Total bytes of the weight matrices (what one token's forward pass reads).
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.token_embd.len;
        if self.output.offset != self.token_embd.offset {
            n += self.output.len;
        }
        for l in &self.layers {
            n += l.wq.len + l.wk.len + l.wv.len + l.wo.len + l.ffn_gate.len + l.ffn_up.len + l.ffn_down.len;
        }
        n
    }
}

/// The tensor table as the loader reads it: remembers which tensors the recipe took.
struct Tensors<'a> {
    file: &'a GgufFile,
    used: RefCell<HashSet<String>>,
}

impl Tensors<'_> {
    fn take(&self, name: &str) -> Result<&llamafile_format::gguf::TensorInfo> {
        let t = self.file.tensor(name).ok_or_else(|| anyhow!("missing tensor {name}"))?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }
    fn tensor_data(&self, t: &llamafile_format::gguf::TensorInfo) -> &[u8] {
        self.file.tensor_data(t)
    }
    /// A tensor the recipe did not take means the recipe does not match the file.
    fn check_all_used(&self, arch: &str) -> Result<()> {
        let used = self.used.borrow();
        match self.file.tensors().iter().find(|t| !used.contains(&t.name)) {
            Some(t) => bail!(
                "tensor '{}' is in the file but the {arch} architecture does not use it (its recipe does not match this model)",
                escape(&t.name)
            ),
            None => Ok(()),
        }
    }
}

/// The tensor of per-dimension RoPE frequency factors.
const ROPE_FACTORS: &str = "rope_freqs.weight";
/// LongRoPE's factors for contexts up to the original one, and beyond it.
const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";

/// A tensor of RoPE frequency factors: `pairs` F32 divisors of the angles (the reference's RoPE
/// takes only F32 factors), each positive and finite.
fn rope_factors(g: &Tensors, name: &str, pairs: usize) -> Result<Vec<f32>> {
    if let Some(t) = g.file.tensor(name).filter(|t| t.ggml_type != 0) {
        bail!("tensor {name} has weight type id {}: F32 factors expected", t.ggml_type);
    }
    let f = vector(g, name, pairs)?;
    match f.iter().position(|x| !(*x > 0.0 && x.is_finite())) {
        Some(i) => bail!("tensor {name}: factor {i} is {}, a positive finite number expected", f[i]),
        None => Ok(f),
    }
}

/// A matrix tensor `name` of `rows` x `cols` in a type the kernels can multiply.
fn weight(g: &Tensors, name: &str, rows: usize, cols: usize) -> Result<Weight> {
    let t = g.take(name)?;
    let dims: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
    let (c, r) = match dims.as_slice() {
        [c] => (*c, 1),
        [c, r] => (*c, *r),
        [c, r, rest @ ..] if rest.iter().all(|d| *d == 1) => (*c, *r),
        _ => bail!("tensor {name} has shape {dims:?}, expected [{cols}, {rows}]"),
    };
    if (c, r) != (cols, rows) {
        bail!("tensor {name} has shape [{c}, {r}], expected [{cols}, {rows}]");
    }
    let wtype = t.wtype.ok_or_else(|| {
        anyhow!("tensor {name} has weight type id {}, which this build does not support", t.ggml_type)
    })?;
    if kernels_cpu::kernels().get(wtype).is_none() {
        bail!("tensor {name} has weight type {}, which has no matrix kernel", wtype.name());
    }
    if !cols.is_multiple_of(wtype.block_size()) {
        bail!(
            "tensor {name}: row length {cols} is not a multiple of the {} block size {}",
            wtype.name(),
            wtype.block_size()
        );
    }
    let len = wtype.row_bytes(cols) * rows;
    if t.size as usize != len {
        bail!("tensor {name}: {} bytes of data, expected {len} for {} [{cols}, {rows}]", t.size, wtype.name());
    }
    Ok(Weight { name: name.to_string(), wtype, rows, cols, offset: t.offset as usize, len })
}

/// A 1-D tensor of `len` elements (norm weight, bias), dequantized to f32.
fn vector(g: &Tensors, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.take(name)?;
    let n: u64 = t.dims.iter().product();
    if n as usize != len {
        bail!("tensor {name} has {n} elements ({:?}), expected {len}", t.dims);
    }
    let wtype = t.wtype.ok_or_else(|| {
        anyhow!("tensor {name} has weight type id {}, which this build does not support", t.ggml_type)
    })?;
    if !len.is_multiple_of(wtype.block_size()) || wtype.row_bytes(len) != t.size as usize {
        bail!("tensor {name}: {} bytes of data do not hold {len} {} elements", t.size, wtype.name());
    }
    let mut out = vec![0f32; len];
    kernels_cpu::types::dequantize_row(wtype, g.tensor_data(t), &mut out);
    Ok(out)
}

/// The tiny test model (`gguf::writer::tiny_model`) as an `arch` file: its shape keys renamed
/// to `arch`'s (others keep their defaults), with `meta` and `extra` tensors added, for tests
/// of what an architecture reads.
#[cfg(test)]
pub(crate) fn tiny_gguf_as(
    arch: &str,
    meta: &[(&str, llamafile_format::gguf::MetaValue)],
    extra: &[llamafile_format::gguf::writer::TensorSpec],
) -> GgufFile {
    use llamafile_format::gguf::MetaValue::{self, *};
    let shape = [
        ("context_length", 256),
        ("embedding_length", 32),
        ("block_count", 2),
        ("feed_forward_length", 64),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
    ];
    let named: Vec<(std::string::String, MetaValue)> =
        shape.iter().map(|(k, v)| (format!("{arch}.{k}"), U32(*v))).collect();
    let mut m: Vec<(&str, MetaValue)> = vec![("general.architecture", String(arch.into()))];
    m.extend(named.iter().map(|(k, v)| (k.as_str(), v.clone())));
    m.extend(meta.iter().cloned());
    GgufFile::from_bytes("tiny.gguf", llamafile_format::gguf::writer::tiny_model(&m, extra))
        .expect("the tiny model parses")
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamafile_format::gguf::writer::{tiny_model, TensorSpec};
    use llamafile_format::gguf::MetaValue::{self, *};

    fn load(meta: &[(&str, MetaValue)], extra: &[TensorSpec]) -> Result<Model> {
        Model::load(GgufFile::from_bytes("tiny.gguf", tiny_model(meta, extra))?)
    }

    /// The one-line error loading the tiny model with these changes gives.
    fn refused(meta: &[(&str, MetaValue)], extra: &[TensorSpec]) -> std::string::String {
        let e = format!("{:#}", load(meta, extra).err().expect("the loader accepted it"));
        assert!(!e.contains('\n'), "one line: {e:?}");
        e
    }

    #[test]
    fn the_tiny_model_loads() {
        let m = load(&[], &[]).unwrap();
        assert_eq!((m.hp.n_layer, m.hp.n_embd, m.hp.n_vocab, m.hp.head_dim), (2, 32, 8, 16));
        let m =
            load(&[("llama.rope.scaling.type", String("linear".into())), ("llama.rope.scaling.factor", F32(4.0))], &[])
                .unwrap();
        assert_eq!(m.hp.layers[0].rope_freq_scale, 0.25);
    }

    #[test]
    fn block_count_must_match_the_tensor_table() {
        let e = refused(&[("llama.block_count", U32(u32::MAX))], &[]);
        assert!(
            e.ends_with("llama.block_count is 4294967295, but the tensor table holds 2 blocks (blk.0 to blk.1)"),
            "{e}"
        );
        let e = refused(&[("llama.block_count", U32(1))], &[]);
        assert!(e.contains("llama.block_count is 1, but the tensor table holds 2 blocks"), "{e}");
        let f = [0u8; 128];
        let e = refused(&[], &[TensorSpec { name: "blk.5.attn_norm.weight", dims: &[32], ggml_type: 0, data: &f }]);
        assert!(e.contains("tensors of block 5 but none of block 2"), "{e}");
    }

    #[test]
    fn invalid_rope_and_norm_values_are_refused_naming_the_key() {
        let base = "llama.rope.freq_base";
        let eps = "llama.attention.layer_norm_rms_epsilon";
        let dims = "llama.rope.dimension_count";
        for (key, value, want) in [
            (base, F32(0.0), "llama.rope.freq_base is 0: a positive finite number expected"),
            (base, F32(-10000.0), "llama.rope.freq_base is -10000: a positive"),
            (base, F32(f32::NAN), "llama.rope.freq_base is NaN: a positive"),
            (base, F32(f32::INFINITY), "llama.rope.freq_base is inf: a positive"),
            (base, String("x".into()), "llama.rope.freq_base is a string, not a number"),
            (eps, F32(0.0), "llama.attention.layer_norm_rms_epsilon is 0: a positive"),
            (eps, F32(-1e-5), "llama.attention.layer_norm_rms_epsilon is -0.00001: a positive"),
            (eps, F32(f32::NAN), "llama.attention.layer_norm_rms_epsilon is NaN: a positive"),
            (
                dims,
                U32(0),
                "llama.rope.dimension_count is 0: an even number of dimensions from 2 to the head size 16 expected",
            ),
            (dims, U32(18), "llama.rope.dimension_count is 18: an even number"),
            (dims, U32(3), "llama.rope.dimension_count is 3: an even number"),
            ("llama.rope.scaling.factor", F32(0.0), "llama.rope.scaling.factor is 0: a positive"),
        ] {
            let e = refused(&[(key, value)], &[]);
            assert!(e.contains(want), "{key}: expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn unimplemented_maths_and_unused_tensors_are_refused() {
        for ty in ["yarn", "longrope", "su"] {
            let e = refused(&[("llama.rope.scaling.type", String(ty.into()))], &[]);
            assert!(
                e.contains(&format!(
                    "llama.rope.scaling.type is '{ty}': only none and linear RoPE scaling are implemented"
                )),
                "{e}"
            );
        }
        let e = refused(&[("llama.rope.scaling.type", String("llama3".into()))], &[]);
        assert!(
            e.contains(
                "llama.rope.scaling.type is 'llama3': Llama 3 scaling is read from the tensor rope_freqs.weight"
            ),
            "{e}"
        );
        for key in [
            "llama.rope.scaling.yarn_ext_factor",
            "llama.rope.scaling.yarn_log_multiplier",
            "llama.rope.scaling.alpha",
            "llama.rope.freq_base_swa",
            "llama.rope.dimension_sections",
            "llama.rope.scaling.short_factor",
        ] {
            let e = refused(&[(key, F32(2.0))], &[]);
            assert!(
                e.contains(&format!("{key} is not implemented (RoPE keys understood: rope.dimension_count")),
                "{e}"
            );
        }
        for bad in [F32(0.0), F32(-1.2), F32(f32::NAN), String("x".into())] {
            let e = refused(&[("llama.rope.scaling.attn_factor", bad)], &[]);
            assert!(e.contains("llama.rope.scaling.attn_factor is"), "{e}");
        }
        assert!(load(
            &[("llama.rope.scaling.attn_factor", F32(1.0)), ("llama.rope.scaling.original_context_length", U32(8192))],
            &[]
        )
        .is_ok());
        let m = load(&[("llama.final_logit_softcapping", F32(30.0)), ("llama.attn_logit_softcapping", F32(50.0))], &[])
            .unwrap();
        assert_eq!((m.hp.attn_softcap, m.hp.final_softcap), (50.0, 30.0));
        let mut l = [0.0f32, 3.0, -300.0];
        m.softcap_logits(&mut l);
        assert!(l[0] == 0.0 && (l[1] - 30.0 * 0.1f32.tanh()).abs() < 1e-5 && (l[2] + 30.0).abs() < 1e-3, "{l:?}");
        for bad in [F32(-1.0), F32(f32::NAN)] {
            let e = refused(&[("llama.final_logit_softcapping", bad.clone())], &[]);
            assert!(
                e.contains("llama.final_logit_softcapping is") && e.contains("a finite number >= 0 expected"),
                "{e}"
            );
        }
        let m = load(&[("llama.final_logit_softcapping", F32(0.0))], &[]).unwrap();
        assert_eq!(m.hp.final_softcap, 0.0, "0 means no soft-capping");
        // LongRoPE's factor tensors are read by the phi3 recipe only
        let f = [0u8; 32];
        let e = refused(&[], &[TensorSpec { name: "rope_factors_long.weight", dims: &[8], ggml_type: 0, data: &f }]);
        assert!(
            e.contains("tensor 'rope_factors_long.weight' is in the file but the llama architecture does not use it"),
            "{e}"
        );
        let bias = [0u8; 128];
        let e = refused(&[], &[TensorSpec { name: "blk.0.attn_q.bias", dims: &[32], ggml_type: 0, data: &bias }]);
        assert!(
            e.contains("tensor 'blk.0.attn_q.bias' is in the file but the llama architecture does not use it"),
            "{e}"
        );
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn rope_factors_are_read_checked_and_given_to_every_layer() {
        // head size 16: 8 pairs, 8 factors
        let f = [1.0f32, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0];
        let data = f32_bytes(&f);
        let m = load(&[], &[TensorSpec { name: "rope_freqs.weight", dims: &[8], ggml_type: 0, data: &data }]).unwrap();
        assert_eq!(m.hp.rope_factors.as_deref(), Some(&f[..]));
        for il in 0..m.hp.n_layer {
            let r = m.hp.rope(il);
            assert_eq!(
                (r.n_rot, r.base, r.freq_scale, r.neox, r.factors.as_deref()),
                (16, 10000.0, 1.0, false, Some(&f[..]))
            );
        }
        assert_eq!(load(&[], &[]).unwrap().hp.rope(0).factors, None);
        let short = f32_bytes(&f[..4]);
        let e = refused(&[], &[TensorSpec { name: "rope_freqs.weight", dims: &[4], ggml_type: 0, data: &short }]);
        assert!(e.contains("tensor rope_freqs.weight has 4 elements ([4]), expected 8"), "{e}");
        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            let mut g = f;
            g[5] = bad;
            let data = f32_bytes(&g);
            let e = refused(&[], &[TensorSpec { name: "rope_freqs.weight", dims: &[8], ggml_type: 0, data: &data }]);
            assert!(
                e.contains(&format!("tensor rope_freqs.weight: factor 5 is {bad}, a positive finite number expected")),
                "{e}"
            );
        }
        // F32 only, as the reference's RoPE takes them
        let e = refused(&[], &[TensorSpec { name: "rope_freqs.weight", dims: &[8], ggml_type: 1, data: &[0u8; 16] }]);
        assert!(e.contains("tensor rope_freqs.weight has weight type id 1: F32 factors expected"), "{e}");
        // the older key for the linear factor
        let m = load(&[("llama.rope.scale_linear", F32(2.0))], &[]).unwrap();
        assert_eq!(m.hp.layers[1].rope_freq_scale, 0.5);
    }

    /// The tiny model as a `phi3` (separate q/k/v and gate/up, which the loader takes for every
    /// architecture), with `meta` and `extra` added.
    fn load_phi3(meta: &[(&str, MetaValue)], extra: &[TensorSpec]) -> Result<Model> {
        Model::load(tiny_gguf_as("phi3", meta, extra))
    }

    fn refused_phi3(meta: &[(&str, MetaValue)], extra: &[TensorSpec]) -> std::string::String {
        let e = format!("{:#}", load_phi3(meta, extra).err().expect("the loader accepted it"));
        assert!(!e.contains('\n'), "one line: {e:?}");
        e
    }

    #[test]
    fn longrope_factors_are_chosen_by_the_context() {
        // head size 16, all rotated: 8 pairs
        let short = [1.0f32, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0];
        let long = [1.1f32, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0];
        let (sd, ld) = (f32_bytes(&short), f32_bytes(&long));
        let tensors = [
            TensorSpec { name: "rope_factors_long.weight", dims: &[8], ggml_type: 0, data: &ld },
            TensorSpec { name: "rope_factors_short.weight", dims: &[8], ggml_type: 0, data: &sd },
        ];
        let meta =
            [("phi3.rope.scaling.original_context_length", U32(64)), ("phi3.rope.scaling.attn_factor", F32(1.19))];
        let mut hp = load_phi3(&meta, &tensors).unwrap().hp;
        assert_eq!(hp.longrope, Some(LongRope { short: short.to_vec(), long: long.to_vec(), n_ctx_orig: 64 }));
        assert_eq!(hp.rope_factors.as_deref(), Some(&short[..]), "before a context is chosen: the original one's");
        for (n_ctx, want) in [(1, &short), (64, &short), (65, &long), (256, &long), (64, &short)] {
            hp.choose_rope_factors(n_ctx);
            for il in 0..hp.n_layer {
                let r = hp.rope(il);
                assert_eq!(
                    (r.factors.as_deref(), r.attn_factor, r.neox),
                    (Some(&want[..]), 1.19, true),
                    "n_ctx {n_ctx}"
                );
            }
        }
        // without original_context_length the switch is at the training context (256)
        let mut hp = load_phi3(&[], &tensors).unwrap().hp;
        assert_eq!((hp.longrope.as_ref().unwrap().n_ctx_orig, hp.rope(0).attn_factor), (256, 1.0));
        hp.choose_rope_factors(256);
        assert_eq!(hp.rope_factors.as_deref(), Some(&short[..]));
        hp.choose_rope_factors(257);
        assert_eq!(hp.rope_factors.as_deref(), Some(&long[..]));
        // a model without LongRoPE keeps its factors whatever the context
        let mut hp = load_phi3(&[], &[]).unwrap().hp;
        hp.choose_rope_factors(100_000);
        assert_eq!((hp.rope_factors, hp.longrope), (None, None));
    }

    #[test]
    fn bad_longrope_factors_are_refused_naming_the_tensor() {
        let good = f32_bytes(&[1.0; 8]);
        fn spec<'a>(name: &'a str, dims: &'a [u64], ggml_type: u32, data: &'a [u8]) -> TensorSpec<'a> {
            TensorSpec { name, dims, ggml_type, data }
        }
        let long = spec("rope_factors_long.weight", &[8], 0, &good);
        let short = spec("rope_factors_short.weight", &[8], 0, &good);
        let four = f32_bytes(&[1.0; 4]);
        let e = refused_phi3(&[], &[long, spec("rope_factors_short.weight", &[4], 0, &four)]);
        assert!(e.contains("tensor rope_factors_short.weight has 4 elements ([4]), expected 8"), "{e}");
        let e = refused_phi3(&[], &[spec("rope_factors_long.weight", &[8], 1, &good[..16]), short]);
        assert!(e.contains("tensor rope_factors_long.weight has weight type id 1: F32 factors expected"), "{e}");
        for bad in [f32::NAN, 0.0, -2.0, f32::INFINITY] {
            let mut f = [1.0f32; 8];
            f[3] = bad;
            let data = f32_bytes(&f);
            let e = refused_phi3(&[], &[spec("rope_factors_long.weight", &[8], 0, &data), short]);
            assert!(
                e.contains(&format!(
                    "tensor rope_factors_long.weight: factor 3 is {bad}, a positive finite number expected"
                )),
                "{e}"
            );
        }
        // one set without the other
        let e = refused_phi3(&[], &[short]);
        assert!(e.contains("missing tensor rope_factors_long.weight"), "{e}");
        let e = refused_phi3(&[], &[long]);
        assert!(e.contains("missing tensor rope_factors_short.weight"), "{e}");
        let e = refused_phi3(&[("phi3.rope.scaling.original_context_length", U32(0))], &[long, short]);
        assert!(e.contains("phi3.rope.scaling.original_context_length: a positive whole number expected"), "{e}");
        // YaRN and the other keys stay refused for phi3 too
        let e = refused_phi3(&[("phi3.rope.scaling.yarn_beta_fast", F32(32.0))], &[long, short]);
        assert!(e.contains("phi3.rope.scaling.yarn_beta_fast is not implemented"), "{e}");
        let e = refused_phi3(&[("phi3.rope.scaling.type", String("yarn".into()))], &[]);
        assert!(e.contains("phi3.rope.scaling.type is 'yarn'"), "{e}");
    }
}
