//! Strings that come from files (metadata keys and values, tensor and zip entry names, paths) are
//! printed through [`escape`]: a model file is untrusted input, and its bytes must not reach the
//! terminal as escape sequences (retitling or clearing it), fake newlines or NULs, nor as
//! multi-kilobyte lines.

use std::fmt::Write as _;
use std::path::Path;

/// Characters kept of a string before it is cut with "…".
pub const MAX_SHOWN_CHARS: usize = 200;

/// `s` with every control character (C0, DEL, C1) and every bidirectional-text control written
/// as a visible escape (`\n`, `\t`, `\r`, `\0`, `\x1b`, `\u{202e}`), cut after
/// [`MAX_SHOWN_CHARS`] characters with "…".
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SHOWN_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A path as [`escape`] shows it (bytes that are not UTF-8 as U+FFFD).
pub fn escape_path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// Marks and embeddings that reorder how the rest of a line is displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(escape("plain name: Qwen2.5 ü"), "plain name: Qwen2.5 ü");
        assert_eq!(escape("a\nb\r\tc\0d"), "a\\nb\\r\\tc\\0d");
        assert_eq!(escape("\x1b]0;pwned\x07\x1b[2J"), "\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(escape("\x7f\u{85}\u{9b}"), "\\x7f\\u{85}\\u{9b}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn long_strings_are_cut() {
        let long = "x".repeat(5000);
        let e = escape(&long);
        assert_eq!(e.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(escape(&"y".repeat(MAX_SHOWN_CHARS)), "y".repeat(MAX_SHOWN_CHARS));
        assert_eq!(escape_path(Path::new("/tmp/a\nb.gguf")), "/tmp/a\\nb.gguf");
    }
}
