//! A stable-toolchain mutation fuzzer over the fuzz targets (`fuzz/harness`), for machines
//! without a nightly toolchain and `cargo fuzz`:
//!
//! `cargo run --profile ci -p e2e --example fuzz -- TARGET [--minutes M] [--cases N] [--seed S] [--out DIR]`
//! `cargo run --profile ci -p e2e --example fuzz -- --write-corpus fuzz/corpus` (the defect inputs)
//!
//! TARGET: gguf, zip_tail, args, chat_template, http. The parent process starts a worker child
//! under an address-space cap (`ulimit -v`), which mutates the seeds and runs the inputs
//! in-process, catching panics and timing each input; a watchdog in the child ends it on an
//! input that runs too long. When the child dies (abort on an allocation failure, stack
//! overflow, hang), the parent takes the input it was running from `DIR/current`, and starts a
//! new child. Each finding is minimized (by re-running candidates in capped children) and saved
//! as `DIR/findings/TARGET-N` with a `.txt` describing it; a summary goes to stdout.
//!
//! Mutations: bit flips, random bytes, boundary values (0, 1, 2^31, 2^32-1, 2^63, 2^64-1...) as
//! 1/2/4/8-byte little-endian integers written at the seed's structural positions (where it
//! holds a length, count or offset: a small integer) or anywhere, truncations, deletions,
//! duplications, splices of two inputs, for text targets insertions of the format's tokens, and
//! for requests mutations of the JSON body as a value (see `mutate_request`).
//! Inputs whose outcome is new (an error message not seen before, digits ignored) join the pool.

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use harness::child;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An input slower than this is a finding ("slow"); one that runs past `HANG` ends the child.
const SLOW: Duration = Duration::from_secs(2);
const HANG: Duration = Duration::from_secs(15);
/// Inputs in the mutation pool at most, and the largest input the mutator makes.
const POOL_MAX: usize = 400;
const INPUT_MAX: usize = 2 << 20;
/// Inputs saved per kind of finding (the count covers them all).
const KEEP_PER_KIND: usize = 2;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const BOUNDARIES: [u64; 20] = [
    0,
    1,
    2,
    7,
    8,
    31,
    32,
    255,
    256,
    0x7fff,
    0xffff,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

fn dictionary(target: &str) -> &'static [&'static str] {
    match target {
        "args" => &[
            "'",
            "\"",
            "\\",
            "\\\"",
            "...",
            "#",
            "\n",
            " ",
            "--temp",
            "-n",
            "-c",
            "-p",
            "-m",
            "--top-p",
            "--min-p",
            "nan",
            "inf",
            "-1",
            "1e40",
            "--help",
            "--version",
            "--server",
            "--chat",
            "\u{1b}[2J",
            "\0",
            "=",
            "--temp=0",
        ],
        "chat_template" => &[
            "{{",
            "}}",
            "{%",
            "%}",
            "{#",
            "#}",
            "{%- ",
            " -%}",
            "for m in messages",
            "endfor",
            "if ",
            "endif",
            "range(100000)",
            "recursive",
            "loop(",
            "loop.index",
            "macro m() ",
            "endmacro",
            "m()",
            "call ",
            "caller()",
            "set x = ",
            "x ~ x",
            "'ab' * 50000000",
            "|join",
            "|tojson",
            "|map(attribute='content')",
            "|sort",
            "[[[[[[[[",
            "((((((((",
            "namespace(",
            "raise_exception('x')",
            "strftime_now('%Y')",
            "messages",
            "tools",
            "bos_token",
            "|length",
            "|list",
            "|items",
            "}}{{",
            ".split(",
            ".strip()",
            "|string",
            "include 'chat'",
            "import 'chat' as c",
            "extends 'chat'",
            "|batch(",
            "|indent(",
            "|replace(",
            "|format(",
            "%s",
            "|unique",
            "|reverse",
            "9999999999999999999",
            "-1",
            "\0",
        ],
        "http" => &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "true",
            "false",
            "-1",
            "0",
            "1e999",
            "-1e999",
            "1.5",
            "9223372036854775808",
            "18446744073709551616",
            "\"messages\"",
            "\"max_tokens\"",
            "\"temperature\"",
            "\"top_k\"",
            "\"top_p\"",
            "\"min_p\"",
            "\"repeat_penalty\"",
            "\"repeat_last_n\"",
            "\"seed\"",
            "\"stop\"",
            "\"stream\"",
            "\"n\"",
            "\"n_predict\"",
            "\"prompt\"",
            "\"tokens\"",
            "\"content\"",
            "\"role\"",
            "\"user\"",
            "\"system\"",
            "\"assistant\"",
            "\"tools\"",
            "\"response_format\"",
            "\"text\"",
            "\"type\"",
            "\\u0000",
            "\\ud800",
            "[[[[[[[[[[[[[[[[",
            "GET ",
            "POST ",
            "OPTIONS ",
            "/v1/chat/completions",
            "/v1/completions",
            "/completion",
            "/tokenize",
            "/detokenize",
            "/health",
            "/slots",
            "/v1/models/x",
            "\n",
        ],
        _ => &[],
    }
}

