//! `cargo xtask test`: what CI runs. Ends with `cargo test`, so the last lines printed are its
//! summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::{
    bpf_object,
    command::{cargo, nightly, run},
    setup,
};

pub fn test(root: &Path, extra: &[String]) -> Result<()> {
    // Checked first: the integration tests load BPF programs and create network namespaces,
    // and failing after ten minutes of builds would waste them.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run as root \
             (sudo -E cargo xtask test)"
        );
    }
    setup::setup(root)?;

    step("rustfmt");
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;

    step("clippy (workspace)");
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    // The eBPF crate is its own workspace for bpfel-unknown-none: lint it with the same
    // toolchain and flags that build it.
    step("clippy (eBPF program)");
    run(nightly("cargo", &root.join("reuseport-ebpf")).args([
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;

    // Built by the workspace clippy run above (reuseport-user's build script).
    step("eBPF object");
    bpf_object::check(&target_dir(root))?;

    step("tests");
    run(cargo(root).args(["test", "--workspace"]).args(extra))
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Where cargo puts the workspace's build output.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
