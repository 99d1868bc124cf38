//! Reading JSON that may still be being written (a streamed reply): where a value ends, if it
//! has yet, and the fields of a tool-call object so far. Nothing here allocates for text that is
//! not yet complete, so it runs on the whole reply at every streamed piece.

/// `s` without leading JSON white space.
pub fn ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\n', '\r'])
}

/// Not the start of what was expected (the reply is not a call after all).
#[derive(Debug, PartialEq, Eq)]
pub struct NotJson;

/// The length of the JSON value at the start of `s`; `None` while it is incomplete (`done`:
/// the text is final, so a number at its very end is complete).
pub fn value_len(s: &str, done: bool) -> Result<Option<usize>, NotJson> {
    let b = s.as_bytes();
    match b.first() {
        None => Ok(None),
        Some(b'"') => Ok(string_len(b)),
        Some(b'{' | b'[') => {
            let (mut depth, mut i) = (0usize, 0);
            while i < b.len() {
                match b[i] {
                    b'"' => match string_len(&b[i..]) {
                        Some(n) => i += n - 1,
                        None => return Ok(None),
                    },
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(Some(i + 1));
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Ok(None)
        }
        Some(c) if c.is_ascii_digit() || matches!(c, b'-' | b't' | b'f' | b'n') => {
            let n = b.iter().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')).count();
            Ok(if n == b.len() && !done { None } else { Some(n) })
        }
        Some(_) => Err(NotJson),
    }
}

/// The length of the JSON string at the start of `b` (which starts with `"`), quotes included.
fn string_len(b: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The text of a JSON string that may be cut short (`"abc\u00` gives `abc`): what is certain
/// of it so far. `s` starts with the opening quote.
pub fn partial_string(s: &str) -> String {
    if let Some(n) = string_len(s.as_bytes()) {
        return serde_json::from_str(&s[..n]).unwrap_or_default();
    }
    // Drop a trailing incomplete escape (at most `\uXXXX`, 6 bytes) until the rest decodes.
    let mut end = s.len();
    for _ in 0..7 {
        if let Ok(v) = serde_json::from_str::<String>(&format!("{}\"", &s[..end])) {
            return v;
        }
        match s[..end].char_indices().next_back() {
            Some((i, _)) if i > 0 => end = i,
            _ => break,
        }
    }
    String::new()
}

/// A call object (`{"name": ..., "arguments": {...}}`) as far as it is written.
#[derive(Debug, Default, PartialEq)]
pub struct CallScan<'a> {
    /// The name, once its string is complete.
    pub name: Option<String>,
    /// The arguments' JSON text so far (complete when `args_done`).
    pub args: Option<&'a str>,
    pub args_done: bool,
    /// The object's length, once it is complete.
    pub len: Option<usize>,
}

/// Scan the call object at the start of `s`; `args_keys` name the arguments field
/// ("arguments", or Llama's "parameters"). Other fields are skipped.
pub fn call<'a>(s: &'a str, args_keys: &[&str], done: bool) -> Result<CallScan<'a>, NotJson> {
    let mut out = CallScan::default();
    if !s.starts_with('{') {
        return Err(NotJson);
    }
    let mut pos = 1;
    let mut first = true;
    loop {
        let rest = ws(&s[pos..]);
        pos = s.len() - rest.len();
        match rest.as_bytes().first() {
            None => return Ok(out),
            Some(b'}') if first => {
                out.len = Some(pos + 1);
                return Ok(out);
            }
            Some(b'"') => {}
            Some(_) => return Err(NotJson),
        }
        let Some(klen) = value_len(rest, done)? else { return Ok(out) };
        let key: String = serde_json::from_str(&rest[..klen]).map_err(|_| NotJson)?;
        let rest = ws(&rest[klen..]);
        match rest.as_bytes().first() {
            None => return Ok(out),
            Some(b':') => {}
            Some(_) => return Err(NotJson),
        }
        let value = ws(&rest[1..]);
        if value.is_empty() {
            return Ok(out);
        }
        let vlen = value_len(value, done)?;
        if key == "name" {
            let Some(n) = vlen else { return Ok(out) };
            out.name = Some(serde_json::from_str::<String>(&value[..n]).map_err(|_| NotJson)?);
        } else if args_keys.contains(&key.as_str()) {
            match vlen {
                None => {
                    out.args = Some(value);
                    return Ok(out);
                }
                Some(n) => {
                    out.args = Some(&value[..n]);
                    out.args_done = true;
                }
            }
        } else if vlen.is_none() {
            return Ok(out);
        }
        let n = vlen.unwrap_or(0);
        let after = ws(&value[n..]);
        pos = s.len() - after.len();
        match after.as_bytes().first() {
            None => return Ok(out),
            Some(b',') => pos += 1,
            Some(b'}') => {
                out.len = Some(pos + 1);
                return Ok(out);
            }
            Some(_) => return Err(NotJson),
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_end_where_json_says() {
        assert_eq!(value_len(r#"{"a": "}", "b": [1, {"c": 2}]} tail"#, false), Ok(Some(30)));
        assert_eq!(value_len(r#"{"a": "\"}"#, false), Ok(None), "the brace is inside the string");
        assert_eq!(value_len(r#""x\"y" ,"#, false), Ok(Some(6)));
        assert_eq!(value_len("12", false), Ok(None), "a number may go on");
        assert_eq!(value_len("12", true), Ok(Some(2)));
        assert_eq!(value_len("true,", false), Ok(Some(4)));
        assert_eq!(value_len("<x>", false), Err(NotJson));
    }

    #[test]
    fn strings_cut_short() {
        assert_eq!(partial_string(r#""abc"#), "abc");
        assert_eq!(partial_string(r#""a\"b\u00"#), "a\"b");
        assert_eq!(partial_string(r#""a\"#), "a");
        assert_eq!(partial_string(r#""caf\u00e9 ok" trailing"#), "café ok");
        assert_eq!(partial_string("\"é"), "é");
    }

    #[test]
    fn call_objects_as_far_as_written() {
        let full = r#"{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2]}} after"#;
        let c = call(full, &["arguments"], false).unwrap();
        assert_eq!(c.name.as_deref(), Some("get_weather"));
        assert_eq!(c.args, Some(r#"{"city": "Paris", "n": [1, 2]}"#));
        assert!(c.args_done);
        assert_eq!(c.len, Some(full.len() - " after".len()));
        // Every prefix: the name only once complete, the arguments a prefix of the final text.
        for end in 1..full.len() - 6 {
            let c = call(&full[..end], &["arguments"], false).unwrap_or_else(|_| panic!("prefix {end}"));
            if let Some(n) = &c.name {
                assert_eq!(n, "get_weather");
            }
            if let Some(a) = c.args {
                assert!(r#"{"city": "Paris", "n": [1, 2]}"#.starts_with(a), "{a}");
            }
        }
        let c = call(r#"{"arguments": {"x": 1}, "type": "function", "name": "f"}"#, &["arguments"], true).unwrap();
        assert_eq!((c.name.as_deref(), c.args), (Some("f"), Some(r#"{"x": 1}"#)));
        let c = call(r#"{"name": "f", "parameters": {}}"#, &["parameters", "arguments"], true).unwrap();
        assert_eq!(c.args, Some("{}"));
        assert_eq!(call("{}", &["arguments"], true).unwrap().len, Some(2));
        assert_eq!(call("hello", &["arguments"], false), Err(NotJson));
        assert_eq!(call(r#"{"name" x"#, &["arguments"], false), Err(NotJson));
        assert_eq!(call(r#"{"name": 3}"#, &["arguments"], false), Err(NotJson));
    }
}
