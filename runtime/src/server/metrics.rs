//! `GET /metrics` (with `--metrics`): Prometheus text exposition under llama.cpp's metric names
//! (`llamacpp:prompt_tokens_total`, ...), so dashboards made for llama.cpp's server work as they
//! are. The counters are atomics bumped where a generation ends (`generation::run_blocking`);
//! the throughput gauges are averaged over the window since the previous scrape, as llama.cpp's.
//!
//! llama.cpp's speculative-decoding counters are left out (there is no speculative decoding
//! here), and so is `n_busy_slots_per_decode` (each forward pass serves one slot). The KV-cache
//! gauges `kv_cache_usage_ratio` and `kv_cache_tokens` carry the names earlier llama.cpp
//! versions used for them.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use llamafile_engine::GenerationStats;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the server has done since it started (counters) and since the last scrape (the window).
#[derive(Default)]
pub struct Metrics {
    /// Prompt tokens evaluated (not those reused from a slot's cache).
    prompt_tokens: AtomicU64,
    prompt_cached: AtomicU64,
    prompt_us: AtomicU64,
    predicted_tokens: AtomicU64,
    predicted_us: AtomicU64,
    decode_calls: AtomicU64,
    /// Largest prompt + reply one request held.
    n_tokens_max: AtomicU64,
    window: Mutex<Window>,
}

/// Tokens and time since the previous scrape, for the throughput gauges.
#[derive(Default, Clone, Copy)]
struct Window {
    prompt_tokens: u64,
    prompt_us: u64,
    predicted_tokens: u64,
    predicted_us: u64,
}

fn per_second(tokens: u64, us: u64) -> f64 {
    if us == 0 {
        0.0
    } else {
        tokens as f64 * 1e6 / us as f64
    }
}

