//! Creating the control socket safely: its directory, a stale socket left by a crashed daemon,
//! and its permissions, with no race another local user can win.

use std::{
    fs, io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use tokio::net::UnixListener;

/// Binds the control socket at `path`. Mode 0600 (owner only); 0666 when other uids were
/// allowed, which SO_PEERCRED then filters per connection.
pub fn bind(path: &Path, open_to_others: bool) -> anyhow::Result<UnixListener> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("creating the control directory {}", dir.display()))?;
    }
    remove_stale(path)?;
    // Bound inside a private directory (mode 0700, so nobody else can swap or re-point the new
    // socket) with its final mode, then renamed into place: no client can connect before the
    // mode is set, and the chmod never follows a link another user planted.
    let staging = Staging::create(&dir)?;
    let socket = staging.0.join("control.sock");
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    let mode = if open_to_others { 0o666 } else { 0o600 };
    fs::set_permissions(&socket, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    fs::rename(&socket, path)
        .with_context(|| format!("moving the control socket to {}", path.display()))?;
    Ok(listener)
}

/// Removes a socket left behind by a daemon that died; refuses anything else at `path`.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket ({}): the daemon replaces only a stale socket of its \
             own; remove it yourself or choose another --control path",
            path.display(),
            kind(&meta.file_type())
        );
    }
    match StdUnixStream::connect(path) {
        Ok(_) => bail!(
            "another reuseport daemon is running on {} (stop it, or use --control with another \
             path)",
            path.display()
        ),
        // Nobody listens on it: left behind by a daemon that died.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display())),
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} exists and is not a usable socket: remove it or choose another --control \
                 path",
                path.display()
            )
        }),
    }
}

fn kind(t: &fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// A directory of mode 0700 beside the control socket, removed on drop.
struct Staging(PathBuf);

impl Staging {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let pid = std::process::id();
        for attempt in 0..100u32 {
            let path = dir.join(format!(".reuseport-binding-{pid}-{attempt}"));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating a staging directory in {}", dir.display())
                    })
                }
            }
        }
        bail!(
            "could not create a staging directory in {}: remove the .reuseport-binding-* entries",
            dir.display()
        )
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> io::Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("reuseport-control-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_kept_and_named() -> anyhow::Result<()> {
        let dir = scratch("file")?;
        let path = dir.join("control.sock");
        fs::write(&path, "precious")?;
        let err = bind(&path, false).err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("is not a socket (a regular file)")),
            "{err:?}"
        );
        assert_eq!(fs::read_to_string(&path)?, "precious");
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&path, &link)?;
        assert!(bind(&link, false).is_err());
        assert_eq!(fs::read_to_string(&path)?, "precious");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_with_the_right_mode() -> anyhow::Result<()> {
        let dir = scratch("stale")?;
        let path = dir.join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path)?);
        let _listener = bind(&path, false)?;
        let meta = fs::symlink_metadata(&path)?;
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".reuseport"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
        assert!(
            bind(&path, false).is_err(),
            "a live daemon's socket was taken"
        );
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
