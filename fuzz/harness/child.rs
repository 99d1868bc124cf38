//! Running inputs where a crash cannot take the runner down: in-process with panics caught, in a
//! child process under an address-space cap (an unbounded allocation then fails there, as an
//! abort the parent sees, instead of exhausting the machine), and naming how a child died.

use super::Outcome;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;

/// Default address-space cap of a child, in MiB: room for the runtime's threads and the tiny
/// model's buffers, far below the machine's memory.
pub const MEM_CAP_MB: u64 = 4096;

/// Exit code of a child whose watchdog saw an input run past its time limit.
pub const EXIT_HANG: i32 = 3;

/// `exe args...` under `ulimit -v` (through `sh`: no libc binding needed for one setrlimit).
pub fn capped_command(exe: &Path, mem_mb: u64) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", mem_mb * 1024)).arg(exe);
    c
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Replace the panic hook by one that keeps the message (with its location) for
/// [`run_caught`] instead of printing it.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{payload}{at}"));
    }));
}

/// Run one input; `Err(panic message)` if it panicked.
pub fn run_caught(target: &str, data: &[u8]) -> Result<Outcome, String> {
    std::panic::catch_unwind(|| super::run(target, data))
        .map_err(|_| PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "panic".into()))
}

/// How a child ended, in words, from its status and the end of its stderr (the runtime prints
/// "memory allocation of N bytes failed" or "has overflowed its stack" before aborting).
pub fn describe_exit(status: ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let cause = if stderr.contains("memory allocation of") {
        "allocation failure"
    } else if stderr.contains("overflowed its stack") {
        "stack overflow"
    } else {
        ""
    };
    let how = match (status.code(), status.signal()) {
        (Some(EXIT_HANG), _) => "hang (ran past the time limit)".to_string(),
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".to_string(),
    };
    let last: String = last.chars().take(200).collect();
    match (cause, last.is_empty()) {
        ("", true) => how,
        ("", false) => format!("{how}: {last}"),
        (c, _) => format!("{c} ({how}): {last}"),
    }
}
