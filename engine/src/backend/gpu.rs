//! GPU offload (`-ngl N`, `--gpu auto|cuda|metal|reference|disable`) through a backend shared
//! library that implements the C ABI of `kernels_gpu::abi`.
//!
//! Where backends are looked for, in this order:
//! 1. `LLAMAFILE_GPU_BACKEND=PATH` (explicit: a backend with score 0, such as the CPU reference,
//!    is accepted);
//! 2. inside the llamafile's zip (the running executable, and the model file when it is a zip),
//!    entries `gpu/<name>.so` (`.dylib`/`.dll` elsewhere) written by `pack --gpu-backend FILE`:
//!    dlopen needs a file, so the entry is extracted once to
//!    `~/.cache/llamafile-rs/gpu/<sha256 prefix>/<name>` and reused while its hash is the same;
//! 3. beside the executable: `libllamafile_gpu_*.so`.
//!
//! Each candidate is checked (symbol, ABI version, table size, name against `--gpu`, device count,
//! score); the best device wins. Any failure — nothing found, wrong version, init error, a weight
//! type the backend lacks, not enough device memory — prints ONE warning saying why and the model
//! runs on the CPU.
//!
//! The offload backend runs the last N layers (and the output layer too when N >= the layer
//! count; otherwise the CPU applies it after them): `model::transformer::layer` drives the
//! ABI's operations (`GpuLayer`); weights are uploaded once, straight
//! from the mmap; each session has its own stream, KV cache (f16) and activation buffers on the
//! device, so a forward pass allocates nothing.

use super::{Backend, BackendState, PlanOptions};
use crate::model::transformer::{self, Buf, LayerOps, Span};
use crate::model::{FfnActivation, Hparams, LayerAttn, LayerWeights, Model, RopeStyle, Weight};
use anyhow::{anyhow, bail, Context, Result};
use kernels_gpu::abi::{self, AttentionParams, DeviceInfo, RopeParams, View};
use kernels_gpu::client::{Buffer, Device, GpuError, GpuStream, Library};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable naming a backend library explicitly.
pub const BACKEND_ENV: &str = "LLAMAFILE_GPU_BACKEND";
/// File-name prefix of backend libraries (`libllamafile_gpu_cuda.so`).
pub const LIB_STEM: &str = "llamafile_gpu_";

/// What `--gpu` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuChoice {
    /// The best backend found, if any has a non-zero score.
    Auto,
    /// Only a backend of this name ("cuda", "metal", "reference").
    Named(&'static str),
    Disable,
}

/// Parses `--gpu` (llamafile's spellings included: `nvidia` = cuda, `apple` = metal).
pub fn parse_choice(s: &str) -> Result<GpuChoice> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "auto" => GpuChoice::Auto,
        "cuda" | "nvidia" => GpuChoice::Named("cuda"),
        "metal" | "apple" => GpuChoice::Named("metal"),
        "reference" => GpuChoice::Named("reference"),
        "disable" | "disabled" | "none" | "cpu" => GpuChoice::Disable,
        "amd" | "rocm" | "hip" => {
            bail!("--gpu {s}: AMD GPUs are not supported by this build (try --gpu cuda or auto)")
        }
        _ => bail!("--gpu {s}: expected auto, cuda, metal, reference or disable"),
    })
}

/// A library that may be a backend, and where it was found.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: PathBuf,
    /// For messages: "LLAMAFILE_GPU_BACKEND", "embedded in x.llamafile", "beside the executable".
    pub origin: String,
    /// Named by the user: a score-0 backend is accepted.
    pub explicit: bool,
}

/// The cache folder (`LLAMAFILE_CACHE`, else `$XDG_CACHE_HOME/llamafile-rs`, else
/// `~/.cache/llamafile-rs`).
pub fn cache_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LLAMAFILE_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("llamafile-rs"));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".cache").join("llamafile-rs"))
}

