//! Token sampling: repeat penalty, then greedy, or top-k -> top-p -> min-p -> temperature ->
//! a draw (llama.cpp's default chain order). The candidate buffer is allocated once per session.

/// The sampling chain's settings (llama.cpp's names and defaults).
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// SplitMix64: a tiny, well-known generator. Hand-written rather than the `rand` crate so that a
/// seed gives the same tokens whatever crate versions are resolved (rand's `StdRng` algorithm may
/// change between versions), with no new dependency for ten lines.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A restriction on the next token (grammar-constrained sampling). `mask` runs on the logits
/// before every other step of the chain, so the penalty, top-k, top-p and min-p see only the
/// tokens it allows; `accept` is told the token drawn.
pub trait TokenConstraint {
    /// Set the logits of the tokens that may not come next to negative infinity.
    fn mask(&mut self, logits: &mut [f32]) -> anyhow::Result<()>;
    fn accept(&mut self, token: u32) -> anyhow::Result<()>;
}

pub struct Sampler {
    cand: Vec<(u32, f32)>,
    rng: Rng,
}

/// Index of the largest value (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(n_vocab: usize) -> Sampler {
        Sampler { cand: Vec::with_capacity(n_vocab), rng: Rng::new(0) }
    }

    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Apply the repeat penalty in place: for each distinct token among `recent`, a positive logit
    /// is divided by `penalty`, a negative one multiplied (as the reference does).
    pub fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
        if penalty == 1.0 || recent.is_empty() {
            return;
        }
        // Each token at most once: mark visited by flipping through a second pass (no allocation):
        // tokens are few (repeat_last_n), so a quadratic scan over `recent` is cheap.
        for (i, &t) in recent.iter().enumerate() {
            if recent[..i].contains(&t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }

    /// Pick the next token from `logits` (modified in place by the penalty). `recent` are the
    /// tokens of the context, most recent last.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32], p: &SamplingParams) -> u32 {
        let last_n = p.repeat_last_n.min(recent.len());
        Self::apply_repeat_penalty(logits, &recent[recent.len() - last_n..], p.repeat_penalty);
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.cand;
        c.clear();
        // Tokens masked out (negative infinity) are never candidates, whatever the cut-offs keep.
        c.extend(logits.iter().enumerate().filter(|(_, l)| **l != f32::NEG_INFINITY).map(|(i, l)| (i as u32, *l)));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // top-k: keep the k largest, sorted.
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        // softmax over what is left (values become probabilities)
        softmax(c);
        // top-p: smallest prefix whose mass reaches p (at least one token).
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, (_, pr)) in c.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        // min-p: drop tokens below min_p times the best probability.
        if p.min_p > 0.0 && !c.is_empty() {
            let thr = c[0].1 * p.min_p;
            let keep = c.iter().take_while(|(_, pr)| *pr >= thr).count();
            c.truncate(keep.max(1));
        }
        // temperature on the survivors: p^(1/T) renormalised == softmax(logit / T).
        let inv_t = 1.0 / p.temperature;
        for (_, pr) in c.iter_mut() {
            *pr = pr.powf(inv_t);
        }
        let sum: f32 = c.iter().map(|(_, pr)| pr).sum();
        let mut r = self.rng.next_f64() as f32 * sum;
        for (id, pr) in c.iter() {
            if r < *pr {
                return *id;
            }
            r -= pr;
        }
        c.last().map(|(id, _)| *id).unwrap_or_else(|| argmax(logits))
    }
}

/// `SamplingParams::seed` value that means "draw a fresh seed each time" (`-s -1`, a request
/// without a seed): llama.cpp's `-1`, as the unsigned value it wraps to.
pub const RANDOM_SEED: u64 = u64::MAX;

/// Sampling settings as a user gives them, on the command line or in a request body: each
/// unset field takes the default. `resolve` is the one place where their ranges are checked,
/// for the command line and the server alike.
#[derive(serde::Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SamplingOptions {
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
}

/// A sampling setting out of its range: which one (the request field's name, as in
/// `SamplingOptions`) and what is wrong, without the name (the caller names the flag or field).
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfRange {
    pub field: &'static str,
    pub message: String,
}

/// The range of each setting. Every function returns the value as the engine takes it, or
/// what is wrong with it.
pub mod limits {
    fn finite(v: f32) -> Result<f32, String> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("must be a finite number, got {v}"))
        }
    }
    /// 0 (greedy) to 2, as OpenAI's API and llama.cpp's server take it.
    pub fn temperature(t: f32) -> Result<f32, String> {
        let t = finite(t)?;
        if (0.0..=2.0).contains(&t) {
            Ok(t)
        } else {
            Err(format!("must be between 0 and 2 (0 = greedy), got {t}"))
        }
    }
    /// Above 0, at most 1 (1 = off).
    pub fn top_p(p: f32) -> Result<f32, String> {
        let p = finite(p)?;
        if p > 0.0 && p <= 1.0 {
            Ok(p)
        } else {
            Err(format!("must be above 0 and at most 1 (off), got {p}"))
        }
    }
    /// 0 (off) to 1.
    pub fn min_p(p: f32) -> Result<f32, String> {
        let p = finite(p)?;
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(format!("must be between 0 (off) and 1, got {p}"))
        }
    }
    /// 0 (off) or more.
    pub fn top_k(k: i64) -> Result<usize, String> {
        usize::try_from(k).map_err(|_| format!("must be 0 (off) or more, got {k}"))
    }
    /// Above 0 (1 = off; below 1 favours repetition).
    pub fn repeat_penalty(r: f32) -> Result<f32, String> {
        let r = finite(r)?;
        if r > 0.0 {
            Ok(r)
        } else {
            Err(format!("must be above 0 (1 = off), got {r}"))
        }
    }
    /// 0 (off) or more.
    pub fn repeat_last_n(n: i64) -> Result<usize, String> {
        usize::try_from(n).map_err(|_| format!("must be 0 (off) or more, got {n}"))
    }
    /// -1 (a random seed) or 0 or more.
    pub fn seed(s: i64) -> Result<u64, String> {
        match s {
            -1 => Ok(super::RANDOM_SEED),
            s if s >= 0 => Ok(s as u64),
            s => Err(format!("must be -1 (random) or 0 or more, got {s}")),
        }
    }
}

