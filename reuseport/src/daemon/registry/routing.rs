//! Which group a socket may join, and which group a request names.

use std::net::SocketAddr;

use super::{Refusal, Registry};
use reuseport_steer::{Error, Family, Protocol, SocketInfo};
use reuseport_worker::{
    protocol::{GroupRef, Lenient},
    ErrorCode,
};

impl Registry {
    /// The index of the group a socket may join, or why none fits.
    pub(super) fn group_for(&self, info: &SocketInfo) -> Result<usize, Refusal> {
        if let Some(i) = self
            .groups
            .iter()
            .position(|g| g.listen == info.local && g.protocol == info.protocol)
        {
            return Ok(i);
        }
        if let Some(i) = self.groups.iter().position(|g| g.listen == info.local) {
            let want = self.groups[i].protocol;
            if info.protocol != want {
                return Err(Refusal::new(
                    ErrorCode::WrongProtocol,
                    format!(
                        "socket is {}, the group {} is {want}: {}",
                        info.protocol,
                        self.groups[i].listen,
                        match want {
                            Protocol::Tcp => {
                                "bind a SOCK_STREAM socket with SO_REUSEPORT and listen() on it"
                            }
                            Protocol::Udp => {
                                "bind a SOCK_DGRAM socket with SO_REUSEPORT (no listen()), \
                                 such as reuseport echo --udp makes"
                            }
                        }
                    ),
                ));
            }
            return Ok(i);
        }
        let same_port = self
            .groups
            .iter()
            .find(|g| g.listen.port() == info.local.port());
        Err(match same_port {
            Some(g) if g.listen.is_ipv4() != info.local.is_ipv4() => Error::WrongFamily {
                want: family_of(g.listen),
                got: info.family,
            }
            .into(),
            Some(g) => Error::WrongAddress {
                want: g.listen,
                got: info.local,
            }
            .into(),
            None => Refusal::new(
                ErrorCode::NoGroup,
                format!(
                    "no group listens on {}: this daemon serves {}; bind to one of those, or \
                     start the daemon with --listen {}",
                    info.local,
                    self.listen_list(),
                    info.local
                ),
            ),
        })
    }

    /// The group a request acts on: the one it names, or the only one.
    pub(super) fn one_group(&self, group: Option<&GroupRef>) -> Result<usize, Refusal> {
        match group {
            Some(Lenient::Unknown(text)) => {
                // `udp://ADDR:PORT` or `tcp://ADDR:PORT`: a group by address and protocol.
                let named = text.split_once("://").and_then(|(scheme, addr)| {
                    Some((
                        scheme.parse::<Protocol>().ok()?,
                        addr.parse::<SocketAddr>().ok()?,
                    ))
                });
                let Some((protocol, addr)) = named else {
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        format!(
                            "{text:?} is not an ADDR:PORT (or udp://ADDR:PORT); groups: {}",
                            self.listen_list()
                        ),
                    ));
                };
                self.groups
                    .iter()
                    .position(|g| g.listen == addr && g.protocol == protocol)
                    .ok_or_else(|| {
                        Refusal::new(
                            ErrorCode::UnknownGroup,
                            format!("no group {text}; groups: {}", self.listen_list()),
                        )
                    })
            }
            Some(&Lenient::Known(addr)) => {
                let mut at = self
                    .groups
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.listen == addr);
                match (at.next(), at.next()) {
                    (Some((i, _)), None) => Ok(i),
                    (Some(_), Some(_)) => Err(Refusal::new(
                        ErrorCode::AmbiguousGroup,
                        format!(
                            "a TCP and a UDP group listen on {addr}: name one, {addr} for TCP \
                             or udp://{addr}"
                        ),
                    )),
                    (None, _) => Err(Refusal::new(
                        ErrorCode::UnknownGroup,
                        format!("no group {addr}; groups: {}", self.listen_list()),
                    )),
                }
            }
            None if self.groups.len() == 1 => Ok(0),
            None => Err(Refusal::new(
                ErrorCode::AmbiguousGroup,
                format!(
                    "the daemon serves several groups ({}): name one with --group ADDR:PORT",
                    self.listen_list()
                ),
            )),
        }
    }

    fn listen_list(&self) -> String {
        self.groups
            .iter()
            .map(|g| match g.protocol {
                Protocol::Tcp => g.listen.to_string(),
                Protocol::Udp => format!("udp://{}", g.listen),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(super) fn family_of(addr: SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}