/// Extracts `bytes` (a backend from a zip entry called `name`) to the cache, keyed by its hash;
/// an existing file of the same hash is reused. Written to a temporary file and renamed, so a
/// concurrent start never sees half a library.
pub fn extract_cached(name: &str, bytes: &[u8], root: &Path) -> Result<PathBuf> {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let file_name = Path::new(name).file_name().ok_or_else(|| anyhow!("bad entry name {name}"))?;
    let dir = root.join("gpu").join(&hex);
    let path = dir.join(file_name);
    if let Ok(existing) = std::fs::read(&path) {
        if Sha256::digest(&existing) == hash {
            return Ok(path);
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// Backends stored in the zip at `zip_path` (extracted to the cache). Problems go to `why`.
fn zip_candidates(zip_path: &Path, out: &mut Vec<Candidate>, why: &mut Vec<String>) {
    let Ok(Some(entries)) = llamafile_format::bundle::zip_entries(zip_path) else {
        return;
    };
    for e in entries.iter().filter(|e| {
        e.name.starts_with(llamafile_format::bundle::GPU_DIR) && kernels_gpu::client::is_library_name(&e.name)
    }) {
        let what = format!("{}@{}", zip_path.display(), e.name);
        if !e.stored {
            why.push(format!("{what} is compressed ({}); backends must be stored", e.method));
            continue;
        }
        let r = (|| -> Result<PathBuf> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(zip_path)?;
            f.seek(SeekFrom::Start(e.data_offset))?;
            let mut bytes = Vec::with_capacity(e.size as usize);
            f.take(e.size).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != e.size {
                bail!("truncated entry");
            }
            let root = cache_root().ok_or_else(|| anyhow!("no cache directory (set LLAMAFILE_CACHE)"))?;
            extract_cached(&e.name, &bytes, &root)
        })();
        match r {
            Ok(path) => {
                out.push(Candidate { path, origin: format!("embedded in {}", zip_path.display()), explicit: false })
            }
            Err(err) => why.push(format!("cannot extract {what}: {err:#}")),
        }
    }
}

/// Every candidate library, in order of preference of their origin.
pub fn candidates(model: &Model, why: &mut Vec<String>) -> Vec<Candidate> {
    candidates_for(Some(model.file.file_path()), why)
}

/// [`candidates`] for the model file at `model_path` (or none: only the executable's own zip,
/// the environment and its folder are searched).
pub fn candidates_for(model_path: Option<&Path>, why: &mut Vec<String>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(BACKEND_ENV).filter(|p| !p.is_empty()) {
        out.push(Candidate { path: PathBuf::from(p), origin: BACKEND_ENV.into(), explicit: true });
    }
    let exe = std::env::current_exe().ok();
    let mut zips: Vec<PathBuf> = exe.iter().cloned().collect();
    // The file itself (for `archive.zip@name.gguf`, the archive).
    if let Some(model_path) = model_path.map(Path::to_path_buf) {
        if !zips.contains(&model_path) {
            zips.push(model_path);
        }
    }
    for z in &zips {
        zip_candidates(z, &mut out, why);
    }
    if let Some(dir) = exe.as_ref().and_then(|e| e.parent()) {
        let prefix = format!("{}{LIB_STEM}", std::env::consts::DLL_PREFIX);
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut beside: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && kernels_gpu::client::is_library_name(n))
                })
                .collect();
            beside.sort();
            out.extend(beside.into_iter().map(|path| Candidate {
                path,
                origin: "beside the executable".into(),
                explicit: false,
            }));
        }
    }
    out
}

/// A checked backend and its chosen device.
pub struct Chosen {
    pub lib: Arc<Library>,
    pub device: u32,
    pub info: DeviceInfo,
    pub origin: String,
}

