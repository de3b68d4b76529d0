//! The sd_notify protocol: tells systemd (a `Type=notify` unit) when the daemon is ready, is
//! reloading and is stopping, by datagrams to `$NOTIFY_SOCKET`. Without that variable (not
//! started by systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::{debug, warn};

/// Sends `state` (`READY=1`, ...) to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = address(&path).and_then(|addr| {
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    });
    match sent {
        Ok(()) => debug!("sd_notify: {}", state.replace('\n', " ")),
        Err(e) => warn!("sd_notify to {}: {e}", path.to_string_lossy()),
    }
}

/// `$NOTIFY_SOCKET` as an address: a path, or an abstract name when it starts with `@`.
fn address(path: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(path),
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd wants beside it (Type=notify-reload
/// requires it; plain notify accepts it).
pub fn reloading() {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_the_notify_socket() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("reuseport-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path)?;
        let addr = address(path.as_os_str())?;
        UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");
        let abstract_name = address(std::ffi::OsStr::new("@reuseport/test"))?;
        assert!(abstract_name.as_pathname().is_none());
        assert!(monotonic_usec() > 0);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
