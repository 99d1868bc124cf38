//! config.json: the architecture and the hyperparameters, turned into the GGUF metadata the
//! reference converter writes for it (`general.*`, `<arch>.*`, in its order).

use super::vocab::Meta;
use super::Json;
use anyhow::{bail, Context};
use llamafile_format::escape::escape;
use llamafile_format::gguf::MetaValue;
use std::path::Path;

/// The architectures `pack --hf` converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LlamaForCausalLM and MistralForCausalLM: GGUF `llama`, q/k rows permuted.
    Llama,
    /// Qwen2ForCausalLM: GGUF `qwen2`, q/k/v biases, no permutation.
    Qwen2,
    /// Qwen3ForCausalLM: GGUF `qwen3`, q/k norms, an explicit head size.
    Qwen3,
    /// Phi3ForCausalLM: GGUF `phi3`, q/k/v and gate/up kept fused, partial rotary, LongRoPE.
    Phi3,
    /// Gemma2ForCausalLM: GGUF `gemma2`, norms stored as (1 + w), soft-capping, sliding window.
    Gemma2,
    /// Gemma3ForCausalLM (text only): GGUF `gemma3`, Gemma 2's layout plus q/k norms.
    Gemma3,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The hyperparameters the conversion needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub hf_arch: String,
    pub json: Json,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// `rope_scaling` of type llama3: the rope_freqs factors tensor is generated.
    pub llama3_rope: Option<Llama3Rope>,
    /// Phi-3's settings (rotary dimensions, original context, LongRoPE factors).
    pub phi3: Option<super::phi3::Phi3>,
}

#[derive(Clone, Copy, Debug)]
pub struct Llama3Rope {
    pub base: f64,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

pub(super) fn uint(j: &Json, keys: &[&str]) -> anyhow::Result<usize> {
    for k in keys {
        if let Some(v) = j.get(*k) {
            return v
                .as_u64()
                .filter(|&v| v > 0 && v < (1 << 31))
                .map(|v| v as usize)
                .with_context(|| format!("config.json: '{k}' is {}, not a positive integer", escape(&v.to_string())));
        }
    }
    bail!("config.json: missing '{}'", keys[0])
}

impl Config {
    pub fn read(dir: &Path) -> anyhow::Result<Config> {
        let path = dir.join("config.json");
        if !path.is_file() {
            bail!("{}: missing config.json", llamafile_format::escape::escape_path(dir));
        }
        let json = super::vocab::read_json(&path)?;
        let Some(archs) = json.get("architectures").and_then(|a| a.as_array()) else {
            bail!("config.json: missing 'architectures'");
        };
        let hf_arch = archs.first().and_then(|a| a.as_str()).unwrap_or("").to_string();
        let arch = match hf_arch.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "Phi3ForCausalLM" => Arch::Phi3,
            "Gemma2ForCausalLM" => Arch::Gemma2,
            "Gemma3ForCausalLM" => Arch::Gemma3,
            other => bail!(
                "config.json: architecture '{}' is not supported by pack --hf (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM are)",
                escape(other)
            ),
        };
        let n_layer = uint(&json, &["num_hidden_layers"])?;
        let n_embd = uint(&json, &["hidden_size"])?;
        let n_ff = uint(&json, &["intermediate_size"])?;
        let n_head = uint(&json, &["num_attention_heads"])?;
        let n_head_kv = if json.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            uint(&json, &["num_key_value_heads"])?
        } else {
            n_head
        };
        let head_dim = if json.get("head_dim").is_some_and(|v| !v.is_null()) {
            uint(&json, &["head_dim"])?
        } else if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
            super::gemma::DEFAULT_HEAD_DIM
        } else {
            n_embd / n_head
        };
        if n_head % n_head_kv != 0 {
            bail!("config.json: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}");
        }
        if head_dim % 2 != 0 || head_dim == 0 {
            bail!("config.json: the head size {head_dim} is not even");
        }
        let vocab_size = uint(&json, &["vocab_size"])?;
        let mut llama3_rope = None;
        let phi3 = if arch == Arch::Phi3 { Some(super::phi3::Phi3::read(&json, n_embd, n_head)?) } else { None };
        let rope = json.get("rope_scaling").or_else(|| json.get("rope_parameters")).filter(|r| !r.is_null());
        if let Some(r) = rope {
            let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
            let f = |k: &str, d: f64| r.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
            match ty {
                // Phi-3's scaling is read by phi3::Phi3::read, Gemma's checked by gemma::check.
                _ if matches!(arch, Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3) => {}
                "default" => {}
                "llama3" if arch == Arch::Llama => {
                    llama3_rope = Some(Llama3Rope {
                        base: rope_theta(&json).unwrap_or(10000.0),
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_max_position_embeddings: f("original_max_position_embeddings", 8192.0),
                    })
                }
                "linear" => {}
                other => bail!("config.json: rope_scaling type '{}' is not supported by pack --hf", escape(other)),
            }
        }
        Ok(Config {
            arch,
            hf_arch,
            json,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size,
            llama3_rope,
            phi3,
        })
    }

    /// `<arch>.*` and `general.file_type`, as the reference's `set_gguf_parameters` writes them.
    pub fn model_meta(&self, file_type: u32) -> Meta {
        if let Some(p) = &self.phi3 {
            return p.model_meta(self, file_type);
        }
        if matches!(self.arch, Arch::Gemma2 | Arch::Gemma3) {
            return super::gemma::model_meta(self, file_type);
        }
        let a = self.arch.gguf_name();
        let j = &self.json;
        let mut m = Meta::new();
        let mut put = |k: &str, v: MetaValue| m.push((format!("{a}.{k}"), v));
        put("block_count", MetaValue::U32(self.n_layer as u32));
        let ctx = [
            "max_position_embeddings",
            "n_ctx",
            "n_positions",
            "max_length",
            "max_sequence_length",
            "model_max_length",
        ]
        .iter()
        .find_map(|k| j.get(*k).and_then(|v| v.as_u64()));
        if let Some(c) = ctx {
            put("context_length", MetaValue::U32(c as u32));
        }
        put("embedding_length", MetaValue::U32(self.n_embd as u32));
        put("feed_forward_length", MetaValue::U32(self.n_ff as u32));
        put("attention.head_count", MetaValue::U32(self.n_head as u32));
        put("attention.head_count_kv", MetaValue::U32(self.n_head_kv as u32));
        if let Some(r) = j.get("rope_scaling").filter(|r| !r.is_null()) {
            let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()).unwrap_or("");
            if let (Some(factor), "linear") = (r.get("factor").and_then(|f| f.as_f64()), ty) {
                put("rope.scaling.type", MetaValue::String("linear".into()));
                put("rope.scaling.factor", MetaValue::F32(factor as f32));
            }
        }
        if let Some(theta) = rope_theta(j) {
            put("rope.freq_base", MetaValue::F32(theta as f32));
        }
        if let Some(eps) = j.get("rms_norm_eps").and_then(|v| v.as_f64()) {
            put("attention.layer_norm_rms_epsilon", MetaValue::F32(eps as f32));
        }
        // The reference reads the config through transformers, whose Llama, Mistral and Qwen3
        // configs always have a head_dim (Qwen2's only when config.json gives one).
        if self.arch != Arch::Qwen2 || j.get("head_dim").is_some_and(|v| !v.is_null()) {
            put("attention.key_length", MetaValue::U32(self.head_dim as u32));
            put("attention.value_length", MetaValue::U32(self.head_dim as u32));
        }
        m.push(("general.file_type".into(), MetaValue::U32(file_type)));
        if self.arch == Arch::Llama {
            m.push((format!("{a}.vocab_size"), MetaValue::U32(self.vocab_size as u32)));
            m.push((format!("{a}.rope.dimension_count"), MetaValue::U32(self.head_dim as u32)));
        }
        m
    }
}