/// Opens each candidate and keeps the best device: right name for `choice`, highest score
/// (score 0 only when explicit). Reasons for rejecting each go to `why`.
pub fn choose(cands: &[Candidate], choice: GpuChoice, why: &mut Vec<String>) -> Option<Chosen> {
    let mut best: Option<Chosen> = None;
    for c in cands {
        let lib = match Library::open(&c.path) {
            Ok(l) => l,
            Err(e) => {
                why.push(format!("{} ({}): {e}", c.path.display(), c.origin));
                continue;
            }
        };
        if let GpuChoice::Named(n) = choice {
            if lib.name() != n {
                why.push(format!("{} is the {} backend, not {n}", c.path.display(), lib.name()));
                continue;
            }
        }
        let devices = match lib.devices() {
            Ok(d) => d,
            Err(e) => {
                why.push(format!("{}: {e}", c.path.display()));
                continue;
            }
        };
        let explicit = c.explicit || matches!(choice, GpuChoice::Named(_));
        for (i, info) in devices.iter().enumerate() {
            if info.score == 0 && !explicit {
                why.push(format!(
                    "{} ({}) is not an accelerator (score 0); name it with --gpu {} or {BACKEND_ENV} to use it",
                    lib.name(),
                    abi::name_str(&info.name),
                    lib.name()
                ));
                continue;
            }
            let better =
                best.as_ref().is_none_or(|b| (info.score, info.free_memory) > (b.info.score, b.info.free_memory));
            if better {
                best = Some(Chosen { lib: lib.clone(), device: i as u32, info: *info, origin: c.origin.clone() });
            }
        }
    }
    best
}

/// The chain with the offload backend, or why there is none (the caller warns once and runs on
/// the CPU). `n_gpu_layers` must be > 0 and `--gpu` not `disable`.
pub fn plan_offload(model: &Arc<Model>, opts: &PlanOptions) -> Result<Vec<Arc<dyn Backend>>> {
    let choice = parse_choice(opts.gpu)?;
    if choice == GpuChoice::Disable {
        bail!("--gpu disable");
    }
    let mut why = Vec::new();
    let cands = candidates(model, &mut why);
    let Some(chosen) = choose(&cands, choice, &mut why) else {
        if why.is_empty() {
            bail!(
                "no GPU backend found (looked at ${BACKEND_ENV}, gpu/ entries in the llamafile, and {}{LIB_STEM}*{} beside the executable)",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            );
        }
        bail!("{}", why.join("; "));
    };
    let n_layer = model.hp.n_layer;
    let k = n_layer - opts.n_gpu_layers.min(n_layer);
    // All layers: the output layer goes to the device too; fewer: it stays on the CPU (as
    // llama.cpp does), so that a device too small for every layer does not also hold the
    // vocabulary matrix.
    let output_on_gpu = opts.n_gpu_layers >= n_layer;
    let gpu = GpuBackend::new(model.clone(), &chosen, k..n_layer, output_on_gpu).with_context(|| {
        format!("{} backend ({}, {})", chosen.lib.name(), abi::name_str(&chosen.info.name), chosen.lib.path().display())
    })?;
    if opts.verbose {
        let free = match chosen.info.free_memory {
            u64::MAX => "no memory limit".to_string(),
            f => format!("{} MiB free", f >> 20),
        };
        eprintln!(
            "gpu: {} backend from {} ({}), device {} \"{}\" score {}, {free}",
            chosen.lib.name(),
            chosen.origin,
            chosen.lib.path().display(),
            chosen.device,
            abi::name_str(&chosen.info.name),
            chosen.info.score,
        );
    }
    let mut chain: Vec<Arc<dyn Backend>> = Vec::new();
    if k > 0 {
        chain.push(Arc::new(super::cpu::CpuBackend::new(model.clone(), 0..k, false)));
    }
    chain.push(Arc::new(gpu));
    if !output_on_gpu {
        // The output alone (no layers) on the CPU, last in the chain.
        chain.push(Arc::new(super::cpu::CpuBackend::new(model.clone(), n_layer..n_layer, true)));
    }
    Ok(chain)
}

/// One line per layer saying which backend runs it (for `--verbose`).
pub fn describe_chain(chain: &[Arc<dyn Backend>], n_layer: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(n_layer + 1);
    for il in 0..n_layer {
        let b = chain.iter().find(|b| b.layers().contains(&il));
        lines.push(format!("layer {il:>3}: {}", b.map(|b| b.name()).unwrap_or_else(|| "nobody (bug)".into())));
    }
    let out = chain.iter().find(|b| b.runs_output());
    lines.push(format!("output   : {}", out.map(|b| b.name()).unwrap_or_else(|| "nobody (bug)".into())));
    lines
}

