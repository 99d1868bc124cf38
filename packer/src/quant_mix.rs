//! Which ggml type each tensor gets when a model is quantized to a named mix (`--quantize
//! Q4_K_M`): the same choices as the reference quantizer (`llama-quantize`), so that a model
//! quantized by `pack` has the tensor types of the reference's file for the same mix.
//!
//! The rules, in the reference's order of precedence:
//! - only matrices whose name ends in `weight` are quantized, and not norms, MoE routers,
//!   positional embeddings and a few small special tensors ([`allows_quantization`]);
//! - `output.weight` (and `token_embd.weight` when the model has no `output.weight`, the two
//!   being one tensor) gets Q6_K, or Q8_0 when its rows are not whole 256-blocks;
//! - the attention-V and FFN-down matrices get more bits in some mixes, by the layer's place:
//!   [`more_bits`] layers (the first and last eighth and every third layer between), the first
//!   eighth or sixteenth ([`SENSITIVE`], one line per mix and tensor kind);
//! - a type whose block does not divide the row length falls back to a 32-block type, or F16
//!   ([`fallback`]).

use anyhow::bail;
use kernels_cpu::WeightType::{self, *};

/// A quantization mix: the name `--quantize` takes, `general.file_type` (the reference's
/// `llama_ftype`) and the type of the tensors no rule changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub name: &'static str,
    pub file_type: u32,
    pub default: WeightType,
}

/// Every mix `--quantize` accepts (names as the reference's `llama-quantize` spells them; the
/// short K names are its aliases for the `_M` mixes).
pub const MIXES: &[Mix] = &[
    Mix { name: "Q4_0", file_type: 2, default: Q4_0 },
    Mix { name: "Q4_1", file_type: 3, default: Q4_1 },
    Mix { name: "Q5_0", file_type: 8, default: Q5_0 },
    Mix { name: "Q5_1", file_type: 9, default: Q5_1 },
    Mix { name: "Q8_0", file_type: 7, default: Q8_0 },
    Mix { name: "Q2_K", file_type: 10, default: Q2_K },
    Mix { name: "Q3_K_S", file_type: 11, default: Q3_K },
    Mix { name: "Q3_K_M", file_type: 12, default: Q3_K },
    Mix { name: "Q3_K_L", file_type: 13, default: Q3_K },
    Mix { name: "Q4_K_S", file_type: 14, default: Q4_K },
    Mix { name: "Q4_K_M", file_type: 15, default: Q4_K },
    Mix { name: "Q5_K_S", file_type: 16, default: Q5_K },
    Mix { name: "Q5_K_M", file_type: 17, default: Q5_K },
    Mix { name: "Q6_K", file_type: 18, default: Q6_K },
    Mix { name: "IQ4_NL", file_type: 25, default: IQ4_NL },
    Mix { name: "IQ4_XS", file_type: 30, default: IQ4_XS },
];

/// Short names the reference accepts for a mix.
const ALIASES: &[(&str, &str)] = &[("Q3_K", "Q3_K_M"), ("Q4_K", "Q4_K_M"), ("Q5_K", "Q5_K_M")];

impl Mix {
    /// The mix named `s` (any case, or an alias such as `Q4_K`), or a one-line error listing the
    /// names accepted.
    pub fn parse(s: &str) -> anyhow::Result<Mix> {
        let up = s.to_ascii_uppercase();
        let name = ALIASES.iter().find(|(a, _)| *a == up).map(|(_, n)| *n).unwrap_or(&up);
        if let Some(m) = MIXES.iter().find(|m| m.name == name) {
            return Ok(*m);
        }
        let names: Vec<&str> = MIXES.iter().map(|m| m.name).collect();
        bail!("--quantize {}: unknown type; one of {}", llamafile_format::escape::escape(s), names.join(", "))
    }
}

/// What the choice of types needs to know about the model (from its metadata and tensor list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Query heads per KV head (`head_count / head_count_kv`, of the first layer).
    pub n_gqa: usize,
    /// `{arch}.expert_count` (0 for a dense model).
    pub n_expert: usize,
    /// The reference's 70B class (80 layers with grouped KV heads) gets more bits in attention V.
    pub is_70b: bool,
    /// No `output.weight`: the token embedding is also the output matrix.
    pub tied_embeddings: bool,
}

/// The broad kind of a tensor, from its name (the reference's categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Output,
    TokenEmbd,
    /// Attention V, fused QKV, or MLA's KV-b: all treated as attention V.
    AttnV,
    AttnK,
    AttnOutput,
    FfnDown,
    Other,
}

/// The kind of tensor `name` (first match wins, in the reference's order).
pub fn kind(name: &str) -> Kind {
    if name == "output.weight" {
        Kind::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Kind::TokenEmbd
    } else if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"].iter().any(|p| name.contains(p)) {
        Kind::AttnV
    } else if name.contains("attn_k.weight") {
        Kind::AttnK
    } else if name.contains("attn_q.weight") {
        Kind::Other
    } else if name.contains("attn_output.weight") {
        Kind::AttnOutput
    } else if name.contains("ffn_up") || name.contains("ffn_gate") {
        Kind::Other
    } else if name.contains("ffn_down") {
        Kind::FfnDown
    } else {
        Kind::Other
    }
}

