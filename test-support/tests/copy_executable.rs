//! Copies of an executable run at once even while other threads spawn processes: a copy written
//! through this process's own descriptor fails here with "Text file busy" now and then (a child
//! forked meanwhile inherits the descriptor); `copy_executable` writes through `cp` instead.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn copies_run_at_once_while_other_threads_spawn() {
    let dir = std::env::temp_dir().join(format!("test-support-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new("/bin/true");
    let stop = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = Command::new("/bin/true").status();
                }
            })
        })
        .collect();
    for i in 0..200 {
        let exe = dir.join(format!("true-{i}"));
        test_support::copy_executable(src, &exe);
        let status = Command::new(&exe).status().unwrap_or_else(|e| panic!("copy {i}: {e}"));
        assert!(status.success());
        let script = dir.join(format!("script-{i}"));
        test_support::write_executable(&script, b"#!/bin/sh\nexit 0\n");
        let status = Command::new(&script).status().unwrap_or_else(|e| panic!("script {i}: {e}"));
        assert!(status.success());
    }
    stop.store(true, Ordering::Relaxed);
    for s in spawners {
        s.join().unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
