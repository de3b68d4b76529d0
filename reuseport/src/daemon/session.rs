//! One control connection: reads request lines (with any descriptors attached), answers each,
//! and unregisters the connection's workers when it closes. A client that breaks the protocol
//! gets an error line and a closed connection; nothing it sends can take the daemon down.
//!
//! The session does the per-request work that needs no shared state itself (parsing,
//! inspecting a received socket, recording `load` reports) and hands the rest to the owner of
//! the daemon's state ([`super::owner`]).

use std::{
    cell::RefCell,
    collections::VecDeque,
    os::fd::OwnedFd,
    sync::Arc,
    time::{Duration, Instant},
};

use log::debug;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::UnixStream,
    sync::OwnedSemaphorePermit,
};

use super::{
    access::Actor,
    owner::{Command, Gone, Handle},
    refusal::Refusal,
    registry::{new_worker_map, ConnId, LoadCell, NewWorker, Peer},
};
use reuseport_steer::{Error, Policy, SlotState, SocketInfo};
use reuseport_worker::{
    fdpass, names,
    protocol::{CountersLayout, ErrorCode, Lenient, Reply, Request, MAX_LINE},
};

/// What a connection may do, decided once from its credentials.
pub struct Session {
    pub conn: ConnId,
    pub peer: Peer,
    /// `None`: the uid may not use the daemon.
    pub actor: Option<Actor>,
    pub owner: Handle,
    pub deadlines: Deadlines,
    /// The connection's place under `--max-connections`, given back when the session ends.
    pub permit: OwnedSemaphorePermit,
    pub reloader: Arc<super::Reloader>,
    pub adoption: super::adoption::Adoption,
}

/// How long a connection that holds no worker may keep the daemon waiting (a registered
/// worker's connection is open for good: closing it unregisters the worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// For the rest of a line once part of it arrived (`--control-line-ms`).
    pub line: Duration,
    /// For the next request (`--control-idle-ms`).
    pub idle: Duration,
}

