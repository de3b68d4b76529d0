//! `cargo xtask`: the project's developer commands (setup, build, test, fuzz, demo, bench).
//!
//! Depends on nothing that needs the eBPF build, because `setup` is what makes that build
//! possible.

mod bpf_linker;
mod command;
mod fuzz;
mod install;
mod packages;
mod policy;
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
    /// bpf-linker 0.13; and the Debian packages of the servers and tools the tests and the
    /// benchmark run (nginx, promtool, haproxy, ...).
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
    /// Setup, then write the man pages (reuseport.1, one per command) into DIR.
    Man {
        #[arg(long, value_name = "DIR", default_value = "target/man")]
        out: PathBuf,
    },
    /// Build the release binary and install it with the systemd units, the example
    /// configuration (/etc/reuseport/reuseport.toml, only if absent), the completions and the
    /// man pages. Units go to /etc/systemd/system with the default prefix, else to
    /// PREFIX/lib/systemd/system.
    Install {
        #[arg(long, value_name = "DIR", default_value = install::DEFAULT_PREFIX)]
        prefix: PathBuf,
        /// Stage everything under DIR instead of / (for a package, or a test)
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Install this binary instead of building the release one
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
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
    /// Setup, then build the policy program policies/NAME into target/policies/NAME.o
    /// (docs/experiments.md).
    BuildPolicy {
        /// A crate of policies/: template, least_recent, sticky_source, or your own
        name: String,
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
        Command::Install {
            prefix,
            root: dest,
            binary,
        } => {
            if binary.is_none() {
                setup::setup(&root)?;
            }
            install::install(
                &root,
                &install::Install {
                    prefix,
                    root: dest,
                    binary,
                },
            )
        }
        Command::Man { out } => {
            setup::setup(&root)?;
            // The pages come from the binary's own command line definition.
            let out = std::env::current_dir()?.join(out);
            run(cargo(&root)
                .args([
                    "run",
                    "-q",
                    "-p",
                    "reuseport",
                    "--bin",
                    "reuseport",
                    "--",
                    "man",
                ])
                .arg("--out")
                .arg(out))
        }
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
        Command::BuildPolicy { name } => {
            setup::setup(&root)?;
            policy::build(&root, &name).map(drop)
        }
        Command::Bench { args } => {
            setup::setup(&root)?;
            // The process-level scenarios run the release `reuseport` binary; nothing else of
            // the workspace is needed.
            run(cargo(&root).args([
                "build",
                "--release",
                "-p",
                "reuseport",
                "-p",
                "reuseport-bench",
                "--bins",
            ]))?;
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
