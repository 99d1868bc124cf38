//! Structured output end to end on the real Qwen2.5-Coder 0.5B: JSON Schemas through the server's
//! `response_format` and llama.cpp's `/completion` fields, and the command line's
//! `--json-schema`/`--grammar`, at temperature 1.0 (where an unconstrained small model often
//! breaks JSON). Every output must parse and validate; bad grammars and schemas are 400s and
//! one-line errors. Skips with a message when the model is not fetched.

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::process::Command;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// Checks `v` against the JSON Schema keywords these tests use (type, properties, required,
/// additionalProperties: false, enum, const, items, min/maxItems, min/maxLength, minimum,
/// maximum, anyOf, $ref into $defs). Returns what is wrong, with its path.
fn validate(v: &Value, s: &Value, root: &Value, path: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("{path}: {what} (value {v})"));
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").ok_or(format!("unsupported $ref {r}"))?;
        return validate(v, &root["$defs"][name], root, path);
    }
    if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
        if !alts.iter().any(|a| validate(v, a, root, path).is_ok()) {
            return fail("matches no anyOf branch".into());
        }
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => return fail(format!("unknown type {t}")),
        };
        if !ok {
            return fail(format!("not of type {t}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail("not in enum".into());
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return fail(format!("not the const {c}"));
        }
    }
    if let (Some(n), Some(min)) = (v.as_f64(), s.get("minimum").and_then(Value::as_f64)) {
        if n < min {
            return fail(format!("below the minimum {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_f64(), s.get("maximum").and_then(Value::as_f64)) {
        if n > max {
            return fail(format!("above the maximum {max}"));
        }
    }
    if let Some(st) = v.as_str() {
        let n = st.chars().count() as u64;
        if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m)
            || s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m)
        {
            return fail("string length out of bounds".into());
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if s.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m)
            || s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m)
        {
            return fail("item count out of bounds".into());
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(x, items, root, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap_or("")) {
                return fail(format!("missing required {r}"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(x, ps, root, &format!("{path}.{k}"))?,
                None if s.get("additionalProperties") == Some(&json!(false)) => {
                    return fail(format!("extra property {k}"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Describe a person as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 30},
                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                    "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3}
                },
                "required": ["name", "age", "languages"],
                "additionalProperties": false
            }),
        ),
        (
            "Give a point and a colour as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "colour": {"enum": ["red", "green", "blue"]},
                    "at": {"$ref": "#/$defs/point"},
                    "label": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 10}]},
                    "ok": {"type": "boolean"},
                    "kind": {"const": "marker"}
                },
                "required": ["colour", "at", "ok", "kind"],
                "additionalProperties": false,
                "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": false}}
            }),
        ),
        (
            "List some numbers as JSON.",
            json!({"type": "array", "items": {"type": "integer", "minimum": -100, "maximum": 100}, "minItems": 2, "maxItems": 5}),
        ),
    ]
}

#[test]
fn json_schemas_hold_at_temperature_one_on_qwen() {
    let Some(model) = real_model(QWEN) else { return };
    let s = Server::start(&model, &["--server", "-c", "2048", "-t", "2"]);
    for (seed, (prompt, schema)) in schemas().into_iter().enumerate() {
        for endpoint in ["chat", "completion"] {
            let (content, finish) = if endpoint == "chat" {
                let r = s.post(
                    "/v1/chat/completions",
                    &json!({
                        "messages": [{"role": "user", "content": prompt}],
                        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed, "max_tokens": 300,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": true, "schema": schema}},
                    }),
                );
                let b = r.json();
                assert_eq!(r.status, 200, "{b}");
                (
                    b["choices"][0]["message"]["content"].as_str().unwrap().to_string(),
                    b["choices"][0]["finish_reason"].clone(),
                )
            } else {
                let r = s.post(
                    "/completion",
                    &json!({"prompt": prompt, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed, "n_predict": 300, "json_schema": schema}),
                );
                let b = r.json();
                assert_eq!(r.status, 200, "{b}");
                (
                    b["content"].as_str().unwrap().to_string(),
                    json!(if b["stop_type"] == "eos" { "stop" } else { "other" }),
                )
            };
            assert_eq!(finish, json!("stop"), "{endpoint} {prompt}: ended by length: {content}");
            let v: Value = serde_json::from_str(&content)
                .unwrap_or_else(|e| panic!("{endpoint} {prompt}: not JSON ({e}): {content}"));
            validate(&v, &schema, &schema, "$").unwrap_or_else(|e| panic!("{endpoint} {prompt}: {e}: {content}"));
            eprintln!("{endpoint}: {content}");
        }
    }
    // json_object: any object; a GBNF grammar on /completion.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Say hi in JSON."}], "temperature": 1.0, "seed": 3, "max_tokens": 200, "response_format": {"type": "json_object"}}),
    );
    let b = r.json();
    let content = b["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(content).unwrap_or_else(|e| panic!("{e}: {content}")).is_object(),
        "{content}"
    );
    let r = s.post(
        "/completion",
        &json!({"prompt": "Is the sky blue? Answer:", "temperature": 1.0, "seed": 5, "n_predict": 20, "grammar": "root ::= \" \" (\"yes\" | \"no\") \".\"\n"}),
    );
    let b = r.json();
    assert!([" yes.", " no."].contains(&b["content"].as_str().unwrap()), "{b}");
    // A schema that cannot finish within max_tokens: finish_reason length and the partial text.
    let (_, schema) = schemas().remove(0);
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Describe a person as JSON."}], "max_tokens": 4, "seed": 1,
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}),
    );
    let b = r.json();
    assert_eq!(b["choices"][0]["finish_reason"], "length", "{b}");
    let partial = b["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(partial.starts_with("{\"name\": ") && serde_json::from_str::<Value>(partial).is_err(), "{partial}");
    // Bad input: 400s naming the field and the problem.
    let bad = |body: Value, path: &str, param: &str, needle: &str| {
        let r = s.post(path, &body);
        let e = r.assert_error(400, needle);
        assert_eq!(e["error"]["param"], param, "{e}");
    };
    let msgs = json!([{"role": "user", "content": "x"}]);
    bad(
        json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}}}),
        "/v1/chat/completions",
        "response_format.json_schema.schema",
        "uniqueItems",
    );
    bad(json!({"prompt": "x", "response_format": {"type": "xml"}}), "/v1/completions", "response_format.type", "'xml'");
    bad(json!({"prompt": "x", "grammar": "root ::= (\"a\"\n"}), "/completion", "grammar", "line 2, column 1");
    bad(json!({"prompt": "x", "json_schema": {"type": "strin"}}), "/completion", "json_schema", "strin");
}

