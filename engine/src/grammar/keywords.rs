//! Which JSON Schema keywords a schema may use. llguidance refuses, by name, the keywords of the
//! JSON Schema drafts it does not implement (`uniqueItems`, `not`, `if`...), but it ignores a
//! keyword no draft defines, as the specification says of unknown keywords: a misspelt
//! `maxLenght` or OpenAPI's `nullable` would then constrain nothing. Every keyword here is
//! either one llguidance implements, an annotation, or an `x-` extension, or the schema is
//! refused naming it and where it is.

use anyhow::{bail, Result};
use serde_json::Value;

/// Keywords that constrain the output (what llguidance compiles).
const CONSTRAINTS: &[&str] = &[
    "type",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// Keywords that only identify or describe (no effect on what is valid).
const ANNOTATIONS: &[&str] = &[
    "$defs",
    "definitions",
    "$schema",
    "$id",
    "id",
    "$anchor",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "contentMediaType",
    "contentEncoding",
    // OpenAPI's hint for a `oneOf` of objects; the `oneOf` itself is what constrains.
    "discriminator",
];

/// Refuse a keyword in `schema` (or a schema inside it) that is not supported: one line with the
/// keyword and its JSON Pointer.
pub fn check(schema: &Value) -> Result<()> {
    walk(schema, "")
}

fn walk(schema: &Value, at: &str) -> Result<()> {
    let Some(obj) = schema.as_object() else { return Ok(()) };
    for (key, value) in obj {
        let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
        if key.starts_with("x-") {
            continue;
        }
        if !CONSTRAINTS.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
            bail!("unsupported keyword '{}' at {}", llamafile_format::escape::escape(key), pointer(at));
        }
        match key.as_str() {
            // Maps of names to schemas.
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                for (name, sub) in value.as_object().into_iter().flatten() {
                    walk(sub, &format!("{here}/{}", name.replace('~', "~0").replace('/', "~1")))?;
                }
            }
            // Lists of schemas.
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                    walk(sub, &format!("{here}/{i}"))?;
                }
            }
            // One schema (or, for `items` in older drafts, a list).
            "items" | "additionalItems" | "additionalProperties" => match value {
                Value::Array(subs) => {
                    for (i, sub) in subs.iter().enumerate() {
                        walk(sub, &format!("{here}/{i}"))?;
                    }
                }
                sub => walk(sub, &here)?,
            },
            _ => {}
        }
    }
    Ok(())
}

fn pointer(at: &str) -> String {
    if at.is_empty() {
        "the top level".into()
    } else {
        llamafile_format::escape::escape(at)
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::grammar::Grammar;
    use serde_json::json;

    #[test]
    fn every_keyword_of_the_supported_list_compiles() {
        let all = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "t", "description": "d",
            "type": "object",
            "properties": {
                "s": {"type": "string", "minLength": 1, "maxLength": 9, "pattern": "^[a-z]+$", "default": "a", "examples": ["b"]},
                "f": {"type": "string", "format": "date-time"},
                "d": {"type": "string", "format": "date"}, "t": {"type": "string", "format": "time"},
                "e": {"type": "string", "format": "email"}, "u": {"type": "string", "format": "uuid"},
                "i4": {"type": "string", "format": "ipv4"}, "uri": {"type": "string", "format": "uri"},
                "n": {"type": "number", "minimum": 0, "maximum": 10, "exclusiveMaximum": 11},
                "k": {"type": "integer", "exclusiveMinimum": -5, "multipleOf": 1},
                "b": {"type": "boolean"}, "z": {"type": "null"},
                "en": {"enum": ["a", 1, null]}, "c": {"const": "fixed"},
                "any": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "one": {"oneOf": [{"type": "string"}, {"type": "integer"}], "discriminator": {"propertyName": "x"}},
                "all": {"allOf": [{"type": "integer"}, {"minimum": 1}]},
                "a": {"type": "array", "items": {"$ref": "#/$defs/p"}, "minItems": 1, "maxItems": 3},
                "tuple": {"type": "array", "prefixItems": [{"type": "integer"}], "items": false},
                "o": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}, "minProperties": 1, "maxProperties": 2},
                "ext": {"type": "string", "x-vendor": {"anything": "goes"}, "$comment": "c", "deprecated": true}
            },
            "required": ["s"],
            "additionalProperties": false,
            "$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"], "additionalProperties": false}},
            "definitions": {"old": {"type": "string"}}
        });
        Grammar::json_schema(&all).unwrap();
    }

    #[test]
    fn unsupported_keywords_are_refused_by_name_and_place() {
        let cases = [
            // Unknown to every draft: llguidance alone would ignore these.
            (json!({"type": "string", "maxLenght": 3}), "'maxLenght' at the top level"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}),
                "'nullable' at /properties/a",
            ),
            (json!({"type": "array", "items": {"type": "integer", "minimun": 0}}), "'minimun' at /items"),
            (json!({"anyOf": [{"type": "string"}, {"type": "integer", "foo": 1}]}), "'foo' at /anyOf/1"),
            (json!({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string", "bar": 2}}}), "'bar' at /$defs/a"),
            (json!({"foo": 1}), "'foo' at the top level"),
            // Defined by a draft but not implemented.
            (json!({"type": "array", "uniqueItems": true}), "'uniqueItems'"),
            (json!({"type": "array", "contains": {"type": "integer"}}), "'contains'"),
            (json!({"not": {"type": "string"}}), "'not'"),
            (json!({"if": {"type": "string"}, "then": {"minLength": 1}}), "'if'"),
            (json!({"type": "object", "propertyNames": {"pattern": "^a"}}), "'propertyNames'"),
            (json!({"type": "object", "dependentRequired": {"a": ["b"]}}), "'dependentRequired'"),
            (json!({"type": "object", "unevaluatedProperties": false}), "'unevaluatedProperties'"),
        ];
        for (schema, want) in cases {
            let e = check(&schema).unwrap_err().to_string();
            assert!(e.contains(want), "{schema}: {e}");
            // And through the grammar, as the server and the command line see it.
            let e = format!("{:#}", Grammar::json_schema(&schema).unwrap_err());
            assert!(e.contains(want), "{schema}: {e}");
        }
        // Names of properties and values of enum/const/default are not keywords.
        check(&json!({"properties": {"nullable": {"const": {"foo": 1}}, "x-y": {"enum": [{"bar": 1}]}}, "default": {"baz": 1}})).unwrap();
        // An unknown format is refused by llguidance itself.
        let e = format!("{:#}", Grammar::json_schema(&json!({"type": "string", "format": "phone"})).unwrap_err());
        assert!(e.contains("phone"), "{e}");
    }
}
