//! A model card's YAML front matter read as the reference converter reads it: the lines between
//! a first line `---` and the next `---` (all the rest when none closes it), with its two textual
//! patches, loaded the way PyYAML's `safe_load` loads it (YAML 1.1: plain `yes`/`no`/`on`/`off`
//! are booleans, `1_000` and `0x1f` integers, `2024-01-31` a date).
//!
//! The parsing is yaml-rust2's event parser: a maintained, pure-Rust YAML parser (serde_yaml is
//! deprecated and its forks are built on a C translation; saphyr, the successor by the same
//! maintainers, is still changing its API). Its loader resolves plain scalars by YAML 1.2, so the
//! tree is built here from its events, with PyYAML's 1.1 resolution, and with limits on depth
//! and on the size that aliases can multiply a document to.

use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Scanner, TScalarStyle, Token, TokenType};

/// Nesting deeper than this is refused (PyYAML's recursive composer fails on deep nesting too).
pub const MAX_DEPTH: usize = 64;
/// Nodes plus string bytes a document may hold once its aliases are expanded.
pub const MAX_WEIGHT: usize = 16 << 20;

/// A YAML node as PyYAML's safe loader constructs it (dates reduced to their type: the converter
/// only fails on them).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    Bool(bool),
    /// `None`: beyond 64 bits (Python's integers have no limit).
    Int(Option<i64>),
    Float(f64),
    Timestamp,
    Seq(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// The merge key `<<`: only while a mapping is built (its entries are then merged in).
    Merge,
}

impl Value {
    /// Python's truth of the constructed value.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Str(s) => !s.is_empty(),
            Value::Bool(b) => *b,
            Value::Int(i) => *i != Some(0),
            Value::Float(f) => *f != 0.0,
            Value::Timestamp => true,
            Value::Seq(v) => !v.is_empty(),
            Value::Map(v) => !v.is_empty(),
            Value::Merge => true,
        }
    }

    /// The Python type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Timestamp => "a date",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Merge => "a merge key",
        }
    }

    /// The value of the string key `key` of a mapping (the last one, as a Python dict keeps).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => {
                entries.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    fn weight(&self) -> usize {
        1 + match self {
            Value::Str(s) => s.len(),
            Value::Seq(v) => v.iter().map(Value::weight).sum(),
            Value::Map(v) => v.iter().map(|(k, v)| k.weight() + v.weight()).sum(),
            _ => 0,
        }
    }
}

/// Python's `str.splitlines()`: the line boundaries it knows, a `\r\n` counted once.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' && it.peek().is_some_and(|&(_, n)| n == '\n') {
                it.next();
                end += 1;
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// The YAML text of the front matter, patched as the converter patches it (`- no` quoted, the
/// Norway problem; tabs as two spaces), or `None` when the card has none.
pub fn front_matter(text: &str) -> Option<String> {
    let lines = split_lines(text);
    if lines.first() != Some(&"---") {
        return None;
    }
    let body: Vec<&str> = lines[1..].iter().copied().take_while(|l| *l != "---").collect();
    let yaml = body.join("\n") + "\n";
    Some(yaml.replace("- no\n", "- \"no\"\n").replace('\t', "  "))
}

/// PyYAML's printable characters: anything else in the stream is an error.
fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

static BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$").expect("valid")
});
static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"|[-+]?\.(?:inf|Inf|INF)",
        r"|\.(?:nan|NaN|NAN))$"
    ))
    .expect("valid")
});
static INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?0b[0-1_]+",
        r"|[-+]?0[0-7_]+",
        r"|[-+]?(?:0|[1-9][0-9_]*)",
        r"|[-+]?0x[0-9a-fA-F_]+",
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"
    ))
    .expect("valid")
});
static NULL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").expect("valid"));
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
        r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?",
        r"(?:[Tt]|[ \t]+)[0-9][0-9]?",
        r":[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?",
        r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$"
    ))
    .expect("valid")
});

