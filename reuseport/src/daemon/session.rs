//! One control connection: reads request lines (with any descriptors attached), answers each,
//! and unregisters the connection's workers when it closes. A client that breaks the protocol
//! gets an error line and a closed connection; nothing it sends can take the daemon down.

use std::{
    collections::VecDeque,
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use log::{debug, warn};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::UnixStream,
};

use super::registry::{ConnId, Peer, Refusal, Registry};
use reuseport_steer::SlotState;
use reuseport_worker::{
    fdpass,
    protocol::{Reply, Request, MAX_LINE},
};

/// What a connection may do, decided once from its credentials.
pub struct Session {
    pub conn: ConnId,
    pub peer: Peer,
    pub allowed: bool,
    pub registry: Arc<Mutex<Registry>>,
}

/// Why the daemon closes a connection: said to the client as an error reply first.
struct Fatal(Refusal);

fn fatal(code: &'static str, message: impl Into<String>) -> Fatal {
    Fatal(Refusal::new(code, message))
}

impl Session {
    pub async fn serve(self, mut stream: UnixStream) {
        if !self.allowed {
            let reply = Reply::error(
                "forbidden",
                format!(
                    "uid {} may not use this daemon: run as the daemon's user, or start it with \
                     --allow-uid {}",
                    self.peer.uid, self.peer.uid
                ),
            );
            let _ = write_reply(&mut stream, &reply).await;
            return;
        }
        if let Err(Fatal(Refusal { code, message })) = self.read_loop(&mut stream).await {
            let _ = write_reply(&mut stream, &Reply::error(code, message)).await;
        }
        self.with_registry(|r| r.unregister(self.conn));
        debug!("control connection {} closed", self.conn);
    }

    async fn read_loop(&self, stream: &mut UnixStream) -> Result<(), Fatal> {
        let mut buf: Vec<u8> = Vec::new();
        let mut fds: VecDeque<OwnedFd> = VecDeque::new();
        let mut chunk = vec![0u8; 16 * 1024];
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
                    "too_many_fds",
                    "send exactly one descriptor, with the register line",
                ));
            }
            fds.extend(received.fds);
            if received.len == 0 {
                if buf.is_empty() {
                    return Ok(());
                }
                return Err(fatal(
                    "truncated",
                    "the connection ended in the middle of a line: end every request with \\n",
                ));
            }
            buf.extend_from_slice(&chunk[..received.len]);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if let Some(reply) = self.handle_line(&line[..end], &mut fds)? {
                    write_reply(stream, &reply)
                        .await
                        .map_err(|_| fatal("io", "could not write the reply"))?;
                }
            }
            if buf.len() >= MAX_LINE {
                return Err(fatal(
                    "too_large",
                    format!("a request line is limited to {MAX_LINE} bytes"),
                ));
            }
            if buf.is_empty() && !fds.is_empty() {
                // Descriptors that came with something other than a register line.
                return Err(fatal(
                    "unexpected_fd",
                    "a descriptor may only come with a register request",
                ));
            }
        }
    }

    /// Carries out one request; `None` for requests that get no reply.
    fn handle_line(
        &self,
        line: &[u8],
        fds: &mut VecDeque<OwnedFd>,
    ) -> Result<Option<Reply>, Fatal> {
        let request: Request = serde_json::from_slice(line).map_err(|e| {
            fatal(
                "bad_request",
                format!("not a valid request line ({e}); see docs/protocol.md"),
            )
        })?;
        let reply = match request {
            Request::Register { name, weight, .. } => {
                let Some(fd) = fds.pop_front() else {
                    return Err(fatal(
                        "fd_missing",
                        "register needs the listening socket attached (SCM_RIGHTS) to the line",
                    ));
                };
                let conn = self.conn;
                let peer = self.peer;
                self.with_registry(|r| r.register(conn, peer, fd, name, weight))
                    .map(|(group, slot)| Reply {
                        group: Some(group),
                        slot: Some(slot),
                        ..Reply::ok()
                    })
            }
            Request::Load { inflight } => {
                self.with_registry(|r| r.report_load(self.conn, inflight));
                return Ok(None);
            }
            Request::Status => Ok(Reply {
                groups: Some(self.with_registry(|r| r.status())),
                ..Reply::ok()
            }),
            Request::PolicyGet { group } => {
                self.with_registry(|r| r.policy(group.as_deref()))
                    .map(|(group, policy)| Reply {
                        group: Some(group),
                        policy: Some(policy.to_string()),
                        ..Reply::ok()
                    })
            }
            Request::PolicySet { policy, group } => self
                .with_registry(|r| r.set_policy(&policy, group.as_deref()))
                .map(|()| Reply::ok()),
            Request::Weight {
                slot,
                weight,
                group,
            } => self
                .with_registry(|r| r.set_weight(slot, weight, group.as_deref()))
                .map(|()| Reply::ok()),
            Request::Drain { slot, group, close } => self
                .with_registry(|r| {
                    if close.unwrap_or(false) {
                        r.drain_and_close(slot, group.as_deref())
                    } else {
                        r.set_state(slot, SlotState::Draining, group.as_deref())
                    }
                })
                .map(|()| Reply::ok()),
            Request::Undrain { slot, group } => self
                .with_registry(|r| r.set_state(slot, SlotState::Active, group.as_deref()))
                .map(|()| Reply::ok()),
        };
        Ok(Some(reply.unwrap_or_else(|Refusal { code, message }| {
            Reply::error(code, message)
        })))
    }

    fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut guard = match self.registry.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                warn!("registry lock poisoned; continuing with its state");
                poisoned.into_inner()
            }
        };
        f(&mut guard)
    }
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}
