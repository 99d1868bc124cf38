//! Log-probabilities of tokens: the model's log-softmax over the raw logits, before any
//! sampling modifier (temperature, penalties, grammar), as OpenAI's API reports them. A
//! generation computes them only when asked (`GenerateOptions::logprobs`): each costs a pass
//! over the vocabulary.

/// Most alternatives a generated token can report (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token, as a generation reports it (`Output::Token`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// log p(id) under the model.
    pub logprob: f32,
    /// The likeliest tokens at this step with their log-probabilities, likeliest first (ties by
    /// id); as many as were asked for.
    pub top: Vec<(u32, f32)>,
    /// Byte offset of the token's text in its choice's text.
    pub offset: usize,
}

/// log(sum(exp(logits))), in f64 (a 150k-token vocabulary loses digits in f32).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// log p(id) under `logits`.
pub fn log_prob(logits: &[f32], id: u32) -> f64 {
    logits[id as usize] as f64 - log_sum_exp(logits)
}

/// The `k` largest logits, largest first (ties by id), in one pass: `k` is small (at most
/// `MAX_TOP_LOGPROBS` here), so a sorted insertion beats sorting the vocabulary.
pub fn top_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if top.len() == k && l <= top[k - 1].1 {
            continue;
        }
        // after the last that is at least as large: ties keep the lower id first
        let at = top.partition_point(|&(_, v)| v >= l);
        top.insert(at, (i as u32, l));
        top.truncate(k);
    }
    top
}

/// The report for token `id` drawn from `logits` (the raw ones), with `n_top` alternatives.
pub fn token_logprob(logits: &[f32], id: u32, n_top: usize, offset: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |l: f32| (l as f64 - lse) as f32;
    TokenLogprob {
        id,
        logprob: lp(logits[id as usize]),
        top: top_logits(logits, n_top).into_iter().map(|(t, l)| (t, lp(l))).collect(),
        offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_known_values() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY, 0.0];
        // probabilities 1/5, 3/5, 0, 1/5
        assert!((log_prob(&logits, 1) - (0.6f64).ln()).abs() < 1e-6);
        assert!((log_prob(&logits, 0) - (0.2f64).ln()).abs() < 1e-6);
        assert_eq!(log_prob(&logits, 2), f64::NEG_INFINITY);
        let t = token_logprob(&logits, 3, 3, 7);
        assert_eq!(t.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 0, 3], "sorted, ties by id");
        assert!((t.logprob - (0.2f32).ln()).abs() < 1e-6);
        assert_eq!(t.offset, 7);
        let mass: f32 = t.top.iter().map(|x| x.1.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "{mass}");
    }

    #[test]
    fn top_logits_matches_a_full_sort() {
        let logits: Vec<f32> = (0..1000u32).map(|i| ((i * 7919) % 1009) as f32 * 0.01 - ((i % 3) as f32)).collect();
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, l)| (i as u32, *l)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [0, 1, 5, 20] {
            assert_eq!(top_logits(&logits, k), all[..k].to_vec(), "k = {k}");
        }
        assert_eq!(top_logits(&[1.0, 2.0], 5).len(), 2, "no more than the vocabulary");
    }
}
