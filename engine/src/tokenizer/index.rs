//! Token text -> id, over the packed token texts (no per-token allocation).
//!
//! A `HashMap<String, u32>` costs one allocation per token and ~80 ms for Gemma 3's 262,144
//! pieces; this open-addressing table of ids, probing with a multiply-rotate hash and comparing
//! against the packed texts, builds in a few milliseconds and is what the SentencePiece merge loop
//! queries for every candidate pair. (No hasher crate is a direct dependency; the hash below is
//! the well-known FxHash step, enough for a fixed vocabulary.)

/// Strings stored back to back: one allocation for the whole vocabulary instead of one per token.
pub(crate) struct Packed {
    data: Vec<u8>,
    /// `ends[i]` = end of item i; item i starts at `ends[i-1]` (0 for the first).
    ends: Vec<u32>,
}

impl Packed {
    pub fn with_capacity(n: usize, bytes: usize) -> Packed {
        Packed { data: Vec::with_capacity(bytes), ends: Vec::with_capacity(n) }
    }
    pub fn push(&mut self, b: &[u8]) {
        self.data.extend_from_slice(b);
        self.ends.push(self.data.len() as u32);
    }
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    // Fold the high bits down: the table index uses the low bits.
    h ^ (h >> 29)
}

/// Open addressing, linear probing, load factor <= 1/2; slots hold id + 1 (0 = empty).
pub(crate) struct TokenIndex {
    slots: Vec<u32>,
    mask: usize,
}

impl TokenIndex {
    /// Index every text; `Err((first, second))` for the first text that appears twice.
    pub fn build(texts: &Packed) -> Result<TokenIndex, (u32, u32)> {
        let cap = (texts.len() * 2).next_power_of_two().max(16);
        let mut idx = TokenIndex { slots: vec![0; cap], mask: cap - 1 };
        for i in 0..texts.len() {
            let t = texts.get(i);
            let mut s = hash(t) as usize & idx.mask;
            loop {
                match idx.slots[s] {
                    0 => {
                        idx.slots[s] = i as u32 + 1;
                        break;
                    }
                    j if texts.get(j as usize - 1) == t => return Err((j - 1, i as u32)),
                    _ => s = (s + 1) & idx.mask,
                }
            }
        }
        Ok(idx)
    }

    pub fn get(&self, texts: &Packed, text: &[u8]) -> Option<u32> {
        let mut s = hash(text) as usize & self.mask;
        loop {
            match self.slots[s] {
                0 => return None,
                j if texts.get(j as usize - 1) == text => return Some(j - 1),
                _ => s = (s + 1) & self.mask,
            }
        }
    }
}

/// The same multiply-rotate step as a `Hasher` for integer keys (the BPE merge table).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.write_u64(hash(bytes));
    }
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// Pieces already tokenized during one `encode` call (text repeats words a lot): ids for each
/// distinct short piece, kept for the call only, so there is no shared state and no lock.
#[derive(Default)]
pub(crate) struct WordCache {
    map: std::collections::HashMap<Box<str>, (u32, u32), FxBuild>,
    ids: Vec<u32>,
}

impl WordCache {
    /// Longer pieces are rare and not worth keeping.
    pub const MAX_LEN: usize = 64;

    pub fn get(&self, piece: &str) -> Option<&[u32]> {
        self.map.get(piece).map(|&(s, n)| &self.ids[s as usize..(s + n) as usize])
    }

    pub fn put(&mut self, piece: &str, ids: &[u32]) {
        if piece.len() <= Self::MAX_LEN {
            let start = self.ids.len() as u32;
            self.ids.extend_from_slice(ids);
            self.map.insert(piece.into(), (start, ids.len() as u32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_text_and_rejects_duplicates() {
        let mut p = Packed::with_capacity(4, 16);
        for t in ["a", "bb", "", "ccc", "a longer text than eight bytes"] {
            p.push(t.as_bytes());
        }
        let idx = TokenIndex::build(&p).unwrap();
        for i in 0..p.len() {
            assert_eq!(idx.get(&p, p.get(i)), Some(i as u32));
        }
        assert_eq!(idx.get(&p, b"zz"), None);
        p.push(b"bb");
        assert_eq!(TokenIndex::build(&p).err(), Some((1, 5)));
    }
}
