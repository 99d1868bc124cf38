//! The accept loop: HTTP/1.1 connections with a header-read timeout, a cap on open connections
//! and a graceful stop.
//!
//! `axum::serve` has no timeouts and no connection limit: a socket that never sends a byte stays
//! open forever, and enough of them exhaust the file descriptors so that real clients cannot
//! connect. This loop drives hyper directly (the same hyper and hyper-util `axum::serve` uses)
//! so that:
//! - a connection must send a complete request header within `header_timeout` of opening, and,
//!   between requests on a kept-alive connection, within `header_timeout` of the previous
//!   response ending (hyper's header timer runs whenever the connection waits for a request);
//!   else it is closed. A request's body must arrive within the same time (`BodyDeadline`,
//!   checked by the JSON extractor);
//! - a response that is being written (an SSE stream producing tokens, or waiting for its first
//!   one) is never cut by a timeout: hyper does not read the next request while it writes one;
//! - at most `max_connections` connections are served at once; beyond that a few more are told
//!   `503` (JSON, `Connection: close`) and anything beyond those is closed at once, so the
//!   descriptors a flood can take are bounded.

use super::error::ApiError;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections beyond the cap that are still answered with a 503 (the rest are closed unanswered).
const OVERFLOW_ANSWERED: usize = 64;
/// File descriptors kept for everything but client connections (model file, stdio, epoll...).
const FD_RESERVE: u64 = 64;
/// How long a connection over the cap may take to send its request before it is dropped.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection limits (`--header-timeout`, `--max-connections`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_S),
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
        }
    }
}

pub const DEFAULT_HEADER_TIMEOUT_S: u64 = 30;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 256;

/// When a request's body must have arrived (its headers' arrival plus the header timeout); put in
/// the request's extensions by `body_deadline`, read by `error::ApiJson`.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub tokio::time::Instant);

/// Raise the soft limit on open files to the hard limit (many systems start processes at 1024
/// while allowing far more) and return the soft limit now in force, if it can be read.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap that fits in `fd_limit` open files: `wanted`, or less (with the reason)
/// when the descriptors cannot hold that many plus the answered overflow and a reserve.
pub fn fit_connections(wanted: usize, fd_limit: Option<u64>) -> (usize, Option<String>) {
    let Some(fds) = fd_limit else { return (wanted, None) };
    let room = fds.saturating_sub(FD_RESERVE + OVERFLOW_ANSWERED as u64).max(1) as usize;
    if wanted <= room {
        (wanted, None)
    } else {
        (
            room,
            Some(format!(
                "--max-connections {wanted} is more than the open-file limit ({fds}) allows; serving at most {room}"
            )),
        )
    }
}

/// Serve `app` on `listener` until `stop` resolves, then stop accepting, let each connection
/// finish the response it is writing, and return when all are closed.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: impl Future<Output = ()>) {
    let cap = limits.max_connections.max(1);
    let served = Arc::new(Semaphore::new(cap));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERED));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // wait a little instead of spinning on the same error.
                    if !is_transient(&e) {
                        eprintln!("accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Tokens are small writes: send each at once rather than waiting for the previous ACK.
        let _ = stream.set_nodelay(true);
        match served.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, stop_rx) = (app.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    serve_connection(stream, app, limits.header_timeout, stop_rx).await;
                    drop(permit);
                });
            }
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        refuse_connection(stream, cap).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(stream),
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task holds a permit until it ends.
    let _ = served.acquire_many(cap as u32).await;
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || matches!(e.raw_os_error(), Some(code) if code == libc::EMFILE || code == libc::ENFILE || code == libc::ENOBUFS || code == libc::ENOMEM)
}

async fn serve_connection(stream: TcpStream, app: Router, header_timeout: Duration, mut stop: watch::Receiver<bool>) {
    let svc = tower::ServiceExt::map_request(app, move |req: Request<Incoming>| body_deadline(req, header_timeout));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|&s| s) => {}
    }
    // Finish the response in progress (generations are cancelled by then), then close.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn body_deadline(req: Request<Incoming>, timeout: Duration) -> Request<axum::body::Body> {
    let mut req = req.map(axum::body::Body::new);
    req.extensions_mut().insert(BodyDeadline(tokio::time::Instant::from_std(Instant::now() + timeout)));
    req
}

/// A connection over the cap: read its request (briefly), answer 503 and close.
async fn refuse_connection(stream: TcpStream, cap: usize) {
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        let mut resp = ApiError::unavailable(format!(
            "the server is serving its maximum of {cap} connections; try again shortly (--max-connections sets the limit)"
        ))
        .into_response();
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        Ok::<_, std::convert::Infallible>(resp)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(OVERFLOW_TIMEOUT).keep_alive(false);
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(OVERFLOW_TIMEOUT * 2, conn).await;
}
