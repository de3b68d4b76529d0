//! `cargo xtask setup`: makes the eBPF build possible, and installs the servers the tests run
//! (nginx, gunicorn, uvicorn). Idempotent, and quick when all is in place (filesystem checks
//! and `--version` runs only), because build and test run it first.

use std::{env, path::Path, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    bpf_linker::{self, Status},
    toolchain::{self, DEFAULT_COMPONENTS, NIGHTLY_COMPONENTS},
};

pub fn setup(root: &Path) -> Result<()> {
    crate::packages::ensure_test_tools();
    crate::packages::ensure_python_tools(root);
    let nightly_sysroot = toolchain::ensure_nightly(root)?;
    toolchain::ensure_components(root, Some("nightly"), &nightly_sysroot, NIGHTLY_COMPONENTS)?;
    let default_sysroot = toolchain::default_sysroot(root)?;
    toolchain::ensure_components(root, None, &default_sysroot, DEFAULT_COMPONENTS)?;

    match bpf_linker::status() {
        Status::Good(version) => {
            eprintln!("setup: ok (nightly with rust-src, bpf-linker {version})");
            return Ok(());
        }
        Status::Missing => eprintln!("setup: bpf-linker is not installed"),
        Status::WrongVersion(v) => eprintln!("setup: bpf-linker {v} is installed, 0.13 is needed"),
        Status::Broken(why) => eprintln!("setup: bpf-linker does not run: {why}"),
    }
    bpf_linker::install(root, &nightly_sysroot, &cargo_home()?)?;
    eprintln!("setup: ok");
    Ok(())
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Puts `$CARGO_HOME/bin` first in PATH, so child processes (aya-build, rustc) find the
/// bpf-linker that setup checked or installed, even from a shell (sudo, CI) without it.
pub fn put_cargo_bin_in_path() {
    let Ok(home) = cargo_home() else { return };
    let bin = home.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).filter(|d| *d != bin).collect();
    dirs.insert(0, bin);
    if let Ok(joined) = env::join_paths(dirs) {
        // Edition 2021, single-threaded at this point: nothing else reads the environment.
        env::set_var("PATH", joined);
    }
}