impl SamplingOptions {
    /// Check every given setting and fill the others from `defaults`. The seed stays
    /// `RANDOM_SEED` when neither gives one: see [`fresh_seed`].
    pub fn resolve(&self, defaults: &SamplingParams) -> Result<SamplingParams, OutOfRange> {
        fn check<T, U>(
            field: &'static str,
            v: Option<T>,
            default: U,
            f: impl Fn(T) -> Result<U, String>,
        ) -> Result<U, OutOfRange> {
            match v {
                None => Ok(default),
                Some(v) => f(v).map_err(|message| OutOfRange { field, message }),
            }
        }
        Ok(SamplingParams {
            temperature: check("temperature", self.temperature, defaults.temperature, limits::temperature)?,
            top_k: check("top_k", self.top_k, defaults.top_k, limits::top_k)?,
            top_p: check("top_p", self.top_p, defaults.top_p, limits::top_p)?,
            min_p: check("min_p", self.min_p, defaults.min_p, limits::min_p)?,
            repeat_penalty: check(
                "repeat_penalty",
                self.repeat_penalty,
                defaults.repeat_penalty,
                limits::repeat_penalty,
            )?,
            repeat_last_n: check("repeat_last_n", self.repeat_last_n, defaults.repeat_last_n, limits::repeat_last_n)?,
            seed: check("seed", self.seed, defaults.seed, limits::seed)?,
        })
    }
}

/// The seed of choice number `choice` of a request with `seed` (`n` > 1): the first choice
/// keeps the request's seed (a request for one choice draws as before), the others get seeds
/// mixed from it, distinct and reproducible.
pub fn choice_seed(seed: u64, choice: usize) -> u64 {
    if choice == 0 {
        return seed;
    }
    Rng::new(seed ^ (choice as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// `seed`, or a fresh random one when it is `RANDOM_SEED`. `std`'s `RandomState` is seeded
/// from the OS once per process and perturbed per instance: enough here, without a `rand`
/// dependency.
pub fn fresh_seed(seed: u64) -> u64 {
    if seed != RANDOM_SEED {
        return seed;
    }
    random_u64()
}

/// A random 64-bit number (seeds, response ids).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// Logits -> probabilities, in place (the candidates are sorted, largest first).
fn softmax(c: &mut [(u32, f32)]) {
    let Some(max) = c.first().map(|x| x.1) else { return };
    let mut sum = 0.0;
    for (_, v) in c.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for (_, v) in c.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 1,
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(4);
        let mut l = vec![0.1, 2.0, -1.0, 2.0];
        assert_eq!(s.sample(&mut l, &[], &params(0.0)), 1);
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        Sampler::apply_repeat_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        // with the penalty, greedy moves off token 0
        let mut s = Sampler::new(3);
        let mut l = vec![2.0, -2.0, 1.5];
        let p = SamplingParams { repeat_penalty: 2.0, ..params(0.0) };
        assert_eq!(s.sample(&mut l, &[0], &p), 2);
    }

    #[test]
    fn same_seed_same_draws_and_distribution_follows_probabilities() {
        let logits = vec![0.0f32, (3.0f32).ln(), -30.0];
        let mut a = Sampler::new(3);
        let mut b = Sampler::new(3);
        a.reseed(42);
        b.reseed(42);
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            let ta = a.sample(&mut logits.clone(), &[], &params(1.0));
            let tb = b.sample(&mut logits.clone(), &[], &params(1.0));
            assert_eq!(ta, tb);
            counts[ta as usize] += 1;
        }
        // p = 0.25, 0.75, ~0
        assert!((counts[1] as f64 / 4000.0 - 0.75).abs() < 0.03, "{counts:?}");
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn choice_seeds_keep_the_first_and_differ() {
        assert_eq!(choice_seed(42, 0), 42);
        let seeds: Vec<u64> = (0..16).map(|i| choice_seed(42, i)).collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 16);
        assert_eq!(seeds, (0..16).map(|i| choice_seed(42, i)).collect::<Vec<_>>());
        assert_ne!(choice_seed(42, 1), choice_seed(43, 1));
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_candidates() {
        let logits = vec![3.0f32, 2.9, 0.0, -1.0];
        let mut s = Sampler::new(4);
        s.reseed(7);
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone(), &[], &SamplingParams { top_k: 1, ..params(1.0) });
            assert_eq!(t, 0);
            let t = s.sample(&mut logits.clone(), &[], &SamplingParams { top_p: 0.5, ..params(1.0) });
            assert_eq!(t, 0);
            let t = s.sample(&mut logits.clone(), &[], &SamplingParams { min_p: 0.5, ..params(1.0) });
            assert!(t <= 1);
        }
    }
}
