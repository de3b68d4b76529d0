//! Private network namespaces for tests, the demo and benchmarks: each gets its own loopback,
//! its own ports and nothing that leaks onto the host.

use std::{io, mem, os::fd::AsRawFd};

/// Moves the calling thread into a fresh network namespace and brings its loopback up.
/// Threads and processes it starts afterwards inherit the namespace.
pub fn enter_new() -> io::Result<()> {
    // SAFETY: plain syscall; affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("unshare(CLONE_NEWNET) failed ({err}): run as root"),
        ));
    }
    loopback_up()
}

/// Sets IFF_UP on `lo` of the current namespace.
pub fn loopback_up() -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: zeroed ifreq is valid; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
