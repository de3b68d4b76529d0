//! What the kernel says about a socket: everything needed to decide whether it may join a group,
//! read with getsockopt/getsockname so it works on any fd, whoever created it.

use std::{
    mem::size_of,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use socket2::SockRef;

pub use reuseport_common::{Family, Protocol};

use crate::error::{Error, Result};

/// A socket as seen by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub family: Family,
    pub protocol: Protocol,
    /// Bound address (port 0 when unbound).
    pub local: SocketAddr,
    pub reuseport: bool,
    /// TCP: `listen()` was called. Always false for UDP.
    pub listening: bool,
    /// SO_COOKIE: the socket's identity, stable for its lifetime, shared by every dup of it.
    pub cookie: u64,
    /// IPv6: IPV6_V6ONLY. A v6-only and a dual-stack socket on the same address bind side by
    /// side but sit in different kernel reuseport groups. Always false for IPv4.
    pub v6only: bool,
    /// SO_BINDTOIFINDEX: the device the socket is bound to, 0 for none. Sockets bound to
    /// different devices are in different kernel groups.
    pub device: u32,
    /// SO_NETNS_COOKIE: the network namespace the socket lives in.
    pub netns: u64,
}

/// `SO_BINDTOIFINDEX` and `SO_NETNS_COOKIE` (asm-generic values, which x86 and arm use).
const SO_BINDTOIFINDEX: libc::c_int = 62;
const SO_NETNS_COOKIE: libc::c_int = 71;

impl SocketInfo {
    pub fn of(fd: BorrowedFd<'_>) -> Result<Self> {
        let sock = SockRef::from(&fd);
        let io = |what: &str| {
            let what = what.to_owned();
            move |e| Error::io(what, e)
        };
        let domain = match sock.domain() {
            // A file or a pipe: no socket at all, which is the sender's mistake, not an I/O error.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                return Err(Error::UnsupportedSocket)
            }
            other => other.map_err(io("SO_DOMAIN"))?,
        };
        let family = match domain {
            d if d == socket2::Domain::IPV4 => Family::Ipv4,
            d if d == socket2::Domain::IPV6 => Family::Ipv6,
            _ => return Err(Error::UnsupportedSocket),
        };
        let protocol = match sock.r#type().map_err(io("SO_TYPE"))? {
            t if t == socket2::Type::STREAM => Protocol::Tcp,
            t if t == socket2::Type::DGRAM => Protocol::Udp,
            _ => return Err(Error::UnsupportedSocket),
        };
        let local = sock
            .local_addr()
            .map_err(io("getsockname"))?
            .as_socket()
            .ok_or(Error::UnsupportedSocket)?;
        let reuseport = sock.reuse_port().map_err(io("SO_REUSEPORT"))?;
        let listening = protocol == Protocol::Tcp && getsockopt_int(fd, libc::SO_ACCEPTCONN)? != 0;
        let cookie = getsockopt_u64(fd, libc::SO_COOKIE)?;
        let v6only = family == Family::Ipv6 && sock.only_v6().map_err(io("IPV6_V6ONLY"))?;
        let device = getsockopt_int(fd, SO_BINDTOIFINDEX)? as u32;
        let netns = getsockopt_u64(fd, SO_NETNS_COOKIE)?;
        Ok(Self {
            family,
            protocol,
            local,
            reuseport,
            listening,
            cookie,
            v6only,
            device,
            netns,
        })
    }

    /// Checks that the socket can be put in a reuseport socket array at all.
    pub fn check_joinable(&self) -> Result<()> {
        if !self.reuseport {
            return Err(Error::NoReuseport);
        }
        if self.local.port() == 0 {
            return Err(Error::NotBound);
        }
        if self.protocol == Protocol::Tcp && !self.listening {
            return Err(Error::NotListening);
        }
        // A socket of another namespace is in another kernel group (its port is another port):
        // selecting it would fail for every connection.
        if self.netns != current_netns()? {
            return Err(Error::OtherNetns);
        }
        Ok(())
    }

    /// Checks an IPv6 socket's IPV6_V6ONLY against the kind its group was configured with
    /// (`None`: not configured; IPv4 sockets have no such flag and always pass).
    pub fn check_v6only(&self, want: Option<bool>) -> Result<()> {
        match want {
            Some(want) if self.family == Family::Ipv6 && self.v6only != want => {
                Err(Error::WrongV6Only {
                    want,
                    got: self.v6only,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks that the socket belongs to the group whose first socket was `group`.
    pub fn check_same_group(&self, group: &SocketInfo) -> Result<()> {
        if self.protocol != group.protocol {
            return Err(Error::WrongProtocol {
                want: group.protocol,
                got: self.protocol,
            });
        }
        if self.family != group.family {
            return Err(Error::WrongFamily {
                want: group.family,
                got: self.family,
            });
        }
        if self.local != group.local {
            return Err(Error::WrongAddress {
                want: group.local,
                got: self.local,
            });
        }
        if self.v6only != group.v6only {
            return Err(Error::WrongV6Only {
                want: group.v6only,
                got: self.v6only,
            });
        }
        if self.device != group.device {
            return Err(Error::WrongDevice {
                want: group.device,
                got: self.device,
            });
        }
        Ok(())
    }
}

/// The cookie of the calling thread's network namespace.
pub fn current_netns() -> Result<u64> {
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)
        .map_err(|e| Error::io("socket(AF_UNIX)", e))?;
    getsockopt_u64(probe.as_fd(), SO_NETNS_COOKIE)
}

/// Reads the cookie of any socket fd.
pub fn cookie(fd: impl AsFd) -> Result<u64> {
    getsockopt_u64(fd.as_fd(), libc::SO_COOKIE)
}

fn getsockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    getsockopt_raw(fd, opt, &mut v)?;
    Ok(v)
}

fn getsockopt_u64(fd: BorrowedFd<'_>, opt: libc::c_int) -> Result<u64> {
    let mut v: u64 = 0;
    getsockopt_raw(fd, opt, &mut v)?;
    Ok(v)
}

fn getsockopt_raw<T>(fd: BorrowedFd<'_>, opt: libc::c_int, out: &mut T) -> Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is a valid, writable T and `len` is its size.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (out as *mut T).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(Error::io(
            format!("getsockopt({opt})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
