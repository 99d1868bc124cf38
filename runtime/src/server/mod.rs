//! The chat page and the OpenAI-compatible HTTP API. Talks to `llamafile_engine` only
//! (through the `model::Model` seam).
//!
//! - `routes`: the endpoints; `types`: request bodies and their validation; `error`: the
//!   OpenAI-style error bodies and the JSON extractor
//! - `slots`: N sessions (`--parallel`), a FIFO queue, prefix affinity for the prompt cache
//! - `generation`: runs the engine on blocking threads; client gone = generation cancelled
//! - `model`: the trait the server needs from the engine (a fake one in `testing` for unit tests)
//! - `assets`: the chat page (one self-contained HTML document built from `assets/`)
//! - `access`: the `Host`/`Origin` checks and CORS (no web page the user visits may drive it)
//! - `listen`: the accept loop (header timeout, connection cap, graceful stop)
//! - `choices`: several choices (`n`) and log-probabilities (`logprobs`: their JSON shapes);
//!   `infill`: fill in the middle; `refused`: fields that change the answer and are not
//!   implemented (a 400, never silence)
//!
//! Concurrency: up to `--parallel` requests generate at once, each in its own slot (its own KV
//! cache); the others wait in arrival order.

pub mod access;
pub mod assets;
pub mod auth;
pub mod choices;
pub mod embeddings;
pub mod error;
pub mod generation;
pub mod infill;
pub mod listen;
pub mod logprobs;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod refused;
pub mod responses;
pub mod routes;
pub mod slots;
pub mod structured;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_choices;
#[cfg(test)]
mod tests_embeddings;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_tools;
pub mod tools;
pub mod turn;
pub mod types;

use anyhow::Context;
use llamafile_engine::{Engine, LoadOptions, SamplingParams};
use model::Model;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler shares.
pub struct AppState {
    pub model: Arc<dyn Model>,
    /// The model's name in the API (`/v1/models`, every response's `model`): `--alias`, else
    /// the model file's name without its extension.
    pub model_id: String,
    /// Set once a request named another model (the note about it is printed once).
    pub other_model_noted: AtomicBool,
    /// Which hosts and origins may use the server.
    pub access: access::Access,
    pub pool: Arc<slots::SlotPool>,
    /// Sampling when a request does not say (the command line's `--temp`, `--top-k`...).
    pub defaults: SamplingParams,
    /// `-n` when positive: the most tokens a request generates unless it asks for fewer/more.
    pub default_max_tokens: Option<usize>,
    /// `--system`: the chat page's default system prompt.
    pub system_prompt: Option<String>,
    /// Set once on Ctrl-C: every generation's callback returns false.
    pub shutting_down: AtomicBool,
    pub shutdown: watch::Sender<bool>,
    /// Log requests and generations to stderr (off with `--log-disable`).
    pub log: bool,
    /// Unix time the server started (`created` of `/v1/models`).
    pub started: u64,
    /// `/v1/embeddings` and `/embedding`: pooling, normalization, their session.
    pub embeddings: embeddings::Embeddings,
    /// `--metrics`: serve `/metrics`; the counters are kept either way.
    pub metrics_enabled: bool,
    pub metrics: metrics::Metrics,
    /// `--api-key`/`--api-key-file`: the keys requests must carry (none: no check).
    pub api_keys: auth::ApiKeys,
}

impl AppState {
    pub fn new(model: Arc<dyn Model>, parallel: usize, defaults: SamplingParams) -> Arc<AppState> {
        let pool = slots::SlotPool::new(&*model, parallel);
        let embeddings = embeddings::Embeddings::new(&*model, None, None);
        Arc::new(AppState {
            embeddings,
            model_id: model.name().to_string(),
            other_model_noted: AtomicBool::new(false),
            access: access::Access::default(),
            model,
            pool,
            defaults,
            default_max_tokens: None,
            system_prompt: None,
            shutting_down: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            log: true,
            started: types::unix_time(),
            metrics_enabled: false,
            metrics: metrics::Metrics::default(),
            api_keys: auth::ApiKeys::default(),
        })
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }
}

/// Everything the server starts with. The command line builds it (`cli::serve`), so the
/// server knows nothing of flags.
pub struct ServerOptions {
    /// The model file (for messages; `load` opens it).
    pub model_path: PathBuf,
    /// With one session per slot: all of them are checked against memory at load.
    pub load: LoadOptions,
    /// Slots: requests generated at the same time.
    pub parallel: usize,
    /// The model id `/v1/models` lists and answers carry.
    pub model_id: String,
    pub host: String,
    pub port: u16,
    /// Extra origins allowed to call the API from a browser.
    pub cors_origin: Vec<String>,
    pub api_keys: Vec<String>,
    pub api_key_files: Vec<PathBuf>,
    /// The default sampling of a request that gives none.
    pub sampling: SamplingParams,
    pub default_max_tokens: Option<usize>,
    pub system_prompt: Option<String>,
    /// One line per request on stderr.
    pub log: bool,
    pub pooling: Option<llamafile_engine::embed::Pooling>,
    pub embd_normalize: Option<i32>,
    /// `/metrics` answered.
    pub metrics: bool,
    pub header_timeout: Duration,
    pub max_connections: u64,
    pub open_browser: bool,
}