/// Positions where an input holds a 4- or 8-byte little-endian integer below its length (a
/// likely length, count or offset), plus the first 32 bytes (magic, version, header counts).
fn structural_positions(data: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = (0..data.len().min(32)).step_by(4).collect();
    let small = |x: u64| x > 0 && x <= data.len() as u64 + 64;
    for i in 0..data.len().saturating_sub(8) {
        let u32v = u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes")) as u64;
        let u64v = u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        if small(u64v) || (small(u32v) && i % 2 == 0) {
            v.push(i);
        }
    }
    v
}

struct Mutator {
    target: String,
    rng: Rng,
    pool: Vec<(Vec<u8>, Vec<usize>)>,
    text: bool,
}

impl Mutator {
    fn add(&mut self, data: Vec<u8>) {
        let pos = if self.text { Vec::new() } else { structural_positions(&data) };
        if self.pool.len() >= POOL_MAX {
            let i = self.rng.below(self.pool.len() - 1) + 1;
            self.pool[i] = (data, pos);
        } else {
            self.pool.push((data, pos));
        }
    }

    fn mutate(&mut self) -> Vec<u8> {
        let pick = self.rng.below(self.pool.len());
        if self.target == "http" && self.rng.chance(2) {
            if let Some(d) = mutate_request(&self.pool[pick].0, &mut self.rng) {
                return d;
            }
        }
        let mut d = self.pool[pick].0.clone();
        let structural = self.pool[pick].1.clone();
        let rounds = 1 + self.rng.below(4);
        for _ in 0..rounds {
            let r = &mut self.rng;
            let len = d.len();
            let at = |r: &mut Rng| r.below(len.max(1));
            match r.below(if self.text { 10 } else { 9 }) {
                0 if len > 0 => {
                    let i = at(r);
                    d[i] ^= 1 << r.below(8);
                }
                1 if len > 0 => {
                    let i = at(r);
                    d[i] = r.next() as u8;
                }
                2 | 3 => {
                    let width = [1, 2, 4, 8][r.below(4)];
                    let v = BOUNDARIES[r.below(BOUNDARIES.len())];
                    let v = match r.below(4) {
                        0 => v.wrapping_sub(1),
                        1 => v.wrapping_add(1),
                        _ => v,
                    };
                    let i = if !structural.is_empty() && !r.chance(4) {
                        structural[r.below(structural.len())]
                    } else {
                        at(r)
                    };
                    let bytes = v.to_le_bytes();
                    for (k, &byte) in bytes.iter().take(width).enumerate() {
                        if let Some(b) = d.get_mut(i + k) {
                            *b = byte;
                        }
                    }
                }
                4 if len > 0 => {
                    let cut = if !structural.is_empty() && r.chance(2) {
                        structural[r.below(structural.len())]
                    } else {
                        at(r)
                    };
                    d.truncate(cut);
                }
                5 if len > 0 => {
                    let i = at(r);
                    let n = 1 + r.below((len - i).min(64));
                    d.drain(i..(i + n).min(len));
                }
                6 if len > 0 => {
                    let i = at(r);
                    let n = 1 + r.below((len - i).min(256));
                    let chunk = d[i..(i + n).min(len)].to_vec();
                    let times = if r.chance(8) { 1 + r.below(2000) } else { 1 };
                    let j = at(r);
                    for _ in 0..times {
                        d.splice(j..j, chunk.iter().copied());
                        if d.len() > INPUT_MAX {
                            break;
                        }
                    }
                }
                7 => {
                    let other = &self.pool[r.below(self.pool.len())].0;
                    if !other.is_empty() {
                        let i = r.below(other.len());
                        let n = 1 + r.below((other.len() - i).min(4096));
                        let j = at(r);
                        if r.chance(2) && j + n <= len {
                            d[j..j + n].copy_from_slice(&other[i..i + n]);
                        } else {
                            d.splice(j..j, other[i..i + n].iter().copied());
                        }
                    }
                }
                8 if len > 0 => {
                    // A range set to one byte value (zeroes, 0xff, a control byte).
                    let i = at(r);
                    let n = 1 + r.below((len - i).min(16));
                    let b = [0u8, 0xff, 0x1b, b'\n', 0x80][r.below(5)];
                    d[i..(i + n).min(len)].fill(b);
                }
                _ => {
                    let dict = dictionary(&self.target);
                    if !dict.is_empty() {
                        let w = dict[r.below(dict.len())].as_bytes();
                        let j = at(r);
                        let times = if r.chance(16) { 1 + r.below(500) } else { 1 };
                        for _ in 0..times {
                            d.splice(j.min(d.len())..j.min(d.len()), w.iter().copied());
                        }
                    }
                }
            }
        }
        d.truncate(INPUT_MAX);
        d
    }
}

