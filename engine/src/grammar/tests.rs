use super::*;
use llamafile_format::gguf::GgufFile;
use serde_json::json;

/// A matcher over a vocabulary of the 256 single bytes (plus a few special tokens): the
/// grammar's language byte by byte, with no tokenizer in the way.
fn byte_matcher(g: &Grammar) -> Matcher {
    static F: OnceLock<ParserFactory> = OnceLock::new();
    let f = F.get_or_init(|| {
        let mut f = ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env()).unwrap();
        quiet(&mut f);
        f
    });
    Matcher::new(f.create_parser(g.top.clone()))
}

/// Whether `s` is a complete sentence of `g`, fed one byte at a time (each byte must be in the
/// mask before it is consumed).
fn accepts(g: &Grammar, s: &str) -> bool {
    let mut m = byte_matcher(g);
    for b in s.bytes() {
        // A grammar that is complete and cannot go on takes no more bytes.
        if m.is_stopped() || !m.compute_mask().unwrap().is_allowed(b as u32) {
            return false;
        }
        m.consume_token(b as u32).unwrap();
    }
    m.is_accepting().unwrap()
}

fn gbnf(src: &str) -> Grammar {
    Grammar::gbnf(src).unwrap_or_else(|e| panic!("{src}: {e}"))
}

#[test]
fn gbnf_strings_accepted_and_rejected() {
    let g = gbnf("root ::= (\"yes\" | \"no\") \"!\"?\n");
    for s in ["yes", "no", "yes!", "no!"] {
        assert!(accepts(&g, s), "{s}");
    }
    for s in ["", "ye", "yes!!", "maybe", "Yes", "no !"] {
        assert!(!accepts(&g, s), "{s}");
    }
    // A literal that is a prefix of another alternative: both parses stay open (no greedy
    // lexing of multi-character literals).
    let g = gbnf("root ::= (\"a\" | \"ab\") \"b\"\n");
    assert!(accepts(&g, "ab"));
    assert!(accepts(&g, "abb"));
    assert!(!accepts(&g, "abbb"));
    // Repetitions, classes, negation, any character, nested groups across lines.
    let g =
        gbnf("root ::= num (\",\" ws num){1,2}\nnum ::= \"-\"? [1-9] [0-9]{0,3}\nws ::= [ \\t]*\n# trailing comment\n");
    for s in ["1,2", "-12, 3456,\t7", "9,9,9"] {
        assert!(accepts(&g, s), "{s}");
    }
    for s in ["1", "1,2,3,4", "01,2", "12345,1", "1,-0"] {
        assert!(!accepts(&g, s), "{s}");
    }
    let g = gbnf("root ::= \"<\" [^>]* \">\" .\n");
    assert!(accepts(&g, "<a b\n>\n"));
    assert!(!accepts(&g, "<a>b>c"));
    let g = gbnf("root ::= (\n  \"x\"\n  | \"y\"\n)+\n");
    assert!(accepts(&g, "xyyx"));
    assert!(!accepts(&g, "xz"));
}

/// llama.cpp's grammars/json.gbnf.
const JSON_GBNF: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

#[test]
fn llama_cpp_json_gbnf() {
    let g = gbnf(JSON_GBNF);
    for s in [r#"{}"#, r#"{"a": [1, -2.5e3, "x\n\u00e9", true, null], "b" : {"c":"日本"}}"#, "{\n  \"k\": false\n}"] {
        assert!(accepts(&g, s), "{s}");
    }
    for s in ["[]", r#"{"a" 1}"#, r#"{"a": 01}"#, "{\"a\": \"\u{1}\"}", r#"{"a": "\q"}"#] {
        assert!(!accepts(&g, s), "{s}");
    }
}

