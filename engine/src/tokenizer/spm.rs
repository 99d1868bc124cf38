//! SentencePiece (`tokenizer.ggml.model = llama`) tokenization, as the reference does it.
//!
//! The reference starts from single characters and repeatedly joins the adjacent pair whose
//! concatenation is the highest-scoring vocabulary piece (leftmost first on ties), then falls back
//! to `<0xNN>` byte pieces for what the vocabulary lacks.
//!
//! Why not the `tokenizers` crate's BPE here: it reproduces these ids exactly when every split of
//! every piece into two pieces is given as a merge ranked by score (`synthesize_merges`, kept as
//! the test oracle), but for Gemma 3's 262,144 pieces that is 0.5 M merges, and building the BPE
//! model from them took 1.0 s here (0.3 s synthesizing even in parallel, 0.6 s in the crate's
//! builder, which takes merges as strings and re-hashes them), against a 300 ms budget. The
//! reference's algorithm needs no merge table at all: the text of a candidate pair is a slice of
//! the input, looked up in the token index. It is ~100 lines, below; the tests check it against
//! the reference's ids and against the `tokenizers` BPE with synthesized merges.
//!
//! Speed: one long run of text would make one huge priority queue (the reference does that, and
//! it is cache-hostile: 1 MB in one piece took 1.3 s). No piece can span a point where a `▁`
//! follows another character unless some vocabulary piece contains such a junction (Mistral has
//! none, Gemma 3 one: `>▁</`), so the text is cut there first, except inside occurrences of those
//! pieces. The result is identical; each cut is tokenized on its own.

use super::index::{Packed, TokenIndex, WordCache};
use aho_corasick::AhoCorasick;
use anyhow::{bail, Result};
use std::collections::BinaryHeap;

const SPACE: char = '\u{2581}';

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

/// A candidate join: higher score first, then leftmost.
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

/// Buffers reused across the pieces of one `encode` call.
#[derive(Default)]
pub(crate) struct Scratch {
    work: Work,
    cuts: Vec<usize>,
    blocked: Vec<usize>,
    cache: WordCache,
}

#[derive(Default)]
struct Work {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}

pub(crate) struct SpmModel {
    scores: Vec<f32>,
    byte_ids: Box<[Option<u32>; 256]>,
    unk: Option<u32>,
    /// Pieces that contain a character followed by `▁` (text must not be cut inside them).
    bridges: Option<AhoCorasick>,
}

