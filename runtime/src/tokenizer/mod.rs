//! Tokenizer built from GGUF metadata (HF `tokenizers`), and chat templates (minijinja).
//! CONTRACT used by the engine, CLI and server (owner: tokenizer issue #4): extend, don't break.

pub mod chat;

use crate::gguf::GgufFile;

pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.*` metadata (`llama` SentencePiece or `gpt2` byte-level BPE).
    pub fn from_gguf(g: &GgufFile) -> anyhow::Result<Tokenizer> {
        let _ = g;
        todo!()
    }
    /// Text -> ids. `add_special`: add BOS/EOS as the metadata says (`add_bos_token`...).
    /// `parse_special`: recognise special/control tokens written in the text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> anyhow::Result<Vec<u32>> {
        let _ = (text, add_special, parse_special);
        todo!()
    }
    /// Ids -> text (special tokens rendered as their text).
    pub fn decode(&self, ids: &[u32]) -> String {
        let _ = ids;
        todo!()
    }
    /// The raw bytes one token stands for (byte-fallback and byte-level decoded, `▁` -> ' ').
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let _ = id;
        todo!()
    }
    /// A token's text as stored in the vocabulary (e.g. "▁Hello", "<s>").
    pub fn token_text(&self, id: u32) -> &str {
        let _ = id;
        todo!()
    }
    pub fn vocab_size(&self) -> usize {
        todo!()
    }
    pub fn bos(&self) -> Option<u32> {
        todo!()
    }
    pub fn eos(&self) -> Option<u32> {
        todo!()
    }
    /// Every token that ends a turn/generation (EOS, EOT, `<|im_end|>`, `<end_of_turn>`, ...).
    pub fn end_tokens(&self) -> &[u32] {
        todo!()
    }
    /// Whether `add_special` adds a BOS.
    pub fn adds_bos(&self) -> bool {
        todo!()
    }
}

/// Incremental detokenizer: holds back bytes of a character split across tokens.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Feed one token; returns the text that is complete so far (may be empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let _ = (tok, id, &self.pending);
        todo!()
    }
    /// Whatever is left (invalid bytes replaced by U+FFFD).
    pub fn finish(&mut self) -> String {
        todo!()
    }
}
