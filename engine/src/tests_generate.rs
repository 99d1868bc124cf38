//! `Session::generate_with`: log-probabilities, several choices, and the fill-in-the-middle
//! prompt, on the shared tiny model (skipped without it) and the writer's tiny model.

use super::logprobs::{log_prob, TokenLogprob};
use super::*;

fn tiny_engine(n_ctx: usize) -> Option<Engine> {
    let p = test_support::require_shared()?.join("models/tiny-mistral-q8_0.gguf");
    let opts = LoadOptions { model: p, n_ctx: Some(n_ctx), n_threads: Some(2), ..Default::default() };
    Some(Engine::load_with_batch(&opts, 16).unwrap())
}

const PROMPT: [u32; 4] = [1, 415, 2936, 9060];

fn request(max_tokens: usize, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest { prompt: PROMPT.to_vec(), max_tokens, sampling, stop: vec![], ignore_eos: true, grammar: None }
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..Default::default() }
}

/// Each choice's text, tokens and statistics, and the totals.
struct Run {
    texts: Vec<String>,
    tokens: Vec<Vec<TokenLogprob>>,
    done: Vec<GenerationStats>,
    total: GenerationStats,
}

fn run(s: &mut Session, req: &GenerateRequest, opts: &GenerateOptions) -> Run {
    let n = opts.n.max(1);
    let mut r = Run {
        texts: vec![String::new(); n],
        tokens: vec![Vec::new(); n],
        done: Vec::new(),
        total: GenerationStats {
            prompt_tokens: 0,
            cached_tokens: 0,
            generated_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            stop: StopReason::Cancelled,
            decode_calls: 0,
            stop_index: None,
        },
    };
    let total = s
        .generate_with(req, opts, &mut |out| {
            match out {
                Output::Text(i, t) => r.texts[i].push_str(t),
                Output::Token(i, t) => r.tokens[i].push(t.clone()),
                Output::Done(i, st) => {
                    assert_eq!(i, r.done.len(), "choices end in order");
                    r.done.push(st.clone())
                }
            }
            true
        })
        .unwrap();
    r.total = total;
    r
}

#[test]
fn logprobs_are_the_log_softmax_of_the_raw_logits() {
    let Some(e) = tiny_engine(128) else { return };
    // the temperature and a repeat penalty change what is drawn, never the values reported
    let sampling = SamplingParams {
        temperature: 2.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.5,
        seed: 3,
        ..Default::default()
    };
    let r = run(&mut e.new_session(), &request(10, sampling.clone()), &GenerateOptions { n: 1, logprobs: Some(5) });
    let toks = &r.tokens[0];
    assert_eq!(toks.len(), 10, "every generated token is reported");
    // the same tokens evaluated one at a time (as generation does), from a fresh session
    let mut s = e.new_session();
    s.eval(&PROMPT, true).unwrap();
    let mut elsewhere = false;
    for t in toks {
        let logits = s.logits().to_vec();
        let want = log_prob(&logits, t.id) as f32;
        assert!((t.logprob - want).abs() < 1e-4, "token {}: {} vs {want}", t.id, t.logprob);
        assert_eq!(t.top.len(), 5);
        assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {:?}", t.top);
        let mass: f32 = t.top.iter().map(|x| x.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "{mass}");
        assert_eq!(t.top[0].0, sampler::argmax(&logits), "the likeliest under the raw logits");
        assert!((t.top[0].1 - log_prob(&logits, t.top[0].0) as f32).abs() < 1e-4);
        if let Some(&(_, lp)) = t.top.iter().find(|x| x.0 == t.id) {
            assert_eq!(lp, t.logprob, "the chosen token's value in the list is its own");
        }
        elsewhere |= t.id != t.top[0].0;
        s.eval(&[t.id], true).unwrap();
    }
    assert!(elsewhere, "the sampler drew a token that is not the raw argmax at least once");
    // offsets grow and point into the text
    assert!(toks.windows(2).all(|w| w[0].offset <= w[1].offset));
    assert!(toks.iter().all(|t| t.offset <= r.texts[0].len()));
    // without the option, no tokens are reported and the text is the same
    let plain = run(&mut e.new_session(), &request(10, sampling), &GenerateOptions::default());
    assert!(plain.tokens[0].is_empty());
    assert_eq!(plain.texts[0], r.texts[0]);
}

