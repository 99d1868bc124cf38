//! Model architectures: from a GGUF's metadata and tensor table to `Model` (hyperparameters and
//! views of the weights where they lie in the mapping).
//!
//! Adding an architecture = one file (its hyperparameters and its `Recipe`) + one line in
//! `ARCHITECTURES`. Tensor names are GGUF's standard ones (`blk.N.attn_q.weight`...); the shared
//! transformer block (`transformer.rs`) runs every architecture, driven by the `Recipe`.
//!
//! The hyperparameters (`Hparams`) and per-layer tensor views (`LayerWeights`) are public: an
//! offload backend composes the same recipe from its own operations (see `crate::backend`).

pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod transformer;

use crate::gguf::GgufFile;
use anyhow::{anyhow, bail, Context, Result};
use kernels_cpu::WeightType;

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
    pub layers: Vec<LayerAttn>,
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

/// One transformer block's tensors. Norm weights and biases are small and copied to f32;
/// matrices stay in the mapping.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// [q_dim x n_embd]
    pub wq: Weight,
    /// [k_dim x n_embd]
    pub wk: Weight,
    /// [v_dim x n_embd]
    pub wv: Weight,
    /// [n_embd x n_head*head_dim_v]
    pub wo: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// [head_dim], applied to each head.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// [n_ff x n_embd]
    pub ffn_gate: Weight,
    /// [n_ff x n_embd]
    pub ffn_up: Weight,
    /// [n_embd x n_ff]
    pub ffn_down: Weight,
    pub ffn_post_norm: Option<Vec<f32>>,
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
pub static ARCHITECTURES: &[&dyn Architecture] = &[&llama::Llama, &qwen2::Qwen2, &gemma3::Gemma3];

pub fn find_architecture(name: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.name() == name)
}

// ---- metadata helpers shared by the architectures ----

pub(crate) fn req_u64(g: &GgufFile, key: &str) -> Result<usize> {
    g.get_u64(key)
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("missing or non-integer metadata key {key}"))
}

pub(crate) fn opt_u64(g: &GgufFile, key: &str) -> Option<usize> {
    g.get_u64(key).map(|v| v as usize)
}

pub(crate) fn opt_f32(g: &GgufFile, key: &str) -> Option<f32> {
    g.get_f32(key)
}

/// The hyperparameters every architecture here shares, read from `<arch>.*` keys; the
/// architecture then adjusts what differs (recipe, per-layer RoPE/windows, scale).
pub(crate) fn common_hparams(g: &GgufFile, arch: &str, recipe: Recipe) -> Result<Hparams> {
    let k = |s: &str| format!("{arch}.{s}");
    let n_layer = req_u64(g, &k("block_count"))?;
    let n_embd = req_u64(g, &k("embedding_length"))?;
    let n_ff = req_u64(g, &k("feed_forward_length"))?;
    let n_head = req_u64(g, &k("attention.head_count"))?;
    let n_head_kv = opt_u64(g, &k("attention.head_count_kv")).unwrap_or(n_head);
    if n_layer == 0 || n_embd == 0 || n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!("inconsistent hyperparameters: {n_layer} blocks, embedding {n_embd}, {n_head} heads, {n_head_kv} KV heads");
    }
    let head_dim = opt_u64(g, &k("attention.key_length")).unwrap_or(n_embd / n_head);
    let head_dim_v = opt_u64(g, &k("attention.value_length")).unwrap_or(head_dim);
    let n_rot = opt_u64(g, &k("rope.dimension_count")).unwrap_or(head_dim);
    if head_dim == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
        bail!("inconsistent hyperparameters: head size {head_dim}, RoPE dimensions {n_rot}");
    }
    let n_ctx_train = opt_u64(g, &k("context_length")).unwrap_or(2048);
    let rms_eps = opt_f32(g, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
    let rope_base = opt_f32(g, &k("rope.freq_base")).unwrap_or(10000.0);
    let rope_freq_scale = rope_linear_scale(g, arch);
    let window = opt_u64(g, &k("attention.sliding_window")).filter(|w| *w > 0);
    let n_vocab = g
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| anyhow!("missing tensor token_embd.weight"))? as usize;
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
        layers: vec![LayerAttn { rope_base, rope_freq_scale, window }; n_layer],
        recipe,
    })
}

/// `rope.scaling.type = linear` with `rope.scaling.factor` f: positions are multiplied by 1/f.
pub(crate) fn rope_linear_scale(g: &GgufFile, arch: &str) -> f32 {
    let ty = g.get_str(&format!("{arch}.rope.scaling.type"));
    let factor = opt_f32(g, &format!("{arch}.rope.scaling.factor"));
    match (ty, factor) {
        (Some("linear") | None, Some(f)) if f > 0.0 && f != 1.0 => 1.0 / f,
        _ => 1.0,
    }
}

