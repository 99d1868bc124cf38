//! Gemma2ForCausalLM and Gemma3ForCausalLM (text only): the `gemma2.*`/`gemma3.*` metadata in
//! the reference converter's order, with the defaults of transformers' Gemma configs (which the
//! converter reads through), and the settings it would drop or the runtime would compute
//! otherwise, refused. The tensors: norms stored as (1 + w) (Gemma's RMSNorm multiplies by it),
//! the post-attention and pre/post-FFN norms, no `lm_head` (tied to the embeddings).

use super::config::{rope_theta, Arch, Config};
use super::vocab::Meta;
use super::Json;
use anyhow::bail;
use llamafile_format::escape::escape;
use llamafile_format::gguf::MetaValue;

/// Head size of transformers' Gemma configs when config.json gives none.
pub const DEFAULT_HEAD_DIM: usize = 256;

/// The defaults of transformers' Gemma2Config / Gemma3TextConfig.
struct Defaults {
    context: u64,
    window: u64,
    rope_theta: f64,
    /// Every `swa_pattern`-th layer attends globally (as the runtime lays them out).
    swa_pattern: usize,
    /// The layer count whose attention scale is 1/sqrt(hidden / heads) in the runtime (27B).
    hidden_scaled_layers: usize,
}

fn defaults(arch: Arch) -> Defaults {
    match arch {
        Arch::Gemma2 => {
            Defaults { context: 8192, window: 4096, rope_theta: 10000.0, swa_pattern: 2, hidden_scaled_layers: 46 }
        }
        _ => Defaults {
            context: 131072,
            window: 4096,
            rope_theta: 1_000_000.0,
            swa_pattern: 6,
            hidden_scaled_layers: 62,
        },
    }
}

const DEFAULT_RMS_EPS: f64 = 1e-6;
const GEMMA2_ATTN_SOFTCAP: f64 = 50.0;
const GEMMA2_FINAL_SOFTCAP: f64 = 30.0;
const GEMMA3_LOCAL_ROPE_THETA: f64 = 10000.0;

fn present<'a>(j: &'a Json, k: &str) -> Option<&'a Json> {
    j.get(k).filter(|v| !v.is_null())
}

fn num(j: &Json, k: &str) -> anyhow::Result<Option<f64>> {
    match present(j, k) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => bail!("config.json: '{k}' is {}, not a number", escape(&v.to_string())),
        },
    }
}

fn count(j: &Json, k: &str, default: u64) -> anyhow::Result<u64> {
    match present(j, k) {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 && n < (1 << 32) => Ok(n),
            _ => bail!("config.json: '{k}' is {}, not a positive integer", escape(&v.to_string())),
        },
    }
}

/// Refuse what the conversion would drop or the runtime would compute otherwise: a query scale
/// other than the runtime's, a layer pattern other than its, Gemma 2 RoPE settings the converter
/// does not write, a RoPE scaling other than linear, Gemma 3's attention soft-capping (the
/// converter fails on it), no SentencePiece model.
pub fn check(dir: &std::path::Path, cfg: &Config) -> anyhow::Result<()> {
    let j = &cfg.json;
    let d = defaults(cfg.arch);
    count(j, "max_position_embeddings", d.context)?;
    count(j, "sliding_window", d.window)?;
    if !dir.join("tokenizer.model").is_file() {
        bail!("{}: missing tokenizer.model (pack --hf reads Gemma's SentencePiece model)", escape_dir(dir));
    }
    if let Some(s) = num(j, "query_pre_attn_scalar")? {
        let want = if cfg.n_layer == d.hidden_scaled_layers { cfg.n_embd / cfg.n_head } else { cfg.head_dim };
        if s != want as f64 {
            bail!("config.json: query_pre_attn_scalar {s} is not supported (the runtime scales queries by 1/sqrt({want}) for this shape)");
        }
    }
    if let Some(types) = present(j, "layer_types") {
        let want: Vec<&str> = (0..cfg.n_layer)
            .map(|i| if (i + 1) % d.swa_pattern == 0 { "full_attention" } else { "sliding_attention" })
            .collect();
        let got: Vec<&str> =
            types.as_array().map(|a| a.iter().filter_map(|t| t.as_str()).collect()).unwrap_or_default();
        if got != want {
            bail!(
                "config.json: layer_types is not the {} pattern (a global layer every {} layers) the runtime implements",
                cfg.hf_arch,
                d.swa_pattern
            );
        }
    }
    if let Some(p) = present(j, "sliding_window_pattern") {
        if p.as_u64() != Some(d.swa_pattern as u64) {
            bail!(
                "config.json: sliding_window_pattern {} is not supported (the runtime has a global layer every {})",
                escape(&p.to_string()),
                d.swa_pattern
            );
        }
    }
    if let Some(r) = present(j, "rope_scaling").or_else(|| present(j, "rope_parameters")) {
        let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        match (cfg.arch, ty) {
            (_, "default") => {}
            (Arch::Gemma3, "linear") if r.get("factor").and_then(|f| f.as_f64()).is_some_and(|f| f > 0.0) => {}
            _ => bail!(
                "config.json: rope_scaling type '{}' is not supported by pack --hf for {}",
                escape(ty),
                cfg.hf_arch
            ),
        }
    }
    match cfg.arch {
        Arch::Gemma2 => {
            if let Some(t) = rope_theta(j).filter(|t| *t != d.rope_theta) {
                bail!("config.json: rope_theta {t} is not supported for Gemma 2 (the converter does not write it; 10000 is used)");
            }
            for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if j.get(k).is_some_and(|v| v.is_null()) {
                    bail!("config.json: '{k}' is null (the Gemma 2 conversion needs a value)");
                }
            }
        }
        _ => {
            if present(j, "attn_logit_softcapping").is_some() {
                bail!("config.json: attn_logit_softcapping is not supported for Gemma 3 (the converter refuses it)");
            }
        }
    }
    Ok(())
}

