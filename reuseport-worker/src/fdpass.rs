//! File descriptors over a Unix stream socket (SCM_RIGHTS), both directions.

use std::{
    io::{self, IoSlice},
    mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr,
};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The kernel's limit of descriptors in one SCM_RIGHTS message (`SCM_MAX_FD`). The receive
/// buffer has room for that many, so the kernel never has to drop some and every descriptor a
/// peer sends arrives here, owned, and is closed when refused.
pub const SCM_MAX_FD: usize = 253;

/// What one `recvmsg` returned.
pub struct Received {
    /// Bytes read; 0 means end of stream.
    pub len: usize,
    /// Descriptors that came with them, owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The control data did not fit (the kernel closed what it could not pass).
    pub truncated: bool,
}

/// Room for one SCM_RIGHTS message of [`SCM_MAX_FD`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; control_space(SCM_MAX_FD)]);

const fn control_space(fds: usize) -> usize {
    // CMSG_SPACE: the header and the data, each rounded up to the alignment of `size_t`.
    let align = mem::size_of::<usize>();
    let header = (mem::size_of::<libc::cmsghdr>() + align - 1) & !(align - 1);
    let data = (fds * mem::size_of::<RawFd>() + align - 1) & !(align - 1);
    header + data
}

/// Reads bytes and any descriptors that come with them (close-on-exec set). Every descriptor
/// the kernel installed is returned owned, also when the control data was truncated, so none
/// can leak whatever the caller then decides.
pub fn recv_with_fds(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = ControlBuffer([0; control_space(SCM_MAX_FD)]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` describes buffers we own for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the headers the kernel wrote within msg_controllen; the
    // kernel writes only whole headers, truncated or not.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = ptr::read_unaligned(cmsg);
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let fd = ptr::read_unaligned(data.add(i));
                    // The kernel just installed it for us; nobody else owns it.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    #[test]
    fn every_descriptor_sent_arrives_owned_and_closes_on_drop() -> io::Result<()> {
        let (a, b) = UnixStream::pair()?;
        let file = std::fs::File::open("/proc/self/stat")?;
        let before = open_fds();
        for count in [1, 5, 64, SCM_MAX_FD] {
            let raw = vec![file.as_raw_fd(); count];
            send_with_fds(&a, b"x", &raw)?;
            let mut buf = [0u8; 16];
            let got = recv_with_fds(&b, &mut buf)?;
            assert_eq!((got.len, got.fds.len(), got.truncated), (1, count, false));
        }
        assert_eq!(open_fds(), before, "a received descriptor leaked");
        Ok(())
    }
}