impl SpmModel {
    pub fn new(texts: &Packed, index: &TokenIndex, scores: Vec<f32>, unk: Option<u32>) -> Result<SpmModel> {
        let mut byte_ids = Box::new([None; 256]);
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = index.get(texts, format!("<0x{b:02X}>").as_bytes());
        }
        let mut bridges = Vec::new();
        for i in 0..texts.len() {
            let t = texts.get(i);
            // Valid UTF-8: the texts come from `&str`s.
            let t = std::str::from_utf8(t).unwrap_or("");
            if t.match_indices(SPACE).any(|(p, _)| p > 0 && !t[..p].ends_with(SPACE)) {
                bridges.push(t.to_string());
            }
        }
        let bridges = if bridges.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::new(&bridges)
                    .map_err(|e| anyhow::anyhow!("building the SentencePiece cut matcher: {e}"))?,
            )
        };
        Ok(SpmModel { scores, byte_ids, unk, bridges })
    }

    /// Tokenize `text` (already `▁`-escaped), appending ids to `out`.
    pub fn encode(
        &self,
        texts: &Packed,
        index: &TokenIndex,
        text: &str,
        out: &mut Vec<u32>,
        sc: &mut Scratch,
    ) -> Result<()> {
        sc.cuts.clear();
        sc.blocked.clear();
        if let Some(b) = &self.bridges {
            for m in b.find_overlapping_iter(text) {
                let inner = &text[m.start()..m.end()];
                sc.blocked.extend(inner.match_indices(SPACE).map(|(p, _)| m.start() + p).filter(|&p| p > m.start()));
            }
            sc.blocked.sort_unstable();
        }
        for (p, _) in text.match_indices(SPACE) {
            if p > 0 && !text[..p].ends_with(SPACE) && sc.blocked.binary_search(&p).is_err() {
                sc.cuts.push(p);
            }
        }
        let mut start = 0;
        for i in 0..=sc.cuts.len() {
            let end = if i < sc.cuts.len() { sc.cuts[i] } else { text.len() };
            let piece = &text[start..end];
            start = end;
            if let Some(ids) = sc.cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let before = out.len();
            self.encode_piece(texts, index, piece, out, &mut sc.work)?;
            sc.cache.put(piece, &out[before..]);
        }
        Ok(())
    }

    /// The reference's way, with no cuts (tests compare the two).
    #[cfg(test)]
    pub fn encode_uncut(&self, texts: &Packed, index: &TokenIndex, text: &str, out: &mut Vec<u32>) -> Result<()> {
        self.encode_piece(texts, index, text, out, &mut Work::default())
    }

    fn encode_piece(
        &self,
        texts: &Packed,
        index: &TokenIndex,
        text: &str,
        out: &mut Vec<u32>,
        sc: &mut Work,
    ) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let bytes = text.as_bytes();
        let syms = &mut sc.syms;
        let heap = &mut sc.heap;
        syms.clear();
        heap.clear();
        let mut it = text.char_indices().peekable();
        while let Some((s, _)) = it.next() {
            let e = it.peek().map_or(text.len(), |p| p.0);
            let i = syms.len() as i32;
            syms.push(Sym {
                start: s as u32,
                len: (e - s) as u32,
                prev: i - 1,
                next: if e == text.len() { -1 } else { i + 1 },
            });
        }
        let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (syms[left as usize], syms[right as usize]);
            let piece = &bytes[l.start as usize..(l.start + l.len + r.len) as usize];
            if let Some(id) = index.get(texts, piece) {
                heap.push(Bigram {
                    score: self.scores[id as usize],
                    left: left as u32,
                    right: right as u32,
                    size: piece.len() as u32,
                });
            }
        };
        for i in 1..syms.len() as i32 {
            try_add(syms, heap, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left as usize], syms[b.right as usize]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // outdated
            }
            syms[b.left as usize].len += r.len;
            syms[b.right as usize].len = 0;
            syms[b.left as usize].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = b.left as i32;
            }
            try_add(syms, heap, l.prev, b.left as i32);
            try_add(syms, heap, b.left as i32, r.next);
        }
        let mut i = 0i32;
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &bytes[s.start as usize..(s.start + s.len) as usize];
            match index.get(texts, piece) {
                Some(id) => out.push(id),
                None => {
                    for &b in piece {
                        match self.byte_ids[b as usize].or(self.unk) {
                            Some(id) => out.push(id),
                            None => bail!("the vocabulary has no piece for byte 0x{b:02X} and no <unk>"),
                        }
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }
}

/// Replace ' ' by '▁' (U+2581), the SentencePiece space, appending to `out`.
pub(crate) fn escape_whitespace(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = rest.find(' ') {
        out.push_str(&rest[..i]);
        out.push(SPACE);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// The same tokenization as BPE merges for the `tokenizers` crate: every split of a piece into
/// two pieces, ranked by the piece's score (highest first; ties by id, then split position).
/// Only the tests use it, as an independent oracle.
#[cfg(test)]
pub(crate) fn synthesize_merges<S: std::hash::BuildHasher + Sync>(
    tokens: &[&str],
    scores: &[f32],
    vocab: &std::collections::HashMap<String, u32, S>,
) -> Vec<(String, String)> {
    use rayon::prelude::*;
    let mut order: Vec<u32> =
        (0..tokens.len() as u32).filter(|&i| tokens[i as usize].chars().nth(1).is_some()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