fn escape_dir(dir: &std::path::Path) -> String {
    llamafile_format::escape::escape_path(dir).to_string()
}

/// `gemma2.*`/`gemma3.*` and `general.file_type`, in the converter's order.
pub fn model_meta(cfg: &Config, file_type: u32) -> Meta {
    let j = &cfg.json;
    let d = defaults(cfg.arch);
    let a = cfg.arch.gguf_name();
    let mut m = Meta::new();
    let mut put = |k: &str, v: MetaValue| m.push((format!("{a}.{k}"), v));
    let u = |v: u64| MetaValue::U32(v as u32);
    let f = |k: &str, d: f64| MetaValue::F32(num(j, k).ok().flatten().unwrap_or(d) as f32);
    // `check` has refused a value that is not a positive integer.
    let ctx = count(j, "max_position_embeddings", d.context).unwrap_or(d.context);
    let window = count(j, "sliding_window", d.window).unwrap_or(d.window);
    let head_dim = u(cfg.head_dim as u64);
    if cfg.arch == Arch::Gemma2 {
        put("context_length", u(ctx));
        put("embedding_length", u(cfg.n_embd as u64));
        put("block_count", u(cfg.n_layer as u64));
        put("feed_forward_length", u(cfg.n_ff as u64));
        put("attention.head_count", u(cfg.n_head as u64));
        put("attention.head_count_kv", u(cfg.n_head_kv as u64));
        put("attention.layer_norm_rms_epsilon", f("rms_norm_eps", DEFAULT_RMS_EPS));
        put("attention.key_length", head_dim.clone());
        put("attention.value_length", head_dim);
        m.push(("general.file_type".into(), MetaValue::U32(file_type)));
        let mut put = |k: &str, v: MetaValue| m.push((format!("{a}.{k}"), v));
        put("attn_logit_softcapping", f("attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP));
        put("final_logit_softcapping", f("final_logit_softcapping", GEMMA2_FINAL_SOFTCAP));
        put("attention.sliding_window", u(window));
        return m;
    }
    put("block_count", u(cfg.n_layer as u64));
    put("context_length", u(ctx));
    put("embedding_length", u(cfg.n_embd as u64));
    put("feed_forward_length", u(cfg.n_ff as u64));
    put("attention.head_count", u(cfg.n_head as u64));
    put("attention.head_count_kv", u(cfg.n_head_kv as u64));
    if let Some(factor) = present(j, "rope_scaling").and_then(|r| r.get("factor")).and_then(|f| f.as_f64()) {
        put("rope.scaling.type", MetaValue::String("linear".into()));
        put("rope.scaling.factor", MetaValue::F32(factor as f32));
    }
    put("rope.freq_base", MetaValue::F32(rope_theta(j).unwrap_or(d.rope_theta) as f32));
    put("rope.freq_base_swa", f("rope_local_base_freq", GEMMA3_LOCAL_ROPE_THETA));
    put("attention.layer_norm_rms_epsilon", f("rms_norm_eps", DEFAULT_RMS_EPS));
    put("attention.key_length", head_dim.clone());
    put("attention.value_length", head_dim);
    m.push(("general.file_type".into(), MetaValue::U32(file_type)));
    let mut put = |k: &str, v: MetaValue| m.push((format!("{a}.{k}"), v));
    if let Some(c) = num(j, "final_logit_softcapping").ok().flatten().filter(|c| *c != 0.0) {
        put("final_logit_softcapping", MetaValue::F32(c as f32));
    }
    put("attention.sliding_window", u(window));
    m
}
