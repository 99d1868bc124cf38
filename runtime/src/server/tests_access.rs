//! The `Host`/`Origin` checks, CORS and the model id, over real sockets with the fake model.

use super::access::Access;
use super::listen::Limits;
use super::tests::{assert_error, post, rt, send_raw, server, server_custom, user, Resp, Server};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// `METHOD PATH` with exactly these extra header lines (no `Host` unless given).
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    send_raw(addr, req.as_bytes()).await
}

fn chat_body() -> String {
    json!({ "messages": user("Hi"), "max_tokens": 2 }).to_string()
}

async fn with_access(loopback_host_only: bool, cors: &[&str]) -> Server {
    let cors: Vec<String> = cors.iter().map(|s| s.to_string()).collect();
    server_custom(256, 2, Limits::default(), |st| st.access = Access::new(loopback_host_only, &cors).unwrap()).await
}

#[test]
fn loopback_server_answers_only_loopback_host_names() {
    rt().block_on(async {
        let s = server().await;
        let port = s.addr.port();
        for host in [
            "localhost".to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            "LocalHost".into(),
        ] {
            let r = request(s.addr, "GET", "/health", &[&format!("Host: {host}")], "").await;
            assert_eq!(r.status, 200, "Host: {host}: {}", r.body);
        }
        // No Host at all: not a browser (browsers always send one).
        assert_eq!(request(s.addr, "GET", "/health", &[], "").await.status, 200);
        // A DNS-rebinding page's requests carry its own name.
        for host in
            ["evil.example", &format!("evil.example:{port}"), "localhost.evil.example", "192.168.1.10", "localhost:x"]
        {
            let r = request(s.addr, "GET", "/v1/models", &[&format!("Host: {host}")], "").await;
            assert_error(&r, 403, "Host");
        }
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &["Host: rebind.example", "Content-Type: text/plain"],
            &chat_body(),
        )
        .await;
        let j = assert_error(&r, 403, "--host");
        assert_eq!(j["error"]["code"], "forbidden");
        assert_eq!(s.counters.peak.load(Ordering::SeqCst), 0, "no generation ran for a refused request");
        // Control characters in the refused name are escaped in the message.
        let r = request(s.addr, "GET", "/health", &["Host: a\tb"], "").await;
        assert_eq!(r.status, 403);
        assert!(!r.body.contains('\t'), "{}", r.body);
    });
}

#[test]
fn other_host_names_are_answered_when_not_bound_to_loopback() {
    rt().block_on(async {
        let s = with_access(false, &[]).await;
        let r = request(s.addr, "GET", "/health", &["Host: box.lan:8080"], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        // Origins are still checked: a page elsewhere cannot drive it.
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &["Host: box.lan:8080", "Origin: http://evil.example"],
            &chat_body(),
        )
        .await;
        assert_error(&r, 403, "cross-origin");
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &["Host: box.lan:8080", "Origin: http://box.lan:8080"],
            &chat_body(),
        )
        .await;
        assert_eq!(r.status, 200, "same origin: {}", r.body);
    });
}

#[test]
fn cross_origin_requests_are_refused() {
    rt().block_on(async {
        let s = server().await;
        let host = format!("Host: localhost:{}", s.addr.port());
        // A "simple" request a browser sends without a preflight: text/plain POST.
        for origin in [
            "http://evil.example",
            "null",
            &format!("http://localhost:{}", s.addr.port() ^ 1),
            &format!("http://127.0.0.1:{}", s.addr.port()),
        ] {
            let r = request(
                s.addr,
                "POST",
                "/v1/chat/completions",
                &[&host, "Content-Type: text/plain", &format!("Origin: {origin}")],
                &chat_body(),
            )
            .await;
            assert_error(&r, 403, "--cors-origin");
            assert!(r.header("access-control-allow-origin").is_none(), "{}", r.headers);
        }
        let r = request(s.addr, "GET", "/v1/models", &[&host, "Origin: https://evil.example"], "").await;
        assert_error(&r, 403, "cross-origin");
        // A preflight from a refused origin is refused too.
        let r = request(
            s.addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[&host, "Origin: http://evil.example", "Access-Control-Request-Method: POST"],
            "",
        )
        .await;
        assert_error(&r, 403, "cross-origin");
        assert_eq!(s.counters.peak.load(Ordering::SeqCst), 0, "no generation ran");
    });
}

