//! `cargo xtask`: the project's developer commands (setup, build, test, fuzz, demo, bench).
//!
//! Depends on nothing that needs the eBPF build, because `setup` is what makes that build
//! possible.

mod bpf_linker;
mod command;
mod fuzz;
mod setup;
mod test;
mod toolchain;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::command::{cargo, run};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer commands of the reuseport workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs and is missing: nightly with rust-src, clippy and rustfmt,
    /// bpf-linker 0.13.
    Setup,
    /// Setup, then build the workspace (the eBPF object is built by reuseport-user's build
    /// script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, then fmt check, clippy (workspace and eBPF crate), and all tests. Needs root.
    Test {
        /// Passed to `cargo test --workspace` as is (e.g. `-- --test-threads 1`, or a filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run the demo (`reuseport demo`).
    Demo,
    /// Build the control-protocol fuzz target with libFuzzer and run it for SECS seconds,
    /// merging what adds coverage into fuzz/corpus/control_protocol. Needs root.
    Fuzz {
        #[arg(default_value_t = 60)]
        secs: u64,
        /// Passed to libFuzzer as is (e.g. `-- -jobs=2 -workers=2`).
        #[arg(last = true)]
        libfuzzer_args: Vec<String>,
    },
    /// Setup, then run the benchmark (`reuseport-bench`) with ARGS.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    setup::put_cargo_bin_in_path();
    match cli.command {
        Command::Setup => setup::setup(&root),
        Command::Build { release } => {
            setup::setup(&root)?;
            let mut cmd = cargo(&root);
            cmd.args(["build", "--workspace"]);
            if release {
                cmd.arg("--release");
            }
            run(&mut cmd)
        }
        Command::Test { args } => test::test(&root, &args),
        Command::Fuzz {
            secs,
            libfuzzer_args,
        } => fuzz::fuzz(&root, secs, &libfuzzer_args),
        Command::Demo => {
            setup::setup(&root)?;
            run(cargo(&root).args([
                "run",
                "--release",
                "-p",
                "reuseport",
                "--bin",
                "reuseport",
                "--",
                "demo",
            ]))
        }
        Command::Bench { args } => {
            setup::setup(&root)?;
            // The process-level scenarios run the release `reuseport` binary.
            run(cargo(&root).args(["build", "--release", "--workspace", "--bins"]))?;
            run(cargo(&root)
                .args(["run", "--release", "-p", "reuseport-bench", "--"])
                .args(&args))
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