/// Parts of names the reference never quantizes (small or precision-critical tensors).
const KEEP_CONTAINING: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Whether the reference quantizes tensor `name` of `n_dims` dimensions at all: matrices (2 or
/// 3 dimensions) named `*weight`, except norms and the tensors of [`KEEP_CONTAINING`].
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !KEEP_CONTAINING.iter().any(|p| name.contains(p))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// The reference's "use more bits" layers: the first and last eighth, and every third between.
pub fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// Where in the model a sensitive tensor is, for the rules of [`SENSITIVE`].
#[derive(Clone, Copy, Debug)]
enum Place {
    /// Every one.
    All,
    /// [`more_bits`] layers.
    MoreBits,
    /// The first `n_layer / d` layers.
    FirstPart(usize),
    /// The first `n` tensors of the kind, counted in file order.
    FirstN(usize),
}

/// The mixes' extra bits for attention V and FFN down (non-Falcon models; the Falcon variants
/// and the 8-expert overrides are in [`choose`]): (mix, kind, where, type). The first matching
/// line wins; a tensor with none keeps the mix's default type. A line with `Place::All` after
/// a narrower one of the same mix and kind gives the type for the rest.
const SENSITIVE: &[(&str, Kind, Place, WeightType)] = &[
    ("Q2_K", Kind::AttnV, Place::All, Q3_K), // Q4_K when n_gqa >= 4: see `choose`
    ("Q3_K_M", Kind::AttnV, Place::FirstN(2), Q5_K),
    ("Q3_K_M", Kind::AttnV, Place::All, Q4_K),
    ("Q3_K_L", Kind::AttnV, Place::All, Q5_K),
    ("Q4_K_M", Kind::AttnV, Place::MoreBits, Q6_K),
    ("Q5_K_M", Kind::AttnV, Place::MoreBits, Q6_K),
    ("Q4_K_S", Kind::AttnV, Place::FirstN(4), Q5_K),
    // (the IQ4 mixes' attention V: Q5_K when n_gqa >= 4, see `choose`)
    ("Q2_K", Kind::FfnDown, Place::All, Q3_K),
    ("Q3_K_M", Kind::FfnDown, Place::FirstPart(16), Q5_K),
    ("Q3_K_M", Kind::FfnDown, Place::All, Q4_K),
    ("Q3_K_L", Kind::FfnDown, Place::All, Q5_K),
    ("Q4_K_M", Kind::FfnDown, Place::MoreBits, Q6_K),
    ("Q5_K_M", Kind::FfnDown, Place::MoreBits, Q6_K),
    ("Q4_K_S", Kind::FfnDown, Place::FirstPart(8), Q5_K),
    // (without an importance matrix, which these mixes never take here)
    ("IQ4_NL", Kind::FfnDown, Place::FirstPart(8), Q5_K),
    ("IQ4_XS", Kind::FfnDown, Place::FirstPart(8), Q5_K),
    ("Q2_K", Kind::AttnOutput, Place::All, Q3_K),
    ("Q3_K_M", Kind::AttnOutput, Place::All, Q4_K),
    ("Q3_K_L", Kind::AttnOutput, Place::All, Q5_K),
];

/// The type the reference gives to a tensor of `cols` columns of a `default` type, when its
/// block size does not divide `cols`: the nearest 32-block type, or F16.
pub fn fallback(default: WeightType, cols: u64) -> WeightType {
    if cols.is_multiple_of(default.block_size() as u64) {
        return default;
    }
    let t = match default {
        Q2_K | Q3_K => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        IQ4_XS => IQ4_NL,
        t => t,
    };
    if cols.is_multiple_of(t.block_size() as u64) {
        t
    } else {
        F16
    }
}

/// One tensor as the choice sees it.
#[derive(Clone, Debug)]
pub struct TensorIn<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub ty: WeightType,
}

