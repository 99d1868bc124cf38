//! Text generation from the command line: a prompt (`-p`/`-f`) as a conversation turn when the
//! model has a chat template (`conversation`) or as raw text completion, and the measurement
//! modes: `--eval-tokens` (teacher-forced logits as JSON), `--perplexity -f FILE`, `--bench`
//! (pp512/tg128 and peak RSS).
//!
//! Generated text goes to stdout as it comes; logs and timings go to stderr (`--log-disable`
//! silences them).

use super::conversation::{self, Turns};
use super::Args;
use anyhow::{anyhow, bail, Result};
use llamafile_engine::logprobs::log_prob;
use llamafile_engine::{Engine, GenerateRequest, GenerationStats, LoadOptions, SamplingParams, StopReason};
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// A log line on stderr, unless `--log-disable`.
macro_rules! log {
    ($args:expr, $($t:tt)*) => {
        if !$args.log_disable {
            eprintln!($($t)*);
        }
    };
}
pub(crate) use log;

pub fn run(args: &Args) -> Result<i32> {
    // -m, else this executable's own embedded weights (llamafile_format::bundle).
    let model = llamafile_format::bundle::model_path(args.model.as_deref())?;
    // A bad grammar or schema is reported before the model loads.
    super::structured::grammar(args)?;
    if args.bench {
        return bench(args, &model);
    }
    let mut opts = load_options(args, &model);
    if args.perplexity && args.ctx_size == 0 {
        opts.n_ctx = Some(512);
    }
    let eval_list = args.eval_tokens.as_deref().map(parse_token_list).transpose()?;
    let engine = Engine::load_with_batch(&opts, args.batch_size.max(1))?;
    log!(args, "{}", describe(&engine));
    if let Some(tokens) = eval_list {
        return eval_tokens(args, &engine, tokens);
    }
    if args.perplexity {
        return perplexity(args, &engine);
    }
    match mode(args, &engine)? {
        Mode::Raw => prompt(args, &engine),
        Mode::Conversation(turns) => conversation::run(args, &engine, prompt_text(args, &engine)?, turns),
    }
}

/// What a prompt run does.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Raw text completion of the prompt.
    Raw,
    /// Turns through the chat template.
    Conversation(Turns),
}

/// As llama.cpp: a conversation when asked for (`-cnv`, `-i`), or by default when the model
/// (or `--chat-template`) has a chat template; raw completion with `--no-conversation` or
/// without a template. `-p` alone is then one turn; with `-cnv`/`-i` the conversation goes on.
fn mode(args: &Args, engine: &Engine) -> Result<Mode> {
    let interactive = args.chat || args.interactive || args.interactive_first;
    if args.no_conversation {
        if interactive {
            bail!("an interactive session without the chat template is not supported: drop --no-conversation");
        }
        return Ok(Mode::Raw);
    }
    if interactive {
        return Ok(Mode::Conversation(Turns::Interactive));
    }
    // The engine falls back on a built-in template guessed from the model's name; only a
    // template of the model's own, or one the user chose, makes -p a conversation.
    let has_template = args.chat_template.is_some() || engine.chat_template().name() == "gguf";
    Ok(if has_template { Mode::Conversation(Turns::One) } else { Mode::Raw })
}

/// The engine's load options from the command line.
pub fn load_options(args: &Args, model: &std::path::Path) -> LoadOptions {
    LoadOptions {
        model: model.to_path_buf(),
        n_ctx: (args.ctx_size > 0).then_some(args.ctx_size),
        n_threads: args.threads,
        n_gpu_layers: args.n_gpu_layers,
        gpu: args.gpu.clone(),
        chat_template: args.chat_template.clone(),
        verbose: args.verbose,
        n_sessions: 1,
        swa_full: args.swa_full,
    }
}

/// Sampling parameters of one reply (`-s -1`: a fresh random seed each time).
pub fn sampling(args: &Args) -> Result<SamplingParams> {
    let mut p = args.sampling()?;
    p.seed = llamafile_engine::sampler::fresh_seed(p.seed);
    Ok(p)
}

/// `--verbose`: the token ids sent to the model.
pub fn log_prompt(args: &Args, ids: &[u32]) {
    if args.verbose {
        log!(args, "prompt tokens: {ids:?}");
    }
}

