//! Shared by the server's end-to-end tests: start `llamafile` as a server on a free port, talk
//! HTTP to it, stop it.
//!
//! The HTTP client is a few lines over `std::net::TcpStream` instead of an HTTP client crate:
//! the tests send malformed and oversized bodies, read streams part-way and hang up mid-response,
//! which is exactly what client libraries hide.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tiny model the server tests use; `None` (the test skips with a message) if absent.
pub fn tiny_model() -> Option<PathBuf> {
    let p = e2e::shared().join("models/tiny-mistral-q8_0.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (the shared fixtures are expected at ../shared, or where LLAMAFILE_SHARED says)", p.display());
        None
    }
}

/// A real model fetched by `scripts/fetch-model` (cached in `$LLAMAFILE_RS_MODELS` or
/// `~/.cache/llamafile-rs/models`); `None` (the test skips with a message) if absent.
pub fn real_model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLAMAFILE_RS_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llamafile-rs/models"));
    let p = dir.join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (run scripts/fetch-model)", p.display());
        None
    }
}

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub name: String,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `llamafile -m MODEL --nobrowser --port 0 -t 1 ARGS...` (unless ARGS give them), waiting
    /// for its URL line.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let mut all = args.to_vec();
        if !all.contains(&"--nobrowser") {
            all.push("--nobrowser");
        }
        Server::start_with(model, &all, |_| {})
    }

    /// As `start` but without adding `--nobrowser`, and with `tweak` applied to the command.

    pub fn start_with(model: &Path, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.txt");
        let mut cmd = Command::new(e2e::bin("llamafile"));
        cmd.arg("-m").arg(model);
        if !args.contains(&"-t") {
            cmd.args(["-t", "1"]);
        }
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("start llamafile");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("llamafile: serving ") {
                        let (name, url) = rest.rsplit_once(" at ").expect("serving NAME at URL");
                        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
                        return Server { child, url: url.to_string(), addr, name: name.to_string(), stderr_path, _dir: dir };
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("llamafile exited ({status}) before serving: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("llamafile did not print its URL within 60 s: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGINT (Ctrl-C) and wait for the exit; `None` if it did not exit within `timeout`.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let ok = Command::new("kill").args(["-INT", &self.pid().to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill -INT failed");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn get(&self, path: &str) -> Resp {
        send(&self.addr, "GET", path, b"")
    }
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        send(&self.addr, "POST", path, body.to_string().as_bytes())
    }
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Resp {
        send(&self.addr, "POST", path, body)
    }

    /// Resident memory of the server process, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Server) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string)).collect()
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

pub fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn dechunk(raw: &str) -> String {
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

pub fn send(addr: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    send_raw(addr, &request_bytes(method, path, body))
}

/// Send `request` exactly as given and read the response until the server closes.
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
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
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
