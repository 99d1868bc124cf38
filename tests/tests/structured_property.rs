//! The structured-output property: whatever the schema, a constrained output at temperature 1.0
//! validates against it. Schemas are generated from a seed (nested objects, arrays with
//! minItems/maxItems, enum, const, anyOf, integer/number/boolean/null, strings with
//! min/maxLength and formats, `$ref` into `$defs`), sent through the server's `response_format`,
//! and every output is checked by the Python `jsonschema` package, the reference validator
//! (with its format checker; date-time and time need `rfc3339-validator`), not by our own code.
//! An output cut by `max_tokens` is reported as such and fails: the schemas bound their strings,
//! numbers and arrays so that they finish.
//!
//! Python's `jsonschema` rather than a Rust validator crate: it is the JSON Schema project's
//! reference implementation, already beside the `openai` client the other tests use, and a dev
//! dependency would build two dozen more crates for one test. Skips (recorded) without it.

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::io::Write;
use std::process::{Command, Stdio};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A small deterministic generator (xorshift64*), so a failing schema is reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const NAMES: &[&str] = &[
    "id", "name", "title", "city", "count", "price", "tags", "owner", "items", "kind", "note", "level", "active",
    "score",
];

/// A schema for one value; `depth` bounds the nesting, `defs` collects `$defs` entries.
/// `tiny`: only what a random-weight model finishes (bounded integers, no free-form formats).
fn schema(r: &mut Rng, depth: u32, defs: &mut serde_json::Map<String, Value>, tiny: bool) -> Value {
    let kinds = if depth == 0 { 8 } else { 11 };
    match r.below(kinds) {
        0 => {
            let (lo, hi) = (r.below(50) as i64 - 20, 40 + r.below(1000) as i64);
            json!({"type": "integer", "minimum": lo, "maximum": hi})
        }
        1 if tiny => json!({"type": "integer", "minimum": 0, "maximum": 9}),
        1 => json!({"type": "number", "minimum": -100, "maximum": 100}),
        2 => json!({"type": "boolean"}),
        3 => json!({"type": "null"}),
        4 => {
            let min = r.below(3);
            json!({"type": "string", "minLength": min, "maxLength": min + 1 + r.below(12)})
        }
        5 => {
            let formats: &[&str] = if tiny {
                &["date", "time", "uuid", "ipv4"]
            } else {
                &["date", "time", "date-time", "uuid", "ipv4", "email"]
            };
            let f = *r.pick(formats);
            // An email's parts are otherwise unbounded.
            if f == "email" {
                json!({"type": "string", "format": f, "maxLength": 40})
            } else {
                json!({"type": "string", "format": f})
            }
        }
        6 => {
            let vals: Vec<Value> = (0..2 + r.below(3))
                .map(|i| if r.below(3) == 0 { json!(i * 7) } else { json!(format!("{}{i}", r.pick(NAMES))) })
                .collect();
            json!({"enum": vals})
        }
        7 => json!({"const": r.pick(&[json!("fixed"), json!(42), json!(true), json!({"v": 1})]).clone()}),
        8 => {
            let min = r.below(2);
            json!({"type": "array", "items": schema(r, depth - 1, defs, tiny), "minItems": min, "maxItems": min + 1 + r.below(3)})
        }
        9 => json!({"anyOf": [schema(r, depth - 1, defs, tiny), schema(r, depth - 1, defs, tiny)]}),
        _ if r.below(3) == 0 => {
            // A named definition, referenced (and so possibly shared by several places).
            let name = format!("def{}", defs.len());
            let body = object(r, depth - 1, defs, tiny);
            defs.insert(name.clone(), body);
            json!({"$ref": format!("#/$defs/{name}")})
        }
        _ => object(r, depth - 1, defs, tiny),
    }
}

