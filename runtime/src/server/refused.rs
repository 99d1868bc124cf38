//! Request fields of the OpenAI and llama.cpp APIs that change the answer and that this server
//! does not implement: a request that gives one a value other than its neutral one is refused
//! (400 naming the field) rather than answered as if it had been honoured. The neutral values
//! (what clients send by default) pass. Fields with no effect on the answer (`user`, `store`,
//! `metadata`...) are ignored, as OpenAI ignores what it does not know.

use super::error::ApiError;
use serde::Deserialize;
use serde_json::Value;

/// Flattened into each generation request; any JSON type parses, `check` judges the value.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Unhonoured {
    pub presence_penalty: Option<Value>,
    pub frequency_penalty: Option<Value>,
    pub logit_bias: Option<Value>,
    pub best_of: Option<Value>,
    pub mirostat: Option<Value>,
    pub typical_p: Option<Value>,
    pub post_sampling_probs: Option<Value>,
    pub dry_multiplier: Option<Value>,
    pub xtc_probability: Option<Value>,
    pub dynatemp_range: Option<Value>,
    pub tfs_z: Option<Value>,
}

fn is_number(v: &Value, x: f64) -> bool {
    v.as_f64() == Some(x)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl Unhonoured {
    pub fn check(&self) -> Result<(), ApiError> {
        // (field, its value, whether the value is neutral, the neutral value)
        type Field<'a> = (&'a str, &'a Option<Value>, &'a dyn Fn(&Value) -> bool, &'a str);
        let fields: [Field; 11] = [
            ("presence_penalty", &self.presence_penalty, &|v| is_number(v, 0.0), "0"),
            ("frequency_penalty", &self.frequency_penalty, &|v| is_number(v, 0.0), "0"),
            ("logit_bias", &self.logit_bias, &is_empty, "empty"),
            ("best_of", &self.best_of, &|v| is_number(v, 1.0), "1"),
            ("mirostat", &self.mirostat, &|v| is_number(v, 0.0), "0"),
            ("typical_p", &self.typical_p, &|v| is_number(v, 1.0), "1"),
            ("post_sampling_probs", &self.post_sampling_probs, &|v| *v == Value::Bool(false), "false"),
            ("dry_multiplier", &self.dry_multiplier, &|v| is_number(v, 0.0), "0"),
            ("xtc_probability", &self.xtc_probability, &|v| is_number(v, 0.0), "0"),
            ("dynatemp_range", &self.dynatemp_range, &|v| is_number(v, 0.0), "0"),
            ("tfs_z", &self.tfs_z, &|v| is_number(v, 1.0), "1"),
        ];
        for (name, value, neutral, shown) in fields {
            match value {
                None | Some(Value::Null) => {}
                Some(v) if neutral(v) => {}
                Some(v) => {
                    let v: String = v.to_string().chars().take(40).collect();
                    return Err(ApiError::invalid_field(
                        name,
                        format!("'{name}' is not supported by this server (only {shown}), got {v}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Unhonoured {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn neutral_values_pass_and_others_are_refused() {
        let ok = parse(
            r#"{"presence_penalty":0,"frequency_penalty":0.0,"logit_bias":{},"best_of":1,"mirostat":0,"typical_p":1.0,"post_sampling_probs":false,"user":"x","dry_multiplier":0,"xtc_probability":0.0,"dynatemp_range":0,"tfs_z":1}"#,
        );
        assert!(ok.check().is_ok());
        assert!(parse(r#"{"logit_bias":null}"#).check().is_ok());
        for (body, field) in [
            (r#"{"presence_penalty":0.5}"#, "presence_penalty"),
            (r#"{"frequency_penalty":-1}"#, "frequency_penalty"),
            (r#"{"logit_bias":{"50256":-100}}"#, "logit_bias"),
            (r#"{"best_of":3}"#, "best_of"),
            (r#"{"mirostat":2}"#, "mirostat"),
            (r#"{"typical_p":0.9}"#, "typical_p"),
            (r#"{"post_sampling_probs":true}"#, "post_sampling_probs"),
            (r#"{"presence_penalty":"high"}"#, "presence_penalty"),
            (r#"{"dry_multiplier":0.8}"#, "dry_multiplier"),
            (r#"{"xtc_probability":0.5}"#, "xtc_probability"),
            (r#"{"dynatemp_range":0.5}"#, "dynatemp_range"),
            (r#"{"tfs_z":0.95}"#, "tfs_z"),
        ] {
            let e = parse(body).check().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{body}");
            assert!(e.message.contains("not supported"), "{}", e.message);
        }
    }
}