#[test]
fn cli_json_schema_and_grammar_on_qwen() {
    let Some(model) = real_model(QWEN) else { return };
    let (_, schema) = schemas().remove(0);
    let run = |extra: &[&str]| {
        let out = Command::new(e2e::bin("llamafile"))
            .arg("-m")
            .arg(&model)
            .args([
                "-t", "2", "-c", "1024", "-n", "300", "--temp", "1", "--top-k", "0", "--top-p", "1", "--min-p", "0",
                "-s", "11",
            ])
            .args(["--no-display-prompt", "--log-disable"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let schema_text = schema.to_string();
    let (code, out, err) = run(&["-p", "Describe a person as JSON.", "--json-schema", &schema_text]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    validate(&v, &schema, &schema, "$").unwrap_or_else(|e| panic!("{e}: {out}"));
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("yn.gbnf");
    std::fs::write(&g, "# yes or no\nroot ::= answer \"!\"\nanswer ::= \"Yes\" | \"No\"\n").unwrap();
    let (code, out, err) = run(&["-p", "Is water wet?", "--grammar-file", g.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out == "Yes!" || out == "No!", "{out}");
    // Bad input: one line naming the option and the problem, non-zero exit, before the model loads.
    let (code, _, err) = run(&["-p", "x", "--json-schema", "{\"type\": \"object\", \"uniqueItems\": 1}"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--json-schema") && err.contains("uniqueItems"), "{err}");
    let (code, _, err) = run(&["-p", "x", "--grammar", "root ::= [a-"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--grammar") && err.contains("line 1, column"), "{err}");
}

/// The official `openai` client's `chat.completions.parse` with pydantic models
/// (`tests/openai_structured.py`); skips when the package is not installed.
#[test]
fn openai_client_parse_with_pydantic_on_qwen() {
    let Some(model) = real_model(QWEN) else { return };
    let have = Command::new("python3")
        .args(["-c", "import openai, pydantic"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        e2e::skip("the `openai` Python package (with pydantic)", "pip install openai");
        return;
    }
    let s = Server::start(&model, &["--server", "-c", "2048", "-t", "2"]);
    let out = Command::new("python3").arg(e2e::root().join("tests/openai_structured.py")).arg(&s.url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai structured output checks failed:\n{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    assert_eq!(stdout.matches("ok - chat.completions.parse").count(), 3, "{stdout}");
}

/// Tools in the Hermes/Qwen format: `required` gives a call whose arguments match the tool's
/// schema at temperature 1.0; the call and a `tool` result sent back give a text answer.
#[test]
fn tool_calls_round_trip_on_qwen() {
    let Some(model) = real_model(QWEN) else { return };
    let s = Server::start(&model, &["--server", "-c", "2048", "-t", "2"]);
    let params = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false});
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": params}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    ]);
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    for (seed, choice) in
        [json!("required"), json!({"type": "function", "function": {"name": "get_weather"}})].into_iter().enumerate()
    {
        let r = s.post(
            "/v1/chat/completions",
            &json!({"messages": [question], "tools": tools, "tool_choice": choice, "temperature": 1.0, "seed": seed, "max_tokens": 200}),
        );
        let b = r.json();
        assert_eq!(r.status, 200, "{b}");
        let c = &b["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{b}");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        let name = call["function"]["name"].as_str().unwrap();
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        if name == "get_weather" {
            validate(&args, &params, &params, "$").unwrap_or_else(|e| panic!("{e}: {b}"));
        } else {
            assert_eq!(seed, 0, "the named tool was not called: {b}");
            assert!(args["city"].is_string(), "{b}");
        }
        if seed == 1 {
            // The round trip: the call and its result go back, the model answers in text.
            let r = s.post(
                "/v1/chat/completions",
                &json!({
                    // (the system turn keeps the 0.5B model from writing more calls as text)
                    "messages": [
                        {"role": "system", "content": "Answer the user in one plain sentence, using the tool results."},
                        question, c["message"],
                        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"}
                    ],
                    "tools": tools, "tool_choice": "none", "temperature": 0, "max_tokens": 60
                }),
            );
            let b = r.json();
            assert_eq!(r.status, 200, "{b}");
            let text = b["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{b}"));
            assert!(
                text.contains("21") || text.to_lowercase().contains("sunny"),
                "the answer ignores the tool result: {text}"
            );
        }
    }
    let r = s.post("/v1/chat/completions", &json!({"messages": [question], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    r.assert_error(400, "'nope'");
}