#[test]
fn gbnf_unicode_escapes_and_multibyte_characters() {
    let g = gbnf("root ::= \"\\u00e9\" [\\u3040-\\u309f]+ \"\\x41\"\n");
    assert!(accepts(&g, "éあいA"));
    assert!(!accepts(&g, "eあA"));
    assert!(!accepts(&g, "é日A"), "日 is outside the class");
    // A class of multi-byte characters allows their first byte, then only a matching
    // continuation byte.
    let mut m = byte_matcher(&g);
    for b in "é".bytes() {
        m.consume_token(b as u32).unwrap();
    }
    let mask = m.compute_mask().unwrap();
    assert!(mask.is_allowed(0xE3), "first byte of あ");
    assert!(!mask.is_allowed(0xE6), "first byte of 日");
    m.consume_token(0xE3).unwrap();
    let mask = m.compute_mask().unwrap();
    assert!(mask.is_allowed(0x81) && mask.is_allowed(0x82), "second byte of U+3040..U+309F");
    assert!(!mask.is_allowed(0x80) && !mask.is_allowed(0x83));
}

#[test]
fn invalid_grammars_are_one_line_errors() {
    for (src, want) in [
        ("root ::= \"a\" | \n", ""),
        ("root ::= (\"a\"\n", "line 2, column 1: expected ')'"),
        ("root ::= foo\n", "undefined rule 'foo'"),
        ("root ::= \"a\"\nroot ::= \"b\"\n", "line 2, column 1: rule 'root' is defined twice"),
    ] {
        match Grammar::gbnf(src) {
            Ok(_) if want.is_empty() => {}
            Ok(_) => panic!("{src:?} was accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!want.is_empty() && e.contains(want), "{src:?}: {e}");
                assert!(!e.contains('\n'), "{e}");
            }
        }
    }
}