// ---- the offload backend ----

/// A weight matrix on the device.
struct DevWeight {
    /// Owns the device memory `w` points into.
    _buf: Buffer,
    w: abi::Weight,
}

/// A small f32 vector (norm weight, bias) on the device.
struct DevVec {
    buf: Buffer,
}

impl DevVec {
    fn view(&self) -> View {
        self.buf.view()
    }
}

/// One layer's weights on the device.
type DevLayer = LayerWeights<DevWeight, DevVec>;

struct Weights {
    model: Arc<Model>,
    device: Arc<Device>,
    name: String,
    layers: Range<usize>,
    dev_layers: Vec<DevLayer>,
    /// The final norm and output matrix, when this backend runs the output layer.
    output: Option<(DevVec, DevWeight)>,
    /// Per-dimension RoPE frequency factors (`Hparams::rope_factors`).
    rope_factors: Option<DevVec>,
}

pub struct GpuBackend {
    w: Arc<Weights>,
}

fn upload_weight(dev: &Arc<Device>, s: &mut GpuStream, model: &Model, w: &Weight) -> Result<DevWeight> {
    if !dev.supports_type(w.wtype as u32) {
        bail!("{}: weight type {} is not supported by this backend", w.name, w.wtype.name());
    }
    let bytes = model.bytes(w);
    let buf =
        dev.alloc(bytes.len() as u64).with_context(|| format!("allocating {} ({} bytes)", w.name, bytes.len()))?;
    s.upload(buf.view(), bytes).with_context(|| format!("uploading {}", w.name))?;
    let aw = abi::Weight {
        data: buf.view(),
        ggml_type: w.wtype as u32,
        _reserved: 0,
        rows: w.rows as u64,
        cols: w.cols as u64,
    };
    Ok(DevWeight { _buf: buf, w: aw })
}

fn upload_vec(dev: &Arc<Device>, s: &mut GpuStream, v: &[f32], what: &str) -> Result<DevVec> {
    let buf = dev.alloc(v.len() as u64 * 4).with_context(|| format!("allocating {what}"))?;
    s.upload_f32(buf.view(), v).with_context(|| format!("uploading {what}"))?;
    Ok(DevVec { buf })
}

fn upload_opt(dev: &Arc<Device>, s: &mut GpuStream, v: &Option<Vec<f32>>, what: &str) -> Result<Option<DevVec>> {
    v.as_ref().map(|v| upload_vec(dev, s, v, what)).transpose()
}

