//! Creating the control socket safely: its directory, a stale socket left by a crashed daemon,
//! and its permissions.

use std::{
    fs, io,
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::Path,
};

use anyhow::{bail, Context as _};
use tokio::net::UnixListener;

/// Binds the control socket at `path`. Mode 0600 (owner only); 0666 when other uids were
/// allowed, which SO_PEERCRED then filters per connection.
pub fn bind(path: &Path, open_to_others: bool) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating the control directory {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
    }
    if path.exists() {
        match StdUnixStream::connect(path) {
            Ok(_) => bail!(
                "another reuseport daemon is running on {} (stop it, or use --control with \
                 another path)",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Left behind by a daemon that died: nobody listens on it.
                fs::remove_file(path)
                    .with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{} exists and is not a usable socket: remove it or choose another \
                         --control path",
                        path.display()
                    )
                })
            }
        }
    }
    // Bound under a temporary name and renamed once its mode is set, so no client can
    // connect while it still has the default mode.
    let staging = path.with_extension(format!("binding-{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .with_context(|| format!("binding the control socket {}", staging.display()))?;
    let mode = if open_to_others { 0o666 } else { 0o600 };
    fs::set_permissions(&staging, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", staging.display()))?;
    fs::rename(&staging, path)
        .with_context(|| format!("moving the control socket to {}", path.display()))?;
    Ok(listener)
}
