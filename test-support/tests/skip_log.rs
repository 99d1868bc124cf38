//! A skip is printed and recorded in `$LLAMAFILE_SKIP_LOG` (one line: kind, test, what, how);
//! present fixtures are found. One test in this binary: it sets environment variables.

#[test]
fn skips_are_recorded_and_present_things_found() {
    let dir = tempfile_dir();
    let log = dir.join("skips.tsv");
    std::env::set_var("LLAMAFILE_SKIP_LOG", &log);
    std::env::set_var("LLAMAFILE_SHARED", dir.join("absent"));
    std::env::set_var("LLAMAFILE_RS_MODELS", dir.join("no-models"));
    assert_eq!(test_support::require_shared(), None);
    assert_eq!(test_support::require_model("m.gguf"), None);
    test_support::skip_without_gpu("no driver");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    let test = "skip_log::skips_are_recorded_and_present_things_found";
    assert_eq!(lines[0][..2], ["skip", test]);
    assert!(lines[0][2].contains("the shared fixtures") && lines[0][2].contains("absent"), "{text}");
    assert!(lines[0][3].contains("LLAMAFILE_SHARED"), "{text}");
    assert_eq!(lines[1][..2], ["skip", test]);
    assert!(lines[1][2].contains("no-models") && lines[1][3] == "scripts/fetch-model all", "{text}");
    assert_eq!(lines[2][..3], ["no-gpu", test, "a CUDA device"]);

    // Present: found, nothing recorded.
    std::fs::create_dir_all(dir.join("absent/models")).unwrap();
    std::fs::create_dir_all(dir.join("no-models")).unwrap();
    std::fs::write(dir.join("no-models/m.gguf"), b"").unwrap();
    assert_eq!(test_support::require_shared(), Some(dir.join("absent")));
    assert_eq!(test_support::require_model("m.gguf"), Some(dir.join("no-models/m.gguf")));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("test-support-skip-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
