//! `cargo xtask build-policy NAME`: builds the policy program `policies/NAME` (docs/experiments.md)
//! with the toolchain that builds the steering program (nightly, bpf-linker, the flags aya-build
//! passes), and leaves the object at `target/policies/NAME.o`, where `reuseport policy load`
//! and the tests take it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::command::{nightly, run};

/// The example policies, built by `cargo xtask test` before the tests that load them.
pub const EXAMPLES: [&str; 3] = ["template", "least_recent", "sticky_source"];

/// Builds `policies/NAME`; returns the object's path.
pub fn build(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join("policies");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        || !dir.join(name).join("Cargo.toml").is_file()
    {
        bail!(
            "no policy {name:?} in {}: pick one of {} (or copy policies/template to a new \
             crate, add it to policies/Cargo.toml, and build that)",
            dir.display(),
            available(&dir).join(", ")
        );
    }
    // What aya-build passes for the steering program (reuseport-steer/build.rs): BTF, so
    // aya loads the object the same way.
    let flags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    let mut cmd = nightly("cargo", &dir);
    cmd.args([
        "build",
        "--package",
        name,
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .env("CARGO_ENCODED_RUSTFLAGS", flags)
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(&mut cmd)?;
    let built = dir.join("target/bpfel-unknown-none/release").join(name);
    let out_dir = root.join("target/policies");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let object = out_dir.join(format!("{name}.o"));
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    eprintln!("policy program: {}", object.display());
    Ok(object)
}

/// The policy crates in `dir` (its subdirectories with a Cargo.toml, but the library).
fn available(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "reuseport-policy")
        .collect();
    names.sort();
    names
}
