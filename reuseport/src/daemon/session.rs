//! One control connection: reads request lines (with any descriptors attached), answers each,
//! and unregisters the connection's workers when it closes. A client that breaks the protocol
//! gets an error line and a closed connection; nothing it sends can take the daemon down.
//!
//! The session does the per-request work that needs no shared state itself (parsing,
//! inspecting a received socket, recording `load` reports) and hands the rest to the owner of
//! the daemon's state ([`super::owner`]).

use std::{collections::VecDeque, os::fd::OwnedFd, sync::Arc};

use log::debug;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::UnixStream,
};

use super::{
    owner::{Command, Gone, Handle},
    refusal::Refusal,
    registry::{ConnId, LoadCell, NewWorker, Peer},
};
use reuseport_steer::{Error, Policy, SlotState, SocketInfo};
use reuseport_worker::{
    fdpass,
    protocol::{ErrorCode, Lenient, Reply, Request, MAX_LINE},
};

/// What a connection may do, decided once from its credentials.
pub struct Session {
    pub conn: ConnId,
    pub peer: Peer,
    pub allowed: bool,
    pub owner: Handle,
}

/// Why the daemon closes a connection: said to the client as an error reply first.
struct Fatal(Refusal);

fn fatal(code: ErrorCode, message: impl Into<String>) -> Fatal {
    Fatal(Refusal::new(code, message))
}

impl From<Gone> for Fatal {
    fn from(_: Gone) -> Self {
        fatal(ErrorCode::Io, "the daemon is stopping")
    }
}

/// The connection's own state.
#[derive(Default)]
struct Connection {
    /// Its latest `load` report, shared with its workers' records.
    load: Arc<LoadCell>,
    /// A registration succeeded: `load` reports count from then on.
    registered: bool,
}

impl Session {
    pub async fn serve(self, mut stream: UnixStream) {
        if !self.allowed {
            let reply = Reply::error(
                ErrorCode::Forbidden,
                format!(
                    "uid {} may not use this daemon: run as the daemon's user, or start it with \
                     --allow-uid {}",
                    self.peer.uid, self.peer.uid
                ),
            );
            let _ = write_reply(&mut stream, &reply).await;
            return;
        }
        if let Err(Fatal(refusal)) = self.read_loop(&mut stream).await {
            let _ = write_reply(&mut stream, &refusal.into_reply()).await;
        }
        let _ = self.owner.send(Command::Unregister(self.conn)).await;
        debug!("control connection {} closed", self.conn);
    }

