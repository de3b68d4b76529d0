//! File descriptors over a Unix stream socket (SCM_RIGHTS), both directions.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    cmsg_space,
    sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags},
};

/// The most descriptors accepted with one read; more is a protocol error (and the kernel closes
/// what does not fit).
pub const MAX_FDS: usize = 4;

/// What one `recvmsg` returned.
pub struct Received {
    /// Bytes read; 0 means end of stream.
    pub len: usize,
    /// Descriptors that came with them, owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// More descriptors came than fit: they were closed by the kernel.
    pub truncated: bool,
}

/// Reads bytes and any descriptors that come with them (close-on-exec set).
pub fn recv_with_fds(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us; nobody else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

/// Sends `bytes` with `fds` attached to their first byte.
pub fn send_with_fds(socket: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}
