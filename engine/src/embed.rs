//! Embeddings: the final hidden states (after the output norm, before the output projection)
//! of token sequences, pooled and normalized as the reference engine's `llama-embedding` does.
//!
//! - `Session::embed` packs several inputs into one batch (at most `n_batch` tokens) and runs it
//!   through the backends as independent sequences, each from position 0
//!   (`BackendState::forward_sequences`); an input longer than the batch runs alone, in chunks.
//!   The session's cache is overwritten: use a session that serves nothing else (the server
//!   keeps one for embeddings, apart from its chat slots).
//! - Pooling (`Pooling`) comes from the GGUF's `<arch>.pooling_type` (llama.cpp's numbers) or
//!   the caller; a model that declares none gets `none` (one vector per token), which is what the
//!   reference gives a decoder model.
//! - Normalization (`normalize`) is the reference's `--embd-normalize`.

use super::Session;
use crate::model::transformer::rmsnorm;
use crate::model::Model;
use anyhow::{bail, Result};

/// How the token vectors of one input become its embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// One vector per token.
    None,
    /// The mean of the token vectors.
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

/// The reference's default normalization (`--embd-normalize 2`, euclidean).
pub const DEFAULT_NORMALIZE: i32 = 2;

impl Pooling {
    /// `none`, `mean`, `cls`, `last` (as `--pooling` takes them).
    pub fn parse(s: &str) -> Result<Pooling> {
        Ok(match s {
            "none" => Pooling::None,
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "last" => Pooling::Last,
            "rank" => bail!("pooling 'rank' (reranking) is not supported; use none, mean, cls or last"),
            other => {
                bail!("unknown pooling '{}': use none, mean, cls or last", llamafile_format::escape::escape(other))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
    /// The pooling the model's GGUF declares (`<arch>.pooling_type`, llama.cpp's enum: 0 none,
    /// 1 mean, 2 cls, 3 last, 4 rank); `None` when it declares none (or -1, unspecified).
    /// Rank and unknown values are errors naming the key.
    pub fn from_model(model: &Model) -> Result<Option<Pooling>> {
        let key = format!("{}.pooling_type", model.hp.arch);
        let Some(v) = model.file.get(&key) else { return Ok(None) };
        let Some(n) = v.as_i64() else { bail!("{key} is a {}, not an integer", v.type_name()) };
        Ok(Some(match n {
            -1 => return Ok(None),
            0 => Pooling::None,
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            4 => bail!("{key} is 4 (rank): reranking models are not supported; choose a pooling with --pooling mean|cls|last|none"),
            n => bail!("{key} is {n}: not a known pooling type (0 none, 1 mean, 2 cls, 3 last)"),
        }))
    }
}

/// Scale `v` as the reference's `--embd-normalize N` does: -1 leaves it, 0 scales the largest
/// magnitude to 32760 (the int16 range), 1 taxicab, 2 euclidean, N > 2 the p-norm. A zero
/// vector stays zero. Norms are summed in f64 as the reference does.
pub fn normalize(v: &mut [f32], mode: i32) {
    let norm: f64 = match mode {
        m if m < 0 => return,
        0 => v.iter().fold(0f64, |a, x| a.max(x.abs() as f64)) / 32760.0,
        2 => v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt(),
        p => v.iter().map(|x| (x.abs() as f64).powi(p)).sum::<f64>().powf(1.0 / p as f64),
    };
    let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
    v.iter_mut().for_each(|x| *x *= scale);
}

/// Cosine similarity (f64 sums), for tests and tools that compare embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// One input's embedding being gathered, batch by batch.
struct Pooled {
    pooling: Pooling,
    len: usize,
    /// Pooled: [n_embd]; `None`: [len x n_embd].
    acc: Vec<f32>,
}

impl Pooled {
    fn new(pooling: Pooling, len: usize, e: usize) -> Pooled {
        let size = if pooling == Pooling::None { len * e } else { e };
        Pooled { pooling, len, acc: vec![0.0; size] }
    }
    /// Take the normalized hidden states `rows` [m x e] of tokens `at..at + m` of the input.
    fn add(&mut self, rows: &[f32], at: usize, e: usize) {
        let m = rows.len() / e;
        match self.pooling {
            Pooling::None => self.acc[at * e..(at + m) * e].copy_from_slice(rows),
            Pooling::Mean => {
                for r in rows.chunks_exact(e) {
                    self.acc.iter_mut().zip(r).for_each(|(a, x)| *a += x);
                }
            }
            Pooling::Cls if at == 0 => self.acc.copy_from_slice(&rows[..e]),
            Pooling::Last if at + m == self.len => self.acc.copy_from_slice(&rows[(m - 1) * e..]),
            Pooling::Cls | Pooling::Last => {}
        }
    }
    /// The vectors (one, or one per token), each normalized.
    fn finish(mut self, e: usize, norm: i32) -> Vec<Vec<f32>> {
        if self.pooling == Pooling::Mean {
            let inv = 1.0 / self.len as f32;
            self.acc.iter_mut().for_each(|a| *a *= inv);
        }
        self.acc
            .chunks_exact(e)
            .map(|v| {
                let mut v = v.to_vec();
                normalize(&mut v, norm);
                v
            })
            .collect()
    }
}

impl Session {
    /// The embeddings of `inputs` (token ids): for each input, one vector (pooled) or one per
    /// token (`Pooling::None`), each normalized with `normalize` (see `normalize`). Inputs are
    /// batched together up to `n_batch` tokens. The session's cache is overwritten (it is empty
    /// afterwards). Errors name the input: empty, longer than the context, a token outside the
    /// vocabulary.
    pub fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: i32) -> Result<Vec<Vec<Vec<f32>>>> {
        let inner = self.inner.clone();
        let (e, n_vocab, n_ctx, nb) = (inner.model.hp.n_embd, inner.model.hp.n_vocab, inner.n_ctx, inner.n_batch);
        for (i, input) in inputs.iter().enumerate() {
            if input.is_empty() {
                bail!("input {i} is empty");
            }
            if input.len() > n_ctx {
                bail!("input {i} is {} tokens, longer than the context of {n_ctx} tokens", input.len());
            }
            if let Some(bad) = input.iter().find(|t| **t as usize >= n_vocab) {
                bail!("input {i}: token id {bad} is outside the vocabulary ({n_vocab} tokens)");
            }
        }
        self.clear();
        let mut out: Vec<Option<Vec<Vec<f32>>>> = vec![None; inputs.len()];
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_tokens = 0;
        let r = (|| -> Result<()> {
            for (i, input) in inputs.iter().enumerate() {
                if input.len() > nb {
                    // Alone, in chunks at increasing positions (the chat path).
                    let mut p = Pooled::new(pooling, input.len(), e);
                    self.clear();
                    for (c, chunk) in input.chunks(nb).enumerate() {
                        self.forward_batch(chunk, None)?;
                        let rows = self.final_norm(chunk.len());
                        p.add(rows, c * nb, e);
                    }
                    self.clear();
                    out[i] = Some(p.finish(e, normalize));
                    continue;
                }
                if batch_tokens + input.len() > nb {
                    self.embed_batch(inputs, &batch, pooling, normalize, &mut out)?;
                    batch.clear();
                    batch_tokens = 0;
                }
                batch.push(i);
                batch_tokens += input.len();
            }
            if !batch.is_empty() {
                self.embed_batch(inputs, &batch, pooling, normalize, &mut out)?;
            }
            Ok(())
        })();
        self.clear();
        r?;
        Ok(out.into_iter().map(|v| v.expect("every input was embedded")).collect())
    }

    /// Inputs `which` (at most `n_batch` tokens together) through the backends as one batch of
    /// independent sequences.
    fn embed_batch(
        &mut self,
        inputs: &[Vec<u32>],
        which: &[usize],
        pooling: Pooling,
        norm: i32,
        out: &mut [Option<Vec<Vec<f32>>>],
    ) -> Result<()> {
        let inner = self.inner.clone();
        let e = inner.model.hp.n_embd;
        let lens: Vec<usize> = which.iter().map(|&i| inputs[i].len()).collect();
        let total: usize = lens.iter().sum();
        let mut t = 0;
        for &i in which {
            for &id in &inputs[i] {
                inner.model.embed(id, &mut self.x[t * e..(t + 1) * e])?;
                t += 1;
            }
        }
        let x = &mut self.x[..total * e];
        let states = &mut self.states;
        inner.pool.install(|| -> Result<()> {
            for s in states.iter_mut() {
                s.forward_sequences(x, &lens)?;
            }
            Ok(())
        })?;
        let rows = self.final_norm(total);
        let mut first = 0;
        for (&i, &len) in which.iter().zip(&lens) {
            let mut p = Pooled::new(pooling, len, e);
            p.add(&rows[first * e..(first + len) * e], 0, e);
            out[i] = Some(p.finish(e, norm));
            first += len;
        }
        Ok(())
    }

    /// The output norm of the first `n` rows of the residual stream, in place: what the output
    /// projection would read, and the reference's embedding of each token.
    fn final_norm(&mut self, n: usize) -> &[f32] {
        let model = &self.inner.model;
        let e = model.hp.n_embd;
        for row in self.x[..n * e].chunks_exact_mut(e) {
            let src = row.to_vec();
            rmsnorm(row, &src, &model.output_norm, model.hp.rms_eps);
        }
        &self.x[..n * e]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_follows_the_reference() {
        let v = [3.0f32, -4.0, 0.0];
        let with = |m: i32| {
            let mut w = v;
            normalize(&mut w, m);
            w
        };
        assert_eq!(with(-1), v);
        let close = |got: [f32; 3], want: [f64; 3]| {
            assert!(
                got.iter().zip(want).all(|(g, w)| (*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0)),
                "{got:?} vs {want:?}"
            )
        };
        close(with(2), [0.6, -0.8, 0.0]);
        close(with(1), [3.0 / 7.0, -4.0 / 7.0, 0.0]);
        close(with(0), [3.0 * 32760.0 / 4.0, -32760.0, 0.0]);
        let p3 = (27f64 + 64.0).powf(1.0 / 3.0);
        close(with(3), [3.0 / p3, -4.0 / p3, 0.0]);
        let mut zero = [0f32; 4];
        normalize(&mut zero, 2);
        assert_eq!(zero, [0.0; 4], "a zero vector stays zero (no NaN)");
    }

    #[test]
    fn pooling_names_and_refusals() {
        for p in [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last] {
            assert_eq!(Pooling::parse(p.name()).unwrap(), p);
        }
        assert!(Pooling::parse("rank").unwrap_err().to_string().contains("not supported"));
        assert!(Pooling::parse("avg").unwrap_err().to_string().contains("unknown pooling 'avg'"));
    }

    use crate::{Engine, LoadOptions};

    fn tiny(file: &str, n_ctx: usize, n_batch: usize) -> Option<Engine> {
        let p = test_support::require_shared()?.join("models").join(file);
        let opts = LoadOptions { model: p, n_ctx: Some(n_ctx), n_threads: Some(2), ..Default::default() };
        Some(Engine::load_with_batch(&opts, n_batch).unwrap())
    }

    fn reference(file: &str) -> serde_json::Value {
        let p = test_support::root().join("tests/data/reference").join(file);
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    }

    /// Every text, every pooling, against the reference's `llama-embedding` on the same model
    /// (tokenized as it does: special tokens added and parsed), all texts in one batch.
    #[test]
    fn agrees_with_the_reference_on_the_tiny_models() {
        for file in ["tiny-mistral-q8_0.gguf", "tiny-mistral-f16.gguf"] {
            let Some(e) = tiny(file, 512, 512) else { return };
            let r = reference(&format!("embeddings-{}.json", file.trim_end_matches(".gguf")));
            let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
            let inputs: Vec<Vec<u32>> = texts.iter().map(|t| e.tokenizer().encode(t, true, true).unwrap()).collect();
            let mut s = e.new_session();
            for pooling in ["mean", "cls", "last"] {
                let want: Vec<Vec<f32>> = serde_json::from_value(r["embeddings"][pooling].clone()).unwrap();
                let got = s.embed(&inputs, Pooling::parse(pooling).unwrap(), DEFAULT_NORMALIZE).unwrap();
                assert_eq!(got.len(), texts.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.len(), 1, "one vector per input");
                    assert_eq!(g[0].len(), w.len(), "width");
                    let c = cosine(&g[0], w);
                    assert!(c >= 0.999, "{file} {pooling} text {i}: cosine {c}");
                    let norm: f64 = g[0].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-5, "euclidean normalization: {norm}");
                }
            }
        }
    }

    /// A batch of several inputs gives what each gives alone; an input longer than the batch
    /// (run in chunks) gives what it gives in one batch; `none` gives the per-token vectors
    /// whose mean, first and last are the pooled ones.
    #[test]
    fn batches_chunks_and_pooling_agree() {
        let Some(e) = tiny("tiny-mistral-q8_0.gguf", 256, 64) else { return };
        let inputs: Vec<Vec<u32>> = vec![
            vec![1, 415, 2936, 9060],
            (0..40).map(|i| 100 + i * 37).collect(),
            vec![1, 22557],
            (0..100).map(|i| 200 + i * 11).collect(), // over the batch of 64: chunks
        ];
        let mut s = e.new_session();
        for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::None] {
            let together = s.embed(&inputs, pooling, DEFAULT_NORMALIZE).unwrap();
            for (i, input) in inputs.iter().enumerate() {
                let alone = s.embed(std::slice::from_ref(input), pooling, DEFAULT_NORMALIZE).unwrap();
                assert_eq!(alone[0].len(), together[i].len());
                for (a, b) in alone[0].iter().zip(&together[i]) {
                    let c = cosine(a, b);
                    assert!(c > 0.99999, "{pooling:?} input {i}: batch vs alone cosine {c}");
                }
            }
        }
        // chunked (batch 64) against one batch (batch 128)
        let big = tiny("tiny-mistral-q8_0.gguf", 256, 128).unwrap();
        let a = s.embed(&inputs[3..], Pooling::Mean, 2).unwrap();
        let b = big.new_session().embed(&inputs[3..], Pooling::Mean, 2).unwrap();
        assert!(cosine(&a[0][0], &b[0][0]) > 0.9999, "chunks vs one batch");
        // pooled vectors from the per-token ones (unnormalized)
        let tokens = s.embed(&inputs[1..2], Pooling::None, -1).unwrap().remove(0);
        assert_eq!(tokens.len(), inputs[1].len());
        let mut mean = vec![0f32; e.n_embd()];
        for t in &tokens {
            mean.iter_mut().zip(t).for_each(|(m, x)| *m += x / tokens.len() as f32);
        }
        let mut pooled = |p| s.embed(&inputs[1..2], p, -1).unwrap().remove(0).remove(0);
        assert!(cosine(&pooled(Pooling::Mean), &mean) > 0.99999);
        assert_eq!(pooled(Pooling::Cls), tokens[0]);
        assert_eq!(&pooled(Pooling::Last), tokens.last().unwrap());
    }

    #[test]
    fn bad_inputs_are_named() {
        let Some(e) = tiny("tiny-mistral-q8_0.gguf", 32, 16) else { return };
        let mut s = e.new_session();
        let mut err = |inputs: Vec<Vec<u32>>| s.embed(&inputs, Pooling::Mean, 2).unwrap_err().to_string();
        assert_eq!(err(vec![vec![1], vec![]]), "input 1 is empty");
        assert_eq!(err(vec![vec![1; 33]]), "input 0 is 33 tokens, longer than the context of 32 tokens");
        assert!(
            err(vec![vec![1], vec![1, 99999999]]).starts_with("input 1: token id 99999999 is outside the vocabulary")
        );
        // the session still works, and chat after embeddings starts from an empty cache
        assert_eq!(s.embed(&[vec![1; 32]], Pooling::Last, 2).unwrap().len(), 1);
        assert_eq!(s.n_past(), 0);
    }

    #[test]
    fn pooling_from_the_gguf() {
        use llamafile_format::gguf::writer::tiny_model;
        use llamafile_format::gguf::{GgufFile, MetaValue};
        let with = |v: Option<MetaValue>| {
            let meta: Vec<(&str, MetaValue)> = v.into_iter().map(|v| ("llama.pooling_type", v)).collect();
            let m = Model::load(GgufFile::from_bytes("tiny.gguf", tiny_model(&meta, &[])).unwrap()).unwrap();
            Pooling::from_model(&m).map_err(|e| e.to_string())
        };
        assert_eq!(with(None), Ok(None));
        assert_eq!(with(Some(MetaValue::U32(1))), Ok(Some(Pooling::Mean)));
        assert_eq!(with(Some(MetaValue::U32(2))), Ok(Some(Pooling::Cls)));
        assert_eq!(with(Some(MetaValue::U32(3))), Ok(Some(Pooling::Last)));
        assert_eq!(with(Some(MetaValue::U32(0))), Ok(Some(Pooling::None)));
        assert_eq!(with(Some(MetaValue::I32(-1))), Ok(None));
        assert!(with(Some(MetaValue::U32(4))).unwrap_err().contains("llama.pooling_type is 4 (rank)"));
        assert!(with(Some(MetaValue::U32(9)))
            .unwrap_err()
            .contains("llama.pooling_type is 9: not a known pooling type"));
        assert!(with(Some(MetaValue::String("mean".into()))).unwrap_err().contains("llama.pooling_type is a string"));
    }
}
