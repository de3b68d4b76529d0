//! Accept-queue depths from the kernel through netlink sock_diag: one dump of the namespace's
//! TCP listeners (or UDP sockets, whose receive queue stands in for the accept queue UDP has
//! not) per family per sample, matched to slots by socket cookie. No text parsing.

use std::{collections::HashMap, io, net::SocketAddr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, Parseable, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

use crate::Family;

/// A listener's queue, as sock_diag reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    /// TCP: connections waiting in the accept queue. UDP: bytes in the receive queue (the
    /// kernel counts the memory the datagrams take, not how many there are).
    pub waiting: u32,
    /// TCP: the backlog (accept queue capacity). UDP: bytes in the send queue.
    pub backlog: u32,
}

/// A listener as sock_diag names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// SO_COOKIE.
    pub cookie: u64,
    /// The socket's inode: what /proc/PID/fd links name.
    pub inode: u64,
    /// The uid that created it.
    pub uid: u32,
    pub local: SocketAddr,
}

/// A sock_diag socket, reused for every dump.
pub struct ListenerDiag {
    socket: Socket,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl ListenerDiag {
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buf: vec![0; 64 * 1024],
            request: Vec::new(),
        })
    }

    /// Fills `out` with the queue of every TCP listener of `family`, by cookie.
    pub fn listeners(&mut self, family: Family, out: &mut HashMap<u64, Queue>) -> io::Result<()> {
        self.dump(family, IPPROTO_TCP, StateFlags::LISTEN, |h| {
            queue_of(h, out)
        })
    }

    /// Fills `out` with the receive queue of every UDP socket of `family` (bound ones are in
    /// state CLOSE, connected ones ESTABLISHED), by cookie.
    pub fn udp_sockets(&mut self, family: Family, out: &mut HashMap<u64, Queue>) -> io::Result<()> {
        let states = StateFlags::CLOSE | StateFlags::ESTABLISHED;
        self.dump(family, IPPROTO_UDP, states, |h| queue_of(h, out))
    }

    /// Appends every TCP listener of `family` to `out`, with what adoption needs to know of it.
    pub fn listeners_named(&mut self, family: Family, out: &mut Vec<Listener>) -> io::Result<()> {
        self.dump(family, IPPROTO_TCP, StateFlags::LISTEN, |h| {
            out.push(Listener {
                cookie: cookie(&h.socket_id.cookie),
                inode: u64::from(h.inode),
                uid: h.uid,
                local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
            });
        })
    }

    /// One dump of the `protocol` sockets of `family` in `states`: `each` sees every reply's
    /// fixed header.
    fn dump(
        &mut self,
        family: Family,
        protocol: u8,
        states: StateFlags,
        mut each: impl FnMut(&InetResponseHeader),
    ) -> io::Result<()> {
        let (af, id) = match family {
            Family::Ipv4 => (AF_INET, SocketId::new_v4()),
            Family::Ipv6 => (AF_INET6, SocketId::new_v6()),
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: af,
                protocol,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id: id,
            })
            .into(),
        );
        packet.finalize();
        self.request.resize(packet.buffer_len(), 0);
        packet.serialize(&mut self.request);
        self.socket.send(&self.request, 0)?;

        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                // Only the fixed header of each reply is read (no attribute parsing): this runs
                // every few milliseconds.
                let message =
                    NetlinkBuffer::new_checked(&self.buf[offset..size]).map_err(invalid)?;
                let length = message.length() as usize;
                match message.message_type() {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = message
                            .payload()
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        let h = InetResponseHeader::parse(message.payload()).map_err(invalid)?;
                        each(&h);
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length.next_multiple_of(4);
            }
        }
    }
}

fn invalid(e: netlink_packet_core::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The kernel sends the cookie as two u32 words, low first, in host order.
/// Records the queue a reply's fixed header carries, by cookie.
fn queue_of(h: &InetResponseHeader, out: &mut HashMap<u64, Queue>) {
    out.insert(
        cookie(&h.socket_id.cookie),
        Queue {
            waiting: h.recv_queue,
            backlog: h.send_queue,
        },
    );
}

fn cookie(bytes: &[u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let high = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    u64::from(low) | (u64::from(high) << 32)
}