impl GpuBackend {
    /// Opens the device, checks that the model fits, and uploads the weights of `layers` and,
    /// with `output`, of the output layer.
    pub fn new(model: Arc<Model>, chosen: &Chosen, layers: Range<usize>, output: bool) -> Result<GpuBackend> {
        let hp = &model.hp;
        if hp.head_dim != hp.head_dim_v {
            bail!(
                "key head size {} differs from value head size {}: not supported by the offload path",
                hp.head_dim,
                hp.head_dim_v
            );
        }
        // Weight bytes this backend needs; refuse early rather than fail half-way.
        let mut need: u64 = 0;
        for il in layers.clone() {
            let l = &model.layers[il];
            need += [&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down]
                .iter()
                .map(|w| w.len as u64)
                .sum::<u64>();
        }
        if output {
            need += model.output.len as u64;
        }
        // Plus a KV cache (f16) of the default context, so that a model that only just fits is
        // refused here rather than when the first session is created. (A larger -c can still
        // fail then, with an error naming the allocation.)
        let ctx = hp.n_ctx_train.clamp(1, 4096) as u64;
        need += ctx * (hp.k_dim() + hp.v_dim()) as u64 * 2 * layers.len() as u64;
        if chosen.info.free_memory > 0 && need > chosen.info.free_memory {
            bail!(
                "out of device memory: {} MiB needed for the weights and a {ctx}-position KV cache, {} MiB free (offload fewer layers with -ngl)",
                need >> 20,
                chosen.info.free_memory >> 20
            );
        }
        let device = chosen.lib.init(chosen.device)?;
        let mut s = device.stream()?;
        let mut dev_layers = Vec::with_capacity(layers.len());
        for il in layers.clone() {
            let l = &model.layers[il];
            let d = &device;
            let n = |s: &str| format!("blk.{il}.{s}");
            dev_layers.push(DevLayer {
                attn_norm: upload_vec(d, &mut s, &l.attn_norm, &n("attn_norm"))?,
                wq: upload_weight(d, &mut s, &model, &l.wq)?,
                wk: upload_weight(d, &mut s, &model, &l.wk)?,
                wv: upload_weight(d, &mut s, &model, &l.wv)?,
                wo: upload_weight(d, &mut s, &model, &l.wo)?,
                bq: upload_opt(d, &mut s, &l.bq, &n("attn_q.bias"))?,
                bk: upload_opt(d, &mut s, &l.bk, &n("attn_k.bias"))?,
                bv: upload_opt(d, &mut s, &l.bv, &n("attn_v.bias"))?,
                q_norm: upload_opt(d, &mut s, &l.q_norm, &n("attn_q_norm"))?,
                k_norm: upload_opt(d, &mut s, &l.k_norm, &n("attn_k_norm"))?,
                attn_post_norm: upload_opt(d, &mut s, &l.attn_post_norm, &n("post_attention_norm"))?,
                ffn_norm: upload_vec(d, &mut s, &l.ffn_norm, &n("ffn_norm"))?,
                ffn_gate: upload_weight(d, &mut s, &model, &l.ffn_gate)?,
                ffn_up: upload_weight(d, &mut s, &model, &l.ffn_up)?,
                ffn_down: upload_weight(d, &mut s, &model, &l.ffn_down)?,
                ffn_post_norm: upload_opt(d, &mut s, &l.ffn_post_norm, &n("post_ffw_norm"))?,
            });
        }
        let rope_factors = upload_opt(&device, &mut s, &model.hp.rope_factors, "rope_freqs")?;
        let output = if output {
            Some((
                upload_vec(&device, &mut s, &model.output_norm, "output_norm")?,
                upload_weight(&device, &mut s, &model, &model.output)?,
            ))
        } else {
            None
        };
        s.synchronize()?;
        let name = format!("{} ({})", chosen.lib.name(), abi::name_str(&chosen.info.name));
        Ok(GpuBackend { w: Arc::new(Weights { model, device, name, layers, dev_layers, output, rope_factors }) })
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.w.name.clone()
    }
    fn layers(&self) -> Range<usize> {
        self.w.layers.clone()
    }
    fn runs_output(&self) -> bool {
        self.w.output.is_some()
    }
    fn new_state(&self, n_ctx: usize, max_batch: usize) -> Result<Box<dyn BackendState>> {
        let st = GpuState::new(self.w.clone(), n_ctx, max_batch.max(1))
            .with_context(|| format!("{}: allocating the KV cache and buffers for {n_ctx} positions", self.w.name))?;
        Ok(Box::new(st))
    }
}

/// One session on the device: its stream, KV cache and activation buffers.
struct GpuState {
    w: Arc<Weights>,
    s: GpuStream,
    n_ctx: usize,
    max_batch: usize,
    /// Per layer: keys and values, f16 [n_ctx x k_dim] / [n_ctx x v_dim].
    kv: Vec<(Buffer, Buffer)>,
    x: Buffer,
    xn: Buffer,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    att: Buffer,
    proj: Buffer,
    gate: Buffer,
    up: Buffer,
    logits: Buffer,
    bytes: usize,
}

/// The residual step after attention and after the FFN: `x += proj`, with the architecture's
/// optional post-norm (Gemma 3) applied to `proj` in place first. `x`/`proj`: [n_rows x dim].
fn residual_add(
    s: &mut GpuStream,
    x: View,
    proj: View,
    post_norm: Option<View>,
    n_rows: u32,
    dim: usize,
    eps: f32,
) -> Result<(), GpuError> {
    if let Some(pn) = post_norm {
        s.rmsnorm(proj, pn, n_rows, dim as u32, eps, proj)?;
    }
    s.add(x, proj, x, n_rows as u64 * dim as u64)?;
    Ok(())
}

