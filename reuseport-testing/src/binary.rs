//! Finding the `reuseport` binary from another program of the workspace (the bench, the
//! integration tests), which cargo puts in the same target directory.

use std::{io, path::PathBuf};

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
