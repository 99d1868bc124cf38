//! The accept loop's limits over real sockets: idle and slow connections are closed, long
//! streams are not, connections beyond the cap are told 503.

use super::listen::{fit_connections, Limits};
use super::tests::{assert_error, rt, server_custom, user, Resp};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use test_support::http::dechunk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(header_timeout_ms: u64, max_connections: usize) -> Limits {
    Limits { header_timeout: Duration::from_millis(header_timeout_ms), max_connections }
}

/// Read until the server closes; the bytes and how long that took. Panics after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut raw = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut raw)).await;
    assert!(r.is_ok(), "the server kept the connection open for {limit:?}");
    (raw, t0.elapsed())
}

fn parse(raw: &[u8]) -> Resp {
    let raw = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Resp { status, headers: head.to_string(), body }
}

const GET_HEALTH_KEEP_ALIVE: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Read one response with a `Content-Length` body from a kept-alive connection.
async fn read_one(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("a response").unwrap();
        assert!(n > 0, "closed before a full response: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("content-length");
            if body.len() >= len {
                return parse(&raw);
            }
        }
    }
}

#[test]
fn silent_and_slow_header_connections_are_closed() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(500, 16), |_| {}).await;
        // Sends nothing at all.
        let mut idle = TcpStream::connect(s.addr).await.unwrap();
        // Sends part of a header, then nothing (slowloris).
        let mut partial = TcpStream::connect(s.addr).await.unwrap();
        partial.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-A: ").await.unwrap();
        let (_, t_idle) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
        let (_, t_partial) = read_until_closed(&mut partial, Duration::from_secs(5)).await;
        assert!(t_idle >= Duration::from_millis(400), "closed too early: {t_idle:?}");
        assert!(t_partial < Duration::from_secs(5));
        // The server still answers.
        let r = super::tests::get(s.addr, "/health").await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn kept_alive_connection_serves_requests_then_closes_when_idle() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(800, 16), |_| {}).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        for _ in 0..3 {
            c.write_all(GET_HEALTH_KEEP_ALIVE).await.unwrap();
            assert_eq!(read_one(&mut c).await.status, 200);
            // Well within the timeout: the connection is still open for the next request.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (rest, idle) = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"), "{rest:?}");
        assert!(idle >= Duration::from_millis(300), "closed after {idle:?}");
    });
}

#[test]
fn body_that_trickles_is_refused_with_408() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(600, 16), |_| {}).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mess").await.unwrap();
        let (raw, took) = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert_error(&parse(&raw), 408, "did not arrive in time");
        assert!(took < Duration::from_secs(3), "{took:?}");
    });
}

#[test]
fn streams_longer_than_the_timeout_are_not_cut() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(400, 16), |_| {}).await;
        // 1 s between tokens, each gap longer than the header timeout, 3 s in all.
        s.delay.store(1_000_000, std::sync::atomic::Ordering::Relaxed);
        let body = json!({ "messages": user("Hi"), "max_tokens": 3, "seed": 0, "stream": true }).to_string();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = super::tests::send_raw(s.addr, req.as_bytes()).await;
        let events = r.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
        let text: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect();
        assert_eq!(text, super::testing::WORDS[..3].concat());
        // The same for a non-streamed answer that takes longer than the timeout.
        let r = super::tests::post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 2 })).await;
        assert_eq!(r.status, 200, "{}", r.body);
    });
}

async fn held(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept them in order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    v
}

#[test]
fn connections_beyond_the_cap_are_told_503() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(10_000, 2), |_| {}).await;
        let mut first_two = held(s.addr, 2).await;
        let r = super::tests::get(s.addr, "/health").await;
        let j = assert_error(&r, 503, "maximum of 2 connections");
        assert_eq!(j["error"]["type"], "server_error");
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{}", r.headers);
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        // A held connection is served; one that closes makes room for a new one.
        first_two[0].write_all(GET_HEALTH_KEEP_ALIVE).await.unwrap();
        assert_eq!(read_one(&mut first_two[0]).await.status, 200);
        drop(first_two.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(super::tests::get(s.addr, "/health").await.status, 200);
    });
}

#[test]
fn a_flood_beyond_the_cap_is_dropped_unanswered() {
    rt().block_on(async {
        let s = server_custom(256, 2, limits(10_000, 1), |_| {}).await;
        // One served and the 64 the server still answers with 503, all silent.
        let _held = held(s.addr, 65).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let _ = c.write_all(GET_HEALTH_KEEP_ALIVE).await;
        let (raw, _) = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    });
}

#[test]
fn the_cap_fits_the_open_file_limit() {
    assert_eq!(fit_connections(256, None), (256, None));
    assert_eq!(fit_connections(256, Some(65536)), (256, None));
    let (n, note) = fit_connections(256, Some(256));
    assert_eq!(n, 256 - 64 - 64);
    assert!(note.unwrap().contains("open-file limit (256)"));
    assert_eq!(fit_connections(10, Some(10)).0, 1);
}

#[cfg(target_os = "linux")]
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let soft = super::listen::raise_fd_limit().expect("getrlimit works on Linux");
    let status = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = status.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    let (cur, max) = (v[3], v[4]);
    assert_eq!(cur, max, "{line}");
    assert_eq!(cur.parse::<u64>().ok(), Some(soft), "{line}");
}
