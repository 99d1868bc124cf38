//! Splitting text at special tokens, as the reference does before tokenizing the text in between.
//!
//! The reference walks its special tokens longest first and, for each, cuts every remaining text
//! fragment at each (non-overlapping, left to right) occurrence. Doing that token by token costs
//! one scan of the text per special token (Gemma 3 has 6,000+), so here the tokens are grouped by
//! length: one Aho-Corasick automaton per length, applied longest first to the fragments still
//! holding text. One overlapping pass first finds which lengths occur at all, so ordinary text
//! costs a single scan. (Two different tokens of the same length that overlap each other are cut
//! leftmost-first; the reference's order between equal lengths is unspecified.)
//! Control and unknown tokens are only recognised with `parse_special`; user-defined tokens always.

use aho_corasick::{AhoCorasick, MatchKind};

/// One piece of a partitioned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of ordinary text.
    Text(usize, usize),
    /// A special token found in the text.
    Token(u32),
}

/// Every special token of one length.
struct LengthClass {
    len: usize,
    ac: AhoCorasick,
    ids: Vec<u32>,
}

/// A set of special tokens: one automaton over all of them (to find which lengths occur) and one
/// per length (to cut).
struct TokenSet {
    any: AhoCorasick,
    any_len: Vec<usize>,
    /// Longest first.
    classes: Vec<LengthClass>,
}

fn automaton(patterns: &[&str], kind: MatchKind) -> anyhow::Result<AhoCorasick> {
    AhoCorasick::builder()
        .match_kind(kind)
        .build(patterns.iter().map(|t| t.as_bytes()))
        .map_err(|e| anyhow::anyhow!("building the special-token matcher: {e}"))
}

impl TokenSet {
    fn new(mut tokens: Vec<(u32, &str)>) -> anyhow::Result<Option<TokenSet>> {
        tokens.retain(|t| !t.1.is_empty());
        if tokens.is_empty() {
            return Ok(None);
        }
        let texts: Vec<&str> = tokens.iter().map(|t| t.1).collect();
        let any = automaton(&texts, MatchKind::Standard)?;
        let any_len = texts.iter().map(|t| t.len()).collect();
        tokens.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let mut classes = Vec::new();
        for group in tokens.chunk_by(|a, b| a.1.len() == b.1.len()) {
            let texts: Vec<&str> = group.iter().map(|t| t.1).collect();
            classes.push(LengthClass {
                len: texts[0].len(),
                ac: automaton(&texts, MatchKind::LeftmostFirst)?,
                ids: group.iter().map(|t| t.0).collect(),
            });
        }
        Ok(Some(TokenSet { any, any_len, classes }))
    }
}

pub(crate) struct SpecialMatcher {
    /// Every special token (control, unknown, user-defined): used with `parse_special`.
    all: Option<TokenSet>,
    /// User-defined tokens only: used without `parse_special`.
    user: Option<TokenSet>,
    /// Tokens after which the whitespace up to the next text is dropped (sorted ids).
    rstrip: Vec<u32>,
}

impl SpecialMatcher {
    /// `specials`: (id, text, is_user_defined_only) for every token the reference treats as special.
    pub fn new(specials: &[(u32, &str, bool)]) -> anyhow::Result<SpecialMatcher> {
        let all = specials.iter().map(|&(id, t, _)| (id, t)).collect();
        let user = specials.iter().filter(|s| s.2).map(|&(id, t, _)| (id, t)).collect();
        Ok(SpecialMatcher { all: TokenSet::new(all)?, user: TokenSet::new(user)?, rstrip: Vec::new() })
    }

    /// The tokens `ids` (sorted) drop the ASCII whitespace that follows them, as the
    /// reference's RSTRIP attribute does when it cuts the text at them.
    pub fn with_rstrip(mut self, ids: Vec<u32>) -> SpecialMatcher {
        self.rstrip = ids;
        self
    }