#[test]
fn the_chat_page_own_requests_pass() {
    rt().block_on(async {
        let s = server().await;
        let port = s.addr.port();
        for (host, origin) in [
            (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}")),
            (format!("localhost:{port}"), format!("http://localhost:{port}/")),
            (format!("[::1]:{port}"), format!("http://[::1]:{port}")),
        ] {
            let r = request(
                s.addr,
                "POST",
                "/v1/chat/completions",
                &[&format!("Host: {host}"), &format!("Origin: {origin}"), "Content-Type: application/json"],
                &chat_body(),
            )
            .await;
            assert_eq!(r.status, 200, "{host} from {origin}: {}", r.body);
            assert!(r.header("access-control-allow-origin").is_none(), "same origin needs no CORS: {}", r.headers);
        }
        // Without Origin (curl, SDKs): no browser page is involved.
        let r = post(s.addr, "/v1/chat/completions", json!({ "messages": user("Hi"), "max_tokens": 2 })).await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn cors_origin_allows_that_origin_only() {
    rt().block_on(async {
        let s = with_access(true, &["http://app.example:3000"]).await;
        let host = format!("Host: 127.0.0.1:{}", s.addr.port());
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &[&host, "Origin: http://app.example:3000", "Content-Type: application/json"],
            &chat_body(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("http://app.example:3000"));
        assert!(r.header("vary").is_some_and(|v| v.contains("Origin")), "{}", r.headers);
        // A streamed answer carries the header too.
        let body = json!({ "messages": user("Hi"), "max_tokens": 2, "stream": true }).to_string();
        let r =
            request(s.addr, "POST", "/v1/chat/completions", &[&host, "Origin: http://app.example:3000"], &body).await;
        assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
        assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("http://app.example:3000"));

        let r = request(
            s.addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                &host,
                "Origin: http://app.example:3000",
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: content-type, authorization, x-stainless-os",
            ],
            "",
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.headers);
        assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("http://app.example:3000"));
        assert!(r.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")), "{}", r.headers);
        assert_eq!(
            r.header("access-control-allow-headers").as_deref(),
            Some("content-type, authorization, x-stainless-os")
        );
        let vary = r.headers.to_ascii_lowercase();
        assert!(vary.contains("vary: origin") || vary.contains(", origin"), "{}", r.headers);

        for origin in ["http://app.example:3001", "http://evil.example", "null"] {
            let r =
                request(s.addr, "POST", "/v1/chat/completions", &[&host, &format!("Origin: {origin}")], &chat_body())
                    .await;
            assert_error(&r, 403, "cross-origin");
        }
        // The Host check stays: an allowed origin does not make a rebinding name acceptable.
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &["Host: app.example:3000", "Origin: http://app.example:3000"],
            &chat_body(),
        )
        .await;
        assert_error(&r, 403, "Host");
    });
}

#[test]
fn cors_origin_star_allows_any_origin() {
    rt().block_on(async {
        let s = with_access(true, &["*"]).await;
        for origin in ["http://anything.example", "null"] {
            let r = request(
                s.addr,
                "POST",
                "/v1/chat/completions",
                &["Host: localhost", &format!("Origin: {origin}")],
                &chat_body(),
            )
            .await;
            assert_eq!(r.status, 200, "{origin}: {}", r.body);
            assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(origin));
        }
    });
}

#[test]
fn model_id_is_listed_and_answers_whatever_model_is_named() {
    rt().block_on(async {
        let s = server_custom(256, 2, Limits::default(), |st| st.model_id = "my-alias".into()).await;
        let m = super::tests::get(s.addr, "/v1/models").await.json();
        assert_eq!(m["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(m["data"][0]["id"], "my-alias");
        assert_eq!(super::tests::get(s.addr, "/v1/models/my-alias").await.status, 200);
        assert_error(&super::tests::get(s.addr, "/v1/models/fake-model").await, 404, "my-alias");
        assert_eq!(super::tests::get(s.addr, "/props").await.json()["model"], "my-alias");

        assert!(!s.state.other_model_noted.load(Ordering::SeqCst));
        let r = post(
            s.addr,
            "/v1/chat/completions",
            json!({ "model": "my-alias", "messages": user("Hi"), "max_tokens": 2 }),
        )
        .await
        .json();
        assert_eq!(r["model"], "my-alias");
        assert!(!s.state.other_model_noted.load(Ordering::SeqCst), "naming this model is no substitution");
        // OpenAI clients name some model; this server's one answers and the response says so.
        let r = post(
            s.addr,
            "/v1/chat/completions",
            json!({ "model": "gpt-4o-mini", "messages": user("Hi"), "max_tokens": 2 }),
        )
        .await
        .json();
        assert_eq!(r["model"], "my-alias");
        assert!(s.state.other_model_noted.load(Ordering::SeqCst), "the substitution is reported");
        let r = post(s.addr, "/v1/completions", json!({ "model": "text-davinci-003", "prompt": "x", "max_tokens": 2 }))
            .await
            .json();
        assert_eq!(r["model"], "my-alias");
        let r = post(s.addr, "/completion", json!({ "prompt": "x", "n_predict": 2 })).await.json();
        assert_eq!(r["model"], "my-alias");
        let body = json!({ "model": "gpt-4o", "messages": user("Hi"), "max_tokens": 2, "stream": true });
        let r = post(s.addr, "/v1/chat/completions", body).await;
        let first: serde_json::Value = serde_json::from_str(&r.events()[0]).unwrap();
        assert_eq!(first["model"], "my-alias");
        // The field is checked like any other.
        let r = post(s.addr, "/v1/chat/completions", json!({ "model": 5, "messages": user("Hi") })).await;
        assert_eq!(assert_error(&r, 400, "model")["error"]["param"], "model");
    });
}