/// An integer as PyYAML constructs one: underscores dropped, `0b`, `0x`, a leading `0` octal,
/// `a:b:c` base 60.
fn construct_int(text: &str) -> Result<Value, String> {
    let t = text.replace('_', "");
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, &t[..]),
    };
    let bad = || format!("'{text}' is not an integer");
    let magnitude: Option<i128> = if t == "0" {
        Some(0)
    } else if let Some(b) = t.strip_prefix("0b") {
        if b.is_empty() {
            return Err(bad());
        }
        i128::from_str_radix(b, 2).ok()
    } else if let Some(h) = t.strip_prefix("0x") {
        if h.is_empty() {
            return Err(bad());
        }
        i128::from_str_radix(h, 16).ok()
    } else if t.starts_with('0') {
        i128::from_str_radix(t, 8).ok()
    } else if t.contains(':') {
        t.split(':').try_fold(0i128, |acc, part| acc.checked_mul(60)?.checked_add(part.parse::<i128>().ok()?))
    } else {
        t.parse::<i128>().ok()
    };
    Ok(Value::Int(magnitude.map(|m| if neg { -m } else { m }).and_then(|v| i64::try_from(v).ok())))
}

/// A float as PyYAML constructs one: underscores dropped, `.inf`/`.nan`, `a:b.c` base 60.
fn construct_float(text: &str) -> Result<Value, String> {
    let t = text.replace('_', "").to_ascii_lowercase();
    let (sign, t) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, &t[..]),
    };
    let bad = || format!("'{text}' is not a number");
    let v = if t == ".inf" {
        f64::INFINITY
    } else if t == ".nan" {
        return Ok(Value::Float(f64::NAN));
    } else if t.contains(':') {
        let mut v = 0.0;
        for part in t.split(':') {
            v = v * 60.0 + part.parse::<f64>().map_err(|_| bad())?;
        }
        v
    } else {
        t.parse::<f64>().map_err(|_| bad())?
    };
    Ok(Value::Float(sign * v))
}

/// A plain scalar resolved by PyYAML's implicit resolvers, in their order.
fn resolve_plain(s: String) -> Result<Value, String> {
    Ok(if BOOL.is_match(&s) {
        Value::Bool(matches!(s.as_bytes()[0], b'y' | b'Y' | b't' | b'T') || s.eq_ignore_ascii_case("on"))
    } else if FLOAT.is_match(&s) {
        construct_float(&s)?
    } else if INT.is_match(&s) {
        construct_int(&s)?
    } else if s == "<<" {
        Value::Merge
    } else if NULL.is_match(&s) {
        Value::Null
    } else if TIMESTAMP.is_match(&s) {
        Value::Timestamp
    } else if s == "=" {
        return Err("a plain '=' has no constructor in YAML's safe schema".into());
    } else {
        Value::Str(s)
    })
}

/// A scalar with an explicit tag, as the safe constructor builds it.
fn resolve_tagged(s: String, handle: &str, suffix: &str) -> Result<Value, String> {
    let core = handle == "!!" || handle == "tag:yaml.org,2002:";
    match (core, suffix) {
        (false, "") if handle == "!" => Ok(Value::Str(s)),
        (true, "str") => Ok(Value::Str(s)),
        (true, "null") => Ok(Value::Null),
        (true, "bool") if BOOL.is_match(&s) => resolve_plain(s),
        (true, "int") if INT.is_match(&s) => resolve_plain(s),
        (true, "float") if FLOAT.is_match(&s) || INT.is_match(&s) => construct_float(&s),
        (true, "timestamp") if TIMESTAMP.is_match(&s) => Ok(Value::Timestamp),
        _ => Err(format!("the tag {handle}{suffix} is not one the safe loader constructs here")),
    }
}