fn describe(e: &Engine) -> String {
    let hp = &e.model().hp;
    let backends: Vec<String> = e.backends().iter().map(|b| b.name()).collect();
    format!(
        "loaded {} ({}, {} layers, embedding {}, {} heads / {} KV) in {:.0} ms; context {}, {} threads, {}",
        e.model_name(),
        hp.arch,
        hp.n_layer,
        hp.n_embd,
        hp.n_head,
        hp.n_head_kv,
        e.load_ms(),
        e.n_ctx(),
        e.n_threads(),
        backends.join(" + ")
    )
}

/// `-e`: \n \t \r \\ \" \' and \xNN.
pub fn process_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some('x') => {
                let hex: String = it.clone().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b as char);
                        it.next();
                        it.next();
                    }
                    _ => out.push_str("\\x"),
                }
            }
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

pub fn timings(args: &Args, s: &GenerationStats) {
    let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let evaluated = s.prompt_tokens - s.cached_tokens;
    log!(
        args,
        "\nprompt: {} tokens ({} cached) in {:.0} ms, {:.2} tokens/s | generation: {} tokens in {:.0} ms, {:.2} tokens/s | stop: {:?}",
        s.prompt_tokens,
        s.cached_tokens,
        s.prompt_ms,
        rate(evaluated, s.prompt_ms),
        s.generated_tokens,
        s.generation_ms,
        rate(s.generated_tokens, s.generation_ms),
        s.stop
    );
}

/// What the command line asks of one generation: `-n`, sampling, `-r` stop strings, the grammar.
pub fn generate_request(args: &Args, prompt: Vec<u32>) -> Result<GenerateRequest> {
    Ok(GenerateRequest {
        prompt,
        max_tokens: max_tokens(args),
        sampling: sampling(args)?,
        stop: args.reverse_prompt.clone(),
        ignore_eos: args.ignore_eos,
        grammar: super::structured::grammar(args)?,
    })
}

pub fn max_tokens(args: &Args) -> usize {
    if args.n_predict < 0 {
        usize::MAX
    } else {
        args.n_predict as usize
    }
}

/// Encode with BOS as the model wants, special tokens recognised, and no doubled BOS when the
/// text (a rendered template) already starts with it.
pub fn encode_prompt(engine: &Engine, text: &str) -> Result<Vec<u32>> {
    let tok = engine.tokenizer();
    let mut ids = tok.encode(text, true, true)?;
    if let Some(bos) = tok.bos() {
        if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
            ids.remove(0);
        }
    }
    Ok(ids)
}

/// The prompt of `-p` or `-f`, escapes processed with `-e`.
fn prompt_text(args: &Args, engine: &Engine) -> Result<Option<String>> {
    let text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => llamafile_format::input::read_prompt_file(f, engine.n_ctx())?,
        (None, None) => return Ok(None),
    };
    Ok(Some(if args.escape { process_escapes(&text) } else { text }))
}

fn prompt(args: &Args, engine: &Engine) -> Result<i32> {
    let text = prompt_text(args, engine)?.unwrap_or_default();
    let ids = encode_prompt(engine, &text)?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    log_prompt(args, &ids);
    let mut session = engine.try_new_session()?;
    let mut out = std::io::stdout().lock();
    if !args.no_display_prompt {
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    let req = generate_request(args, ids)?;
    let mut write_err = None;
    let stats =
        session.generate(&req, &mut |piece| match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        })?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::new(e).context("writing to stdout"));
        }
    }
    if std::io::stdout().is_terminal() {
        writeln!(out)?;
    }
    timings(args, &stats);
    if stats.stop == StopReason::ContextFull {
        log!(args, "stopped: the context of {} tokens is full (use -c to make it larger)", engine.n_ctx());
    }
    Ok(0)
}

/// The `k` largest logits, largest first (ties by id).
fn top_k(logits: &[f32], k: usize, idx: &mut Vec<u32>) -> Vec<(u32, f32)> {
    idx.clear();
    idx.extend(0..logits.len() as u32);
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    idx.iter().map(|i| (*i, logits[*i as usize])).collect()
}

/// `--eval-tokens 1,415,2936`.
fn parse_token_list(list: &str) -> Result<Vec<u32>> {
    let tokens: Vec<u32> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u32>().map_err(|_| anyhow!("--eval-tokens: '{}' is not a token id", s.trim())))
        .collect::<Result<_>>()?;
    if tokens.is_empty() {
        bail!("--eval-tokens: no token ids");
    }
    Ok(tokens)
}