    /// Partition `text` into fragments (appended to `out`, cleared first).
    pub fn partition(&self, text: &str, parse_special: bool, out: &mut Vec<Fragment>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.push(Fragment::Text(0, text.len()));
        let Some(set) = (if parse_special { &self.all } else { &self.user }) else {
            return;
        };
        // Which lengths occur (usually none: then this is the only scan).
        let mut present = vec![false; set.classes[0].len + 1];
        let (mut distinct, wanted) = (0, set.classes.len());
        for m in set.any.find_overlapping_iter(text) {
            let seen = &mut present[set.any_len[m.pattern().as_usize()]];
            if !*seen {
                *seen = true;
                distinct += 1;
                if distinct == wanted {
                    break;
                }
            }
        }
        if distinct == 0 {
            return;
        }
        let mut next = Vec::with_capacity(16);
        for class in set.classes.iter().filter(|c| present[c.len]) {
            next.clear();
            for &f in out.iter() {
                let Fragment::Text(s, e) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = s;
                for m in class.ac.find_iter(&text[s..e]) {
                    if s + m.start() > pos {
                        next.push(Fragment::Text(pos, s + m.start()));
                    }
                    let id = class.ids[m.pattern().as_usize()];
                    next.push(Fragment::Token(id));
                    pos = s + m.end();
                    if self.rstrip.binary_search(&id).is_ok() {
                        // C's isspace: space, \t, \n, \v, \f, \r.
                        pos += text.as_bytes()[pos..e].iter().take_while(|b| matches!(b, b' ' | 9..=13)).count();
                    }
                }
                if pos < e {
                    next.push(Fragment::Text(pos, e));
                }
            }
            std::mem::swap(out, &mut next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Fragment::*;

    fn parts(m: &SpecialMatcher, text: &str, parse: bool) -> Vec<Fragment> {
        let mut v = vec![];
        m.partition(text, parse, &mut v);
        v
    }

    #[test]
    fn control_tokens_only_with_parse_special() {
        let m = SpecialMatcher::new(&[(1, "<s>", false), (2, "</s>", false), (9, "<tool>", true)]).unwrap();
        assert_eq!(parts(&m, "a<s>b</s>", true), [Text(0, 1), Token(1), Text(4, 5), Token(2)]);
        assert_eq!(parts(&m, "a<s>b</s>", false), [Text(0, 9)]);
        assert_eq!(parts(&m, "x<tool>", false), [Text(0, 1), Token(9)]);
        assert_eq!(parts(&m, "", true), []);
    }

    #[test]
    fn rstrip_tokens_drop_the_whitespace_after_them() {
        let m = SpecialMatcher::new(&[(1, "<s>", false), (7, "<|end|>", false)]).unwrap().with_rstrip(vec![7]);
        // "<|end|>\n \tx": the whitespace goes with the token; after "<s>" it stays.
        assert_eq!(
            parts(&m, "a<|end|>\n \tx<s> y", true),
            [Text(0, 1), Token(7), Text(11, 12), Token(1), Text(15, 17)]
        );
        assert_eq!(parts(&m, "<|end|>  ", true), [Token(7)]);
    }

    #[test]
    fn longest_token_wins_then_leftmost() {
        // "\n\n\n" as one token beats three "\n"; the reference processes longer tokens first.
        let m = SpecialMatcher::new(&[(1, "\n", true), (2, "\n\n", true), (3, "\n\n\n", true)]).unwrap();
        assert_eq!(parts(&m, "\n\n\n\n\n", false), [Token(3), Token(2)]);
        // "ab" + "bcd" in "abcd": the longer "bcd" is taken first, leaving "a" as text.
        let m = SpecialMatcher::new(&[(1, "ab", true), (2, "bcd", true)]).unwrap();
        assert_eq!(parts(&m, "abcd", false), [Text(0, 1), Token(2)]);
    }
}
