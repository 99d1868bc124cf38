//! API keys (`--api-key`, `--api-key-file`): with any key set, every request but the chat page,
//! `/health` and CORS preflights must carry one, as `Authorization: Bearer KEY` (OpenAI's
//! clients) or `x-api-key: KEY` (Anthropic's). Otherwise the answer is 401 with OpenAI's
//! `invalid_api_key` error (Anthropic's `authentication_error` on `/v1/messages`).
//!
//! Keys are kept as SHA-256 digests and a presented key's digest is compared with every one of
//! them in constant time, so the time an answer takes says nothing about how much of a key
//! was right.

use super::error::ApiError;
use super::AppState;
use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use llamafile_format::escape::escape_path;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest key file read (keys are short; this only stops `--api-key-file` on a huge file).
const MAX_KEY_FILE: u64 = 1 << 20;

/// The keys the server accepts; none = no authentication.
#[derive(Default, Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// A key is sent in an HTTP header: no spaces or control characters (`place` names its source).
fn check_key(key: &str, place: &str) -> anyhow::Result<()> {
    if let Some(c) = key.chars().find(|c| c.is_control() || c.is_whitespace()) {
        bail!("{place}: an API key may not hold spaces or control characters (found {c:?})");
    }
    Ok(())
}

/// Says how many keys there are, never what they are.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// From `--api-key` values (each may hold several, comma-separated, as llama.cpp's) and
    /// `--api-key-file` files (one key per line; blank lines skipped).
    pub fn load(keys: &[String], files: &[PathBuf]) -> anyhow::Result<ApiKeys> {
        let mut all: Vec<String> = Vec::new();
        for v in keys {
            for k in v.split(',') {
                let k = k.trim();
                if k.is_empty() {
                    bail!("--api-key: an empty key (give KEY or KEY1,KEY2)");
                }
                check_key(k, "--api-key")?;
                all.push(k.to_string());
            }
        }
        for path in files {
            let f = llamafile_format::input::open_regular(path, "an --api-key-file")?;
            let mut buf = Vec::new();
            f.take(MAX_KEY_FILE + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("{}: cannot read", escape_path(path)))?;
            if buf.len() as u64 > MAX_KEY_FILE {
                bail!(
                    "{}: more than {MAX_KEY_FILE} bytes: an --api-key-file holds one key per line",
                    escape_path(path)
                );
            }
            let text = String::from_utf8(buf).map_err(|_| {
                anyhow::anyhow!("{}: not UTF-8 text: an --api-key-file holds one key per line", escape_path(path))
            })?;
            let before = all.len();
            for (i, line) in text.lines().enumerate() {
                let k = line.trim();
                if !k.is_empty() {
                    check_key(k, &format!("{} line {}", escape_path(path), i + 1))?;
                    all.push(k.to_string());
                }
            }
            if all.len() == before {
                bail!("{}: no key in it: an --api-key-file holds one key per line", escape_path(path));
            }
        }
        Ok(ApiKeys { digests: all.iter().map(|k| digest(k.as_bytes())).collect() })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of the keys. Every key is compared, each in constant time.
    pub fn accepts(&self, key: &[u8]) -> bool {
        let d = digest(key);
        self.digests.iter().fold(false, |found, k| found | constant_time_eq::constant_time_eq_32(k, &d))
    }
}

/// Paths answered without a key: the chat page (it asks for the key itself) and `/health`.
fn exempt(path: &str) -> bool {
    matches!(path, "/" | "/index.html" | "/health")
}

/// The key a request presents: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
fn presented(req: &Request) -> Option<&[u8]> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        if v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(v[scheme.len()..].trim_ascii());
        }
        return None;
    }
    h.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

/// The middleware: passes the request on when no key is set, the path is exempt, or the key
/// is right.
pub async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.api_keys.is_empty() || req.method() == Method::OPTIONS || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let message = match presented(&req) {
        Some(k) if st.api_keys.accepts(k) => return next.run(req).await,
        Some(_) => "invalid API key",
        None => "this server needs an API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')",
    };
    let e = ApiError {
        code: Some("invalid_api_key"),
        ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    };
    let mut resp = if super::messages::is_messages_path(req.uri().path()) {
        super::messages::error_response(&e)
    } else {
        e.into_response()
    };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_values_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "k3\r\n\n  k4  \n").unwrap();
        let keys = ApiKeys::load(&["k1,k2".into()], &[f]).unwrap();
        for k in ["k1", "k2", "k3", "k4"] {
            assert!(keys.accepts(k.as_bytes()), "{k}");
        }
        for k in ["", "k", "k1,k2", "k5", "K1"] {
            assert!(!keys.accepts(k.as_bytes()), "{k}");
        }
        assert!(ApiKeys::load(&[], &[]).unwrap().is_empty());
        assert!(ApiKeys::load(&["a,,b".into()], &[]).unwrap_err().to_string().contains("empty key"));
        assert!(ApiKeys::load(&["a b".into()], &[])
            .unwrap_err()
            .to_string()
            .starts_with("--api-key: an API key may not hold spaces"));
        let tab = dir.path().join("tab");
        std::fs::write(&tab, "ok\nx\ty\n").unwrap();
        let e = ApiKeys::load(&[], &[tab]).unwrap_err().to_string();
        assert!(e.contains("tab line 2: an API key may not hold") && e.contains("'\\t'"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(ApiKeys::load(&[], &[empty]).unwrap_err().to_string().contains("no key"));
        let e = ApiKeys::load(&[], &[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = ApiKeys::load(&[], &[dir.path().join("missing")]).unwrap_err().to_string();
        assert!(e.contains("cannot open"), "{e}");
    }
}