fn object(r: &mut Rng, depth: u32, defs: &mut serde_json::Map<String, Value>, tiny: bool) -> Value {
    let mut props = serde_json::Map::new();
    let n = 1 + r.below(4);
    while (props.len() as u64) < n {
        let name = r.pick(NAMES).to_string();
        let s = schema(r, depth, defs, tiny);
        props.insert(name, s);
    }
    // Some properties optional: the output may leave them out.
    let required: Vec<&String> = props.keys().filter(|_| r.below(4) != 0).collect();
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// The schema for seed `seed`: an object at the top (what response_format expects), nested
/// up to three levels.
fn top_schema(seed: u64, tiny: bool) -> Value {
    let mut r = Rng::new(seed);
    let mut defs = serde_json::Map::new();
    let mut s = object(&mut r, 3, &mut defs, tiny);
    if !defs.is_empty() {
        s["$defs"] = Value::Object(defs);
    }
    s
}

/// `(schema, output)` pairs checked by Python's `jsonschema` (Draft 2020-12, formats checked):
/// one line per failure, empty when all validate. `None` (the skip recorded) without it.
fn python_validate(cases: &[(Value, String)]) -> Option<Vec<String>> {
    let ok =
        Command::new("python3").args(["-c", "import jsonschema"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        e2e::skip("the `jsonschema` Python package", "pip install jsonschema");
        return None;
    }
    let script = r#"
import json, sys, jsonschema
bad = 0
for i, line in enumerate(sys.stdin):
    case = json.loads(line)
    try:
        value = json.loads(case["output"])
        v = jsonschema.Draft202012Validator(case["schema"], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(value)]
    except Exception as e:
        errors = [f"{type(e).__name__}: {e}"]
    if errors:
        print(f"case {i}: {'; '.join(errors)}")
"#;
    let mut child =
        Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for (schema, output) in cases {
            writeln!(stdin, "{}", json!({"schema": schema, "output": output})).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the validator failed");
    Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// `n` generated schemas, one output each at temperature 1.0 through `response_format`; every
/// output finishes and validates.
fn property(server: &Server, n: u64, tiny: bool, max_tokens: u32) {
    let mut cases = Vec::new();
    let mut cut = Vec::new();
    for seed in 0..n {
        let schema = top_schema(seed, tiny);
        let body = json!({
            "messages": [{"role": "user", "content": "Fill in this JSON with made-up values."}],
            "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed, "max_tokens": max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": true, "schema": schema}},
        });
        let r = server.post("/v1/chat/completions", &body);
        let b = r.json();
        assert_eq!(r.status, 200, "seed {seed}: {b}\nschema {schema}");
        let content =
            b["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("seed {seed}: {b}")).to_string();
        if b["choices"][0]["finish_reason"] != "stop" {
            cut.push(format!(
                "seed {seed}: cut at {max_tokens} tokens ({}): {content}\nschema {schema}",
                b["choices"][0]["finish_reason"]
            ));
        }
        cases.push((schema, content));
    }
    let Some(failures) = python_validate(&cases) else { return };
    let mut report: Vec<String> = failures
        .iter()
        .map(|f| {
            let i: usize = f.trim_start_matches("case ").split(':').next().unwrap().parse().unwrap();
            format!("seed {i}: {f}\noutput {}\nschema {}", cases[i].1, cases[i].0)
        })
        .collect();
    report.extend(cut);
    for (s, o) in &cases {
        eprintln!("{o}   <- {s}");
    }
    assert!(report.is_empty(), "{} of {n} outputs do not pass:\n{}", report.len(), report.join("\n"));
}

#[test]
fn fifty_generated_schemas_validate_at_temperature_one_on_qwen() {
    let Some(model) = real_model(QWEN) else { return };
    let s = Server::start(&model, &["--server", "-c", "2048", "-t", "2"]);
    property(&s, 50, false, 600);
}

/// The same property on the shared tiny model (random weights: it writes noise, which the
/// grammar must still shape into valid JSON), for a checkout without the real models.
#[test]
fn generated_schemas_validate_on_the_tiny_model() {
    let Some(model) = tiny_model() else { return };
    // The validator itself refuses a wrong type and wrong formats (date-time and time are checked
    // only with `rfc3339-validator` installed: this fails without it).
    let wrong = [
        (json!({"type": "integer"}), "\"x\""),
        (json!({"type": "string", "format": "ipv4"}), "\"999.1.2.3\""),
        (json!({"type": "string", "format": "date-time"}), "\"2020-13-45T99:00:00Z\""),
    ]
    .map(|(s, o)| (s, o.to_string()));
    let Some(f) = python_validate(&wrong) else { return };
    assert_eq!(f.len(), 3, "{f:?}");
    let s = Server::start(&model, &["--server", "-c", "2048", "-t", "2"]);
    property(&s, 10, true, 1500);
}

#[test]
fn the_generator_covers_every_keyword() {
    // All seeds used above together use every construct the property is about.
    let all: String = (0..50).map(|seed| top_schema(seed, false).to_string()).collect();
    for kw in [
        "\"properties\"",
        "\"minItems\"",
        "\"maxItems\"",
        "\"enum\"",
        "\"const\"",
        "\"anyOf\"",
        "\"integer\"",
        "\"number\"",
        "\"boolean\"",
        "\"null\"",
        "\"minLength\"",
        "\"maxLength\"",
        "\"format\"",
        "\"$ref\"",
        "\"$defs\"",
    ] {
        assert!(all.contains(kw), "no schema uses {kw}");
    }
    // Nested objects: an object inside a property.
    assert!((0..50).any(|seed| top_schema(seed, false)["properties"]
        .as_object()
        .unwrap()
        .values()
        .any(|p| p["type"] == "object")));
    // Same seed, same schema.
    assert_eq!(top_schema(7, false), top_schema(7, false));
}
