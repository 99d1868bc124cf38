//! The command line's parsing: llama.cpp's spellings, overriding, ranges, `--help`.

use super::*;

fn try_parse(v: &[&str]) -> Result<Args, clap::Error> {
    parse(std::iter::once("llamafile").chain(v.iter().copied()).map(OsString::from).collect())
}

fn ok(v: &[&str]) -> Args {
    try_parse(v).unwrap_or_else(|e| panic!("{v:?}: {e}"))
}

/// The error message for a command line that must be refused.
fn err(v: &[&str]) -> String {
    match try_parse(v) {
        Ok(a) => panic!("{v:?} should be refused, got {a:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn llama_cpp_one_dash_spellings() {
    let a = ok(&["-m", "x.gguf", "-ngl", "99", "-n", "-1", "-s", "7", "--temp", "0"]);
    assert_eq!(a.n_gpu_layers, 99);
    assert_eq!(a.n_predict, -1);
    assert_eq!(a.seed, 7);
    assert_eq!(a.temp, 0.0);
    assert_eq!(a.model.as_deref(), Some(std::path::Path::new("x.gguf")));
    let a = ok(&["-sys", "be brief", "-cnv", "-np", "3", "-st"]);
    assert_eq!(a.system.as_deref(), Some("be brief"));
    assert!(a.chat && a.single_turn);
    assert_eq!(a.parallel, 3);
    let a = ok(&["-no-cnv", "-p", "x"]);
    assert!(a.no_conversation && !a.chat);
    // the last of -cnv / -no-cnv wins
    assert!(ok(&["-no-cnv", "-cnv"]).chat);
    assert!(!ok(&["-no-cnv", "-cnv"]).no_conversation);
    assert!(ok(&["--raw"]).no_conversation);
    let a = ok(&["-tb", "2", "-fa", "-co", "-mg", "0", "-ts", "1,1", "-dev", "none", "-sm", "layer", "-ub", "256"]);
    assert_eq!(a.threads_batch.as_deref(), Some("2"));
    assert_eq!(a.flash_attn.as_deref(), Some("on"));
    assert_eq!(a.color.as_deref(), Some("on"));
    assert_eq!(
        (a.main_gpu.as_deref(), a.tensor_split.as_deref(), a.device.as_deref()),
        (Some("0"), Some("1,1"), Some("none"))
    );
    assert_eq!(a.ubatch_size.as_deref(), Some("256"));
    assert_eq!(ok(&["-fa", "off", "-p", "x"]).flash_attn.as_deref(), Some("off"));
    assert!(ok(&["-i"]).interactive);
    assert!(ok(&["-if"]).interactive_first);
    assert_eq!(ok(&["-r", "User:", "--reverse-prompt", "###"]).reverse_prompt, ["User:", "###"]);
    let a = ok(&[
        "--in-prefix",
        " ",
        "--in-suffix",
        "Assistant:",
        "--jinja",
        "--simple-io",
        "--no-warmup",
        "--mlock",
        "--no-mmap",
        "--color",
    ]);
    assert_eq!((a.in_prefix.as_deref(), a.in_suffix.as_deref()), (Some(" "), Some("Assistant:")));
    assert!(a.jinja && a.simple_io && a.no_warmup && a.mlock && a.no_mmap);
    let a = ok(&["--system-prompt-file", "s.txt", "--predict", "5", "--n-gpu-layers", "3", "--gpu-layers", "4"]);
    assert_eq!((a.system_file.as_deref(), a.n_predict, a.n_gpu_layers), (Some(std::path::Path::new("s.txt")), 5, 4));
    assert_eq!(ok(&["-sysf", "s.txt"]).system_file.as_deref(), Some(std::path::Path::new("s.txt")));
    // aliases: hidden ones are known to the rewriting too (their values are not rewritten)
    assert_eq!(ok(&["--system", "-cnv"]).system.as_deref(), Some("-cnv"));
    assert_eq!(ok(&["--max_tokens", "-1"]).n_predict, -1);
}

#[test]
fn multi_letter_one_dash_options_are_never_split_into_letters() {
    // -co is --color, not -c o; -tb 2 is --threads-batch, not -t b; -fa is not -f a.
    let a = ok(&["-co", "-tb", "2", "-fa"]);
    assert_eq!(a.ctx_size, 0);
    assert_eq!(a.threads, None);
    assert_eq!(a.file, None);
    // llama.cpp options this program lacks are refused by name
    let e = err(&["-ctk", "q8_0"]);
    assert!(e.contains("'-ctk'") && e.contains("--cache-type-k") && e.contains("not supported"), "{e}");
    // a one-dash word that is no option at all is refused, not split
    let e = err(&["-pfoo"]);
    assert!(e.contains("unknown option '-pfoo'"), "{e}");
    let e = err(&["-temp", "0"]);
    assert!(e.contains("did you mean --temp"), "{e}");
    // values are never rewritten: a prompt may be "-cnv"; short options keep attached values
    assert_eq!(ok(&["-p", "-cnv"]).prompt.as_deref(), Some("-cnv"));
    assert_eq!(ok(&["-r", "-ngl"]).reverse_prompt, ["-ngl"]);
    assert_eq!(ok(&["-n64", "-c2048"]).n_predict, 64);
    assert_eq!(ok(&["-n64", "-c2048"]).ctx_size, 2048);
    // nothing after -- is rewritten
    assert!(err(&["--", "-ngl"]).contains("-ngl"));
}

#[test]
fn underscores_spell_dashes() {
    let a = ok(&["--ctx_size", "128", "--top_k", "5", "--top_p=0.5", "--n_gpu_layers", "2", "--repeat_penalty", "1.1"]);
    assert_eq!((a.ctx_size, a.top_k, a.top_p, a.n_gpu_layers, a.repeat_penalty), (128, 5, 0.5, 2, 1.1));
    assert_eq!(ok(&["--threads_batch", "4", "--no_display_prompt"]).threads_batch.as_deref(), Some("4"));
}

#[test]
fn the_last_value_of_an_option_given_twice_wins() {
    // as merged from `.args` `--temp 0 ... -n 30` and the user's `--temp 0.5`
    let a = ok(&["--temp", "0", "--temp", "0.5", "-n", "30"]);
    assert_eq!((a.temp, a.n_predict), (0.5, 30));
    let a = ok(&["-m", "a.gguf", "-p", "x", "-m", "b.gguf", "-p", "y", "--ignore-eos", "--ignore-eos"]);
    assert_eq!((a.model.unwrap().to_str().unwrap(), a.prompt.unwrap().as_str()), ("b.gguf", "y"));
    // repeatable options accumulate
    assert_eq!(ok(&["-r", "a", "-r", "b"]).reverse_prompt, ["a", "b"]);
}

#[test]
fn values_out_of_range_are_range_errors_naming_the_flag() {
    for (args, flag, wanted) in [
        (&["--temp", "nan"][..], "--temp", "finite"),
        (&["--temp", "inf"], "--temp", "finite"),
        (&["--temp", "-1"], "--temp", "between 0 and 2"),
        (&["--top-p", "nan"], "--top-p", "finite"),
        (&["--top-p", "0"], "--top-p", "above 0"),
        (&["--min-p", "2"], "--min-p", "between 0"),
        (&["--repeat-penalty", "0"], "--repeat-penalty", "above 0"),
        (&["--repeat-penalty", "-1"], "--repeat-penalty", "above 0"),
        (&["--top-k", "-3"], "--top-k", "0 (off) or more"),
        (&["--repeat-last-n", "-3"], "--repeat-last-n", "0 (off) or more"),
        (&["-c", "-5"], "--ctx-size", "0 or more, got -5"),
        (&["-b", "0"], "--batch-size", "1 or more"),
        (&["-t", "-2"], "--threads", "0 or more"),
        (&["-ngl", "-1"], "--n-gpu-layers", "0 or more"),
        (&["-s", "-7"], "--seed", "-1 (random)"),
        (&["-n", "-3"], "--n-predict", "-1 (no limit)"),
        (&["--temp", "warm"], "--temp", "not a number"),
    ] {
        let e = err(args);
        assert!(e.contains(flag) && e.contains(wanted), "{args:?}: {e}");
        assert!(!e.contains("unexpected argument"), "{args:?}: {e}");
    }
    // negative values that mean something
    assert_eq!(ok(&["-n", "-1"]).n_predict, -1);
    assert_eq!(ok(&["-n", "-2"]).n_predict, -1);
    assert_eq!(ok(&["-s", "-1"]).seed, -1);
    assert_eq!(ok(&["-s", "-1"]).sampling().unwrap().seed, llamafile_engine::sampler::RANDOM_SEED);
    assert_eq!(
        ok(&[]).sampling().unwrap().seed,
        llamafile_engine::sampler::RANDOM_SEED,
        "the server draws a seed per request"
    );
    let s = ok(&["--temp", "0.3", "--top-k", "7", "-s", "9"]).sampling().unwrap();
    assert_eq!((s.temperature, s.top_k, s.seed), (0.3, 7, 9));
}

#[test]
fn flags_without_effect_are_listed() {
    assert!(ok(&[]).without_effect().is_empty());
    assert_eq!(ok(&["--mlock", "-fa", "-tb", "2"]).without_effect(), ["--mlock", "--threads-batch", "--flash-attn"]);
}

#[test]
fn help_describes_every_option_in_groups_with_the_one_dash_spellings() {
    let mut cmd = command();
    cmd.build();
    for a in cmd.get_arguments() {
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(!help.trim().is_empty(), "--{} has no description", a.get_id());
        if !["help", "version"].contains(&a.get_id().as_str()) {
            assert!(a.get_help_heading().is_some(), "--{} is in no group", a.get_id());
        }
    }
    let help = cmd.render_long_help().to_string();
    for needle in [
        "Model:",
        "Generation:",
        "Sampling:",
        "GPU:",
        "Server:",
        "-ngl",
        "-cnv",
        "-sys",
        "-no-cnv",
        "-fa",
        "opens the page in the browser",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_names_the_commit() {
    let e = try_parse(&["--version"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
    let v = e.to_string();
    assert!(v.starts_with(&format!("llamafile {} (commit ", env!("CARGO_PKG_VERSION"))), "{v}");
    let commit = env!("LLAMAFILE_GIT_COMMIT");
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{commit}");
}

#[test]
fn bundle_args_come_first_and_the_users_override_them() {
    // README's example: `pack --args $'--temp 0\n...\n-n 30'`, run as `x.llamafile --temp 0.5 -p hi`
    let items = llamafile_format::bundle::parse_args_file("--temp 0\n...\n-n 30").unwrap();
    let argv = ["x.llamafile", "--temp", "0.5", "-p", "hi"].map(OsString::from).to_vec();
    let a = parse(llamafile_format::bundle::merge_args(&items, argv)).unwrap();
    assert_eq!((a.temp, a.n_predict, a.prompt.as_deref()), (0.5, 30, Some("hi")));
    // without `...` the user's arguments come last and win
    let items = llamafile_format::bundle::parse_args_file("-m /zip/w.gguf -c 2048 -ngl 99 -r END").unwrap();
    let argv = ["x.llamafile", "-c", "512", "-ngl", "0", "-r", "STOP"].map(OsString::from).to_vec();
    let a = parse(llamafile_format::bundle::merge_args(&items, argv)).unwrap();
    assert_eq!((a.ctx_size, a.n_gpu_layers), (512, 0));
    assert_eq!(a.reverse_prompt, ["END", "STOP"], "repeatable options accumulate");
}

#[test]
fn arguments_quoted_in_errors_are_escaped_and_cut() {
    // As `.args` in a file can hold them: a raw new line and escape sequence, and a 5 KB word.
    let nasty = "--x\n\x1b]0;title\x07";
    let long = format!("--{}", "a".repeat(5000));
    for bad in [nasty, long.as_str()] {
        let e = err(&[bad]);
        let first = e.split("\n\n").next().unwrap();
        assert!(!first.chars().any(|c| c.is_control()), "{first:?}");
        assert!(first.chars().count() < 400, "{} characters", first.chars().count());
    }
    assert!(err(&[nasty]).contains("--x\\n"), "the escaped argument is still named");
}