    async fn read_loop(&self, stream: &mut UnixStream) -> Result<(), Fatal> {
        let mut buf: Vec<u8> = Vec::new();
        let mut fds: VecDeque<Option<OwnedFd>> = VecDeque::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut connection = Connection::default();
        loop {
            let received = loop {
                if stream.readable().await.is_err() {
                    return Ok(());
                }
                match stream.try_io(Interest::READABLE, || {
                    fdpass::recv_with_fds(stream, &mut chunk)
                }) {
                    Ok(r) => break r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Ok(()),
                }
            };
            if received.truncated || received.fds.len() > 1 {
                return Err(fatal(
                    ErrorCode::TooManyFds,
                    "send exactly one descriptor, with the register line",
                ));
            }
            fds.extend(received.fds.into_iter().map(keep_if_inet));
            if received.len == 0 {
                if buf.is_empty() {
                    return Ok(());
                }
                return Err(fatal(
                    ErrorCode::Truncated,
                    "the connection ended in the middle of a line: end every request with \\n",
                ));
            }
            buf.extend_from_slice(&chunk[..received.len]);
            let mut start = 0;
            while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + len];
                start += len + 1;
                if let Some(reply) = self.handle_line(line, &mut fds, &mut connection).await? {
                    write_reply(stream, &reply)
                        .await
                        .map_err(|_| fatal(ErrorCode::Io, "could not write the reply"))?;
                }
            }
            buf.drain(..start);
            // Let the other connections have their turn: a client that floods its connection
            // (`load` lines need no await) holds up nobody but itself.
            tokio::task::yield_now().await;
            if buf.len() >= MAX_LINE {
                return Err(fatal(
                    ErrorCode::TooLarge,
                    format!("a request line is limited to {MAX_LINE} bytes"),
                ));
            }
            if buf.is_empty() && !fds.is_empty() {
                // Descriptors that came with something other than a register line.
                return Err(fatal(
                    ErrorCode::UnexpectedFd,
                    "a descriptor may only come with a register request",
                ));
            }
        }
    }

    /// Carries out one request; `None` for requests that get no reply.
    async fn handle_line(
        &self,
        line: &[u8],
        fds: &mut VecDeque<Option<OwnedFd>>,
        connection: &mut Connection,
    ) -> Result<Option<Reply>, Fatal> {
        let request: Request = serde_json::from_slice(line).map_err(|e| {
            fatal(
                ErrorCode::BadRequest,
                format!("not a valid request line ({e}); see docs/protocol.md"),
            )
        })?;
        let reply = match request {
            Request::Register { name, weight, .. } => {
                let socket =
                    match fds.pop_front() {
                        Some(Some(socket)) => socket,
                        Some(None) => {
                            return Ok(Some(Refusal::from(Error::UnsupportedSocket).into_reply()))
                        }
                        None => return Err(fatal(
                            ErrorCode::FdMissing,
                            "register needs the listening socket attached (SCM_RIGHTS) to the line",
                        )),
                    };
                // Inspected once, here, off the owner's thread; the owner routes and inserts.
                let inspected = SocketInfo::of(std::os::fd::AsFd::as_fd(&socket))
                    .and_then(|info| info.check_joinable().map(|()| info));
                match inspected {
                    Err(e) => Err(e.into()),
                    Ok(info) => {
                        let worker = NewWorker {
                            conn: self.conn,
                            peer: self.peer,
                            socket,
                            info,
                            name,
                            weight,
                            load: connection.load.clone(),
                        };
                        self.owner.register(worker).await?.map(|joined| {
                            connection.registered = true;
                            Reply {
                                group: Some(joined.group),
                                slot: Some(joined.slot),
                                ..Reply::ok()
                            }
                        })
                    }
                }
            }
            Request::Load { inflight } => {
                // Before any registration a report is ignored; after one, it costs this
                // session a store and at most one queued notice to the owner.
                if connection.registered && connection.load.report(inflight) {
                    self.owner
                        .send(Command::Load(self.conn, connection.load.clone()))
                        .await?;
                }
                return Ok(None);
            }
            Request::Status => self.owner.call(|r| r.status()).await.map(|groups| {
                Ok(Reply {
                    groups: Some(groups),
                    ..Reply::ok()
                })
            })?,
            Request::PolicyGet { group } => self
                .owner
                .call(move |r| r.policy(group.as_ref()))
                .await?
                .map(|(group, policy)| Reply {
                    group: Some(group),
                    policy: Some(policy),
                    ..Reply::ok()
                }),
            Request::PolicySet { policy, group } => match policy {
                // The message of the parse error, which lists the policies.
                Lenient::Unknown(text) => Err(Refusal::new(
                    ErrorCode::UnknownPolicy,
                    text.parse::<Policy>()
                        .err()
                        .map_or_else(|| format!("unknown policy {text:?}"), |e| e.to_string()),
                )),
                Lenient::Known(policy) => self
                    .owner
                    .call(move |r| r.set_policy(policy, group.as_ref()))
                    .await?
                    .map(|()| Reply::ok()),
            },
            Request::Weight {
                slot,
                weight,
                group,
            } => self
                .owner
                .call(move |r| r.set_weight(slot, weight, group.as_ref()))
                .await?
                .map(|()| Reply::ok()),
            Request::Drain { slot, group, close } => self
                .owner
                .call(move |r| {
                    if close.unwrap_or(false) {
                        r.drain_and_close(slot, group.as_ref())
                    } else {
                        r.set_state(slot, SlotState::Draining, group.as_ref())
                    }
                })
                .await?
                .map(|()| Reply::ok()),
            Request::Undrain { slot, group } => self
                .owner
                .call(move |r| r.set_state(slot, SlotState::Active, group.as_ref()))
                .await?
                .map(|()| Reply::ok()),
        };
        Ok(Some(reply.unwrap_or_else(Refusal::into_reply)))
    }
}

/// A received descriptor is kept (until its register line is complete) only if it is an IPv4
/// or IPv6 socket, the only kind that can join a group; anything else is closed at once and
/// stands as `None` for the refusal. A Unix socket held here could be the client's own end of
/// this very connection: the connection would then never end, and hold both descriptors for
/// good, after the client closed it (found by the fuzzer).
fn keep_if_inet(fd: OwnedFd) -> Option<OwnedFd> {
    let domain = socket2::SockRef::from(&fd).domain().ok()?;
    (domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6).then_some(fd)
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}
