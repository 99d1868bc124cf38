//! Structured output on the HTTP API: OpenAI's `response_format` (`json_object`, `json_schema`)
//! and llama.cpp's `grammar` (GBNF) and `json_schema` on `/completion`, checked into the
//! engine's `Grammar` (see `llamafile_engine::grammar`) before any work is queued. A bad grammar or schema
//! is a 400 naming the field and the problem.

use super::error::ApiError;
use llamafile_engine::grammar::Grammar;
use serde_json::Value;

/// OpenAI's `response_format`: `text` (or absent) is free text.
pub fn response_format(v: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let field = "response_format";
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_field("response_format.type", "'response_format' needs a 'type' string"))?;
    match kind {
        "text" => Ok(None),
        // llama.cpp lets `json_object` carry a schema too.
        "json_object" => match v.get("schema") {
            Some(s) => schema(s, "response_format.schema").map(Some),
            None => Ok(Some(Grammar::json_object())),
        },
        "json_schema" => {
            let js = v.get("json_schema").ok_or_else(|| {
                ApiError::invalid_field(
                    "response_format.json_schema",
                    "type 'json_schema' needs a 'json_schema' object",
                )
            })?;
            if !js.is_object() {
                return Err(ApiError::invalid_field("response_format.json_schema", "'json_schema' must be an object"));
            }
            match js.get("schema") {
                Some(s) => schema(s, "response_format.json_schema.schema").map(Some),
                // OpenAI's `schema` is optional: then any JSON value.
                None => schema(&serde_json::json!({}), field).map(Some),
            }
        }
        other => Err(ApiError::invalid_field(
            "response_format.type",
            format!("response_format of type '{other}' is not supported (text, json_object and json_schema are)"),
        )),
    }
}

/// llama.cpp's `/completion` fields: `grammar` (GBNF text) or `json_schema` (a schema).
pub fn llama_fields(grammar: Option<&Value>, json_schema: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let grammar = grammar.filter(|v| !v.is_null() && v.as_str() != Some(""));
    let json_schema = json_schema.filter(|v| !v.is_null());
    match (grammar, json_schema) {
        (Some(_), Some(_)) => Err(ApiError::invalid_field("grammar", "give 'grammar' or 'json_schema', not both")),
        (Some(g), None) => {
            let src =
                g.as_str().ok_or_else(|| ApiError::invalid_field("grammar", "'grammar' must be a string (GBNF)"))?;
            Grammar::gbnf(src).map(Some).map_err(|e| ApiError::invalid_field("grammar", format!("{e:#}")))
        }
        (None, Some(s)) => schema(s, "json_schema").map(Some),
        (None, None) => Ok(None),
    }
}

fn schema(v: &Value, field: &str) -> Result<Grammar, ApiError> {
    Grammar::json_schema(v).map_err(|e| ApiError::invalid_field(field, format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(r: Result<Option<Grammar>, ApiError>) -> (String, String) {
        let b = r.unwrap_err().body();
        (
            b["error"]["param"].as_str().unwrap_or("").to_string(),
            b["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    }

    #[test]
    fn response_formats() {
        assert!(response_format(None).unwrap().is_none());
        assert!(response_format(Some(&json!({"type": "text"}))).unwrap().is_none());
        assert!(response_format(Some(&json!({"type": "json_object"}))).unwrap().is_some());
        let ok =
            json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object"}}});
        assert!(response_format(Some(&ok)).unwrap().is_some());
        let bad = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}});
        let (param, msg) = err(response_format(Some(&bad)));
        assert_eq!(param, "response_format.json_schema.schema");
        assert!(msg.contains("uniqueItems"), "{msg}");
        let (param, msg) = err(response_format(Some(&json!({"type": "yaml"}))));
        assert_eq!(param, "response_format.type");
        assert!(msg.contains("'yaml'"), "{msg}");
        assert_eq!(err(response_format(Some(&json!({"type": "json_schema"})))).0, "response_format.json_schema");
    }

    #[test]
    fn llama_grammar_and_schema() {
        assert!(llama_fields(None, None).unwrap().is_none());
        assert!(llama_fields(Some(&json!("root ::= \"a\"")), None).unwrap().is_some());
        assert!(llama_fields(None, Some(&json!({"type": "integer"}))).unwrap().is_some());
        let (param, msg) = err(llama_fields(Some(&json!("root ::= [a")), None));
        assert_eq!(param, "grammar");
        assert!(msg.contains("line 1, column"), "{msg}");
        assert_eq!(err(llama_fields(Some(&json!(3)), None)).0, "grammar");
        assert_eq!(err(llama_fields(None, Some(&json!({"type": "nope"})))).0, "json_schema");
    }

    #[test]
    fn unsupported_schema_keywords_are_400s_naming_them() {
        let rf =
            |schema: serde_json::Value| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        let (param, msg) = err(response_format(Some(&rf(
            json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}),
        ))));
        assert_eq!(param, "response_format.json_schema.schema");
        assert!(msg.contains("'nullable' at /properties/a"), "{msg}");
        let e = llama_fields(None, Some(&json!({"type": "string", "maxLenght": 3}))).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        let (param, msg) = err(llama_fields(None, Some(&json!({"type": "string", "maxLenght": 3}))));
        assert_eq!(param, "json_schema");
        assert!(msg.contains("'maxLenght'"), "{msg}");
        let (_, msg) = err(response_format(Some(&json!({"type": "json_object", "schema": {"not": {"type": "null"}}}))));
        assert!(msg.contains("'not'"), "{msg}");
    }
}