/// Field names of the request types, for JSON-aware mutations.
const REQUEST_FIELDS: [&str; 28] = [
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "include_usage",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "seed",
    "stop",
    "ignore_eos",
    "n",
    "tools",
    "response_format",
    "prompt",
    "n_predict",
    "content",
    "add_special",
    "parse_special",
    "with_pieces",
    "tokens",
    "role",
    "type",
    "text",
];

/// A request with its JSON body mutated as a value (so the body stays JSON and the mutation
/// reaches the request types and routes): one node replaced by a boundary value of any type,
/// deleted, doubled, nested, or a known field added. `None` when the body is not JSON.
fn mutate_request(data: &[u8], r: &mut Rng) -> Option<Vec<u8>> {
    use serde_json::{json, Value};
    let split = data.iter().position(|&b| b == b'\n')?;
    let mut body: Value = serde_json::from_slice(&data[split + 1..]).ok()?;
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m
                .iter()
                .for_each(|(k, x)| pointers(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }
    for _ in 0..1 + r.below(3) {
        let mut all = Vec::new();
        pointers(&body, String::new(), &mut all);
        let p = all[r.below(all.len())].clone();
        let boundary = || -> Vec<Value> {
            vec![
                Value::Null,
                json!(true),
                json!(-1),
                json!(0),
                json!(1),
                json!(2),
                json!(1e308),
                json!(-1e308),
                json!(1e-45),
                json!(i64::MIN),
                json!(u64::MAX),
                json!(9007199254740993u64),
                json!(0.5),
                json!(""),
                json!("\u{1b}[2J\0"),
                json!("a".repeat(70_000)),
                json!([]),
                json!({}),
                json!(["a", "b"]),
                json!([{"role": "user", "content": "a"}]),
                json!({"type": "text", "text": "a"}),
            ]
        };
        let node = body.pointer(&p).cloned().unwrap_or(Value::Null);
        match r.below(5) {
            0 | 1 => {
                let b = boundary();
                if let Some(n) = body.pointer_mut(&p) {
                    *n = b[r.below(b.len())].clone();
                }
            }
            2 if !p.is_empty() => {
                let (parent, key) = p.rsplit_once('/').expect("a child pointer");
                match body.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            3 => {
                if let Some(n) = body.pointer_mut(&p) {
                    *n = if r.chance(2) { json!([node.clone(), node]) } else { json!({"a": node}) };
                }
            }
            _ => {
                if let Some(Value::Object(m)) = body.pointer_mut(&p) {
                    let b = boundary();
                    m.insert(REQUEST_FIELDS[r.below(REQUEST_FIELDS.len())].to_string(), b[r.below(b.len())].clone());
                } else if let Some(Value::Array(a)) = body.pointer_mut(&p) {
                    let most = if r.chance(8) { 5000 } else { 3 };
                    let n = 1 + r.below(most);
                    let item = a.first().cloned().unwrap_or(Value::Null);
                    a.extend(std::iter::repeat_n(item, n));
                }
            }
        }
    }
    let mut out = data[..=split].to_vec();
    out.extend(serde_json::to_vec(&body).ok()?);
    Some(out)
}

/// An outcome's class for novelty: the error with digits dropped, cut to 80 characters.
fn signature(o: &harness::Outcome) -> String {
    match o {
        Ok(_) => "ok".into(),
        Err(e) => e.chars().filter(|c| !c.is_ascii_digit()).take(80).collect(),
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// The worker: mutate and run until `cases` or `deadline` (seconds), writing each input to
/// `out/current` first; prints `finding KIND\tDETAIL\tFILE` and `done CASES OKS ERRORS MAX_MS`.
fn worker(target: &str, seed: u64, cases: u64, deadline: f64, out: &Path) {
    child::quiet_panics();
    let started = Instant::now();
    // The watchdog: the input's start time in ms since `started`, 0 between inputs.
    let running_since = Arc::new(AtomicU64::new(0));
    {
        let running_since = running_since.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let since = running_since.load(Ordering::Relaxed);
            if since > 0 && started.elapsed().as_millis() as u64 > since + HANG.as_millis() as u64 {
                let _ = std::io::stdout().flush();
                std::process::exit(child::EXIT_HANG);
            }
        });
    }
    let target = target.to_string();
    let out = out.to_path_buf();
    // Inputs run on a thread with the default 2 MiB stack, as the server's blocking threads.
    std::thread::spawn(move || {
        let mut m = Mutator { target: target.clone(), rng: Rng(seed | 1), pool: Vec::new(), text: false };
        m.text = matches!(target.as_str(), "args" | "chat_template" | "http");
        for s in harness::seeds::starts(&target) {
            m.add(s);
        }
        let mut seen = HashSet::new();
        let (mut n, mut oks, mut errs, mut max_ms) = (0u64, 0u64, 0u64, 0u128);
        let current = out.join("current");
        while n < cases && started.elapsed().as_secs_f64() < deadline {
            let data = m.mutate();
            std::fs::write(&current, &data).expect("write the current input");
            running_since.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            let t0 = Instant::now();
            let r = child::run_caught(&target, &data);
            let took = t0.elapsed();
            running_since.store(0, Ordering::Relaxed);
            n += 1;
            max_ms = max_ms.max(took.as_millis());
            let finding = match &r {
                Err(p) => Some(("panic".to_string(), p.clone())),
                Ok(o) => harness::violation(&target, o).map(|(k, d)| (k.to_string(), d)),
            };
            let finding = finding.or_else(|| (took > SLOW).then(|| ("slow input".to_string(), format!("{took:?}"))));
            if let Some((kind, detail)) = finding {
                let path = out.join(format!("pending-{n}"));
                std::fs::write(&path, &data).expect("write a finding");
                println!("finding {kind}\t{}\t{}", detail.replace(['\t', '\n'], " "), path.display());
            }
            if let Ok(o) = &r {
                if o.is_ok() {
                    oks += 1;
                } else {
                    errs += 1;
                }
                if seen.insert(signature(o)) {
                    m.add(data);
                }
            }
        }
        let _ = std::fs::remove_file(&current);
        println!("done {n} {oks} {errs} {max_ms}");
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    });
    loop {
        std::thread::park();
    }
}

/// `--replay FILE`: run one input, print its finding kind if any (for the minimizer).
fn replay_one(target: &str, file: &Path) {
    child::quiet_panics();
    let data = std::fs::read(file).expect("read the input");
    let t = target.to_string();
    let t0 = Instant::now();
    let r = std::thread::spawn(move || child::run_caught(&t, &data)).join().expect("input thread");
    match r {
        Err(_) => println!("kind panic"),
        Ok(o) => match harness::violation(target, &o) {
            Some((k, _)) => println!("kind {k}"),
            None if t0.elapsed() > SLOW => println!("kind slow input"),
            None => println!("kind none"),
        },
    }
}

struct Parent {
    exe: PathBuf,
    target: String,
    out: PathBuf,
    mem_mb: u64,
}

impl Parent {
    fn command(&self) -> std::process::Command {
        let mut c = child::capped_command(&self.exe, self.mem_mb);
        c.env("RAYON_NUM_THREADS", "1");
        c
    }

    /// The kind of finding a candidate input gives (re-run in a capped child).
    fn kind_of(&self, data: &[u8]) -> String {
        let f = self.out.join("candidate");
        std::fs::write(&f, data).expect("write a candidate");
        let o = self
            .command()
            .args([&self.target, "--replay", &f.display().to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run a candidate");
        let stdout = String::from_utf8_lossy(&o.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix("kind ")) {
            Some(k) => k.to_string(),
            None => crash_kind(&child::describe_exit(o.status, &String::from_utf8_lossy(&o.stderr))),
        }
    }

    /// Delta debugging by chunk removal, while the kind stays the same (bounded).
    fn minimize(&self, data: Vec<u8>, kind: &str) -> Vec<u8> {
        let t0 = Instant::now();
        let mut best = data;
        let mut chunk = best.len() / 2;
        let mut tries = 0;
        while chunk >= 1 && tries < 300 && t0.elapsed() < Duration::from_secs(60) {
            let mut i = 0;
            let mut shrunk = false;
            while i < best.len() && tries < 300 {
                let mut cand = best.clone();
                cand.drain(i..(i + chunk).min(best.len()));
                tries += 1;
                if self.kind_of(&cand) == kind {
                    best = cand;
                    shrunk = true;
                } else {
                    i += chunk;
                }
            }
            if !shrunk {
                chunk /= 2;
            }
        }
        best
    }
}

/// A crash description reduced to its class (for deduplication).
fn crash_kind(desc: &str) -> String {
    for k in ["allocation failure", "stack overflow", "hang"] {
        if desc.starts_with(k) {
            return k.to_string();
        }
    }
    format!("crash: {}", desc.chars().take(40).collect::<String>())
}

/// `--write-corpus DIR`: write the defect inputs (`harness::seeds::defect_inputs`) as
/// `DIR/TARGET/NAME`.
fn write_corpus(dir: &Path) {
    for (target, name, data) in harness::seeds::defect_inputs() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("create the corpus folder");
        std::fs::write(d.join(&name), data).expect("write a corpus input");
        println!("{target}/{name}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(dir) = arg(&args, "--write-corpus") {
        return write_corpus(Path::new(&dir));
    }
    let Some(target) = args.first().filter(|t| harness::TARGETS.contains(&t.as_str())).cloned() else {
        eprintln!(
            "usage: fuzz TARGET [--minutes M] [--cases N] [--seed S] [--out DIR]  (targets: {})",
            harness::TARGETS.join(", ")
        );
        std::process::exit(2);
    };
    if let Some(f) = arg(&args, "--replay") {
        return replay_one(&target, Path::new(&f));
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| format!("target/fuzz/{target}")));
    std::fs::create_dir_all(out.join("findings")).expect("create the output folder");
    let num =
        |name: &str, default: f64| arg(&args, name).map(|v| v.parse::<f64>().expect("a number")).unwrap_or(default);
    if args.iter().any(|a| a == "--worker") {
        let deadline = num("--deadline", 60.0);
        worker(&target, num("--seed", 1.0) as u64, num("--cases", 1e12) as u64, deadline, &out);
        return;
    }
    let minutes = num("--minutes", 1.0);
    let mut cases_left = num("--cases", 1e12) as u64;
    let mut seed = num("--seed", 1.0) as u64;
    let parent = Parent {
        exe: std::env::current_exe().expect("own path"),
        target: target.clone(),
        out: out.clone(),
        mem_mb: num("--mem-mb", child::MEM_CAP_MB as f64) as u64,
    };
    let t0 = Instant::now();
    let budget = minutes * 60.0;
    let (mut total, mut oks, mut errs, mut max_ms, mut restarts) = (0u64, 0u64, 0u64, 0u128, 0u64);
    let mut kinds: BTreeMap<String, (u64, Vec<PathBuf>)> = BTreeMap::new();
    let record = |kinds: &mut BTreeMap<String, (u64, Vec<PathBuf>)>, kind: String, detail: String, data: Vec<u8>| {
        let e = kinds.entry(kind.clone()).or_default();
        e.0 += 1;
        if e.1.len() < KEEP_PER_KIND {
            let small = parent.minimize(data, &kind);
            let n = e.1.len() + 1;
            let slug: String = kind.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            let path = out.join("findings").join(format!("{target}-{slug}-{n}"));
            std::fs::write(&path, &small).expect("save a finding");
            std::fs::write(path.with_extension("txt"), format!("{kind}\n{detail}\n"))
                .expect("save a finding's description");
            e.1.push(path);
        }
    };
    while t0.elapsed().as_secs_f64() < budget && cases_left > 0 {
        let left = budget - t0.elapsed().as_secs_f64();
        let mut child = parent
            .command()
            .args([&target, "--worker", "--seed", &seed.to_string(), "--cases", &cases_left.to_string()])
            .args(["--deadline", &format!("{left:.1}"), "--out", &out.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the worker");
        let stderr = child.stderr.take().expect("stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut done = false;
        let mut pending = Vec::new();
        for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
            let line = line.unwrap_or_default();
            if let Some(rest) = line.strip_prefix("finding ") {
                let mut f = rest.splitn(3, '\t');
                let (kind, detail, file) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
                pending.push((kind.to_string(), detail.to_string(), PathBuf::from(file)));
            } else if let Some(rest) = line.strip_prefix("done ") {
                let v: Vec<u128> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
                total += v[0] as u64;
                oks += v[1] as u64;
                errs += v[2] as u64;
                max_ms = max_ms.max(v[3]);
                cases_left = cases_left.saturating_sub(v[0] as u64);
                done = true;
            }
        }
        let status = child.wait().expect("wait for the worker");
        let stderr = err_reader.join().unwrap_or_default();
        for (kind, detail, file) in pending {
            let data = std::fs::read(&file).unwrap_or_default();
            let _ = std::fs::remove_file(&file);
            record(&mut kinds, kind, detail, data);
        }
        if !done {
            // The worker died on the input in `current`.
            restarts += 1;
            let desc = child::describe_exit(status, &stderr);
            let data = std::fs::read(out.join("current")).unwrap_or_default();
            record(&mut kinds, crash_kind(&desc), desc, data);
            // Its cases are not reported: count the one that killed it.
            total += 1;
            cases_left = cases_left.saturating_sub(1);
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{target}: {total} cases in {secs:.0} s ({:.0}/s), {oks} accepted, {errs} refused, slowest {max_ms} ms, {restarts} worker restarts",
        total as f64 / secs
    );
    if kinds.is_empty() {
        println!("{target}: no findings");
    }
    for (kind, (count, files)) in &kinds {
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        println!("{target}: finding '{kind}' x{count}: {}", files.join(", "));
    }
}
