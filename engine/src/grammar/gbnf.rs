//! llama.cpp's GBNF grammar syntax, turned into the Lark dialect that `llguidance` compiles.
//!
//! GBNF is a context-free grammar over Unicode characters: `name ::= alternatives`, string
//! literals with `\x \u \U \n \r \t \\ \"` escapes, character classes `[a-z]` / `[^...]`, `.`,
//! groups, `* + ?` and `{m}`, `{m,}`, `{m,n}`, `#` comments; `root` is the start rule; a rule
//! ends at a newline outside parentheses (and after `|` or `::=` the next line continues it).
//!
//! Every literal is split into one-character pieces and every class is one character, so the
//! Lark lexer only ever matches single characters: the language is exactly the GBNF one (a
//! multi-character lexeme would be matched greedily, which can reject strings that GBNF accepts,
//! e.g. `("a" | "ab") "b"` on "ab"). Rule names are mangled into Lark's lowercase rule names
//! injectively (GBNF names are `[a-zA-Z0-9-]`, none has `_`).

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

#[derive(Debug, Clone)]
enum Expr {
    /// One character.
    Char(char),
    /// `[...]`: (negated, ranges).
    Class(bool, Vec<(char, char)>),
    Any,
    Ref(String, usize),
    Seq(Vec<Expr>),
    Alt(Vec<Expr>),
    Repeat(Box<Expr>, u32, Option<u32>),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

/// GBNF text -> a Lark grammar whose start rule is `root`.
pub fn to_lark(src: &str) -> Result<String> {
    let mut p = Parser { src, pos: 0 };
    let mut rules: BTreeMap<String, Expr> = BTreeMap::new();
    let mut order = Vec::new();
    loop {
        p.skip_space(true);
        if p.at_end() {
            break;
        }
        let at = p.pos;
        let name = p.name()?;
        p.skip_space(false);
        if !p.eat("::=") {
            return Err(p.error("expected '::=' after the rule name"));
        }
        p.skip_space(true);
        let body = p.alternatives(false)?;
        p.skip_space(false);
        if !p.at_end() && !p.eat("\n") && !p.eat("\r\n") {
            return Err(p.error("expected the end of the line after the rule"));
        }
        if rules.insert(name.clone(), body).is_some() {
            return Err(Parser { src, pos: at }.error(&format!("rule '{name}' is defined twice")));
        }
        order.push(name);
    }
    if !rules.contains_key("root") {
        bail!("the grammar has no 'root' rule");
    }
    let mut used = BTreeSet::new();
    for e in rules.values() {
        refs(e, &mut used);
    }
    for (name, at) in &used {
        if !rules.contains_key(name) {
            return Err(Parser { src, pos: *at }.error(&format!("undefined rule '{name}'")));
        }
    }
    let mut out = String::from("start: ");
    out.push_str(&mangle("root"));
    out.push('\n');
    for name in &order {
        let _ = writeln!(out, "{}: {}", mangle(name), emit(&rules[name]));
    }
    Ok(out)
}

fn refs(e: &Expr, out: &mut BTreeSet<(String, usize)>) {
    match e {
        Expr::Ref(n, at) => {
            out.insert((n.clone(), *at));
        }
        Expr::Seq(v) | Expr::Alt(v) => v.iter().for_each(|x| refs(x, out)),
        Expr::Repeat(x, ..) => refs(x, out),
        _ => {}
    }
}

/// A GBNF name as a Lark rule name: `g_` + the name, `-` -> `__`, an upper-case letter -> `_` and
/// its lower case.
fn mangle(name: &str) -> String {
    let mut s = String::from("g_");
    for c in name.chars() {
        match c {
            '-' => s.push_str("__"),
            c if c.is_ascii_uppercase() => {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            }
            c => s.push(c),
        }
    }
    s
}

fn emit(e: &Expr) -> String {
    match e {
        Expr::Char(c) => serde_json::to_string(&c.to_string()).unwrap_or_default(),
        Expr::Any => "/(?s:.)/".into(),
        Expr::Class(neg, ranges) => {
            let mut s = String::from(if *neg { "/[^" } else { "/[" });
            for (a, b) in ranges {
                let _ = write!(s, "\\x{{{:x}}}", *a as u32);
                if a != b {
                    let _ = write!(s, "-\\x{{{:x}}}", *b as u32);
                }
            }
            s.push_str("]/");
            s
        }
        Expr::Ref(n, _) => mangle(n),
        // An empty sequence (e.g. `a ::= "" | "x"`): the empty string.
        Expr::Seq(v) if v.is_empty() => "\"\"".into(),
        Expr::Seq(v) => format!("({})", v.iter().map(emit).collect::<Vec<_>>().join(" ")),
        // Empty alternatives (`ws ::= | " "`) make the group optional.
        Expr::Alt(v) => {
            let empty = |e: &&Expr| matches!(e, Expr::Seq(x) if x.is_empty());
            let alts: Vec<String> = v.iter().filter(|e| !empty(e)).map(emit).collect();
            let opt = if v.iter().any(|e| empty(&e)) { "?" } else { "" };
            format!("({}){opt}", alts.join(" | "))
        }
        Expr::Repeat(x, 0, None) => format!("{}*", emit(x)),
        Expr::Repeat(x, 1, None) => format!("{}+", emit(x)),
        Expr::Repeat(x, 0, Some(1)) => format!("{}?", emit(x)),
        Expr::Repeat(x, m, None) => format!("{}{{{m},}}", emit(x)),
        Expr::Repeat(x, m, Some(n)) => format!("{}{{{m},{n}}}", emit(x)),
    }
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }
    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    /// "line L, column C: what" (column in characters, 1-based).
    fn error(&self, what: &str) -> anyhow::Error {
        let before = &self.src[..self.pos.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        anyhow::anyhow!("grammar: line {line}, column {col}: {what}")
    }
    /// Spaces, tabs and comments; newlines too when `newlines`.
    fn skip_space(&mut self, newlines: bool) {
        loop {
            match self.peek() {
                Some(' ' | '\t') => self.pos += 1,
                Some('\r' | '\n') if newlines => self.pos += 1,
                Some('#') => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.pos += c.len_utf8();
                    }
                }
                _ => break,
            }
        }
    }
    fn name(&mut self) -> Result<String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Err(self.error("expected a rule name"));
        }
        Ok(self.src[start..self.pos].to_string())
    }
    fn alternatives(&mut self, nested: bool) -> Result<Expr> {
        let mut alts = vec![self.sequence(nested)?];
        while self.eat("|") {
            self.skip_space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap() } else { Expr::Alt(alts) })
    }
    fn sequence(&mut self, nested: bool) -> Result<Expr> {
        let mut items: Vec<Expr> = Vec::new();
        loop {
            self.skip_space(nested);
            let Some(c) = self.peek() else { break };
            let item = match c {
                '"' => self.string_literal()?,
                '[' => self.char_class()?,
                '.' => {
                    self.pos += 1;
                    Expr::Any
                }
                '(' => self.group()?,
                c if c.is_ascii_alphanumeric() || c == '-' => {
                    // A name followed by `::=` starts the next rule (a rule may end without a newline
                    // only at the end of the text, so this is an error there).
                    let at = self.pos;
                    let n = self.name()?;
                    Expr::Ref(n, at)
                }
                '*' | '+' | '?' | '{' => {
                    let Some(last) = items.pop() else {
                        return Err(self.error(&format!("'{c}' with nothing before it to repeat")));
                    };
                    let (m, n) = self.repetition()?;
                    items.push(Expr::Repeat(Box::new(last), m, n));
                    continue;
                }
                _ => break,
            };
            items.push(item);
        }
        Ok(if items.len() == 1 { items.pop().unwrap() } else { Expr::Seq(items) })
    }
    /// `"..."`, the opening quote next: a sequence of its characters.
    fn string_literal(&mut self) -> Result<Expr> {
        self.pos += 1;
        let mut chars = Vec::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated string literal")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(Expr::Seq(chars));
                }
                Some(_) => chars.push(Expr::Char(self.char_in_literal()?)),
            }
        }
    }

    /// `[...]` or `[^...]`, the opening bracket next: a character class.
    fn char_class(&mut self) -> Result<Expr> {
        self.pos += 1;
        let neg = self.eat("^");
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated character class")),
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => ranges.push(self.class_range()?),
            }
        }
        if ranges.is_empty() && !neg {
            return Err(self.error("empty character class"));
        }
        Ok(Expr::Class(neg, ranges))
    }

    /// One character `a` or range `a-b` of a class (a `-` before the closing `]` is a character).
    fn class_range(&mut self) -> Result<(char, char)> {
        let a = self.char_in_literal()?;
        if !self.rest().starts_with('-') || self.rest().starts_with("-]") {
            return Ok((a, a));
        }
        self.pos += 1;
        let b = self.char_in_literal()?;
        if b < a {
            return Err(self.error("character range is out of order"));
        }
        Ok((a, b))
    }

    /// `( alternatives )`, the opening parenthesis next.
    fn group(&mut self) -> Result<Expr> {
        self.pos += 1;
        self.skip_space(true);
        let e = self.alternatives(true)?;
        self.skip_space(true);
        if !self.eat(")") {
            return Err(self.error("expected ')'"));
        }
        Ok(e)
    }

    fn repetition(&mut self) -> Result<(u32, Option<u32>)> {
        match self.bump() {
            Some('*') => Ok((0, None)),
            Some('+') => Ok((1, None)),
            Some('?') => Ok((0, Some(1))),
            _ => {
                self.skip_space(true);
                let m = self.number()?;
                self.skip_space(true);
                let n = if self.eat(",") {
                    self.skip_space(true);
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(m)
                };
                self.skip_space(true);
                if !self.eat("}") {
                    return Err(self.error("expected '}' to close the repetition"));
                }
                if n.is_some_and(|n| n < m) {
                    return Err(self.error("repetition {m,n} with n < m"));
                }
                Ok((m, n))
            }
        }
    }
    fn number(&mut self) -> Result<u32> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.src[start..self.pos].parse().map_err(|_| self.error("expected a number"))
    }
    /// One character of a literal or class, escapes decoded.
    fn char_in_literal(&mut self) -> Result<char> {
        let c = self.bump().ok_or_else(|| self.error("unexpected end of the grammar"))?;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.bump().ok_or_else(|| self.error("unexpected end after '\\'"))?;
        let hex = |p: &mut Self, n: usize| -> Result<char> {
            let start = p.pos;
            let digits: String = p.rest().chars().take(n).collect();
            if digits.len() != n || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(p.error(&format!("expected {n} hex digits")));
            }
            p.pos += n;
            let v = u32::from_str_radix(&digits, 16).unwrap_or(u32::MAX);
            char::from_u32(v).ok_or_else(|| Parser { src: p.src, pos: start }.error("not a Unicode code point"))
        };
        Ok(match e {
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            't' => '\t',
            'r' => '\r',
            'n' => '\n',
            '\\' | '"' | '[' | ']' | '-' | '^' => e,
            _ => return Err(self.error(&format!("unknown escape '\\{e}'"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_lark_rules() {
        let l = to_lark("root ::= \"ab\" item-x*  # comment\nitem-x ::= [a-cX] | .\n").unwrap();
        assert_eq!(
            l,
            "start: g_root\ng_root: ((\"a\" \"b\") g_item__x*)\ng_item__x: (/[\\x{61}-\\x{63}\\x{58}]/ | /(?s:.)/)\n"
        );
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let e = to_lark("root ::= x\nx ::= \"a\n").unwrap_err().to_string();
        assert_eq!(e, "grammar: line 2, column 9: unterminated string literal");
        let e = to_lark("root ::= y\n").unwrap_err().to_string();
        assert_eq!(e, "grammar: line 1, column 10: undefined rule 'y'");
        let e = to_lark("root = \"a\"\n").unwrap_err().to_string();
        assert_eq!(e, "grammar: line 1, column 6: expected '::=' after the rule name");
        assert!(to_lark("x ::= \"a\"\n").unwrap_err().to_string().contains("no 'root'"));
        assert!(to_lark("root ::= [z-a]\n").unwrap_err().to_string().contains("out of order"));
        assert!(to_lark("root ::= \"\\q\"\n").unwrap_err().to_string().contains("unknown escape"));
        assert!(to_lark("root ::= \"a\"{3,1}\n").unwrap_err().to_string().contains("n < m"));
    }

    #[test]
    fn names_mangle_injectively() {
        assert_ne!(mangle("a-b"), mangle("aB"));
        assert_ne!(mangle("Ab"), mangle("ab"));
    }
}
