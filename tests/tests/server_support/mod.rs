//! Shared by the server's end-to-end tests: start `llamafile` as a server on a free port, talk
//! HTTP to it (the workspace's test client, `e2e::http`), stop it.
#![allow(dead_code)]

// Not every test file uses every item.
#[allow(unused_imports)]
pub use e2e::http::{request_bytes, send, send_raw, stream_then_hang_up, Resp};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tiny model the server tests use; `None` (the skip recorded) if the shared fixtures are absent.
pub fn tiny_model() -> Option<PathBuf> {
    Some(e2e::require_shared()?.join("models/tiny-mistral-q8_0.gguf"))
}

/// The runtime's own tiny model (`gguf::writer::tiny_model`, no chat template) written into
/// `dir`: for the tests of the HTTP layer, which need some model but not the Mistral one.
pub fn writer_model(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, llamafile_format::gguf::writer::tiny_model(&[], &[])).unwrap();
    p
}

/// A real model fetched by `scripts/fetch-model`; `None` (the skip recorded) if absent.
pub fn real_model(file: &str) -> Option<PathBuf> {
    e2e::require_model(file)
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
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr_path).unwrap());
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
                        return Server {
                            child,
                            url: url.to_string(),
                            addr,
                            name: name.to_string(),
                            stderr_path,
                            _dir: dir,
                        };
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "llamafile exited ({status}) before serving: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "llamafile did not print its URL within 60 s: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
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
        let ok =
            Command::new("kill").args(["-INT", &self.pid().to_string()]).status().map(|s| s.success()).unwrap_or(false);
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
