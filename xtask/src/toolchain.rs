//! The Rust toolchains and components the build needs, checked on the filesystem (fast) and
//! installed with rustup when missing.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::command::{nightly, output, run, show};

/// A rustup component and a file of the toolchain sysroot that exists once it is installed.
pub struct Component {
    pub name: &'static str,
    pub marker: &'static str,
}

/// What the eBPF build (rust-src for `-Z build-std=core`) and its clippy run need.
pub const NIGHTLY_COMPONENTS: &[Component] = &[
    Component {
        name: "rust-src",
        marker: "lib/rustlib/src/rust/library/core",
    },
    Component {
        name: "clippy",
        marker: "bin/clippy-driver",
    },
];

/// What `cargo xtask test` runs with the workspace toolchain.
pub const DEFAULT_COMPONENTS: &[Component] = &[
    Component {
        name: "clippy",
        marker: "bin/cargo-clippy",
    },
    Component {
        name: "rustfmt",
        marker: "bin/rustfmt",
    },
];

/// The sysroot of the nightly toolchain, installing it (minimal profile) when missing.
pub fn ensure_nightly(dir: &Path) -> Result<PathBuf> {
    if let Some(sysroot) = nightly_sysroot(dir)? {
        return Ok(sysroot);
    }
    eprintln!("setup: the nightly toolchain is missing, installing it");
    let install = run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--no-self-update",
    ]));
    match (install, nightly_sysroot(dir)?) {
        (Ok(()), Some(sysroot)) => Ok(sysroot),
        (result, _) => {
            bail!(
            "the nightly toolchain is missing and could not be installed ({}); install it with \
             `rustup toolchain install nightly --profile minimal` (needs access to \
             static.rust-lang.org), then rerun `cargo xtask setup`",
            result.err().map_or("rustc still not found".into(), |e| format!("{e:#}"))
        )
        }
    }
}

/// `Some(sysroot)` when `rustup run nightly rustc` works, `None` when the toolchain is not
/// installed.
fn nightly_sysroot(dir: &Path) -> Result<Option<PathBuf>> {
    let mut cmd = nightly("rustc", dir);
    // Recent rustup installs a missing toolchain on first use, with the full default profile:
    // we want to say what we install, with the minimal one.
    cmd.args(["--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0");
    let out = match output(&mut cmd) {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "rustup is not installed (or not in PATH): the eBPF build needs a nightly toolchain \
             from rustup; install rustup from https://rustup.rs, then rerun `cargo xtask setup`"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot start `{}`", show(&cmd))),
    };
    if !out.status.success() {
        return Ok(None);
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(sysroot.is_dir().then_some(sysroot))
}

/// The sysroot of the toolchain that runs the workspace (the one running xtask).
pub fn default_sysroot(dir: &Path) -> Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--print", "sysroot"]).current_dir(dir);
    let sysroot = crate::command::stdout(&mut cmd)?;
    Ok(PathBuf::from(sysroot))
}

/// Adds the components of `wanted` whose marker file is missing from `sysroot`.
/// `toolchain` is `None` for the workspace's own toolchain.
pub fn ensure_components(
    dir: &Path,
    toolchain: Option<&str>,
    sysroot: &Path,
    wanted: &[Component],
) -> Result<()> {
    let label = toolchain.unwrap_or("the workspace toolchain");
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|c| !sysroot.join(c.marker).exists())
        .map(|c| c.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: {label} lacks {}, adding", missing.join(", "));
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add"])
        .args(&missing)
        .current_dir(dir);
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
    let added = run(&mut cmd);
    let still: Vec<&str> = wanted
        .iter()
        .filter(|c| !sysroot.join(c.marker).exists())
        .map(|c| c.name)
        .collect();
    if let Some(e) = added.err().filter(|_| !still.is_empty()) {
        bail!(
            "{label} lacks {} and `{}` failed ({e:#}): add them by hand, then rerun `cargo xtask \
             setup`",
            still.join(", "),
            show(&cmd)
        );
    }
    if !still.is_empty() {
        bail!(
            "`{}` succeeded but {} still missing from {}: reinstall the toolchain with rustup",
            show(&cmd),
            still.join(", "),
            sysroot.display()
        );
    }
    Ok(())
}
