//! `cargo xtask test`: what CI runs. Ends with `cargo test`, so the last lines printed are its
//! summary.

use std::path::Path;

use anyhow::{bail, Result};

use crate::{
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
    mount_bpffs()?;

    step("rustfmt");
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    // The eBPF crate is a workspace of its own, which `cargo fmt --all` does not reach.
    run(nightly("cargo", &root.join("reuseport-ebpf")).args(["fmt", "--", "--check"]))?;

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

    // The policy programs: a workspace of their own too, linted like the steering program,
    // and the examples built for the tests that load them (tests/tests/policy_programs.rs).
    step("policy programs");
    let policies = root.join("policies");
    run(nightly("cargo", &policies).args(["fmt", "--", "--check"]))?;
    run(nightly("cargo", &policies).args([
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
    for name in crate::policy::EXAMPLES {
        crate::policy::build(root, name)?;
    }

    // The daemon tests run the `reuseport` binary; `cargo test` alone builds only test targets.
    step("binaries");
    run(cargo(root).args(["build", "--workspace", "--bins"]))?;

    // The unit tests include the check that the object uses the atomic fetch-and-add form.
    step("tests");
    run(cargo(root).args(["test", "--workspace"]).args(extra))
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Mounts bpffs at /sys/fs/bpf once, before the tests: daemons in parallel tests would otherwise
/// race to mount it and stack one mount over another's pins.
fn mount_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mounted = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    };
    if mounted {
        return Ok(());
    }
    step("mount bpffs");
    run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
