//! bpf-linker 0.13, built against the nightly toolchain's own libLLVM when missing: that
//! LLVM is the one rustc emits bitcode for, so the two always agree, and nothing else (a
//! system LLVM, a download) is needed.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::command::{nightly, run, show};

/// The bpf-linker series that matches aya-build 0.2 and LLVM 21..23.
const SERIES: &str = "0.13";

/// What `bpf-linker --version` said.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Good(String),
    Missing,
    WrongVersion(String),
    /// Installed but does not run (typically: the libLLVM it was linked to is gone).
    Broken(String),
}

/// Runs the `bpf-linker` that child processes will find in PATH.
pub fn status() -> Status {
    let out = match Command::new("bpf-linker").arg("--version").output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Status::Missing,
        Err(e) => return Status::Broken(e.to_string()),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Status::Broken(stderr.lines().next().unwrap_or("").trim().to_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_version(&stdout) {
        Some(v) if in_series(v) => Status::Good(v.to_owned()),
        Some(v) => Status::WrongVersion(v.to_owned()),
        None => Status::Broken(format!("unexpected --version output {:?}", stdout.trim())),
    }
}

/// Builds and installs bpf-linker into `cargo_home`/bin, linked to the nightly libLLVM.
pub fn install(dir: &Path, nightly_sysroot: &Path, cargo_home: &Path) -> Result<()> {
    let lib_dir = nightly_sysroot.join("lib");
    let (library, major) = find_llvm(&lib_dir)?;
    // bpf-linker's build script links `-lLLVM` from $LLVM_PREFIX/lib and records that
    // directory as the binary's runpath, so it must outlive the build: keep it in CARGO_HOME,
    // next to the binary, not in this checkout's target/.
    let prefix = cargo_home.join("bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    remove_old_links(&prefix_lib)?;
    let target = lib_dir.join(&library);
    for name in ["libLLVM.so", library.as_str()] {
        let link = prefix_lib.join(name);
        symlink(&target, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
    }

    eprintln!(
        "setup: building bpf-linker {SERIES} against {} (LLVM {major}); this takes a few minutes",
        target.display()
    );
    let mut cmd = nightly("cargo", dir);
    cmd.env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version"])
        .arg(format!("^{SERIES}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        // --force: a broken install (libLLVM gone after a nightly update) is still recorded as
        // installed, and cargo would skip it.
        .args(["--force", "--locked"]);
    run(&mut cmd).with_context(|| {
        format!(
            "building bpf-linker failed; it needs a C toolchain (cc) and a bpf-linker {SERIES} \
             release with an `llvm-{major}` feature. Either fix the error above and rerun \
             `cargo xtask setup`, or install bpf-linker {SERIES} yourself \
             (https://github.com/aya-rs/bpf-linker#installation) so that `bpf-linker --version` \
             works in PATH"
        )
    })?;

    match status() {
        Status::Good(_) => Ok(()),
        other => bail!(
            "`{}` succeeded but bpf-linker still does not work ({other:?}); is another \
             bpf-linker earlier in PATH than {}?",
            show(&cmd),
            cargo_home.join("bin").display()
        ),
    }
}

/// The real libLLVM file of a toolchain's lib directory (`libLLVM.so.<major>...`; the
/// `libLLVM-<major>-rust-*.so` next to it is a linker script) and its LLVM major version.
fn find_llvm(lib_dir: &Path) -> Result<(String, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(major) = llvm_major(&name) {
            if entry.path().is_file() {
                return Ok((name, major));
            }
        }
    }
    bail!(
        "no libLLVM.so.<version> in {}: this nightly ships no shared LLVM to build bpf-linker \
         against; install bpf-linker {SERIES} yourself \
         (https://github.com/aya-rs/bpf-linker#installation)",
        lib_dir.display()
    )
}

/// `22` for `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("libLLVM.so.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes the symlinks of an earlier build (another nightly's libLLVM).
fn remove_old_links(prefix_lib: &Path) -> Result<()> {
    let entries = fs::read_dir(prefix_lib)
        .with_context(|| format!("cannot list {}", prefix_lib.display()))?;
    for entry in entries {
        let path: PathBuf = entry
            .with_context(|| format!("cannot list {}", prefix_lib.display()))?
            .path();
        if path.is_symlink() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// `0.13.0` from `bpf-linker 0.13.0`.
fn parse_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    (words.next()? == "bpf-linker").then_some(())?;
    words.next()
}

fn in_series(version: &str) -> bool {
    version
        .strip_prefix(SERIES)
        .is_some_and(|rest| rest.starts_with('.') || rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.21-rust-1.93.0-nightly"), Some(21));
        // The linker script and unrelated libraries are not the library.
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
        assert_eq!(llvm_major("libLLVM.so"), None);
    }

    #[test]
    fn version_series() {
        assert_eq!(parse_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(parse_version("something 0.13.0"), None);
        assert!(in_series("0.13.0"));
        assert!(in_series("0.13.12"));
        assert!(!in_series("0.130.0"));
        assert!(!in_series("0.12.2"));
    }
}