/// A mapping's entries with its merge keys (`<<: *a` or `<<: [*a, *b]`) resolved as PyYAML
/// resolves them: the merged entries first (of a list, the first mapping's last, so it wins),
/// then the mapping's own, so that its own win.
fn merge(entries: Vec<(Value, Value)>) -> Result<Vec<(Value, Value)>, String> {
    if !entries.iter().any(|(k, _)| *k == Value::Merge) {
        return Ok(entries);
    }
    let (mut merged, mut own) = (Vec::new(), Vec::new());
    for (k, v) in entries {
        if k != Value::Merge {
            own.push((k, v));
            continue;
        }
        match v {
            Value::Map(m) => merged.extend(m),
            Value::Seq(items) => {
                for item in items.into_iter().rev() {
                    match item {
                        Value::Map(m) => merged.extend(m),
                        other => return Err(format!("a merge key's list holds {}, not mappings", other.type_name())),
                    }
                }
            }
            other => return Err(format!("a merge key's value is {}, not a mapping", other.type_name())),
        }
    }
    merged.extend(own);
    Ok(merged)
}

enum Open {
    Seq(Vec<Value>, usize),
    Map(Vec<(Value, Value)>, Option<Value>, usize),
}

/// Load `yaml` (one document) as PyYAML's `safe_load` does; the error is a one-line message
/// whose line numbers are the card's (the front matter starts on its second line).
pub fn load(yaml: &str) -> Result<Value, String> {
    if let Some((line, c)) =
        yaml.lines().enumerate().find_map(|(n, l)| l.chars().find(|&c| !printable(c)).map(|c| (n + 2, c)))
    {
        return Err(format!("a special character U+{:04X} on line {line}", c as u32));
    }
    // A comment line after the text closes an empty block scalar (`key: |`) on the last line,
    // which yaml-rust2 otherwise reads as "\n" where YAML (and PyYAML) read "".
    let closed = format!("{yaml}{}#\n", if yaml.ends_with('\n') { "" } else { "\n" });
    // PyYAML refuses an anchor defined twice; yaml-rust2's events do not say so (they number
    // anchors), its scanner's tokens name them.
    let mut names = std::collections::HashSet::new();
    for Token(mark, t) in Scanner::new(closed.chars()) {
        if let TokenType::Anchor(name) = t {
            if !names.insert(name) {
                return Err(format!("an anchor defined twice on line {}", mark.line() + 1));
            }
        }
    }
    let mut parser = Parser::new_from_str(&closed);
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Value> = HashMap::new();
    let mut weight = 0usize;
    let mut root: Option<Value> = None;
    let mut documents = 0;
    loop {
        let (event, mark) =
            parser.next_token().map_err(|e| format!("{} on line {}", e.info(), e.marker().line() + 1))?;
        let mut is_alias = false;
        let done = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(format!("more than one document on line {}", mark.line() + 1));
                }
                continue;
            }
            Event::Scalar(s, style, anchor, tag) => {
                let v = match (&tag, style) {
                    (Some(t), _) => resolve_tagged(s, &t.handle, &t.suffix)?,
                    (None, TScalarStyle::Plain) => resolve_plain(s)?,
                    (None, _) => Value::Str(s),
                };
                (v, anchor)
            }
            Event::Alias(id) => {
                let v = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("an alias to an unknown or open anchor on line {}", mark.line() + 1))?;
                is_alias = true;
                (v, 0)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested more than {MAX_DEPTH} levels deep on line {}", mark.line() + 1));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Open::Seq(Vec::new(), anchor),
                    _ => Open::Map(Vec::new(), None, anchor),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(v, anchor)) => (Value::Seq(v), anchor),
                Some(Open::Map(v, _, anchor)) => (Value::Map(merge(v)?), anchor),
                None => return Err("an unbalanced collection".into()),
            },
            _ => continue,
        };
        let (value, anchor) = done;
        // Each scalar once, each collection once more, each alias as the whole copy it makes.
        weight += match (&value, is_alias) {
            (v, true) => v.weight(),
            (Value::Str(s), false) => 1 + s.len(),
            _ => 1,
        };
        if weight > MAX_WEIGHT {
            return Err(format!("larger than {MAX_WEIGHT} nodes and bytes once its aliases are expanded"));
        }
        if anchor != 0 {
            anchors.insert(anchor, value.clone());
        }
        if value == Value::Merge && !matches!(stack.last(), Some(Open::Map(_, None, _))) {
            return Err(format!("a merge key (<<) outside a key's place on line {}", mark.line() + 1));
        }
        match stack.last_mut() {
            None => root = Some(value),
            Some(Open::Seq(v, _)) => v.push(value),
            Some(Open::Map(entries, key, _)) => match key.take() {
                None => {
                    if matches!(value, Value::Seq(_) | Value::Map(_)) {
                        return Err(format!("a list or mapping as a key on line {}", mark.line() + 1));
                    }
                    *key = Some(value);
                }
                Some(k) => entries.push((k, value)),
            },
        }
    }
    Ok(root.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(s: &str) -> Result<Value, String> {
        load(&format!("k: {s}\n")).map(|v| v.get("k").cloned().unwrap())
    }

    /// Plain scalars resolve to the types PyYAML 6's safe_load gives them (checked with
    /// `yaml.safe_load("k: " + v)` for each).
    #[test]
    fn plain_scalars_resolve_as_pyyaml_resolves_them() {
        let s = |x: &str| Value::Str(x.into());
        use Value::{Float as F, Int as I};
        let cases: &[(&str, Value)] = &[
            ("yes", Value::Bool(true)),
            ("No", Value::Bool(false)),
            ("on", Value::Bool(true)),
            ("OFF", Value::Bool(false)),
            ("y", s("y")),
            ("n", s("n")),
            ("1.0", F(1.0)),
            ("1e3", s("1e3")),
            ("1.0e+3", F(1000.0)),
            (".5", F(0.5)),
            ("+.5", s("+.5")),
            ("+1.5e-3", F(0.0015)),
            ("6.0_1", F(6.01)),
            ("0.0", F(0.0)),
            ("-0.", F(-0.0)),
            ("0.0e+0", F(0.0)),
            ("1_000", I(Some(1000))),
            ("-1_0", I(Some(-10))),
            ("0x1F", I(Some(31))),
            ("0x0", I(Some(0))),
            ("0b0", I(Some(0))),
            ("0b1_01", I(Some(5))),
            ("017", I(Some(15))),
            ("0o17", s("0o17")),
            ("00", I(Some(0))),
            ("-0", I(Some(0))),
            ("1:20", I(Some(80))),
            ("1:30:00", I(Some(5400))),
            ("99999999999999999999", I(None)),
            ("1:20.5", F(80.5)),
            (".inf", F(f64::INFINITY)),
            ("-.inf", F(f64::NEG_INFINITY)),
            ("null", Value::Null),
            ("~", Value::Null),
            ("", Value::Null),
            ("2024-01-31", Value::Timestamp),
            ("2024-01-31T10:20:30Z", Value::Timestamp),
            ("v0.2", s("v0.2")),
            ("apache-2.0", s("apache-2.0")),
            ("'yes'", s("yes")),
            ("\"0\"", s("0")),
            ("!!str 12", s("12")),
        ];
        for (text, want) in cases {
            assert_eq!(scalar(text).as_ref(), Ok(want), "{text:?}");
        }
        assert!(matches!(scalar(".NaN"), Ok(Value::Float(f)) if f.is_nan()));
        assert!(scalar("=").is_err());
        assert!(scalar("!custom x").is_err());
    }

    #[test]
    fn front_matter_as_the_converter_cuts_it() {
        assert_eq!(front_matter("---\r\na: 1\r\n---\r\nbody").as_deref(), Some("a: 1\n"));
        // Not closed: the rest of the file is the front matter.
        assert_eq!(front_matter("---\na: 1\n# body\n").as_deref(), Some("a: 1\n# body\n"));
        // The Norway patch and tabs.
        assert_eq!(front_matter("---\nl:\n- no\n\t- x\n---\n").as_deref(), Some("l:\n- \"no\"\n  - x\n"));
        // The first line must be exactly "---" (a byte-order mark makes it another).
        assert_eq!(front_matter("\u{feff}---\na: 1\n---\n"), None);
        assert_eq!(front_matter("# title\n---\na: 1\n---\n"), None);
        assert_eq!(front_matter(""), None);
    }

    #[test]
    fn hostile_documents_are_refused_not_expanded() {
        // Deep nesting, block and flow.
        let mut deep = String::new();
        for i in 0..200 {
            deep.push_str(&" ".repeat(i));
            deep.push_str("a:\n");
        }
        assert!(load(&deep).unwrap_err().contains("levels deep"));
        assert!(load(&format!("x: {}\n", "[".repeat(100_000))).is_err());
        // Aliases that multiply a document past the limit (a billion laughs).
        let mut bomb = String::from("a: &a [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
        for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().zip(["a", "b", "c", "d", "e", "f", "g", "h"]) {
            bomb.push_str(&format!("{i}: &{i} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
        }
        assert!(load(&bomb).unwrap_err().contains("aliases"));
        // A control character, two documents, an unhashable key, an unknown alias.
        assert!(load("a: \u{1}\n").unwrap_err().contains("U+0001 on line 2"));
        assert!(load("a: 1\n---\nb: 2\n").is_err());
        assert!(load("? [a]\n: 1\n").is_err());
        assert!(load("a: *nope\n").is_err());
        assert!(load("a: &x 1\nb: &x 2\n").unwrap_err().contains("anchor defined twice on line 3"));
        assert!(load("a: [b\n").unwrap_err().contains("line"));
    }

    /// Block scalars, empty ones on the last line too, as PyYAML reads them (`yaml.safe_load`).
    #[test]
    fn block_scalars_read_as_pyyaml_reads_them() {
        for (doc, want) in [
            ("a: |\n", ""),
            ("a: |+\n", ""),
            ("a: |-\n", ""),
            ("a: |+\n\n", "\n"),
            ("a: |\n\n", ""),
            ("a: >\n  \n", ""),
            ("a: |\n  x\n", "x\n"),
            ("a: |+\n  x\n\n", "x\n\n"),
            ("a: >\n  x\n  y\n", "x y\n"),
            ("a: |\n b: 1\n", "b: 1\n"),
            ("a: |", ""),
        ] {
            assert_eq!(load(doc).unwrap().get("a"), Some(&Value::Str(want.into())), "{doc:?}");
        }
    }

    /// Merge keys as PyYAML merges them (`yaml.safe_load` of the same text gives
    /// {'x': 1, 'y': 2, 'z': 30} for `c` and {'x': 1, 'y': 2} for `d`).
    #[test]
    fn merge_keys_merge_as_pyyaml_merges_them() {
        let v = load("a: &a {x: 1, y: 2}\nb: &b {x: 9, z: 3}\nc:\n  <<: [*a, *b]\n  z: 30\nd:\n  <<: *a\n").unwrap();
        let int = |i| Value::Int(Some(i));
        let c = v.get("c").unwrap();
        assert_eq!((c.get("x"), c.get("y"), c.get("z")), (Some(&int(1)), Some(&int(2)), Some(&int(30))));
        let d = v.get("d").unwrap();
        assert_eq!((d.get("x"), d.get("y")), (Some(&int(1)), Some(&int(2))));
        assert!(load("a: <<\n").is_err());
        assert!(load("a:\n  <<: 1\n").is_err());
    }

    #[test]
    fn aliases_copy_and_last_duplicate_key_wins() {
        let v = load("a: &x {k: v}\nb: *x\nc: 1\nc: two\n").unwrap();
        assert_eq!(v.get("b"), v.get("a"));
        assert_eq!(v.get("c"), Some(&Value::Str("two".into())));
    }
}