impl GpuState {
    fn new(w: Arc<Weights>, n_ctx: usize, b: usize) -> Result<GpuState> {
        let hp = &w.model.hp;
        let dev = &w.device;
        let f = |n: usize| -> Result<Buffer> { Ok(dev.alloc(n as u64 * 4)?) };
        let mut kv = Vec::with_capacity(w.layers.len());
        for _ in w.layers.clone() {
            kv.push((dev.alloc((n_ctx * hp.k_dim() * 2) as u64)?, dev.alloc((n_ctx * hp.v_dim() * 2) as u64)?));
        }
        let st = GpuState {
            s: dev.stream()?,
            n_ctx,
            max_batch: b,
            x: f(b * hp.n_embd)?,
            xn: f(b * hp.n_embd)?,
            q: f(b * hp.q_dim())?,
            k: f(b * hp.k_dim())?,
            v: f(b * hp.v_dim())?,
            att: f(b * hp.q_dim())?,
            proj: f(b * hp.n_embd)?,
            gate: f(b * hp.n_ff)?,
            up: f(b * hp.n_ff)?,
            logits: f(b * hp.n_vocab)?,
            bytes: 0,
            kv,
            w,
        };
        let mut bytes: u64 = st.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        bytes += [&st.x, &st.xn, &st.q, &st.k, &st.v, &st.att, &st.proj, &st.gate, &st.up, &st.logits]
            .iter()
            .map(|b| b.len())
            .sum::<u64>();
        Ok(GpuState { bytes: bytes as usize, ..st })
    }

    /// Layer `i` of this backend over `n` tokens at positions `pos..pos + n`, as
    /// `transformer::layer` writes it, with `GpuLayer`'s ABI calls.
    fn layer(&mut self, i: usize, n: usize, pos: usize) -> Result<()> {
        let w = self.w.clone();
        let hp = &w.model.hp;
        let la = hp.layers[w.layers.start + i];
        let rope_factors = w.rope_factors.as_ref().map_or(View::NONE, |f| f.view());
        let mut o = GpuLayer { st: self, hp, la, i, rope_factors };
        Ok(transformer::layer(&mut o, hp, &w.dev_layers[i], &[Span { first: 0, len: n, pos }])?)
    }
}

/// `LayerOps` on the device for layer `i` of the backend: ABI calls on the session's stream
/// and buffers.
struct GpuLayer<'a> {
    st: &'a mut GpuState,
    hp: &'a Hparams,
    la: LayerAttn,
    i: usize,
    rope_factors: View,
}

impl GpuLayer<'_> {
    /// Row `row` of buffer `b`.
    fn at(&self, b: Buf, row: usize) -> View {
        let st = &*self.st;
        let buf = match b {
            Buf::Q => &st.q,
            Buf::K => &st.k,
            Buf::V => &st.v,
            Buf::Att => &st.att,
            Buf::Gate => &st.gate,
            Buf::Up => &st.up,
        };
        buf.at((row * b.cols(self.hp) * 4) as u64)
    }
}