// ---- loading ----

impl Model {
    /// Read the architecture's hyperparameters and locate every tensor, checking names, shapes and
    /// types. Nothing is copied but norm weights and biases.
    pub fn load(file: GgufFile) -> Result<Model> {
        let arch_name = file
            .architecture()
            .ok_or_else(|| anyhow!("no general.architecture in the metadata"))?
            .to_string();
        let arch = find_architecture(&arch_name).ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name()).collect();
            anyhow!("unsupported architecture '{arch_name}' (supported: {})", known.join(", "))
        })?;
        let hp = arch.hparams(&file).with_context(|| format!("reading {arch_name} hyperparameters"))?;
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
        let g = &file;
        let e = hp.n_embd;
        let token_embd = weight(g, "token_embd.weight", hp.n_vocab, e)?;
        let output_norm = vector(g, "output_norm.weight", e)?;
        let output = if g.tensor("output.weight").is_some() {
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
            layers.push(LayerWeights {
                attn_norm: vector(g, &n("attn_norm.weight"), e)?,
                wq: weight(g, &n("attn_q.weight"), hp.q_dim(), e)?,
                wk: weight(g, &n("attn_k.weight"), hp.k_dim(), e)?,
                wv: weight(g, &n("attn_v.weight"), hp.v_dim(), e)?,
                wo: weight(g, &n("attn_output.weight"), e, hp.n_head * hp.head_dim_v)?,
                bq: opt_vec("attn_q.bias", hp.q_dim(), r.qkv_bias)?,
                bk: opt_vec("attn_k.bias", hp.k_dim(), r.qkv_bias)?,
                bv: opt_vec("attn_v.bias", hp.v_dim(), r.qkv_bias)?,
                q_norm: opt_vec("attn_q_norm.weight", hp.head_dim, r.qk_norm)?,
                k_norm: opt_vec("attn_k_norm.weight", hp.head_dim, r.qk_norm)?,
                attn_post_norm: opt_vec("post_attention_norm.weight", e, r.post_norms)?,
                ffn_norm: vector(g, &n("ffn_norm.weight"), e)?,
                ffn_gate: weight(g, &n("ffn_gate.weight"), hp.n_ff, e)?,
                ffn_up: weight(g, &n("ffn_up.weight"), hp.n_ff, e)?,
                ffn_down: weight(g, &n("ffn_down.weight"), e, hp.n_ff)?,
                ffn_post_norm: opt_vec("post_ffw_norm.weight", e, r.post_norms)?,
            });
        }
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

/// A matrix tensor `name` of `rows` x `cols` in a type the kernels can multiply.
fn weight(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Weight> {
    let t = g.tensor(name).ok_or_else(|| anyhow!("missing tensor {name}"))?;
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
    let wtype = t
        .wtype
        .ok_or_else(|| anyhow!("tensor {name} has weight type id {}, which this build does not support", t.ggml_type))?;
    if kernels_cpu::kernels().get(wtype).is_none() {
        bail!("tensor {name} has weight type {}, which has no matrix kernel", wtype.name());
    }
    if !cols.is_multiple_of(wtype.block_size()) {
        bail!("tensor {name}: row length {cols} is not a multiple of the {} block size {}", wtype.name(), wtype.block_size());
    }
    let len = wtype.row_bytes(cols) * rows;
    if t.size as usize != len {
        bail!("tensor {name}: {} bytes of data, expected {len} for {} [{cols}, {rows}]", t.size, wtype.name());
    }
    Ok(Weight { name: name.to_string(), wtype, rows, cols, offset: t.offset as usize, len })
}

/// A 1-D tensor of `len` elements (norm weight, bias), dequantized to f32.
fn vector(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.tensor(name).ok_or_else(|| anyhow!("missing tensor {name}"))?;
    let n: u64 = t.dims.iter().product();
    if n as usize != len {
        bail!("tensor {name} has {n} elements ({:?}), expected {len}", t.dims);
    }
    let wtype = t
        .wtype
        .ok_or_else(|| anyhow!("tensor {name} has weight type id {}, which this build does not support", t.ggml_type))?;
    if !len.is_multiple_of(wtype.block_size()) || wtype.row_bytes(len) != t.size as usize {
        bail!("tensor {name}: {} bytes of data do not hold {len} {} elements", t.size, wtype.name());
    }
    let mut out = vec![0f32; len];
    kernels_cpu::types::dequantize_row(wtype, g.tensor_data(t), &mut out);
    Ok(out)
}
