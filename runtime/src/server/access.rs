//! Which web pages may drive the server: the `Host` and `Origin` checks, and CORS.
//!
//! A server on loopback is still reachable from any web page the user opens: through DNS
//! rebinding (a page on `evil.example` re-resolves its own name to 127.0.0.1 and then talks to
//! the server as if same-origin) and through "simple" cross-origin requests a browser sends
//! without asking first (a `text/plain` POST). So:
//! - bound to loopback, the `Host` must name loopback (`localhost`, `*.localhost`, 127.0.0.0/8,
//!   `[::1]`, any port): a rebinding page's requests carry its own name. A request without `Host`
//!   (HTTP/1.0 tools) is answered, since browsers always send one. Bound to another address
//!   (`--host 0.0.0.0`, a LAN address) the server answers whatever name reaches it;
//! - a request with an `Origin` (browsers send one on every cross-origin request and on
//!   same-origin POSTs) is refused unless that origin is the server's own (the `Host` it was
//!   asked under) or `--cors-origin` allows it (`*`: any, `null` included). A request without
//!   `Origin` does not come from a page's script (curl, SDKs, navigation) and is let through;
//! - an allowed cross-origin request gets `Access-Control-Allow-Origin` and an OPTIONS
//!   preflight from an allowed origin is answered here (204) with the methods and headers.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The checks in force (from `--host` and `--cors-origin`).
#[derive(Debug, Clone)]
pub struct Access {
    /// Refuse a `Host` that does not name loopback (on when the listening address is loopback).
    pub loopback_host_only: bool,
    /// Origins allowed besides the server's own, lowercased, without a trailing `/`; `*` is any.
    pub cors_origins: Vec<String>,
}

impl Default for Access {
    fn default() -> Self {
        Access { loopback_host_only: true, cors_origins: Vec::new() }
    }
}

impl Access {
    /// `--cors-origin` values checked and normalised: `*`, `null`, or `scheme://host[:port]`.
    pub fn new(loopback_host_only: bool, cors_origins: &[String]) -> anyhow::Result<Access> {
        let mut out = Vec::with_capacity(cors_origins.len());
        for o in cors_origins {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o != "*" && o != "null" && parse_origin(&o).is_none() {
                anyhow::bail!(
                    "--cors-origin {}: expected an origin such as http://localhost:3000 (scheme://host[:port], no path), or * for any",
                    o.escape_debug()
                );
            }
            out.push(o);
        }
        Ok(Access { loopback_host_only, cors_origins: out })
    }

    fn allows_cross_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == "*" || *o == origin)
    }
}

/// A `Host` value split into its name (lowercased, IPv6 without brackets, no trailing dot) and
/// port; `None` if it is malformed.
fn parse_host(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        match after {
            "" => (ip, None),
            p => (ip, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            Some(_) => return None, // an IPv6 address must be in brackets
            None => (host, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    Some((name, port))
}

/// Whether a host name means this machine whatever DNS says.
fn names_loopback(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An origin (`scheme://host[:port]`) as scheme, host name and port (the scheme's default when
/// absent).
fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (name, port) = parse_host(rest)?;
    Some((scheme.to_ascii_lowercase(), name, port.unwrap_or(default)))
}

/// Whether `origin` is the server's own as it was reached at `host`: same name and port (an
/// `https` origin is accepted too, for a TLS proxy in front that keeps the `Host`).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let (Some((scheme, o_name, o_port)), Some((h_name, h_port))) = (parse_origin(origin), host.and_then(parse_host))
    else {
        return false;
    };
    let h_port = h_port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    o_name == h_name && o_port == h_port
}

fn forbidden(message: String) -> Response {
    let mut e = ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", message);
    e.code = Some("forbidden");
    e.into_response()
}

/// A header's text for a message: escaped and cut, since it comes from the client.
fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(100).collect::<String>().escape_debug().to_string();
    if v.chars().count() > 100 {
        s.push('…');
    }
    s
}

/// The middleware: checks `Host` and `Origin`, answers preflights, adds the CORS headers.
pub async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let access = &st.access;
    let headers = req.headers();
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        None => None,
        Some(Ok(h)) => Some(h.to_string()),
        Some(Err(_)) => return forbidden("the Host header is not valid text".into()),
    };
    if access.loopback_host_only {
        if let Some(h) = &host {
            if !parse_host(h).is_some_and(|(name, _)| names_loopback(&name)) {
                return forbidden(format!(
                    "Host '{}' refused: this server listens on loopback and answers only to localhost, 127.0.0.1 or [::1] \
                     (start it with --host to serve other names)",
                    shown(h)
                ));
            }
        }
    }
    let origin = match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => return next.run(req).await,
        Some(Ok(o)) => o.trim().trim_end_matches('/').to_ascii_lowercase(),
        Some(Err(_)) => return forbidden("the Origin header is not valid text".into()),
    };
    let cross = !same_origin(&origin, host.as_deref());
    if cross && !access.allows_cross_origin(&origin) {
        return forbidden(format!(
            "cross-origin request from '{}' refused: only pages served by this server may use it \
             (start it with --cors-origin {} to allow that origin)",
            shown(&origin),
            if origin == "null" { "null".to_string() } else { shown(&origin) }
        ));
    }
    let preflight = req.method() == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight { preflight_response(headers) } else { next.run(req).await };
    if cross {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// The answer to an allowed origin's preflight: every method the API has, the headers asked for.
fn preflight_response(headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or_else(|| HeaderValue::from_static("content-type, authorization")),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(header::VARY, HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "a.localhost:9",
            "localhost.",
        ] {
            let (name, _) = parse_host(h).unwrap_or_else(|| panic!("{h} parses"));
            assert!(names_loopback(&name), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:80",
            "127.0.0.1.nip.io",
            "0.0.0.0",
        ] {
            assert!(!parse_host(h).is_some_and(|(n, _)| names_loopback(&n)), "{h}");
        }
        for bad in ["", ":80", "localhost:", "localhost:x", "localhost:99999", "::1", "[::1]x", "[::1"] {
            assert!(parse_host(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn origins() {
        assert!(same_origin("http://localhost:8080", Some("localhost:8080")));
        assert!(same_origin("http://127.0.0.1", Some("127.0.0.1:80")));
        assert!(same_origin("http://[::1]:8080", Some("[::1]:8080")));
        assert!(same_origin("https://box.lan", Some("box.lan")));
        assert!(!same_origin("http://localhost:8081", Some("localhost:8080")), "another port is another origin");
        assert!(!same_origin("http://127.0.0.1:8080", Some("localhost:8080")), "another name is another origin");
        assert!(!same_origin("null", Some("localhost")));
        assert!(!same_origin("http://localhost:8080", None));
        assert!(!same_origin("file://", Some("localhost")));
    }

    #[test]
    fn cors_origin_values() {
        let a = Access::new(true, &["HTTP://Example.com:3000/".into(), "*".into(), "null".into()]).unwrap();
        assert_eq!(a.cors_origins, ["http://example.com:3000", "*", "null"]);
        let e = Access::new(true, &["example.com".into()]).unwrap_err().to_string();
        assert!(e.contains("--cors-origin example.com"), "{e}");
        assert!(Access::new(true, &["http://x/path".into()]).is_err());
        let only = Access::new(true, &["http://a:1".into()]).unwrap();
        assert!(only.allows_cross_origin("http://a:1") && !only.allows_cross_origin("http://a:2"));
    }
}
