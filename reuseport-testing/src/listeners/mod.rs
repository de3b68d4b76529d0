//! Building listening sockets on loopback, one at a time or as a SO_REUSEPORT group, and a
//! [`Pool`] of them served by accept threads.

pub mod pool;

pub use pool::{Answer, Pool, PoolOptions};

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use reuseport_steer::Family;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Accept-queue length of the listeners: large, so a burst never overflows a queue (an overflow
/// makes the client retransmit its SYN, which runs the program a second time).
pub const BACKLOG: i32 = 4096;

/// The loopback address of a family.
pub fn loopback(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// An unbound socket of the address's family, with SO_REUSEPORT if asked.
pub fn socket(addr: SocketAddr, ty: Type, reuseport: bool) -> io::Result<Socket> {
    let (domain, protocol) = match ty {
        t if t == Type::DGRAM => (Domain::for_address(addr), Protocol::UDP),
        _ => (Domain::for_address(addr), Protocol::TCP),
    };
    let sock = Socket::new(domain, ty, Some(protocol))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_port(reuseport)?;
    Ok(sock)
}

/// A TCP socket bound to `addr` (port 0: any free port), not listening yet.
pub fn bound(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    let sock = socket(addr, Type::STREAM, reuseport)?;
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock)
}

/// A TCP listener on `addr` (port 0: any free port).
pub fn listener(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    let sock = bound(addr, reuseport)?;
    sock.listen(BACKLOG)?;
    Ok(sock)
}

/// An IPv6 TCP listener on `addr` with SO_REUSEPORT and the given IPV6_V6ONLY (a dual-stack
/// one when false, as servers get by default).
pub fn v6(addr: SocketAddr, v6only: bool) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    sock.set_only_v6(v6only)?;
    sock.set_reuse_port(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(BACKLOG)?;
    Ok(sock)
}

/// A UDP socket bound to `addr`.
pub fn udp(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    let sock = socket(addr, Type::DGRAM, reuseport)?;
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock)
}

/// The address a socket is bound to.
pub fn local_addr(sock: &Socket) -> io::Result<SocketAddr> {
    sock.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

/// `n` SO_REUSEPORT listeners on one loopback port of `family`: the first picks a free port,
/// the others bind to it. Returns the port's address and the listeners in order.
pub fn group(family: Family, n: usize) -> io::Result<(SocketAddr, Vec<Socket>)> {
    let first = listener(SocketAddr::new(loopback(family), 0), true)?;
    let addr = local_addr(&first)?;
    let mut socks = Vec::with_capacity(n);
    socks.push(first);
    for _ in 1..n {
        socks.push(listener(addr, true)?);
    }
    Ok((addr, socks))
}

/// `n` SO_REUSEPORT UDP sockets on one loopback port of `family`, like [`group`].
pub fn udp_group(family: Family, n: usize) -> io::Result<(SocketAddr, Vec<Socket>)> {
    let first = udp(SocketAddr::new(loopback(family), 0), true)?;
    let addr = local_addr(&first)?;
    let mut socks = Vec::with_capacity(n);
    socks.push(first);
    for _ in 1..n {
        socks.push(udp(addr, true)?);
    }
    Ok((addr, socks))
}