pub fn rope_theta(j: &Json) -> Option<f64> {
    j.get("rope_theta")
        .or_else(|| j.get("rope_parameters")?.get("rope_theta"))
        .or_else(|| j.get("rotary_emb_base"))
        .and_then(|v| v.as_f64())
}

/// `general.*` before the model's keys: type, the sampling defaults of generation_config.json,
/// then the descriptive keys of the model card and the model id ([`super::card`]).
pub fn general_meta(dir: &Path, config: &Json, total_params: u64) -> anyhow::Result<Meta> {
    let mut m = Meta::new();
    m.push(("general.type".into(), MetaValue::String("model".into())));
    let gen_path = dir.join("generation_config.json");
    // An unreadable generation_config.json is ignored, as the reference ignores it.
    let gen = if gen_path.is_file() { super::vocab::read_json(&gen_path).ok() } else { None };
    if let Some(g) = gen {
        let i = |k: &str| g.get(k).and_then(|v| v.as_i64()).map(|v| MetaValue::I32(v as i32));
        let f = |k: &str| g.get(k).and_then(|v| v.as_f64()).map(|v| MetaValue::F32(v as f32));
        let entries = [
            ("sequence", g.get("sequence").and_then(|v| v.as_str()).map(|s| MetaValue::String(s.into()))),
            ("top_k", i("top_k")),
            ("top_p", f("top_p")),
            ("min_p", f("min_p")),
            ("xtc_probability", f("xtc_probability")),
            ("xtc_threshold", f("xtc_threshold")),
            ("temp", f("temperature")),
            ("penalty_last_n", i("penalty_last_n")),
            ("penalty_repeat", f("penalty_repeat").or_else(|| f("repetition_penalty"))),
            ("mirostat", i("mirostat")),
            ("mirostat_tau", f("mirostat_tau")),
            ("mirostat_eta", f("mirostat_eta")),
        ];
        for (k, v) in entries {
            if let Some(v) = v {
                m.push((format!("general.sampling.{k}"), v));
            }
        }
    }
    m.extend(super::card::authorship_meta(dir, config, total_params, &size_label(total_params))?);
    Ok(m)
}

/// A parameter count as the reference labels it: "4.2M", "7.2B", at least two digits.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_as_the_reference() {
        assert_eq!(size_label(4_200_000), "4.2M");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(135_000), "135K");
    }
}