impl LayerOps for GpuLayer<'_> {
    type Mat = DevWeight;
    type Vec = DevVec;
    type Error = GpuError;

    fn norm(&mut self, w: &DevVec, n: usize) -> Result<(), GpuError> {
        let (e, eps) = (self.hp.n_embd as u32, self.hp.rms_eps);
        let st = &mut *self.st;
        st.s.rmsnorm(st.x.view(), w.view(), n as u32, e, eps, st.xn.view())
    }

    fn project_in(&mut self, ws: &[(&DevWeight, Buf)], rows: Range<usize>) -> Result<(), GpuError> {
        let xn = self.st.xn.at((rows.start * self.hp.n_embd * 4) as u64);
        for &(w, y) in ws {
            let y = self.at(y, 0);
            self.st.s.matmul(&w.w, xn, rows.len() as u32, y)?;
        }
        Ok(())
    }

    fn add_bias(&mut self, y: Buf, b: &DevVec, n: usize) -> Result<(), GpuError> {
        let out = self.at(y, 0);
        self.st.s.add_rows(out, b.view(), n as u32, y.cols(self.hp) as u32)
    }

    fn head_norm(&mut self, y: Buf, w: &DevVec, s: Span) -> Result<(), GpuError> {
        let (hd, eps) = (self.hp.head_dim, self.hp.rms_eps);
        let (rows, heads) = (self.at(y, s.first), s.len * y.cols(self.hp) / hd);
        self.st.s.rmsnorm(rows, w.view(), heads as u32, hd as u32, eps, rows)
    }

    fn rope(&mut self, y: Buf, s: Span) -> Result<(), GpuError> {
        let hp = self.hp;
        let mode = match hp.recipe.rope {
            RopeStyle::Normal => abi::ROPE_NORMAL,
            RopeStyle::Neox => abi::ROPE_NEOX,
        };
        let p = RopeParams {
            n_tokens: s.len as u32,
            n_heads: (y.cols(hp) / hp.head_dim) as u32,
            head_dim: hp.head_dim as u32,
            n_rot: hp.n_rot as u32,
            pos0: s.pos as u32,
            mode,
            freq_base: self.la.rope_base,
            freq_scale: self.la.rope_freq_scale,
            attn_factor: hp.rope_attn_factor,
            _reserved: 0,
            freq_factors: self.rope_factors,
        };
        let rows = self.at(y, s.first);
        self.st.s.rope(rows, &p)
    }

    fn store_kv(&mut self, s: Span) -> Result<(), GpuError> {
        let (kd, vd) = (self.hp.k_dim(), self.hp.v_dim());
        let (k, v) = (self.at(Buf::K, s.first), self.at(Buf::V, s.first));
        let st = &mut *self.st;
        let (kc, vc) = &st.kv[self.i];
        st.s.copy(k, kc.at((s.pos * kd * 2) as u64), abi::TYPE_F16, (s.len * kd) as u64)?;
        st.s.copy(v, vc.at((s.pos * vd * 2) as u64), abi::TYPE_F16, (s.len * vd) as u64)
    }

    fn attention(&mut self, s: Span) -> Result<(), GpuError> {
        let hp = self.hp;
        let ap = AttentionParams {
            n_tokens: s.len as u32,
            pos0: s.pos as u32,
            n_head: hp.n_head as u32,
            n_head_kv: hp.n_head_kv as u32,
            head_dim: hp.head_dim as u32,
            kv_stride: hp.k_dim() as u32,
            kv_type: abi::TYPE_F16,
            window: self.la.window.unwrap_or(0) as u32,
            scale: hp.attn_scale,
            softcap: hp.attn_softcap,
        };
        let (q, att) = (self.at(Buf::Q, s.first), self.at(Buf::Att, s.first));
        let st = &mut *self.st;
        let (kc, vc) = &st.kv[self.i];
        st.s.attention(q, kc.view(), vc.view(), att, &ap)
    }

    fn project_out(&mut self, w: &DevWeight, src: Buf, rows: Range<usize>) -> Result<(), GpuError> {
        let src = self.at(src, 0);
        let proj = self.st.proj.at((rows.start * self.hp.n_embd * 4) as u64);
        self.st.s.matmul(&w.w, src, rows.len() as u32, proj)
    }

    fn residual(&mut self, post_norm: Option<&DevVec>, n: usize) -> Result<(), GpuError> {
        let (e, eps) = (self.hp.n_embd, self.hp.rms_eps);
        let st = &mut *self.st;
        residual_add(&mut st.s, st.x.view(), st.proj.view(), post_norm.map(|v| v.view()), n as u32, e, eps)
    }

    fn ffn_chunk(&self) -> usize {
        self.st.max_batch
    }

    fn glu(&mut self, act: FfnActivation, m: usize) -> Result<(), GpuError> {
        let act = match act {
            FfnActivation::Silu => abi::GLU_SILU,
            FfnActivation::GeluTanh => abi::GLU_GELU_TANH,
        };
        let st = &mut *self.st;
        st.s.glu(st.gate.view(), st.up.view(), st.gate.view(), (m * self.hp.n_ff) as u64, act)
    }
}