pub fn run(o: ServerOptions) -> anyhow::Result<i32> {
    let mut access = access::Access::new(true, &o.cors_origin)?;
    let api_keys = auth::ApiKeys::load(&o.api_keys, &o.api_key_files)?;
    let engine =
        Engine::load(&o.load).with_context(|| format!("cannot load the model from {}", o.model_path.display()))?;
    // Constrained sampling's view of the vocabulary, built while the server waits for requests.
    engine.prepare_grammar();
    let model: Arc<dyn Model> = Arc::new(model::EngineModel(Arc::new(engine)));
    let (max_connections, note) =
        listen::fit_connections(usize::try_from(o.max_connections).unwrap_or(usize::MAX), listen::raise_fd_limit());
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let limits = listen::Limits { header_timeout: o.header_timeout, max_connections };
    let rt = tokio::runtime::Builder::new_multi_thread()
        // HTTP work is light; generation runs on the blocking pool, one thread per busy slot.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = bind(&o.host, o.port).await?;
        // Bound to loopback, only loopback names are answered; bound elsewhere, any name.
        access.loopback_host_only =
            listener.local_addr().context("cannot read the listening address")?.ip().is_loopback();
        let mut state = AppState::new(model, o.parallel, o.sampling);
        {
            let st = Arc::get_mut(&mut state).expect("not shared yet");
            st.default_max_tokens = o.default_max_tokens;
            st.system_prompt = o.system_prompt;
            st.log = o.log;
            st.model_id = o.model_id;
            st.access = access;
            st.embeddings = embeddings::Embeddings::new(&*st.model, o.pooling, o.embd_normalize);
            st.metrics_enabled = o.metrics;
            st.api_keys = api_keys;
        }
        serve(state, listener, limits, o.open_browser).await
    })?;
    Ok(0)
}

/// Bind `host:port`, or the next free port above it (up to 100 tries) if it is taken.
async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let tries = if port == 0 { 1 } else { 100 };
    let mut last_err = None;
    for p in (port..=u16::MAX).take(tries) {
        match TcpListener::bind((host, p)).await {
            Ok(l) => {
                if p != port {
                    eprintln!("note: port {port} is taken; using {p}");
                }
                return Ok(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {host}:{p}")),
        }
    }
    Err(last_err.expect("tried at least once"))
        .with_context(|| format!("cannot listen on {host}: ports {port} to {} are all taken", port.saturating_add(99)))
}

/// The address a browser on this machine uses for `addr` (0.0.0.0 is not browsable).
fn browse_url(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("http://127.0.0.1:{}/", addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("http://[::1]:{}/", addr.port()),
        IpAddr::V4(ip) => format!("http://{ip}:{}/", addr.port()),
        IpAddr::V6(ip) => format!("http://[{ip}]:{}/", addr.port()),
    }
}

/// Whether a browser can be shown: on Linux and the BSDs only with an X or Wayland display.
fn has_display() -> bool {
    if cfg!(any(target_os = "macos", target_os = "windows")) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

fn open_browser(url: &str) {
    let mut cmd = if cfg!(target_os = "windows") {
        let mut c = std::process::Command::new("cmd");
        c.args(["/C", "start", "", url]);
        c
    } else if cfg!(target_os = "macos") {
        let mut c = std::process::Command::new("open");
        c.arg(url);
        c
    } else {
        let mut c = std::process::Command::new("xdg-open");
        c.arg(url);
        c
    };
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    match cmd.spawn() {
        // Reap it when it exits, so no zombie is left behind.
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(e) => eprintln!("note: could not open a browser ({e}); open {url} yourself"),
    }
}

/// Resolves on the first Ctrl-C (or SIGTERM); a second Ctrl-C exits at once.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping now");
            std::process::exit(130);
        }
    });
}

/// Serve until Ctrl-C: print the URL, open the browser, then stop cleanly (generations are
/// cancelled, streams end, connections close; after 5 s whatever is left is dropped).
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    limits: listen::Limits,
    browser: bool,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("cannot read the listening address")?;
    let url = browse_url(addr);
    if !addr.ip().is_loopback() && state.api_keys.is_empty() {
        eprintln!(
            "warning: listening on {addr}, which other machines can reach: anyone who can connect can use \
             the model (there is no authentication). Use --host 127.0.0.1 to keep it on this machine, or --api-key."
        );
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // Tests and scripts read this line to find the server.
        let _ = writeln!(out, "llamafile: serving {} at {url}", state.model_id);
        let _ = out.flush();
    }
    eprintln!(
        "{} slot(s) of {} tokens; requests beyond that wait in arrival order. Press Ctrl-C to stop.",
        state.pool.slots(),
        state.model.n_ctx()
    );
    if browser {
        if has_display() {
            open_browser(&url);
        } else {
            eprintln!("note: no display; open {url} in a browser");
        }
    }

    let app = routes::router(state.clone());
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    let st = state.clone();
    let server = listen::serve(listener, app, limits, async move {
        stop_signal().await;
        eprintln!("stopping: cancelling generations and closing connections");
        st.begin_shutdown();
        let _ = stopped_tx.send(true);
    });
    tokio::select! {
        _ = server => {}
        _ = async {
            let _ = stopped_rx.wait_for(|&s| s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => eprintln!("some connections did not close within 5 s; stopping anyway"),
    }
    eprintln!("llamafile: stopped");
    Ok(())
}