/// The layer of `blk.N.*`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The output type of every tensor of `tensors` (in the order the reference processes them: see
/// [`reference_order`]) for `mix`.
pub fn choose(mix: &Mix, facts: &ModelFacts, tensors: &[TensorIn]) -> Vec<WeightType> {
    let falcon = facts.arch == "falcon";
    let n_attn_v = tensors.iter().filter(|t| kind(t.name) == Kind::AttnV).count();
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !allows_quantization(t.name, t.dims.len()) {
            out.push(t.ty);
            continue;
        }
        let k = kind(t.name);
        let cols = t.dims[0];
        let mut ty = mix.default;
        // The tensor's position among its kind: by counting, or (MoE, whose experts' tensors
        // are not in layer order) from its name.
        let index = |counter: usize| if facts.n_expert > 1 { layer_of(t.name).unwrap_or(counter) } else { counter };
        let place_matches = |p: Place, i: usize, n: usize| match p {
            Place::All => true,
            Place::MoreBits => more_bits(i, n),
            Place::FirstPart(d) => i < n / d,
            Place::FirstN(m) => i < m,
        };
        let sensitive = |k: Kind, i: usize, n: usize| {
            SENSITIVE.iter().find(|(m, kk, p, _)| *m == mix.name && *kk == k && place_matches(*p, i, n)).map(|l| l.3)
        };
        if k == Kind::Output || (facts.tied_embeddings && k == Kind::TokenEmbd) {
            if falcon || !cols.is_multiple_of(ty.block_size() as u64) {
                ty = Q8_0;
            } else if ty != Q8_0 {
                ty = Q6_K;
            }
        } else if k == Kind::AttnV {
            if let Some(s) = sensitive(k, i_attn_v, n_attn_v) {
                ty = s;
            }
            if mix.name == "Q2_K" && facts.n_gqa >= 4 {
                ty = Q4_K;
            }
            if matches!(mix.name, "IQ4_NL" | "IQ4_XS") && facts.n_gqa >= 4 {
                ty = Q5_K;
            }
            if facts.is_70b && matches!(ty, Q3_K | Q4_K) {
                ty = Q5_K;
            }
            if facts.n_expert == 8 {
                ty = Q8_0;
            }
            i_attn_v += 1;
        } else if k == Kind::AttnK {
            if facts.n_expert == 8 {
                ty = Q8_0;
            }
        } else if k == Kind::FfnDown {
            let (i, n) = (index(i_ffn_down), facts.n_layer);
            ty = match (falcon, mix.name) {
                (true, "Q3_K_M") if i >= n / 16 && !more_bits(i, n) => Q3_K,
                (true, "Q3_K_L") => Q4_K,
                (true, "Q4_K_M") if i < n / 16 => Q6_K,
                (true, "Q4_K_M") if more_bits(i, n) => Q5_K,
                (true, "Q4_K_M" | "Q4_K_S") => ty,
                _ => sensitive(k, i, n).unwrap_or(ty),
            };
            i_ffn_down += 1;
        } else if k == Kind::AttnOutput {
            if facts.n_expert == 8 && !falcon {
                if matches!(mix.name, "Q2_K" | "Q3_K_S" | "Q3_K_M" | "Q4_K_S" | "Q4_K_M" | "IQ4_NL" | "IQ4_XS") {
                    ty = Q5_K;
                }
            } else if falcon {
                if mix.name == "Q3_K_L" {
                    ty = Q4_K;
                }
            } else if let Some(s) = sensitive(k, 0, 1) {
                ty = s;
            }
        }
        out.push(fallback(ty, cols));
    }
    out
}

/// The order in which the reference quantizer processes (and writes) tensors: those outside
/// the `blk.N.` layers first, then layer by layer, by name within each.
pub fn reference_order(names: &[&str]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..names.len()).collect();
    let key = |n: &str| (layer_of(n).map(|l| l as i64).unwrap_or(-1), n.to_string());
    idx.sort_by_key(|&i| key(names[i]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n_layer: usize, n_gqa: usize) -> ModelFacts {
        ModelFacts { arch: "llama".into(), n_layer, n_gqa, n_expert: 0, is_70b: false, tied_embeddings: false }
    }

    #[test]
    fn more_bits_layers_are_the_references() {
        // 32 layers: 0..4, 28..32, and 4 + 3k + 2.
        let v: Vec<usize> = (0..32).filter(|&i| more_bits(i, 32)).collect();
        assert_eq!(v, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        let v: Vec<usize> = (0..4).filter(|&i| more_bits(i, 4)).collect();
        assert_eq!(v, [2, 3]);
    }

    #[test]
    fn names_aliases_and_unknown_types() {
        assert_eq!(Mix::parse("q4_k_m").unwrap().file_type, 15);
        assert_eq!(Mix::parse("Q4_K").unwrap().name, "Q4_K_M");
        let e = Mix::parse("Q7_K\x1b").unwrap_err().to_string();
        assert!(e.starts_with("--quantize Q7_K\\x1b: unknown type; one of Q4_0, "), "{e}");
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fallback(Q4_K, 4096), Q4_K);
        assert_eq!(fallback(Q4_K, 96), Q5_0);
        assert_eq!(fallback(Q6_K, 96), Q8_0);
        assert_eq!(fallback(Q3_K, 96), Q4_0);
        assert_eq!(fallback(Q5_K, 100), F16);
        assert_eq!(fallback(Q8_0, 100), F16);
    }

    #[test]
    fn tied_embedding_gets_the_output_type() {
        let dims = [256u64, 1000];
        let t = [TensorIn { name: "token_embd.weight", dims: &dims, ty: F16 }];
        let mix = Mix::parse("Q4_0").unwrap();
        assert_eq!(choose(&mix, &facts(4, 1), &t), [Q4_0]);
        let tied = ModelFacts { tied_embeddings: true, ..facts(4, 1) };
        assert_eq!(choose(&mix, &tied, &t), [Q6_K]);
    }

    #[test]
    fn order_is_non_layer_tensors_then_layers_by_number() {
        let names = ["token_embd.weight", "blk.10.a", "blk.2.b", "blk.2.a", "output.weight", "output_norm.weight"];
        let o: Vec<&str> = reference_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(o, ["output.weight", "output_norm.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }
}
