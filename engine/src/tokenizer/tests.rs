//! Tokenizer tests against the reference engine's answers in `../shared/reference/*.json`, on the
//! three real vocabularies (Mistral 7B in the tiny models, Gemma 3, Qwen2.5).

use super::*;
use llamafile_format::gguf::GgufFile;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::Model;

/// The shared fixtures; each test that reads them first returns through
/// `test_support::require_shared()` when they are absent.
pub(crate) fn shared() -> PathBuf {
    test_support::shared()
}

fn load(rel: &str) -> Tokenizer {
    let path = shared().join(rel);
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e:#}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{e:#}"))
}

pub(crate) fn mistral() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("models/tiny-mistral-q4_0.gguf"))
}
pub(crate) fn gemma() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("vocab/gemma-3-270m.vocab.gguf"))
}
pub(crate) fn qwen() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("vocab/qwen2.5-coder.vocab.gguf"))
}

fn reference(name: &str) -> Value {
    let path = shared().join("reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every `tokenize` entry in both modes, and the input ids of every case; all mismatches listed.
fn check_reference(tok: &Tokenizer, json: &str) {
    let r = reference(json);
    let mut failures = Vec::new();
    let entries = r["tokenize"].as_array().unwrap();
    assert!(entries.len() >= 40, "{json}: only {} tokenize entries", entries.len());
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let parse = e["parse_special"].as_bool().unwrap();
        let want = ids(&e["ids"]);
        let got = tok.encode(text, true, parse).unwrap();
        if got != want {
            failures.push(format!("{text:?} parse_special={parse}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    let long = std::fs::read_to_string(shared().join("reference/long.txt")).unwrap();
    for c in r["cases"].as_array().unwrap() {
        let want = ids(&c["tokens"]);
        let got = match c["text"].as_str() {
            Some(text) => tok.encode(text, true, true).unwrap(),
            None => {
                let mut all = tok.encode(&long, true, true).unwrap();
                all.truncate(want.len());
                all
            }
        };
        if got != want {
            failures.push(format!("case {}\n  want {want:?}\n  got  {got:?}", c["name"]));
        }
    }
    assert!(failures.is_empty(), "{json}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn mistral_matches_reference() {
    let Some(_) = test_support::require_shared() else { return };
    check_reference(mistral(), "tiny-mistral-q4_0.json");
}

#[test]
fn every_tiny_mistral_file_matches_its_reference() {
    let Some(_) = test_support::require_shared() else { return };
    // All nine files carry the same vocabulary; build each one's tokenizer from its own metadata.
    for q in ["f16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q3_k_m", "q2_k"] {
        let tok = load(&format!("models/tiny-mistral-{q}.gguf"));
        check_reference(&tok, &format!("tiny-mistral-{q}.json"));
    }
}

#[test]
fn gemma3_matches_reference() {
    let Some(_) = test_support::require_shared() else { return };
    check_reference(gemma(), "gemma-3-270m-q4_k_m.json");
}

#[test]
fn qwen25_matches_reference() {
    let Some(_) = test_support::require_shared() else { return };
    check_reference(qwen(), "qwen2.5-coder-0.5b-instruct-q4_k_m.json");
}

#[test]
fn special_ids_and_flags() {
    let Some(_) = test_support::require_shared() else { return };
    let m = mistral();
    assert_eq!((m.bos(), m.eos(), m.adds_bos(), m.adds_eos()), (Some(1), Some(2), true, false));
    assert_eq!(m.end_tokens(), &[2]);
    assert_eq!(m.vocab_size(), 32000);
    assert_eq!(m.kind(), VocabKind::Spm);
    let g = gemma();
    assert_eq!((g.bos(), g.eos(), g.adds_bos()), (Some(2), Some(1), true));
    for t in ["<eos>", "<end_of_turn>", "</s>"] {
        let id = g.token_id(t).unwrap();
        assert!(g.is_end_token(id), "{t} should end generation");
    }
    assert!(!g.is_end_token(g.token_id("<start_of_turn>").unwrap()));
    let q = qwen();
    assert_eq!((q.eos(), q.adds_bos()), (Some(151645), false));
    assert_eq!(q.kind(), VocabKind::Bpe);
    for t in ["<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"] {
        assert!(q.is_end_token(q.token_id(t).unwrap()), "{t}");
    }
    assert!(!q.is_end_token(q.token_id("<|im_start|>").unwrap()));
    assert_eq!(q.token_text(151644), "<|im_start|>");
    assert_eq!(m.token_text(22557), "▁Hello");
    assert_eq!(m.token_text(99_999), "");
}

#[test]
fn add_special_false_adds_nothing() {
    let Some(_) = test_support::require_shared() else { return };
    assert_eq!(mistral().encode("Hello world", false, false).unwrap(), [22557, 1526]);
    assert_eq!(gemma().encode("Hello world", false, false).unwrap(), [9259, 1902]);
    assert!(mistral().encode("", false, true).unwrap().is_empty());
}

#[test]
fn decode_roundtrips_reference_strings() {
    let Some(_) = test_support::require_shared() else { return };
    let r = reference("tiny-mistral-q4_0.json");
    for tok in [mistral(), gemma(), qwen()] {
        for e in r["tokenize"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let ids = tok.encode(text, false, false).unwrap();
            assert_eq!(tok.decode(&ids), text, "{:?} via {ids:?}", tok.kind());
        }
    }
}

#[test]
fn decode_renders_or_drops_special_tokens() {
    let Some(_) = test_support::require_shared() else { return };
    let m = mistral();
    let ids = m.encode("<s>[INST] Hi [/INST]", true, true).unwrap();
    assert_eq!(ids[..2], [1, 1]);
    // As the reference: removing the BOS keeps the space of the word after it.
    assert_eq!(m.decode_with(&ids, true, false), " [INST] Hi [/INST]");
    assert_eq!(m.decode(&ids), "<s><s> [INST] Hi [/INST]");
    assert_eq!(m.decode(&[22557, 1526, 2]), "Hello world</s>");
    assert_eq!(m.decode_with(&[22557, 1526, 2], false, false), "Hello world");
    // Byte-fallback pieces decode to their bytes.
    assert_eq!(m.token_bytes(m.token_id("<0x0A>").unwrap()), b"\n");
    assert_eq!(qwen().token_bytes(220), b" ");
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let Some(_) = test_support::require_shared() else { return };
    let m = mistral();
    // "🦙" is four byte-fallback tokens in the Mistral vocabulary.
    let ids = m.encode("a🦙b", false, false).unwrap();
    let mut d = StreamDecoder::new();
    let parts: Vec<String> = ids.iter().map(|&id| d.push(m, id)).collect();
    // Streaming keeps the SentencePiece leading space (the text continues a prompt).
    assert_eq!(parts.concat() + &d.finish(), " a🦙b");
    assert!(parts.iter().any(|p| p.is_empty()), "some byte tokens must be held back: {parts:?}");
    assert!(parts.iter().all(|p| !p.contains('\u{FFFD}')), "{parts:?}");
    // An incomplete character at the end becomes U+FFFD; invalid bytes too.
    let mut d = StreamDecoder::new();
    assert_eq!(d.push(m, m.token_id("<0xF0>").unwrap()), "");
    assert_eq!(d.pending(), &[0xF0]);
    assert_eq!(d.finish(), "\u{FFFD}");
    let mut d = StreamDecoder::new();
    assert_eq!(d.push(m, m.token_id("<0xFF>").unwrap()), "\u{FFFD}");
    // Qwen's byte-level pieces split multi-byte characters too.
    let q = qwen();
    let ids = q.encode("🦙🦙 llamas", false, false).unwrap();
    let mut d = StreamDecoder::new();
    let text: String = ids.iter().map(|&id| d.push(q, id)).collect::<String>() + &d.finish();
    assert_eq!(text, "🦙🦙 llamas");
}

#[test]
fn bad_vocabularies_are_clear_errors() {
    let mut s = VocabSpec::new(VocabKind::Spm);
    assert!(Tokenizer::from_spec(&s).unwrap_err().to_string().contains("empty"));
    s.tokens = vec!["a", "b", "a"];
    let e = Tokenizer::from_spec(&s).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    s.tokens = vec!["<s>", "a"];
    s.scores = vec![0.0];
    let e = Tokenizer::from_spec(&s).unwrap_err().to_string();
    assert!(e.contains("scores"), "{e}");
    s.scores = vec![];
    s.bos = Some(7);
    let e = Tokenizer::from_spec(&s).unwrap_err().to_string();
    assert!(e.contains("BOS") && e.contains('7'), "{e}");
    let mut b = VocabSpec::new(VocabKind::Bpe);
    b.tokens = vec!["a", "b"];
    b.pre = Some("klingon");
    let e = format!("{:#}", Tokenizer::from_spec(&b).unwrap_err());
    assert!(e.contains("klingon"), "{e}");
}

#[test]
fn tiny_spm_from_vectors() {
    // A toy SentencePiece vocabulary: merges come from the scores, unknown characters fall back
    // to byte pieces, and the space prefix follows the metadata.
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    toks.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    toks.extend(["▁", "h", "i", "▁h", "▁hi", "hi"].map(String::from));
    let mut s = VocabSpec::new(VocabKind::Spm);
    s.tokens = toks.iter().map(|t| t.as_str()).collect();
    s.scores = (0..toks.len()).map(|i| -(i as f32)).collect();
    s.token_types = (0..toks.len())
        .map(|i| {
            if i < 3 {
                3
            } else if i < 259 {
                6
            } else {
                1
            }
        })
        .collect();
    s.bos = Some(1);
    s.eos = Some(2);
    let t = Tokenizer::from_spec(&s).unwrap();
    let id = |x: &str| t.token_id(x).unwrap();
    // "▁h" (score -262) outranks "hi" (-264) and "▁hi" (-263) needs "▁h"+"i".
    assert_eq!(t.encode("hi", true, false).unwrap(), [1, id("▁hi")]);
    assert_eq!(t.encode("hé", false, false).unwrap(), [id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(t.encode("</s>hi", false, true).unwrap(), [2, id("▁hi")]);
    assert_eq!(t.decode(&[id("▁hi"), id("▁hi")]), "hi hi");
}

/// The hand-written SentencePiece merge loop against an independent construction: the
/// `tokenizers` BPE with merges synthesized from the scores (see `tokenizer/mod.rs`), on Mistral's vocabulary,
/// over the reference license text line by line and a few thousand random strings.
#[test]
fn spm_agrees_with_tokenizers_bpe_oracle() {
    let Some(_) = test_support::require_shared() else { return };
    let g = GgufFile::open(&shared().join("models/tiny-mistral-q4_0.gguf")).unwrap();
    let spec = VocabSpec::from_gguf(&g).unwrap();
    let mut vocab = Vocab::with_capacity(spec.tokens.len());
    for (i, t) in spec.tokens.iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    let merges = spm::synthesize_merges(&spec.tokens, &spec.scores, &vocab);
    let oracle = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).build().unwrap();
    let tok = mistral();

    let mut inputs: Vec<String> =
        std::fs::read_to_string(shared().join("reference/long.txt")).unwrap().lines().map(String::from).collect();
    let alphabet: Vec<char> =
        "abcdefghijklmnopqrstuvwxyz ABCXYZ  0123456789.,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`\n\téèüßøñçЖжДпривет日本語中文한국어🦙🚀👍🏽\u{a0}\u{200b}▁"
            .chars()
            .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let len = (next() % 40) as usize;
        inputs.push((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect());
    }
    for text in inputs {
        if text.is_empty() {
            continue;
        }
        let mut escaped = String::from("▁");
        spm::escape_whitespace(&text, &mut escaped);
        let want: Vec<u32> = oracle.tokenize(&escaped).unwrap().iter().map(|t| t.id).collect();
        let got = tok.encode(&text, false, false).unwrap();
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn spm_cuts_do_not_change_ids() {
    let Some(_) = test_support::require_shared() else { return };
    // Cutting before each `▁` that follows another character must give the reference's ids
    // (one uncut merge loop). Gemma 3 has one piece spanning such a point, ">▁</".
    let g = gemma();
    let Pipeline::Spm { model, .. } = &g.pipeline else { panic!("gemma is SentencePiece") };
    let bridge = g.token_id(">▁</").unwrap();
    let mut seen_bridge = false;
    let long = std::fs::read_to_string(shared().join("reference/long.txt")).unwrap();
    let mut texts: Vec<String> = long.split('\n').map(|l| l.replace(' ', "▁")).collect();
    texts.extend(["a>▁</b", "x>▁</y>▁</z", ">▁<", "<b>▁</b>", "▁▁a▁▁b>▁</", "a>▁▁</b"].map(String::from));
    for t in texts {
        let (mut cut, mut uncut) = (vec![], vec![]);
        model.encode(&g.texts, &g.index, &t, &mut cut, &mut spm::Scratch::default()).unwrap();
        model.encode_uncut(&g.texts, &g.index, &t, &mut uncut).unwrap();
        assert_eq!(cut, uncut, "{t:?}");
        seen_bridge |= cut.contains(&bridge);
    }
    assert!(seen_bridge, "no test text produced the bridge piece");
}

/// The byte-level BPE merge loop against the `tokenizers` BPE built from the same merges, on
/// Qwen2.5's vocabulary: every pre-token of the license text and of random strings.
#[test]
fn bpe_agrees_with_tokenizers_bpe_oracle() {
    let Some(_) = test_support::require_shared() else { return };
    let g = GgufFile::open(&shared().join("vocab/qwen2.5-coder.vocab.gguf")).unwrap();
    let spec = VocabSpec::from_gguf(&g).unwrap();
    let mut vocab = Vocab::with_capacity(spec.tokens.len());
    for (i, t) in spec.tokens.iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    let merges: Vec<(String, String)> = spec
        .merges
        .iter()
        .map(|m| {
            let (l, r) = m.split_once(' ').unwrap();
            (l.to_string(), r.to_string())
        })
        .collect();
    let oracle = BPE::builder().vocab_and_merges(vocab, merges).build().unwrap();
    let tok = qwen();
    let Pipeline::Bpe { model, pre, byte_chars } = &tok.pipeline else { panic!("qwen is byte-level BPE") };
    let mut inputs: Vec<String> =
        std::fs::read_to_string(shared().join("reference/long.txt")).unwrap().lines().map(String::from).collect();
    let alphabet: Vec<char> =
        "abcdefghijklmnopqrstuvwxyz ABCXYZ  0123456789.,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`\n\téèüßøñçЖжДпривет日本語中文한국어🦙🚀👍🏽\u{a0}\u{200b}"
            .chars()
            .collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..3000 {
        let len = {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 40) as usize
        };
        let mut s = String::new();
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        inputs.push(s);
    }
    let (mut ranges, mut tmp, mut sc) = (vec![], vec![], bpe::Scratch::default());
    for text in inputs {
        pre.split(&text, &mut ranges, &mut tmp).unwrap();
        for &(a, b) in &ranges {
            let word: String = text.as_bytes()[a..b].iter().map(|&x| byte_chars[x as usize]).collect();
            let want: Vec<u32> = oracle.tokenize(&word).unwrap().iter().map(|t| t.id).collect();
            let mut got = vec![];
            model.encode_word(&tok.texts, &tok.index, &word, &mut got, &mut sc);
            assert_eq!(got, want, "{word:?} in {text:?}");
        }
    }
}

#[test]
fn long_runs_encode_and_decode() {
    let Some(_) = test_support::require_shared() else { return };
    // Pathological but legal inputs: long runs of one character class. (The pre-tokenizer's own
    // test splits a 1 MB run of spaces, which a backtracking regex engine cannot.)
    let n = 1 << 16;
    let q = qwen();
    for text in [" ".repeat(n), format!("a{}b", " ".repeat(n)), "\n".repeat(n), "9".repeat(n), "\t \n".repeat(n / 3)] {
        let ids = q.encode(&text, false, false).unwrap_or_else(|e| panic!("{} bytes: {e:#}", text.len()));
        assert_eq!(q.decode(&ids), text);
    }
    let g = gemma();
    for text in [" ".repeat(n), "\n".repeat(n), "a".repeat(n)] {
        let ids = g.encode(&text, false, false).unwrap();
        assert_eq!(g.decode(&ids), text);
    }
}
