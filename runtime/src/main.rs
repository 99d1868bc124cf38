//! Thin: arguments -> `cli::run` -> print the error chain on one line -> exit code.

fn main() {
    match llamafile::cli::run(std::env::args_os().collect()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {:#}", e);
            std::process::exit(1);
        }
    }
}