#[test]
fn tokens_of_a_stop_string_are_not_reported() {
    let Some(e) = tiny_engine(128) else { return };
    let full = run(&mut e.new_session(), &request(12, greedy()), &GenerateOptions { n: 1, logprobs: Some(0) });
    let text = &full.texts[0];
    // a stop string that starts where a token of the middle starts, and nowhere before
    let (k, stop) = (full.tokens[0].len() / 2..full.tokens[0].len())
        .find_map(|k| {
            let off = full.tokens[0][k].offset;
            let stop: String = text[off..].chars().take(3).collect();
            (off > 0 && stop.chars().count() == 3 && text.find(&stop) == Some(off)).then_some((k, stop))
        })
        .expect("a token to stop at");
    let req = GenerateRequest { stop: vec![stop.clone()], ..request(12, greedy()) };
    let r = run(&mut e.new_session(), &req, &GenerateOptions { n: 1, logprobs: Some(0) });
    assert_eq!(r.total.stop, StopReason::StopString);
    assert_eq!(r.texts[0], text[..full.tokens[0][k].offset]);
    // the tokens before the stop string, not those of it
    assert!(r.total.generated_tokens > k);
    assert_eq!(&r.tokens[0][..], &full.tokens[0][..k]);
}

#[test]
fn choices_share_the_prompt_and_draw_with_their_own_seeds() {
    let Some(e) = tiny_engine(128) else { return };
    let warm = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 5, ..Default::default() };
    let opts = GenerateOptions { n: 3, logprobs: None };
    let mut s = e.new_session();
    let a = run(&mut s, &request(8, warm.clone()), &opts);
    assert_eq!(a.done.len(), 3);
    assert_eq!(a.total.prompt_tokens, PROMPT.len(), "the prompt counts once");
    assert_eq!(a.total.generated_tokens, a.done.iter().map(|d| d.generated_tokens).sum::<usize>());
    assert_eq!(a.total.generated_tokens, 24);
    assert!(a.texts.iter().any(|t| *t != a.texts[0]), "other seeds, other texts: {:?}", a.texts);
    // the same seed gives the same choices
    assert_eq!(run(&mut e.new_session(), &request(8, warm.clone()), &opts).texts, a.texts);
    let again = run(&mut s, &request(8, warm.clone()), &opts);
    assert_eq!(again.done.len(), 3);
    assert_eq!(again.total.cached_tokens, PROMPT.len() - 1, "the prompt stays cached after the choices");
    // the first choice is what a request for one choice gives
    assert_eq!(run(&mut e.new_session(), &request(8, warm.clone()), &GenerateOptions::default()).texts[0], a.texts[0]);
    // greedy choices are identical
    let g = run(&mut e.new_session(), &request(8, greedy()), &GenerateOptions { n: 2, logprobs: Some(2) });
    assert_eq!(g.texts[0], g.texts[1]);
    assert_eq!(g.tokens[0], g.tokens[1]);
    assert!(!g.texts[0].is_empty());
}

#[test]
fn cancelling_stops_every_choice() {
    let Some(e) = tiny_engine(128) else { return };
    let mut texts = 0;
    let total = e
        .new_session()
        .generate_with(&request(8, greedy()), &GenerateOptions { n: 3, logprobs: None }, &mut |out| {
            if let Output::Text(i, _) = out {
                assert_eq!(i, 0, "no later choice starts");
                texts += 1;
                return texts < 2;
            }
            true
        })
        .unwrap();
    assert_eq!(total.stop, StopReason::Cancelled);
}

/// The writer's tiny model (tokens: 0 <unk>, 1 <s>, 2 </s>, 3 "▁a", 4 "▁b", 5 "a", 6 "b",
/// 7 "▁") with `meta`, loaded.
fn writer_engine(meta: &[(&str, llamafile_format::gguf::MetaValue)]) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, llamafile_format::gguf::writer::tiny_model(meta, &[])).unwrap();
    Engine::load(&LoadOptions { model: p, n_threads: Some(1), ..Default::default() }).unwrap()
}