/// Bytes read at once. One buffer per runtime thread, not per connection: an idle connection
/// then costs the daemon almost nothing but its descriptor.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static CHUNK: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
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
        let Some(actor) = self.actor else {
            let reply = Reply::error(
                ErrorCode::Forbidden,
                format!(
                    "uid {} may not use this daemon: run as the daemon's user, or start it with \
                     --allow-uid {}",
                    self.peer.uid, self.peer.uid
                ),
            );
            self.last_word(&mut stream, &reply).await;
            return;
        };
        if let Err(Fatal(refusal)) = self.read_loop(&mut stream, actor).await {
            self.last_word(&mut stream, &refusal.into_reply()).await;
        }
        let _ = self.owner.send(Command::Unregister(self.conn)).await;
        debug!("control connection {} closed", self.conn);
        drop(self.permit);
    }

    async fn read_loop(&self, stream: &mut UnixStream, actor: Actor) -> Result<(), Fatal> {
        let mut buf: Vec<u8> = Vec::new();
        let mut fds: VecDeque<Option<OwnedFd>> = VecDeque::new();
        let mut connection = Connection::default();
        // When the last request ended, and when the line under way began.
        let mut last_request = Instant::now();
        let mut line_began: Option<Instant> = None;
        loop {
            let received = loop {
                match self
                    .wait_readable(stream, &connection, last_request, line_began)
                    .await?
                {
                    Readiness::Readable => {}
                    Readiness::Closed => return Ok(()),
                    // A registered worker idle for a while: still there, its deadline restarts.
                    Readiness::StillHolding => {
                        last_request = Instant::now();
                        continue;
                    }
                }
                let read = stream.try_io(Interest::READABLE, || {
                    CHUNK.with_borrow_mut(|chunk| {
                        let received = fdpass::recv_with_fds(stream, chunk)?;
                        buf.extend_from_slice(&chunk[..received.len]);
                        Ok(received)
                    })
                });
                match read {
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
            let mut start = 0;
            while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + len];
                start += len + 1;
                last_request = Instant::now();
                line_began = None;
                if let Some(reply) = self
                    .handle_line(stream, line, actor, &mut fds, &mut connection)
                    .await?
                {
                    self.reply(stream, &reply, &connection).await?;
                }
            }
            buf.drain(..start);
            if buf.is_empty() {
                line_began = None;
            } else if line_began.is_none() {
                line_began = Some(Instant::now());
            }
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

    /// The process a registration stands for: the registrant itself, or the process it names
    /// in `pid` when that is its descendant with the same uid (`reuseport spawn` registers the
    /// server it starts). The daemon then watches that process (stopped or gone) and `status`
    /// shows it. Any other pid is refused: a worker cannot pass for an unrelated process.
    fn serving_process(&self, pid: Option<u32>) -> Result<Peer, Refusal> {
        let peer = self.peer;
        match pid {
            None => Ok(peer),
            Some(pid) if pid == peer.pid => Ok(peer),
            Some(pid) => match reuseport_steer::procs::may_name(peer.pid, peer.uid, pid) {
                Ok(true) => Ok(Peer { pid, ..peer }),
                Ok(false) | Err(_) => Err(Refusal::new(
                    ErrorCode::ForeignPid,
                    format!(
                        "pid {pid} is neither the registering process ({}) nor one of its \
                         descendants with uid {}: name your own pid, or a child process's",
                        peer.pid, peer.uid
                    ),
                )),
            },
        }
    }

    /// Writes a reply. A connection holding no worker must read it within the idle deadline:
    /// a client that never reads its replies cannot keep one waiting in the daemon forever.
    async fn reply(
        &self,
        stream: &mut UnixStream,
        reply: &Reply,
        connection: &Connection,
    ) -> Result<(), Fatal> {
        let written = if connection.registered {
            write_reply(stream, reply).await
        } else {
            tokio::time::timeout(self.deadlines.idle, write_reply(stream, reply))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        };
        written.map_err(|e| {
            fatal(
                ErrorCode::Io,
                format!("could not write the reply ({e}): read the reply of every request"),
            )
        })
    }

    /// Writes a reply with a descriptor attached to its first byte (SCM_RIGHTS). Only a
    /// registered worker asks for one, so no deadline applies.
    async fn reply_with_fd(
        &self,
        stream: &mut UnixStream,
        reply: &Reply,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Fatal> {
        let mut line = serde_json::to_vec(reply)
            .map_err(|e| fatal(ErrorCode::Io, format!("could not write the reply ({e})")))?;
        line.push(b'\n');
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let broken = |e: std::io::Error| {
            fatal(
                ErrorCode::Io,
                format!("could not write the reply ({e}): read the reply of every request"),
            )
        };
        let sent = loop {
            stream.writable().await.map_err(broken)?;
            match stream.try_io(Interest::WRITABLE, || {
                fdpass::send_with_fds(&*stream, &line, &[raw])
            }) {
                Ok(sent) => break sent,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(broken(e)),
            }
        };
        stream.write_all(&line[sent..]).await.map_err(broken)
    }

    /// The error line before the daemon closes a connection, if the client takes it in time
    /// (at most a second: its buffer may be full of replies it never read).
    async fn last_word(&self, stream: &mut UnixStream, reply: &Reply) {
        let wait = self.deadlines.line.min(Duration::from_secs(1));
        let _ = tokio::time::timeout(wait, write_reply(stream, reply)).await;
    }

    /// Waits until the connection has something to read, within the deadline that applies to
    /// it: the line deadline while part of a line is in, else the idle deadline. A connection
    /// that holds a worker has neither: it sends `load` lines when it likes, or nothing.
    async fn wait_readable(
        &self,
        stream: &UnixStream,
        connection: &Connection,
        last_request: Instant,
        line_began: Option<Instant>,
    ) -> Result<Readiness, Fatal> {
        let Deadlines { line, idle } = self.deadlines;
        let (at, partial) = match line_began {
            Some(began) if !connection.registered => (began + line, true),
            _ => (last_request + idle, false),
        };
        match tokio::time::timeout_at(at.into(), stream.readable()).await {
            Ok(Ok(())) => Ok(Readiness::Readable),
            Ok(Err(_)) => Ok(Readiness::Closed),
            Err(_) if partial => Err(fatal(
                ErrorCode::LineTimeout,
                format!(
                    "part of a request line waited {} ms for the rest: send each request whole, \
                     ending with \\n (the daemon allows --control-line-ms {})",
                    line.as_millis(),
                    line.as_millis()
                ),
            )),
            Err(_) => {
                let conn = self.conn;
                if connection.registered && self.owner.call(move |r| r.holds(conn)).await? {
                    return Ok(Readiness::StillHolding);
                }
                Err(fatal(
                    ErrorCode::IdleTimeout,
                    format!(
                        "no request in {} ms on a connection that holds no worker: send requests \
                         at once, connect again when you have one, or keep the connection of a \
                         registered worker (the daemon allows --control-idle-ms {})",
                        idle.as_millis(),
                        idle.as_millis()
                    ),
                ))
            }
        }
    }

    /// Carries out one request; `None` for requests that get no reply.
    async fn handle_line(
        &self,
        stream: &mut UnixStream,
        line: &[u8],
        actor: Actor,
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
            Request::Register { name, weight, pid } => {
                let socket = match fds.pop_front() {
                    Some(Some(socket)) => socket,
                    Some(None) => {
                        return Ok(Some(Refusal::from(Error::UnsupportedSocket).into_reply()))
                    }
                    None => {
                        return Err(fatal(
                            ErrorCode::FdMissing,
                            "register needs the listening socket attached (SCM_RIGHTS) to the \
                             line",
                        ))
                    }
                };
                // Inspected once, here, off the owner's thread; the owner routes and inserts.
                let inspected = SocketInfo::of(std::os::fd::AsFd::as_fd(&socket))
                    .and_then(|info| info.check_joinable().map(|()| info));
                let named = name.as_deref().map_or(Ok(()), names::check);
                let serving = self.serving_process(pid);
                match (named, serving, inspected) {
                    (Err(why), _, _) => Err(Refusal::new(ErrorCode::BadName, why)),
                    (_, Err(refusal), _) => Err(refusal),
                    (_, _, Err(e)) => Err(e.into()),
                    (Ok(()), Ok(peer), Ok(info)) => {
                        let worker = NewWorker {
                            conn: self.conn,
                            peer,
                            socket,
                            info,
                            name,
                            weight,
                            load: connection.load.clone(),
                            process: None,
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
            Request::Counters { slot } => {
                let map = match new_worker_map() {
                    Ok(map) => map,
                    Err(refusal) => return Ok(Some(refusal.into_reply())),
                };
                let conn = self.conn;
                let theirs = map.clone();
                match self
                    .owner
                    .call(move |r| r.give_counters(conn, slot, theirs))
                    .await?
                {
                    Ok(slot) => {
                        let reply = Reply {
                            slot: Some(slot),
                            counters: Some(CountersLayout::CURRENT),
                            ..Reply::ok()
                        };
                        self.reply_with_fd(stream, &reply, map.fd()).await?;
                        return Ok(None);
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Request::Status => self.owner.call(|r| r.status()).await.map(|groups| {
                Ok(Reply {
                    groups: Some(groups),
                    ..Reply::ok()
                })
            })?,
            Request::PolicyGet { group } => self
                .owner
                .call(move |r| {
                    let (listen, policy) = r.policy(group.as_ref())?;
                    Ok((listen, policy, r.policy_program(group.as_ref())?))
                })
                .await?
                .map(|(group, policy, program)| Reply {
                    group: Some(group),
                    policy: Some(policy),
                    program,
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
                Lenient::Known(policy) => match actor.may_set("set the policy") {
                    Err(refusal) => Err(refusal),
                    Ok(()) => self
                        .owner
                        .call(move |r| r.set_policy(policy, group.as_ref()))
                        .await?
                        .map(|()| Reply::ok()),
                },
            },
            Request::Weight {
                slot,
                weight,
                group,
            } => self
                .owner
                .call(move |r| r.set_weight(actor, slot, weight, group.as_ref()))
                .await?
                .map(|()| Reply::ok()),
            Request::Drain { slot, group, close } => self
                .owner
                .call(move |r| {
                    if close.unwrap_or(false) {
                        r.drain_and_close(actor, slot, group.as_ref())
                    } else {
                        r.set_state(actor, slot, SlotState::Draining, group.as_ref())
                    }
                })
                .await?
                .map(|()| Reply::ok()),
            Request::Reload => match actor.may_set("reload the configuration") {
                Err(refusal) => Err(refusal),
                Ok(()) => self.reloader.reload().await.map(|changes| Reply {
                    changes: Some(changes),
                    ..Reply::ok()
                }),
            },
            Request::Adopt { pid } => match actor.may_set("adopt a running server's listeners") {
                Err(refusal) => Err(refusal),
                Ok(()) => self.adoption.adopt(pid).await.map(|adopted| Reply {
                    adopted: Some(adopted.slots),
                    changes: Some(adopted.skipped),
                    ..Reply::ok()
                }),
            },
            Request::Trace { group, count } => {
                match self
                    .owner
                    .call(move |r| r.trace_hub(group.as_ref()))
                    .await?
                {
                    Err(refusal) => Err(refusal),
                    Ok((group, hub)) => {
                        let served = super::trace::serve(stream, group, &hub, count).await;
                        return served.map(Some).map_err(|e| {
                            fatal(ErrorCode::Io, format!("the trace stream ended: {e}"))
                        });
                    }
                }
            }
            Request::PolicyLoad { path, group } => match actor.may_set("load a policy program") {
                Err(refusal) => Err(refusal),
                Ok(()) => {
                    let uid = self.peer.uid;
                    self.owner
                        .call(move |r| r.load_policy_program(&path, uid, group.as_ref()))
                        .await?
                        .map(|(group, program)| Reply {
                            group: Some(group),
                            program: Some(program),
                            ..Reply::ok()
                        })
                }
            },
            Request::Undrain { slot, group } => self
                .owner
                .call(move |r| r.set_state(actor, slot, SlotState::Active, group.as_ref()))
                .await?
                .map(|()| Reply::ok()),
        };
        Ok(Some(reply.unwrap_or_else(Refusal::into_reply)))
    }
}

/// What waiting for the connection came to.
enum Readiness {
    Readable,
    Closed,
    /// Its idle deadline passed, but it holds a worker: it stays.
    StillHolding,
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
