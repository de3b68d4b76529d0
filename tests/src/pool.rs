//! A served SO_REUSEPORT group: one accept thread per listener that answers every connection
//! with one byte, the listener's index, and closes it. The clients learn from that byte which
//! listener the kernel (and the program) chose.

use std::{
    io::{self, Write},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use reuseport_steer::Family;
use socket2::Socket;

use crate::listeners;

/// How long an idle accept thread sleeps between two non-blocking accepts. Polling, because a
/// connection migrated from a closed listener does not wake epoll on its new listener.
pub const POLL: Duration = Duration::from_millis(1);

/// What the accept threads share with the test.
#[derive(Default)]
struct Shared {
    /// Connections accepted, per listener.
    accepted: Vec<AtomicU64>,
    /// Anything an accept thread could not do (never expected).
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, msg: String) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(msg);
        }
    }
}

/// One listener and its accept thread.
struct Server {
    socket: Option<Arc<Socket>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops the accept thread and waits for it; the listener stays open.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Listeners of one SO_REUSEPORT group, each served by its own accept thread.
pub struct Pool {
    addr: SocketAddr,
    servers: Vec<Server>,
    shared: Arc<Shared>,
}

impl Pool {
    /// `n` listeners (n <= 256: the index must fit the answer byte) on a free loopback port.
    pub fn bind(family: Family, n: usize) -> io::Result<Self> {
        let (addr, sockets) = listeners::group(family, n)?;
        Self::serve(addr, sockets)
    }

    /// Serves already listening sockets of one group; socket `i` answers `i`.
    pub fn serve(addr: SocketAddr, sockets: Vec<Socket>) -> io::Result<Self> {
        if sockets.len() > 256 {
            return Err(io::Error::other(
                "a pool answers with one byte: 256 listeners at most",
            ));
        }
        let shared = Arc::new(Shared {
            accepted: sockets.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::default(),
        });
        let mut servers = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let socket = Arc::new(socket);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = thread::Builder::new()
                .name(format!("accept-{index}"))
                .spawn({
                    let (socket, stop, shared) = (socket.clone(), stop.clone(), shared.clone());
                    move || accept_loop(index, &socket, &stop, &shared)
                })?;
            servers.push(Server {
                socket: Some(socket),
                stop,
                thread: Some(thread),
            });
        }
        Ok(Self {
            addr,
            servers,
            shared,
        })
    }

    /// The group's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of listeners, closed ones included.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Listener `i`, to hand to the group. Fails once it was closed.
    pub fn socket(&self, i: usize) -> io::Result<&Socket> {
        self.servers
            .get(i)
            .and_then(|s| s.socket.as_deref())
            .ok_or_else(|| io::Error::other(format!("listener {i} is closed or unknown")))
    }

    /// Stops accepting on listener `i` but keeps it open: connections sent to it queue up.
    pub fn pause(&mut self, i: usize) {
        if let Some(server) = self.servers.get_mut(i) {
            server.stop();
        }
    }

    /// Stops listener `i`'s accept thread and closes the listener (its last fd), so the kernel
    /// takes it out of the group and the socket array. Queued connections migrate or reset.
    pub fn close(&mut self, i: usize) -> io::Result<()> {
        let server = self
            .servers
            .get_mut(i)
            .ok_or_else(|| io::Error::other(format!("no listener {i}")))?;
        server.stop();
        let socket = server
            .socket
            .take()
            .ok_or_else(|| io::Error::other(format!("listener {i} is closed already")))?;
        // The accept thread is gone, so this is the last reference: dropping it closes the fd.
        match Arc::into_inner(socket) {
            Some(socket) => {
                drop(socket);
                Ok(())
            }
            None => Err(io::Error::other(format!("listener {i} is still shared"))),
        }
    }

    /// Connections accepted so far, per listener.
    pub fn accepted(&self) -> Vec<u64> {
        self.shared
            .accepted
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// What went wrong in the accept threads (expected empty).
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.stop.store(true, Ordering::Release);
        }
        for server in &mut self.servers {
            if let Some(thread) = server.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Accepts until told to stop, answering each connection with `index`.
fn accept_loop(index: usize, socket: &Socket, stop: &AtomicBool, shared: &Shared) {
    while !stop.load(Ordering::Acquire) {
        match socket.accept() {
            Ok((conn, _)) => {
                shared.accepted[index].fetch_add(1, Ordering::AcqRel);
                if let Err(e) = (&conn).write_all(&[index as u8]) {
                    shared.error(format!("listener {index}: answering: {e}"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.error(format!("listener {index}: accept: {e}"));
                thread::sleep(POLL);
            }
        }
    }
}