#[test]
fn fill_in_the_middle_prompt_layout() {
    use fim::{ExtraFile, FimInput};
    use llamafile_format::gguf::MetaValue::U32;
    let none = writer_engine(&[]);
    let input = FimInput { prefix: "b", suffix: "a", ..Default::default() };
    let err = none.fim_prompt(&input, 100).unwrap().unwrap_err();
    assert!(err.contains("no fill-in-the-middle prefix, suffix, middle token"), "{err}");

    let e = writer_engine(&[
        ("tokenizer.ggml.fim_pre_token_id", U32(5)),
        ("tokenizer.ggml.fim_suf_token_id", U32(6)),
        ("tokenizer.ggml.fim_mid_token_id", U32(7)),
    ]);
    assert_eq!(e.fim_tokens().required(), Ok((5, 6, 7)));
    let bos = e.tokenizer().bos().filter(|_| e.tokenizer().adds_bos());
    let tok = e.tokenizer();
    let enc = |s: &str| tok.encode(s, false, false).unwrap();
    let layout =
        |parts: &[&[u32]]| bos.into_iter().chain(parts.iter().flat_map(|p| p.iter().copied())).collect::<Vec<u32>>();
    let (b, a) = (enc("b"), enc("a"));
    assert!(!b.is_empty() && !a.is_empty());
    // BOS, PRE prefix SUF suffix MID
    assert_eq!(e.fim_prompt(&input, 100).unwrap().unwrap(), layout(&[&[5], &b, &[6], &a, &[7]]));
    // text typed after the prefix continues it
    let typed = FimInput { prompt: "a", ..input.clone() };
    assert_eq!(e.fim_prompt(&typed, 100).unwrap().unwrap(), layout(&[&[5], &b, &a, &[6], &a, &[7]]));
    // without file markers, extra files come first after a snippet line
    let files = [ExtraFile { filename: "x.py".into(), text: "b".into() }];
    let extra = FimInput { extra: &files, ..input.clone() };
    let snippet = enc("\n\n--- snippet ---\n\n");
    assert_eq!(e.fim_prompt(&extra, 100).unwrap().unwrap(), layout(&[&snippet, &b, &[5], &b, &[6], &a, &[7]]));
    // a long prefix keeps its end (next to the hole), within the budget
    let long = "b ".repeat(60);
    let cut = e.fim_prompt(&FimInput { prefix: &long, ..input.clone() }, 20).unwrap().unwrap();
    assert!(cut.len() <= 20, "{}", cut.len());
    let head = bos.iter().count();
    assert_eq!(cut[cut.len() - 1], 7);
    assert_eq!(cut[cut.len() - 2 - a.len()], 6);
    assert_eq!(cut[head], 5);
    let kept = &cut[head + 1..cut.len() - 2 - a.len()];
    let all = enc(&long);
    assert!(!kept.is_empty() && kept.len() < all.len() && all.ends_with(kept), "{kept:?}");

    // repository-level layout where the model has the repository and file-separator markers
    let repo = writer_engine(&[
        ("tokenizer.ggml.fim_pre_token_id", U32(5)),
        ("tokenizer.ggml.fim_suf_token_id", U32(6)),
        ("tokenizer.ggml.fim_mid_token_id", U32(7)),
        ("tokenizer.ggml.fim_rep_token_id", U32(0)),
        ("tokenizer.ggml.fim_sep_token_id", U32(2)),
    ]);
    let want = layout(&[
        &[0],
        &enc("myproject\n"),
        &[2],
        &enc("x.py\n"),
        &b,
        &[2],
        &enc("filename\n"),
        &[5],
        &b,
        &[6],
        &a,
        &[7],
    ]);
    assert_eq!(repo.fim_prompt(&extra, 100).unwrap().unwrap(), want);
    // without extra files, the plain layout
    assert_eq!(repo.fim_prompt(&input, 100).unwrap().unwrap(), layout(&[&[5], &b, &[6], &a, &[7]]));
}
