//! A blocking HTTP/1.1 client for the server tests, a few lines over `std::net::TcpStream`
//! rather than an HTTP client crate: the tests send malformed and oversized bodies, read streams
//! part-way and hang up mid-response, which is exactly what client libraries hide.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A whole response: status, the header block as text, the body (de-chunked).
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `data:` payloads of an SSE body, in order.
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string))
            .collect()
    }
    /// Check an OpenAI-style error: status, JSON body, message mentioning `needle`.
    pub fn assert_error(&self, status: u16, needle: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.headers.to_ascii_lowercase().contains("content-type: application/json"), "{}", self.headers);
        let j = self.json();
        let msg = j["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {j}"));
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        assert!(j["error"]["type"].is_string(), "{j}");
        j
    }
}

/// The bytes of one request with a JSON body, asking the server to close after answering.
pub fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Decode a chunked body (what streaming responses use).
pub fn dechunk(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    out
}

/// Send one request to `addr` (`HOST:PORT`) and read the whole response (60 s at most between
/// reads).
pub fn send(addr: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    send_raw(addr, &request_bytes(method, path, body))
}

/// Send `request` exactly as given (malformed, with other headers) and read the response until
/// the server closes.
pub fn send_raw(addr: &str, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer (413) and close before reading a large body: a failed write is fine
    // as long as the answer can be read.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Resp { status, headers: head.to_string(), body }
}

/// Start a streaming request, read until `n` SSE events arrived, then hang up. Returns what was read.
pub fn stream_then_hang_up(addr: &str, path: &str, body: &Value, n: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&request_bytes("POST", path, body.to_string().as_bytes())).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("data: ").count() < n {
        let k = s.read(&mut buf).expect("stream read");
        assert!(k > 0, "stream ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    drop(s);
    String::from_utf8_lossy(&got).into_owned()
}