impl Metrics {
    /// Count one finished (or cancelled) generation.
    pub fn record(&self, s: &GenerationStats) {
        let evaluated = s.prompt_tokens.saturating_sub(s.cached_tokens) as u64;
        let (prompt_us, predicted_us) = ((s.prompt_ms * 1e3).max(0.0) as u64, (s.generation_ms * 1e3).max(0.0) as u64);
        self.prompt_tokens.fetch_add(evaluated, Ordering::Relaxed);
        self.prompt_cached.fetch_add(s.cached_tokens as u64, Ordering::Relaxed);
        self.prompt_us.fetch_add(prompt_us, Ordering::Relaxed);
        self.predicted_tokens.fetch_add(s.generated_tokens as u64, Ordering::Relaxed);
        self.predicted_us.fetch_add(predicted_us, Ordering::Relaxed);
        self.decode_calls.fetch_add(s.decode_calls as u64, Ordering::Relaxed);
        self.n_tokens_max.fetch_max((s.prompt_tokens + s.generated_tokens) as u64, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.prompt_tokens += evaluated;
        w.prompt_us += prompt_us;
        w.predicted_tokens += s.generated_tokens as u64;
        w.predicted_us += predicted_us;
    }

    /// The window since the previous scrape, which starts a new one.
    fn take_window(&self) -> Window {
        std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The exposition text, with the gauges read from the slot pool.
    pub fn render(&self, st: &AppState) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let w = self.take_window();
        let slots = st.pool.info();
        let processing = slots.iter().filter(|s| s.is_processing).count();
        let capacity = (st.pool.slots() * st.model.n_ctx()).max(1);
        let kv_tokens: usize =
            slots.iter().map(|s| (s.n_cached_tokens + s.last_generated_tokens).min(st.model.n_ctx())).sum();
        let counters = [
            (
                "prompt_tokens_total",
                "Number of prompt tokens processed, excluding cached tokens",
                c(&self.prompt_tokens),
            ),
            ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", c(&self.prompt_cached)),
            ("prompt_seconds_total", "Total time spent processing prompts", c(&self.prompt_us) / 1e6),
            ("tokens_predicted_total", "Number of generation tokens processed", c(&self.predicted_tokens)),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens", c(&self.predicted_us) / 1e6),
            ("n_decode_total", "Total number of forward passes (llama_decode() calls)", c(&self.decode_calls)),
            ("n_tokens_max", "Largest observed sequence length (prompt + generation)", c(&self.n_tokens_max)),
        ];
        let gauges = [
            (
                "prompt_tokens_seconds",
                "Average prompt throughput in tokens/s",
                per_second(w.prompt_tokens, w.prompt_us),
            ),
            (
                "predicted_tokens_seconds",
                "Average generation throughput in tokens/s",
                per_second(w.predicted_tokens, w.predicted_us),
            ),
            ("requests_processing", "Number of requests processing", processing as f64),
            ("requests_deferred", "Number of requests deferred", st.pool.queued() as f64),
            (
                "kv_cache_usage_ratio",
                "KV-cache usage (1 = all the slots' caches full)",
                kv_tokens as f64 / capacity as f64,
            ),
            (
                "kv_cache_tokens",
                "Tokens held in the slots' KV caches (each slot's last prompt and reply)",
                kv_tokens as f64,
            ),
        ];
        let mut out = String::new();
        for (kind, items) in [("counter", &counters[..]), ("gauge", &gauges[..])] {
            for (name, help, value) in items {
                let _ = write!(
                    out,
                    "# HELP llamacpp:{name} {help}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {value}\n"
                );
            }
        }
        out
    }
}

/// `GET /metrics`: the exposition, or 404 without `--metrics` (as llama.cpp, which refuses it
/// unless asked for).
pub async fn handler(State(st): State<Arc<AppState>>) -> Response {
    if !st.metrics_enabled {
        return ApiError::not_found("this server does not serve /metrics; start it with --metrics").into_response();
    }
    let body = st.metrics.render(&st);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamafile_engine::StopReason;

    fn stats(prompt: usize, cached: usize, generated: usize) -> GenerationStats {
        GenerationStats {
            prompt_tokens: prompt,
            cached_tokens: cached,
            generated_tokens: generated,
            prompt_ms: 10.0,
            generation_ms: 100.0,
            stop: StopReason::MaxTokens,
            decode_calls: 1 + generated - 1,
            stop_index: None,
        }
    }

    /// `name value` lines of the exposition.
    fn values(text: &str) -> std::collections::HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (n, v) = l.split_once(' ').unwrap();
                (n.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn counters_add_up_and_the_window_resets() {
        let st =
            crate::server::AppState::new(Arc::new(crate::server::testing::FakeModel::new()), 2, Default::default());
        st.metrics.record(&stats(20, 5, 10));
        st.metrics.record(&stats(30, 0, 4));
        let text = st.metrics.render(&st);
        let v = values(&text);
        assert_eq!(v["llamacpp:prompt_tokens_total"], 45.0);
        assert_eq!(v["llamacpp:prompt_tokens_cached_total"], 5.0);
        assert_eq!(v["llamacpp:tokens_predicted_total"], 14.0);
        assert_eq!(v["llamacpp:n_decode_total"], 14.0);
        assert_eq!(v["llamacpp:n_tokens_max"], 34.0);
        assert!((v["llamacpp:prompt_seconds_total"] - 0.02).abs() < 1e-9);
        assert!((v["llamacpp:predicted_tokens_seconds"] - 70.0).abs() < 1e-6, "14 tokens in 0.2 s");
        assert_eq!(v["llamacpp:requests_processing"], 0.0);
        assert!(text.contains("# TYPE llamacpp:prompt_tokens_total counter\n"));
        assert!(text.contains("# TYPE llamacpp:requests_deferred gauge\n"));
        // the next scrape's window is empty; the counters stay
        let v = values(&st.metrics.render(&st));
        assert_eq!(v["llamacpp:predicted_tokens_seconds"], 0.0);
        assert_eq!(v["llamacpp:tokens_predicted_total"], 14.0);
    }
}