fn eval_tokens(args: &Args, engine: &Engine, tokens: Vec<u32>) -> Result<i32> {
    let n_vocab = engine.model().hp.n_vocab;
    if let Some(bad) = tokens.iter().find(|t| **t as usize >= n_vocab) {
        bail!("--eval-tokens: token id {bad} is outside the vocabulary ({n_vocab} tokens)");
    }
    if tokens.len() > engine.n_ctx() {
        bail!("--eval-tokens: {} tokens, longer than the context of {} (use -c)", tokens.len(), engine.n_ctx());
    }
    let mut session = engine.try_new_session()?;
    let mut top = Vec::with_capacity(tokens.len());
    let mut nll = Vec::with_capacity(tokens.len());
    let mut idx = Vec::new();
    let t0 = Instant::now();
    session.eval_all(&tokens, &mut |i, logits| {
        top.push(top_k(logits, args.top, &mut idx));
        if i + 1 < tokens.len() {
            nll.push(-log_prob(logits, tokens[i + 1]));
        }
        Ok(())
    })?;
    let eval_ms = t0.elapsed().as_secs_f64() * 1e3;
    let n_greedy = args.n_predict.max(0) as usize;
    let mut greedy = Vec::with_capacity(n_greedy);
    for i in 0..n_greedy {
        let id = llamafile_engine::sampler::argmax(session.logits());
        greedy.push(id);
        if i + 1 < n_greedy {
            if session.n_past() >= session.n_ctx() {
                break;
            }
            session.eval(&[id], true)?;
        }
    }
    log!(args, "evaluated {} tokens in {:.0} ms", tokens.len(), eval_ms);
    let json = serde_json::json!({
        "tokens": tokens,
        "top10": top.iter().map(|r| r.iter().map(|(i, l)| serde_json::json!([i, l])).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "nll": nll,
        "greedy": greedy,
    });
    println!("{json}");
    Ok(0)
}

/// llama.cpp's method: the text is cut into chunks of n_ctx tokens, each starting with BOS (when
/// the model uses one); each chunk is evaluated from scratch and only its second half is scored,
/// so every scored token has at least n_ctx/2 tokens of context.
fn perplexity(args: &Args, engine: &Engine) -> Result<i32> {
    let file = args.file.as_ref().ok_or_else(|| anyhow!("--perplexity needs a text file: -f FILE"))?;
    let text = llamafile_format::input::read_text_capped(
        file,
        llamafile_format::input::MAX_TEXT_BYTES,
        "--perplexity reads at most 1 GiB of text",
    )?;
    let tok = engine.tokenizer();
    let ids = tok.encode(&text, false, false)?;
    let n_ctx = engine.n_ctx();
    if ids.len() < 2 * n_ctx {
        bail!(
            "{}: {} tokens; perplexity with a context of {n_ctx} needs at least {} (use a smaller -c)",
            file.display(),
            ids.len(),
            2 * n_ctx
        );
    }
    let n_chunks = ids.len() / n_ctx;
    let first = n_ctx / 2;
    let mut session = engine.try_new_session()?;
    let mut nll_sum = 0f64;
    let mut nll2_sum = 0f64;
    let mut count = 0usize;
    let t0 = Instant::now();
    let mut chunk_toks = Vec::with_capacity(n_ctx);
    for c in 0..n_chunks {
        chunk_toks.clear();
        chunk_toks.extend_from_slice(&ids[c * n_ctx..(c + 1) * n_ctx]);
        if tok.adds_bos() {
            if let Some(b) = tok.bos() {
                chunk_toks[0] = b;
            }
        }
        session.clear();
        let target = &ids[c * n_ctx..(c + 1) * n_ctx];
        session.eval_all(&chunk_toks, &mut |i, logits| {
            if i >= first && i + 1 < n_ctx {
                let v = -log_prob(logits, target[i + 1]);
                nll_sum += v;
                nll2_sum += v * v;
                count += 1;
            }
            Ok(())
        })?;
        if !args.log_disable {
            eprint!("[{}]{:.4},", c + 1, (nll_sum / count as f64).exp());
            if c == 0 {
                let s = t0.elapsed().as_secs_f64();
                eprint!(" ({:.2} s per chunk, about {:.1} minutes in all) ", s, s * n_chunks as f64 / 60.0);
            }
        }
    }
    log!(args, "");
    let mean = nll_sum / count as f64;
    let var = (nll2_sum / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    let err = ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt();
    println!("Final estimate: PPL = {ppl:.4} +/- {err:.5} ({n_chunks} chunks of {n_ctx} tokens, {count} scored)");
    Ok(0)
}

/// Peak resident set size of this process, in bytes (Linux: VmHWM, the value getrusage's
/// ru_maxrss reports).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(args: &Args, model: &std::path::Path) -> Result<i32> {
    let (pp, tg) = (args.bench_pp, args.bench_tg);
    let mut opts = load_options(args, model);
    if args.ctx_size == 0 {
        opts.n_ctx = Some((pp + tg).max(1));
    }
    let t0 = Instant::now();
    let engine = Engine::load_with_batch(&opts, args.batch_size.max(1))?;
    let load_s = t0.elapsed().as_secs_f64();
    let n_vocab = engine.model().hp.n_vocab as u64;
    if pp + tg > engine.n_ctx() {
        bail!("--bench: {pp} + {tg} tokens do not fit the context of {}", engine.n_ctx());
    }
    let mut rng = llamafile_engine::sampler::Rng::new(1234);
    let prompt: Vec<u32> = (0..pp).map(|_| (rng.next_u64() % n_vocab) as u32).collect();
    let mut session = engine.try_new_session()?;
    // Warm-up: one token touches every weight page once (a cold mmap reads from disk), then
    // the whole prompt once as `llama-bench` warms up, so that the timed run does not pay for
    // the first touch of the batch's scratch and KV pages.
    let tw = Instant::now();
    session.eval(&prompt[..1.min(pp)], true)?;
    let warm_s = tw.elapsed().as_secs_f64();
    session.clear();
    if pp > 1 {
        session.eval(&prompt, true)?;
        session.clear();
    }

    let mut pp_rate = 0.0;
    if pp > 0 {
        let t = Instant::now();
        session.eval(&prompt, true)?;
        pp_rate = pp as f64 / t.elapsed().as_secs_f64();
    }
    session.clear();
    let mut tg_rate = 0.0;
    if tg > 0 {
        let mut id = prompt.first().copied().unwrap_or(1);
        let t = Instant::now();
        for _ in 0..tg {
            session.eval(&[id], true)?;
            id = llamafile_engine::sampler::argmax(session.logits());
        }
        tg_rate = tg as f64 / t.elapsed().as_secs_f64();
    }
    let file_bytes = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
    let hp = &engine.model().hp;
    let kv_bytes = (engine.n_ctx() * hp.n_layer * (hp.k_dim() + hp.v_dim()) * 2) as u64;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "model: {} ({}, {:.0} MiB), threads: {}, isa: {}, batch: {}",
        engine.model_name(),
        hp.arch,
        mb(file_bytes),
        engine.n_threads(),
        kernels_cpu::kernels().describe(),
        engine.n_batch()
    );
    println!("load: {:.2} s (first pass over the weights: {:.2} s)", load_s, warm_s);
    println!("pp{pp}: {pp_rate:.2} tokens/s");
    println!("tg{tg}: {tg_rate:.2} tokens/s");
    match peak_rss() {
        Some(r) => println!(
            "peak RSS: {:.0} MiB (file {:.0} MiB + KV cache {:.0} MiB = {:.0} MiB; overhead {:.0} MiB)",
            mb(r),
            mb(file_bytes),
            mb(kv_bytes),
            mb(file_bytes + kv_bytes),
            mb(r) - mb(file_bytes + kv_bytes)
        ),
        None => println!("peak RSS: unknown on this system"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(process_escapes(r#"a\nb\tc\\d\"e\x41\q"#), "a\nb\tc\\d\"eA\\q");
        assert_eq!(process_escapes(r"end\"), "end\\");
    }

    #[test]
    fn top_k_and_log_prob() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let mut idx = Vec::new();
        assert_eq!(top_k(&l, 3, &mut idx), vec![(1, 3.0), (3, 3.0), (2, 2.0)]);
        let lp: f64 = (0..4).map(|i| log_prob(&l, i).exp()).sum();
        assert!((lp - 1.0).abs() < 1e-12);
        assert!((log_prob(&[0.0, 0.0], 1) - 0.5f64.ln()).abs() < 1e-12);
    }
}