#[test]
fn json_schema_strings_accepted_and_rejected() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 5},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
            "kind": {"const": "x"},
            "next": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pt"}]}
        },
        "required": ["name", "age"],
        "additionalProperties": false,
        "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"], "additionalProperties": false}}
    });
    let g = Grammar::json_schema(&schema).unwrap();
    for s in [
        r#"{"name": "Bob", "age": 3}"#,
        r#"{"name": "é日", "age": 0, "tags": ["a", "b"], "kind": "x", "next": {"x": -1.5e3}}"#,
        r#"{"name": "Al", "age": 10, "next": null}"#,
    ] {
        assert!(accepts(&g, s), "{s}");
    }
    for s in [
        r#"{"name": "", "age": 3}"#,
        r#"{"name": "Bobbie", "age": 3}"#,
        r#"{"name": "Bob"}"#,
        r#"{"name": "Bob", "age": -1}"#,
        r#"{"name": "Bob", "age": 1.5}"#,
        r#"{"name": "Bob", "age": 3, "tags": []}"#,
        r#"{"name": "Bob", "age": 3, "tags": ["c"]}"#,
        r#"{"name": "Bob", "age": 3, "kind": "y"}"#,
        r#"{"name": "Bob", "age": 3, "extra": 1}"#,
        r#"{"name": "Bob", "age": 3, "next": {}}"#,
        r#"{"name": "Bob", "age": 3} "#,
    ] {
        assert!(!accepts(&g, s), "{s}");
    }
    let any = Grammar::json_object();
    assert!(accepts(&any, r#"{"a": [1, {"b": null}], "c": "d"}"#));
    assert!(!accepts(&any, "[1]"));
    assert!(!accepts(&any, "{"));
}

#[test]
fn unsupported_and_invalid_schemas_are_refused_by_name() {
    // A keyword of the standard that the compiler does not implement is named, not ignored
    // (keywords outside the standard are annotations, as JSON Schema says).
    let e = Grammar::json_schema(&json!({"type": "array", "uniqueItems": true})).unwrap_err().to_string();
    assert!(e.contains("uniqueItems"), "{e}");
    let e = Grammar::json_schema(&json!({"properties": {"a": {"not": {"type": "null"}}}})).unwrap_err().to_string();
    assert!(e.contains("not"), "{e}");
    assert!(!e.contains('\n'));
    let e = Grammar::json_schema(&json!({"type": "strin"})).unwrap_err().to_string();
    assert!(e.contains("strin"), "{e}");
    let e = Grammar::json_schema(&json!({"$ref": "#/$defs/missing"})).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    assert!(Grammar::json_schema(&json!([1])).is_err());
}

fn vocab(name: &str) -> Option<Tokenizer> {
    let p = test_support::require_shared()?.join("vocab").join(name);
    Some(Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap())
}

/// The real vocabulary's mask at the state reached by `prefix`, against the byte-level truth:
/// a token is allowed iff its exact bytes can be fed to the grammar one by one; an end token
/// iff the grammar can end there; a control token never.
fn check_mask_exact(tok: &Tokenizer, f: &Factory, g: &Grammar, prefix: &str) {
    check_mask_exact_after(tok, f, g, prefix, false);
    check_mask_exact_after(tok, f, g, prefix, true);
}

/// With `ff`, the forced text is computed first (as the engine's fast-forward does): the mask
/// must not change.
fn check_mask_exact_after(tok: &Tokenizer, f: &Factory, g: &Grammar, prefix: &str, ff: bool) {
    let mut gm = f.matcher(g).unwrap();
    let mut bm = byte_matcher(g);
    let ids = tok.encode(prefix, false, false).unwrap();
    for &id in &ids {
        gm.accept(id).unwrap();
    }
    for b in prefix.bytes() {
        bm.consume_token(b as u32).unwrap();
    }
    if ff {
        let forced = gm.forced_tokens(tok, 16);
        let text: Vec<u8> = forced.iter().flat_map(|&id| tok.token_bytes(id)).collect();
        // The guess is text the grammar accepts next.
        let mut probe = byte_matcher(g);
        for b in prefix.bytes().chain(text.iter().copied()) {
            probe.consume_token(b as u32).unwrap();
        }
    }
    let mask = gm.allowed().unwrap().clone();
    let can_end = bm.is_accepting().unwrap();
    let mut n_allowed = 0;
    for id in 0..tok.vocab_size() as u32 {
        let want = if tok.end_tokens().contains(&id) {
            can_end
        } else if tok.is_control(id) {
            false
        } else {
            let bytes = tok.token_bytes(id);
            !bytes.is_empty()
                && bm.validate_tokens(&bytes.iter().map(|b| *b as u32).collect::<Vec<_>>()).unwrap() == bytes.len()
        };
        assert_eq!(mask.is_allowed(id), want, "after {prefix:?}: token {id} {:?}", tok.token_text(id));
        n_allowed += want as usize;
    }
    assert!(n_allowed > 0, "after {prefix:?}: nothing allowed");
}

#[test]
fn masks_over_real_vocabularies_are_exact() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}, "required": ["city", "n"], "additionalProperties": false});
    let json = Grammar::json_schema(&schema).unwrap();
    let words = gbnf("root ::= \"日本\" [a-z ]* (\"é\" | \"!\")\n");
    // Qwen2.5 (byte-level BPE, 151,646 tokens) and Gemma 3 (SentencePiece with ▁ and byte tokens).
    for name in ["qwen2.5-coder.vocab.gguf", "gemma-3-270m.vocab.gguf"] {
        let Some(tok) = vocab(name) else { continue };
        let f = Factory::new(&tok).unwrap();
        for prefix in ["", "{\"city\": \"Par", "{\"city\": \"Paris\", \"n\": 1"] {
            check_mask_exact(&tok, &f, &json, prefix);
        }
        for prefix in ["", "日本", "日本ab c"] {
            check_mask_exact(&tok, &f, &words, prefix);
        }
    }
}

