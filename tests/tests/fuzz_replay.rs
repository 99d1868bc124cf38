//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) and each target's seeds through
//! the fuzz targets (`fuzz/harness`): every input must end in a clean success or a clean error,
//! without a panic, an abort, a hang or a violation of the output rules, within a time bound;
//! `NAME.reject` inputs must be refused and `NAME.accept` inputs accepted.
//!
//! Each input runs in a child process (this binary again, with `LLAMAFILE_FUZZ_REPLAY` set)
//! under an address-space cap: an allocation failure aborts a process, and must show as a
//! failing input, not end the test run or exhaust the machine. No libtest harness: `main`
//! decides whether it is the runner or a child (`harness = false` in Cargo.toml).

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use harness::child;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The most one input may take, child start-up included (the tiny model loads in milliseconds;
/// this leaves room for a loaded machine).
const TIME_LIMIT: Duration = Duration::from_secs(20);

const ENV: &str = "LLAMAFILE_FUZZ_REPLAY";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// One input: `target` and either a corpus file or a seed number.
enum Input {
    File(String, PathBuf),
    Seed(String, usize),
}

impl Input {
    fn spec(&self) -> String {
        match self {
            Input::File(t, p) => format!("{t}\tfile\t{}", p.display()),
            Input::Seed(t, i) => format!("{t}\tseed\t{i}"),
        }
    }
    fn name(&self) -> String {
        match self {
            Input::File(t, p) => format!("{t}/{}", p.file_name().unwrap_or_default().to_string_lossy()),
            Input::Seed(t, i) => format!("{t}/seed {i}"),
        }
    }
    fn expectation(&self) -> Option<bool> {
        match self {
            Input::File(_, p) => harness::expectation(&p.file_name().unwrap_or_default().to_string_lossy()),
            // The seeds are valid inputs.
            Input::Seed(..) => Some(true),
        }
    }
}

/// The child: run one input and print `ok`, `error MESSAGE`, `panic MESSAGE` or `violation ...`.
fn child_main(spec: &str) -> i32 {
    child::quiet_panics();
    let mut f = spec.splitn(3, '\t');
    let (target, kind, arg) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
    let data = match kind {
        "file" => std::fs::read(arg).unwrap_or_else(|e| panic!("cannot read {arg}: {e}")),
        _ => harness::seeds::seeds(target).swap_remove(arg.parse().expect("seed number")),
    };
    // A thread with the default 2 MiB stack, as the server's blocking threads have.
    let t = target.to_string();
    let r = std::thread::spawn(move || child::run_caught(&t, &data)).join().expect("the input thread");
    match r {
        Err(p) => println!("panic {}", p.escape_debug()),
        Ok(outcome) => {
            if let Some((kind, detail)) = harness::violation(target, &outcome) {
                println!("violation {kind}: {detail}");
            }
            match outcome {
                Ok(_) => println!("ok"),
                Err(e) => println!("error {}", e.chars().take(300).collect::<String>().escape_debug()),
            }
        }
    }
    0
}

fn inputs() -> Vec<Input> {
    let mut v = Vec::new();
    for t in harness::TARGETS {
        for i in 0..harness::seeds::seeds(t).len() {
            v.push(Input::Seed(t.to_string(), i));
        }
        let dir = corpus_dir().join(t);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        v.extend(files.into_iter().map(|p| Input::File(t.to_string(), p)));
    }
    v
}

/// Run one input in a capped child; `Err(why it fails)`.
fn replay(exe: &Path, input: &Input) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut child = child::capped_command(exe, child::MEM_CAP_MB)
        .env(ENV, input.spec())
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if t0.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {TIME_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t0.elapsed();
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    let out = read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let err = read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    if !status.success() {
        return Err(child::describe_exit(status, &err));
    }
    for line in out.lines() {
        if line.starts_with("panic") || line.starts_with("violation") {
            return Err(line.to_string());
        }
    }
    let ok = out.lines().any(|l| l == "ok");
    let error = out.lines().find(|l| l.starts_with("error "));
    match (input.expectation(), ok, error) {
        (_, false, None) => Err(format!("no outcome from the child: {out}{err}")),
        (Some(true), false, Some(e)) => Err(format!("refused but must be accepted: {e}")),
        (Some(false), true, _) => Err("accepted but must be refused with an error".into()),
        _ => Ok(took),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(ENV) {
        std::process::exit(child_main(&spec));
    }
    // `cargo test NAME` passes a filter; run unless it names something else. (libtest options
    // that take a value are skipped with their value.)
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if ["--skip", "--test-threads", "--format", "--color", "--logfile", "-Z"].contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filter = Some(a);
            break;
        }
    }
    if filter.as_deref().is_some_and(|f| !"fuzz_replay corpus".contains(f)) {
        println!("fuzz_replay: filtered out");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let inputs = inputs();
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for input in &inputs {
        match replay(&exe, input) {
            Ok(took) => {
                if took > slowest.0 {
                    slowest = (took, input.name());
                }
            }
            Err(why) => failures.push(format!("{}: {why}", input.name())),
        }
    }
    println!(
        "fuzz_replay: {} inputs, {} failed; slowest {} in {:?}",
        inputs.len(),
        failures.len(),
        slowest.1,
        slowest.0
    );
    if !failures.is_empty() {
        for f in &failures {
            println!("FAILED {f}");
        }
        std::process::exit(1);
    }
}
