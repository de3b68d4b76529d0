//! A SO_REUSEPORT group of TCP listeners on one loopback port, drained by accept threads that
//! count which listener got each connection.
//!
//! Accepting keeps the accept queues short (a full queue drops SYNs and stalls clients for a
//! retransmit second), and the per-listener counts are the ground truth for fairness: they are
//! what the kernel delivered, whatever steered it.

use std::{
    collections::VecDeque,
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog: the kernel caps it at net.core.somaxconn (4096 in a fresh namespace).
pub const BACKLOG: i32 = 4096;
/// How long an accept thread sleeps in epoll before it checks whether to stop.
const POLL_MS: i32 = 20;
/// Accepted sockets each accept thread keeps open before closing the oldest. Clients reset
/// their connections right after connecting; closing only once that RST has arrived sends
/// nothing. Closing earlier sends a FIN (leaving FIN_WAIT/TIME_WAIT state that a reused client
/// port can run into, costing a 1 s SYN retransmit) and makes the late RST a stray segment that
/// reaches the listener lookup and runs the program a second time.
const HOLD: usize = 512;

/// Listeners sharing one port, with their accept threads.
pub struct ListenerPool {
    listeners: Arc<Vec<Socket>>,
    addr: SocketAddr,
    counts: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<io::Result<()>>>,
}

impl ListenerPool {
    /// Binds `size` listeners to one free port of 127.0.0.1 and starts `acceptors` threads,
    /// each draining its share of the listeners.
    pub fn bind(size: usize, acceptors: usize) -> Result<Self> {
        if size == 0 || acceptors == 0 {
            bail!("a pool needs at least one listener and one accept thread");
        }
        let mut addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut listeners = Vec::with_capacity(size);
        for i in 0..size {
            let socket = listener(addr).with_context(|| format!("listener {i} on {addr}"))?;
            if addr.port() == 0 {
                addr = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| anyhow!("listener has no IP address"))?;
            }
            listeners.push(socket);
        }
        let listeners = Arc::new(listeners);
        let counts: Arc<Vec<AtomicU64>> = Arc::new((0..size).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let mut pool = Self {
            listeners,
            addr,
            counts,
            stop,
            acceptors: Vec::new(),
        };
        for a in 0..acceptors.min(size) {
            let share: Vec<usize> = (a..size).step_by(acceptors).collect();
            let (listeners, counts, stop) = (
                pool.listeners.clone(),
                pool.counts.clone(),
                pool.stop.clone(),
            );
            let handle = thread::Builder::new()
                .name(format!("accept-{a}"))
                .spawn(move || accept_loop(&listeners, &share, &counts, &stop))
                .context("spawning an accept thread")?;
            pool.acceptors.push(handle);
        }
        Ok(pool)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    pub fn listeners(&self) -> &[Socket] {
        &self.listeners
    }

    /// Connections accepted so far, per listener (listener i is slot i of the group).
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn accepted(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `total` connections were accepted in all; fails after `limit`, or when an
    /// accept thread died.
    pub fn wait_accepted(&self, total: u64, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let accepted = self.accepted();
            if accepted >= total {
                return Ok(());
            }
            if self.acceptors.iter().any(|h| h.is_finished()) {
                bail!("an accept thread stopped ({accepted} of {total} connections accepted)");
            }
            if start.elapsed() > limit {
                bail!("only {accepted} of {total} connections accepted after {limit:?}");
            }
            thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for ListenerPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.acceptors.drain(..) {
            // An accept error was already visible through wait_accepted.
            let _ = handle.join();
        }
    }
}

fn listener(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// Waits on the listeners of `share` with epoll and accepts (then closes) everything queued.
fn accept_loop(
    listeners: &[Socket],
    share: &[usize],
    counts: &[AtomicU64],
    stop: &AtomicBool,
) -> io::Result<()> {
    let epoll = Epoll::new()?;
    for &i in share {
        epoll.add(listeners[i].as_raw_fd(), i as u64)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; share.len().min(256)];
    let mut held = VecDeque::with_capacity(HOLD);
    while !stop.load(Ordering::Relaxed) {
        let ready = epoll.wait(&mut events, POLL_MS)?;
        for event in &events[..ready] {
            let index = event.u64 as usize;
            drain(&listeners[index], &counts[index], &mut held)?;
        }
    }
    Ok(())
}

/// Accepts until the queue is empty, counting, and keeps the newest accepted sockets open a
/// while (see [`HOLD`]).
fn drain(listener: &Socket, count: &AtomicU64, held: &mut VecDeque<Socket>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((socket, _)) => {
                count.fetch_add(1, Ordering::Relaxed);
                if held.len() == HOLD {
                    held.pop_front();
                }
                held.push_back(socket);
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(()),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => return Err(e),
            },
        }
    }
}

/// A level-triggered epoll set.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fills `events` with the ready descriptors and returns how many (0 on timeout or signal).
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        Ok(n as usize)
    }
}
