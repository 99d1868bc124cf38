//! OpenAI-style errors (`{"error": {"message", "type", "param", "code"}}`) and a JSON body
//! extractor whose every failure is one of them, naming the field that is wrong.

use super::listen::BodyDeadline;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Largest request body accepted (a full 128k-token context is well under 1 MiB of text).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// A field has a value the server cannot use.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), code: Some("invalid_value"), ..ApiError::bad_request(message) }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { code: Some("not_found"), ..ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message) }
    }
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", message)
    }
    pub fn too_large() -> ApiError {
        ApiError {
            code: Some("request_too_large"),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is over the limit of {} bytes", BODY_LIMIT),
            )
        }
    }
    pub fn body_timeout() -> ApiError {
        ApiError {
            code: Some("request_timeout"),
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time (--header-timeout sets the limit)",
            )
        }
    }
    pub fn context_exceeded(param: &str, prompt_tokens: usize, n_ctx: usize) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(format!(
                "the prompt is {prompt_tokens} tokens, but the context holds {n_ctx} tokens \
                 (and at least one must be left to generate)"
            ))
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    /// The JSON body (also sent as an SSE event when a stream fails after it started).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Parse a JSON body into `T`; a syntax error and a field of the wrong type are both 400, and
/// the message names the path of the field (`messages[0].content: invalid type: ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("the request body is empty: expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let mut path = e.path().to_string();
            if path == "." {
                path = super::types::flattened_field_error(bytes).unwrap_or(path);
            }
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    let mut err = if path == "." {
                        ApiError::bad_request(format!("invalid request: {inner}"))
                    } else {
                        ApiError::bad_request(format!("invalid value for '{path}': {inner}"))
                    };
                    if path != "." {
                        err.param = Some(path);
                    }
                    err.code = Some("invalid_type");
                    err
                }
                _ => {
                    ApiError { code: Some("invalid_json"), ..ApiError::bad_request(format!("malformed JSON: {inner}")) }
                }
            });
        }
    };
    de.end().map_err(|e| ApiError {
        code: Some("invalid_json"),
        ..ApiError::bad_request(format!("malformed JSON: {e}"))
    })?;
    Ok(value)
}

/// `axum::Json` answers some failures in plain text (and insists on a content type, which curl
/// users often forget); this one always answers in OpenAI's JSON error format.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A body that trickles in would hold its connection forever: it has until the deadline
        // the accept loop set (`listen::BodyDeadline`).
        let deadline = req.extensions().get::<BodyDeadline>().map(|d| d.0);
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, read).await.map_err(|_| ApiError::body_timeout())?,
            None => read.await,
        };
        let bytes = read.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::bad_request(format!("could not read the request body: {}", rej.body_text()))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        temperature: Option<f32>,
        messages: Vec<M>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct M {
        content: String,
    }

    #[test]
    fn syntax_error_is_malformed_json() {
        let e = parse_json::<T>(b"{\"messages\": [").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("invalid_json"));
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_json::<T>(br#"{"messages": [{"content": 5}]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(e.message.contains("messages[0].content"), "{}", e.message);
        let e = parse_json::<T>(br#"{"messages": [], "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn empty_and_trailing() {
        assert!(parse_json::<T>(b"  ").unwrap_err().message.contains("empty"));
        assert_eq!(parse_json::<T>(br#"{"messages": []} x"#).unwrap_err().code, Some("invalid_json"));
        let ok = parse_json::<T>(br#"{"messages": [{"content": "hi"}], "unknown": [1, 2]}"#).unwrap();
        assert_eq!(ok.messages[0].content, "hi");
    }

    #[test]
    fn body_shape() {
        let b = ApiError::context_exceeded("messages", 5000, 4096).body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "context_length_exceeded");
        assert_eq!(b["error"]["param"], "messages");
        assert!(b["error"]["message"].as_str().unwrap().contains("5000"));
    }
}
