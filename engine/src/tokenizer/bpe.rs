//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) merging, as the reference does it.
//!
//! Each pre-token (already mapped byte by byte to GPT-2's printable characters) starts as single
//! characters; the adjacent pair with the lowest merge rank (leftmost on ties) is joined until no
//! pair has a merge; each resulting piece is a token (or, if a lone character is not one, its
//! bytes' single-byte tokens, as the reference).
//!
//! Why not the `tokenizers` crate's BPE model (which gives the same ids, and which the tests use
//! as the oracle): building it from Qwen2.5's 151,936 tokens and 151,387 merges took ~0.33 s here
//! (a `String` per token and per merge half, then its builder re-hashes them all), most of the
//! tokenizer's start-up. This table keys merges by token ids over the shared token index and
//! builds in ~30 ms.

use super::index::{FxBuild, Packed, TokenIndex, WordCache};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::collections::{BinaryHeap, HashMap};

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    /// The token this piece is (None: a lone character the vocabulary lacks).
    id: Option<u32>,
    prev: i32,
    next: i32,
}

/// A candidate join: lowest rank first, then leftmost.
#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
    id: u32,
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}

/// Buffers reused across the pre-tokens of one `encode` call.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
    cache: WordCache,
}

pub(crate) struct BpeModel {
    /// (left id << 32 | right id) -> (rank, merged id).
    merges: HashMap<u64, (u32, u32), FxBuild>,
    ignore_merges: bool,
}

fn pair(l: u32, r: u32) -> u64 {
    (l as u64) << 32 | r as u64
}

impl BpeModel {
    /// `merges`: "left right" strings in rank order. A merge whose parts or result are not
    /// tokens can never produce a token: skipped. The first of duplicate merges wins.
    pub fn new(texts: &Packed, index: &TokenIndex, merges: &[&str], ignore_merges: bool) -> Result<BpeModel> {
        let parsed: Vec<Result<Option<(u64, u32)>>> = merges
            .par_iter()
            .enumerate()
            .map_init(String::new, |joined, (i, m)| {
                // The reference splits at the first space after the first byte.
                let Some(sp) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                    bail!("tokenizer.ggml.merges[{i}] = {m:?} is not \"left right\"");
                };
                let (l, r) = (&m[..sp], &m[sp + 1..]);
                joined.clear();
                joined.push_str(l);
                joined.push_str(r);
                let get = |t: &str| index.get(texts, t.as_bytes());
                Ok(match (get(l), get(r), get(joined)) {
                    (Some(a), Some(b), Some(c)) => Some((pair(a, b), c)),
                    _ => None,
                })
            })
            .collect();
        let mut table = HashMap::with_capacity_and_hasher(merges.len(), FxBuild::default());
        for (rank, p) in parsed.into_iter().enumerate() {
            if let Some((key, id)) = p? {
                table.entry(key).or_insert((rank as u32, id));
            }
        }
        Ok(BpeModel { merges: table, ignore_merges })
    }

    /// Tokenize one pre-token (byte-level characters), appending ids to `out`.
    pub fn encode_word(&self, texts: &Packed, index: &TokenIndex, word: &str, out: &mut Vec<u32>, sc: &mut Scratch) {
        if word.is_empty() {
            return;
        }
        if let Some(ids) = sc.cache.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let before = out.len();
        self.merge_word(texts, index, word, out, sc);
        sc.cache.put(word, &out[before..]);
    }

    fn merge_word(&self, texts: &Packed, index: &TokenIndex, word: &str, out: &mut Vec<u32>, sc: &mut Scratch) {
        if self.ignore_merges {
            if let Some(id) = index.get(texts, word.as_bytes()) {
                out.push(id);
                return;
            }
        }
        let bytes = word.as_bytes();
        let syms = &mut sc.syms;
        let heap = &mut sc.heap;
        syms.clear();
        heap.clear();
        let mut it = word.char_indices().peekable();
        while let Some((s, _)) = it.next() {
            let e = it.peek().map_or(word.len(), |p| p.0);
            let i = syms.len() as i32;
            let id = index.get(texts, &bytes[s..e]);
            syms.push(Sym {
                start: s as u32,
                len: (e - s) as u32,
                id,
                prev: i - 1,
                next: if e == word.len() { -1 } else { i + 1 },
            });
        }
        let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (syms[left as usize], syms[right as usize]);
            if let (Some(a), Some(b)) = (l.id, r.id) {
                if let Some(&(rank, id)) = self.merges.get(&pair(a, b)) {
                    heap.push(Bigram { rank, left: left as u32, right: right as u32, size: l.len + r.len, id });
                }
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
            let left = &mut syms[b.left as usize];
            left.len += r.len;
            left.id = Some(b.id);
            left.next = r.next;
            syms[b.right as usize].len = 0;
            if r.next >= 0 {
                syms[r.next as usize].prev = b.left as i32;
            }
            try_add(syms, heap, l.prev, b.left as i32);
            try_add(syms, heap, b.left as i32, r.next);
        }
        let mut i = 0i32;
        while i >= 0 {
            let s = syms[i as usize];
            match s.id {
                Some(id) => out.push(id),
                None => {
                    // As the reference: each byte of the piece as a one-byte token, if there is one.
                    for b in &bytes[s.start as usize..(s.start + s.len) as usize] {
                        if let Some(id) = index.get(texts, std::slice::from_ref(b)) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }
}
