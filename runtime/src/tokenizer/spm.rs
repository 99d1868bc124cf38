//! SentencePiece (`tokenizer.ggml.model = llama`) vocabularies as BPE merges.
//!
//! The reference's SentencePiece tokenizer starts from single characters and repeatedly joins the
//! adjacent pair whose concatenation is the highest-scoring vocabulary piece (leftmost first on
//! ties), then falls back to `<0xNN>` byte pieces for characters the vocabulary lacks. A BPE model
//! does the same when every way of writing a piece as two vocabulary pieces is a merge ranked by
//! that piece's score (highest first; ties by id, then split position) and byte fallback is on.
//! (Checked against the reference on the Mistral, Gemma 3 vocabularies: see the tests.)
//!
//! Only splits whose two halves are both pieces can ever fire, so instead of sorting all splits
//! the pieces are visited in score order and each split is one hash lookup per half; the work is
//! spread over threads with rayon (262,144 pieces: ~0.5 M merges).

use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// The merges `(left, right)` in rank order, as text (what the `tokenizers` BPE builder takes).
pub(crate) fn synthesize_merges<S: BuildHasher + Sync>(
    tokens: &[&str],
    scores: &[f32],
    vocab: &HashMap<String, u32, S>,
) -> Vec<(String, String)> {
    let mut order: Vec<u32> = (0..tokens.len() as u32).filter(|&i| tokens[i as usize].chars().nth(1).is_some()).collect();
    // Highest score first; equal scores by id. `total_cmp` orders NaN deterministically.
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    order
        .par_chunks(4096)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 2);
            for &id in chunk {
                let t = tokens[id as usize];
                for (pos, _) in t.char_indices().skip(1) {
                    let (l, r) = t.split_at(pos);
                    if vocab.contains_key(l) && vocab.contains_key(r) {
                        out.push((l.to_string(), r.to_string()));
                    }
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .concat()
}

/// Replace ' ' by '▁' (U+2581), the SentencePiece space, appending to `out`.
pub(crate) fn escape_whitespace(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = rest.find(' ') {
        out.push_str(&rest[..i]);
        out.push('▁');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores_and_need_both_halves() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "xyz"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0, 5.0];
        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let m = synthesize_merges(&tokens, &scores, &vocab);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "xyz" scores highest but has no split into pieces; "bc" (-1) before "ab" (-2) before
        // "abc" (-3), whose two splits come in position order.
        assert_eq!(m, [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn whitespace_escape() {
        let mut s = String::new();
        escape_whitespace(" a  b ", &mut s);
        assert_eq!(s, "▁a▁▁b▁");
    }
}
