//! Puts the git commit the binary is built from into `LLAMAFILE_GIT_COMMIT` for `--version`
//! ("unknown" outside a git checkout, e.g. from a source archive).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LLAMAFILE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
    for path in ["HEAD", "packed-refs"].map(String::from).into_iter().chain(git(&["symbolic-ref", "-q", "HEAD"])) {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
            let p = std::path::Path::new(&p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", std::fs::canonicalize(p).unwrap_or(p.to_path_buf()).display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
