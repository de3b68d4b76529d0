//! Finding the `reuseport` binary from another program of the workspace (the bench, the
//! integration tests), which cargo puts in the same target directory; and making a binary
//! runnable by another uid wherever the checkout lives.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// `REUSEPORT_BIN` if set, else the `reuseport` beside the current executable or in one of its
/// parent directories up to `target/` (test binaries live in `target/*/deps`).
pub fn locate() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REUSEPORT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let bin = d.join("reuseport");
        if bin.is_file() {
            return Ok(bin);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no `reuseport` binary beside {}: build it with `cargo build --workspace --bins` \
             (add --release for the bench; `cargo xtask test` and `cargo xtask bench` do), or set \
             REUSEPORT_BIN",
            exe.display()
        ),
    ))
}

/// A path to `binary` that every uid can execute: a hard link (a copy across file systems, or
/// when the binary is not executable by others) in `dir`, which is created with mode 0755. A checkout under a private directory (a clone under
/// /root is mode 0700) cannot be traversed by the uid a test drops to, so a binary is run as
/// another uid only from such a place. `dir` must itself be reachable (under /tmp); the caller
/// removes it.
pub fn runnable_by_all(binary: &Path, dir: &Path) -> io::Result<PathBuf> {
    let name = binary
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", binary.display())))?;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let exposed = dir.join(name);
    if exposed.exists() {
        return Ok(exposed);
    }
    // A link shares the binary's mode: enough unless it was built under a umask like 077.
    let linked = fs::hard_link(binary, &exposed).is_ok()
        && fs::metadata(&exposed)?.permissions().mode() & 0o005 == 0o005;
    if !linked {
        let _ = fs::remove_file(&exposed);
        fs::copy(binary, &exposed)?;
        fs::set_permissions(&exposed, fs::Permissions::from_mode(0o755))?;
    }
    Ok(exposed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;
    use crate::child::NOBODY;

    /// Issue 9, item 9: in a clone under a mode-0700 directory, uid 65534 got EACCES running
    /// the binary; from the place `runnable_by_all` gives, it runs.
    #[test]
    fn a_binary_in_a_private_directory_runs_as_nobody_from_its_exposed_copy() -> io::Result<()> {
        let base =
            std::env::temp_dir().join(format!("reuseport-binary-test-{}", std::process::id()));
        let private = base.join("private");
        fs::create_dir_all(&private)?;
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700))?;
        let binary = private.join("true");
        fs::copy("/bin/true", &binary)?;
        // As built under umask 077: a link alone would not do.
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o700))?;
        let as_nobody = |path: &Path| Command::new(path).uid(NOBODY).gid(NOBODY).status();

        let denied = as_nobody(&binary).err().map(|e| e.kind());
        let exposed = runnable_by_all(&binary, &base.join("exposed"))?;
        let status = as_nobody(&exposed);
        fs::remove_dir_all(&base)?;
        assert_eq!(denied, Some(io::ErrorKind::PermissionDenied));
        assert!(status?.success());
        Ok(())
    }
}
