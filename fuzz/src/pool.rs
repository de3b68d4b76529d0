//! The descriptors an input may attach to its messages: a fresh set per input (a `drain
//! --close` shuts a listener down for good), one of each kind the daemon must tell apart.

use std::{
    net::SocketAddr,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use reuseport_testing::listeners;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Pool entries, by index (an input's index is taken modulo their number).
pub const KINDS: [&str; 12] = [
    "listener of group 0",
    "second listener of group 0",
    "v6-only listener of group 1",
    "dual-stack listener on group 1's address",
    "socket bound to group 0, not listening",
    "UDP socket on group 0's port",
    "listener on another port",
    "listener without SO_REUSEPORT (another port)",
    "regular file",
    "Unix socket",
    "pipe",
    "the control connection itself",
];

/// Index of the entry that stands for the connection the message is sent on.
pub const OWN_CONNECTION: usize = 11;

pub struct Pool {
    fds: Vec<Option<OwnedFd>>,
}

impl Pool {
    /// Creates the pool for a daemon serving `groups` (an IPv4 group, then an IPv6 one), in
    /// the calling thread's network namespace. An entry the kernel refuses stays empty (a
    /// message naming it is sent with the others only).
    pub fn new(groups: &[SocketAddr], spare_ports: [u16; 2]) -> Self {
        let v4 = groups[0];
        let v6 = groups.get(1).copied().unwrap_or(v4);
        let other = |port| SocketAddr::new(v4.ip(), port);
        let fds: Vec<Option<OwnedFd>> = vec![
            listeners::listener(v4, true).ok().map(OwnedFd::from),
            listeners::listener(v4, true).ok().map(OwnedFd::from),
            listeners::listener(v6, true).ok().map(OwnedFd::from),
            dual_stack(v6).ok().map(OwnedFd::from),
            listeners::bound(v4, true).ok().map(OwnedFd::from),
            listeners::udp(v4, true).ok().map(OwnedFd::from),
            listeners::listener(other(spare_ports[0]), true)
                .ok()
                .map(OwnedFd::from),
            listeners::listener(other(spare_ports[1]), false)
                .ok()
                .map(OwnedFd::from),
            std::fs::File::open("/proc/self/stat")
                .ok()
                .map(OwnedFd::from),
            UnixStream::pair().ok().map(|(a, _)| OwnedFd::from(a)),
            std::io::pipe().ok().map(|(r, _)| OwnedFd::from(r)),
        ];
        Self { fds }
    }

    /// The raw descriptors for the indices of a message; `own` is the connection's own.
    pub fn pick(&self, indices: &[u8], own: RawFd) -> Vec<RawFd> {
        indices
            .iter()
            .filter_map(|&i| match usize::from(i) % KINDS.len() {
                OWN_CONNECTION => Some(own),
                i => self.fds[i].as_ref().map(AsRawFd::as_raw_fd),
            })
            .collect()
    }
}

/// A listener on an IPv6 address that also takes IPv4 (the Linux default): a different kernel
/// reuseport group from the v6-only listeners on the same address.
fn dual_stack(addr: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_only_v6(false)?;
    sock.set_reuse_port(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(16)?;
    Ok(sock)
}