impl BackendState for GpuState {
    fn forward(&mut self, x: &mut [f32], n_tokens: usize, pos: usize, logits: Option<&mut [f32]>) -> Result<()> {
        // An Arc clone, not a copy: nothing here allocates per token (names are formatted only
        // on errors).
        let w = self.w.clone();
        let hp = &w.model.hp;
        let (e, nv, eps) = (hp.n_embd, hp.n_vocab, hp.rms_eps);
        let name = &w.name;
        if n_tokens == 0 || n_tokens > self.max_batch || x.len() < n_tokens * e {
            bail!("{name}: batch of {n_tokens} tokens (buffers hold {})", self.max_batch);
        }
        if pos + n_tokens > self.n_ctx {
            bail!("{name}: positions {pos}..{} exceed the context of {}", pos + n_tokens, self.n_ctx);
        }
        let run = |st: &mut GpuState, x: &mut [f32], logits: Option<&mut [f32]>| -> Result<()> {
            st.s.upload_f32(st.x.view(), &x[..n_tokens * e])?;
            for i in 0..st.kv.len() {
                st.layer(i, n_tokens, pos)?;
            }
            if let Some(l) = logits {
                let w = st.w.clone();
                let (first, rows) = if l.len() == nv {
                    (n_tokens - 1, 1)
                } else if l.len() == n_tokens * nv {
                    (0, n_tokens)
                } else {
                    bail!("logits buffer of {} values for {n_tokens} tokens of a {nv}-token vocabulary", l.len());
                };
                let Some((on, ow)) = &w.output else {
                    bail!("asked for logits, but the output layer is not on this backend");
                };
                let src = st.x.at((first * e * 4) as u64);
                st.s.rmsnorm(src, on.view(), rows as u32, e as u32, eps, st.xn.view())?;
                st.s.matmul(&ow.w, st.xn.view(), rows as u32, st.logits.view())?;
                st.s.download_f32(st.logits.view(), l)?;
            }
            st.s.download_f32(st.x.view(), &mut x[..n_tokens * e])?;
            Ok(())
        };
        run(self, x, logits).with_context(|| format!("GPU backend {name}"))
    }

    fn truncate(&mut self, _pos: usize) {
        // Positions from `pos` on are overwritten by the next forward; nothing to free.
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_choices() {
        assert_eq!(parse_choice("auto").unwrap(), GpuChoice::Auto);
        assert_eq!(parse_choice("NVIDIA").unwrap(), GpuChoice::Named("cuda"));
        assert_eq!(parse_choice("apple").unwrap(), GpuChoice::Named("metal"));
        assert_eq!(parse_choice("disable").unwrap(), GpuChoice::Disable);
        let e = parse_choice("amd").unwrap_err().to_string();
        assert!(e.contains("AMD"), "{e}");
        assert!(parse_choice("tpu").unwrap_err().to_string().contains("expected auto"));
    }

    #[test]
    fn extraction_is_keyed_by_hash_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = extract_cached("gpu/libllamafile_gpu_x.so", b"first", dir.path()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert!(a.ends_with("libllamafile_gpu_x.so"));
        // Same bytes: same file, not rewritten.
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let again = extract_cached("gpu/libllamafile_gpu_x.so", b"first", dir.path()).unwrap();
        assert_eq!(a, again);
        assert_eq!(std::fs::metadata(&again).unwrap().modified().unwrap(), mtime);
        // Other bytes: another folder.
        let b = extract_cached("gpu/libllamafile_gpu_x.so", b"second", dir.path()).unwrap();
        assert_ne!(a.parent(), b.parent());
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        // A damaged cached copy is replaced.
        std::fs::write(&a, b"damaged").unwrap();
        let c = extract_cached("gpu/libllamafile_gpu_x.so", b"first", dir.path()).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"first");
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(a.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
