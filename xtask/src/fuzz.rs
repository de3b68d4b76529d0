//! `cargo xtask fuzz [SECS]`: builds the control-protocol fuzz target (fuzz/) with the
//! coverage instrumentation libFuzzer feeds on (the flags cargo-fuzz passes, without a
//! sanitizer, so the stable toolchain builds it) and runs it for SECS seconds. What it finds
//! runs in a scratch corpus under target/fuzz/; at the end the inputs that add coverage are
//! merged into the repository's corpus (fuzz/corpus/control_protocol), which `cargo test`
//! replays. A crash is saved under target/fuzz/artifacts/ and fails the command.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    command::{cargo, run, show, stdout},
    setup,
};

const TARGET: &str = "control_protocol";

/// The instrumentation cargo-fuzz uses (minus the sanitizer, which needs nightly).
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

pub fn fuzz(root: &Path, secs: u64, libfuzzer_args: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzz target runs the daemon, which loads BPF programs: run as root");
    }
    setup::setup(root)?;
    let binary = build(root)?;

    let corpus = root.join("fuzz/corpus").join(TARGET);
    let scratch = root.join("target/fuzz/corpus").join(TARGET);
    let artifacts = root.join("target/fuzz/artifacts").join(TARGET);
    for dir in [&corpus, &scratch, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let dict = root.join("fuzz").join(format!("{TARGET}.dict"));

    // New inputs go to the first directory (the scratch one); the repository's is read only.
    let mut cmd = Command::new(&binary);
    cmd.current_dir(root)
        .arg(&scratch)
        .arg(&corpus)
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-dict={}", dict.display()))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // An input is a script of at most 64 actions; a hung session shows within seconds.
        .args(["-max_len=16384", "-timeout=60", "-print_final_stats=1"])
        .args(libfuzzer_args);
    let fuzzed = run(&mut cmd);

    // Keep only what adds coverage to the repository's corpus, counted by edges (not by hit
    // counts, which the daemon's own threads make noisy) and chosen as a small covering set:
    // the replay in `cargo test` stays a matter of seconds.
    let mut merge = Command::new(&binary);
    merge
        .current_dir(root)
        .args(["-set_cover_merge=1", "-use_counters=0"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&scratch);
    run(&mut merge)?;
    fuzzed.with_context(|| {
        format!(
            "the fuzzer stopped on a crash: the input is in {}; replay it with \
             `REUSEPORT_FUZZ_TRACE=1 cargo run -p reuseport-fuzz --example replay -- FILE`, \
             fix the cause and keep the input in {} as a regression entry",
            artifacts.display(),
            corpus.display()
        )
    })
}

/// Builds the instrumented target; returns its path. `--target` keeps the flags off the build
/// scripts and proc macros, and the objects apart from the normal build's.
fn build(root: &Path) -> Result<PathBuf> {
    let host = stdout(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")?;
    let mut cmd = cargo(root);
    cmd.args(["build", "--release", "-p", "reuseport-fuzz"])
        .args([
            "--features",
            "libfuzzer",
            "--bin",
            TARGET,
            "--target",
            &host,
        ])
        .env("RUSTFLAGS", RUSTFLAGS.join(" "));
    run(&mut cmd).with_context(|| format!("building the fuzz target: {}", show(&cmd)))?;
    Ok(root.join("target").join(&host).join("release").join(TARGET))
}