#[test]
fn tokens_spanning_grammar_elements_and_end_of_generation() {
    let Some(tok) = vocab("qwen2.5-coder.vocab.gguf") else { return };
    let f = Factory::new(&tok).unwrap();
    let g = gbnf("root ::= \"Hello\" \" \" [a-z]+ \".\"\n");
    let text = "Hello world.";
    let ids = tok.encode(text, false, false).unwrap();
    // " world" spans the literal " " and the class; "Hello" is one token.
    assert!(ids.iter().any(|&id| tok.token_bytes(id) == b" world"), "{ids:?}");
    let mut m = f.matcher(&g).unwrap();
    let eos = tok.end_tokens()[0];
    for &id in &ids {
        let mask = m.allowed().unwrap();
        assert!(mask.is_allowed(id), "{:?}", tok.token_text(id));
        assert!(!mask.is_allowed(eos), "end allowed before the grammar can end");
        m.accept(id).unwrap();
    }
    assert!(m.is_accepting());
    let mask = m.allowed().unwrap();
    assert!(mask.is_allowed(eos));
    // Nothing else can follow the final ".": only the end tokens.
    let allowed: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&i| mask.is_allowed(i)).collect();
    assert!(allowed.iter().all(|i| tok.end_tokens().contains(i)), "{allowed:?}");
    // A token that leaves the language is refused.
    let mut m = f.matcher(&g).unwrap();
    let bad = tok.encode("Help", false, false).unwrap();
    assert!(!m.allowed().unwrap().is_allowed(*bad.last().unwrap()) || bad.len() > 1);
    assert!(m.accept(tok.encode("x", false, false).unwrap()[0]).is_err());
}

#[test]
fn the_constraint_masks_logits_before_sampling() {
    use crate::sampler::Sampler;
    use crate::SamplingParams;
    let Some(tok) = vocab("qwen2.5-coder.vocab.gguf") else { return };
    let f = Factory::new(&tok).unwrap();
    let g = gbnf("root ::= \"yes\" | \"no\"\n");
    let n = tok.vocab_size() + 300; // the output matrix may have padding rows
    let mut s = Sampler::new(n);
    // Every token equally likely, top-k 1 and min-p on: the draw is still inside the grammar.
    let p = SamplingParams { temperature: 1.0, top_k: 40, top_p: 0.9, min_p: 0.1, ..Default::default() };
    for seed in 0..20 {
        s.reseed(seed);
        let mut m = f.matcher(&g).unwrap();
        let mut out = Vec::new();
        loop {
            let mut logits = vec![0.0f32; n];
            m.mask(&mut logits).unwrap();
            let id = s.sample(&mut logits, &[], &p);
            if tok.end_tokens().contains(&id) {
                break;
            }
            m.accept(id).unwrap();
            out.extend(tok.token_bytes(id));
        }
        assert!(out == b"yes" || out == b"no", "{:?}", String::from_utf8_lossy(&out));
    }
}

/// The per-token mask time over the Qwen2.5 vocabulary while a nested JSON document is fed token
/// by token, alone and with the forced text computed after each token as the fast-forward does
/// (a benchmark, not a check: `cargo test --profile ci -p runtime --lib mask_time -- --ignored
/// --nocapture`).
#[test]
#[ignore]
fn mask_time() {
    let Some(tok) = vocab("qwen2.5-coder.vocab.gguf") else { return };
    let t0 = std::time::Instant::now();
    let f = Factory::new(&tok).unwrap();
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["street", "city", "zip"], "additionalProperties": false},
            "tags": {"type": "array", "items": {"enum": ["admin", "guest", "user"]}}
        },
        "required": ["name", "age", "address", "tags"],
        "additionalProperties": false
    });
    let doc = r#"{"name": "Ada Lovelace, née Byron", "age": 36, "address": {"street": "12 St James's Square", "city": "London", "zip": "12345"}, "tags": ["admin", "guest"]}"#;
    let g = Grammar::json_schema(&schema).unwrap();
    let ids = tok.encode(doc, false, false).unwrap();
    eprintln!("vocabulary {} tokens, trie built in {build_ms:.0} ms", tok.vocab_size());
    let mut logits = vec![0f32; tok.vocab_size()];
    for ff in [false, true] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut m = f.matcher(&g).unwrap();
            for &id in &ids {
                logits.fill(0.0);
                let t = std::time::Instant::now();
                if ff {
                    m.forced_tokens(&tok, 16);
                }
                m.mask(&mut logits).unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(logits[id as usize].is_finite(), "{:?} refused", tok.token_text(id));
                m.accept(id).unwrap();
            }
        }
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "mask per token{} over {} steps: mean {mean:.0} us, median {:.0} us, p99 {:.0} us, max {:.0} us",
            if ff { " with the forced text" } else { "" },
            times.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}
