//! A served SO_REUSEPORT group: listeners on one port, drained by accept threads that count
//! which listener got each connection. The counts are the ground truth of a test or a bench
//! cell: what the kernel delivered, whatever steered it.
//!
//! Two ways to answer, for two kinds of client ([`crate::clients::Exchange`]):
//! [`Answer::Index`] writes one byte, the listener's index, so the client learns who answered;
//! [`Answer::Hold`] writes nothing and keeps the connection open a while, for clients that only
//! measure the handshake and reset.

use std::{
    collections::VecDeque,
    io::{self, Write},
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context};
use reuseport_steer::Family;
use socket2::{SockRef, Socket};

use crate::wait;

/// How long an accept thread waits in epoll before it checks whether to stop, and, with
/// [`PoolOptions::sweep`], how often it tries every listener it serves.
pub const POLL: Duration = Duration::from_millis(1);
/// The epoll wait of a pool without sweep: only stopping depends on it.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Accepted sockets each accept thread of an [`Answer::Hold`] pool keeps open before closing
/// the oldest. Its clients reset their connections right after connecting; closing only once
/// that RST has arrived sends nothing. Closing earlier sends a FIN (leaving FIN_WAIT/TIME_WAIT
/// state that a reused client port can run into, costing a 1 s SYN retransmit) and makes the
/// late RST a stray segment that reaches the listener lookup and runs the program again.
pub const HOLD: usize = 512;

/// What an accept thread does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Writes one byte, the listener's index, and closes (at most 256 listeners).
    Index,
    /// Writes nothing and keeps the newest [`HOLD`] connections open.
    Hold,
}

/// How a pool is served.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Accept threads, each serving every n-th listener; `None`: one per listener.
    pub acceptors: Option<usize>,
    pub answer: Answer,
    /// Tries every listener every [`POLL`], not only those epoll reports ready: a connection
    /// the kernel migrated from a closed listener does not wake epoll on its new listener.
    /// Costs a system call per listener and millisecond, so a benchmark that closes no
    /// listener goes without.
    pub sweep: bool,
}

impl Default for PoolOptions {
    /// What the tests use: one accept thread per listener, answering its index, sweeping.
    fn default() -> Self {
        Self {
            acceptors: None,
            answer: Answer::Index,
            sweep: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Serving,
    Paused,
    Closed,
}

/// What an accept thread knows of one listener.
struct Listener {
    fd: RawFd,
    /// Held while accepting on `fd`: [`Pool::pause`] and [`Pool::close`] take it, so once they
    /// return no accept thread touches the listener again.
    state: Mutex<State>,
    accepted: AtomicU64,
}

/// What the accept threads share with the pool's owner.
struct Shared {
    listeners: Vec<Listener>,
    /// Anything an accept thread could not do (never expected).
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn error(&self, msg: String) {
        lock(&self.errors).push(msg);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Listeners of one SO_REUSEPORT group with their accept threads.
pub struct Pool {
    addr: SocketAddr,
    /// The listeners themselves: `None` once closed.
    sockets: Vec<Option<Socket>>,
    shared: Arc<Shared>,
    /// Each accept thread's epoll set, by listener (several listeners share one).
    epolls: Vec<Arc<Epoll>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `n` listeners (n <= 256: the index must fit the answer byte) on a free loopback port,
    /// served as the tests want it ([`PoolOptions::default`]).
    pub fn bind(family: Family, n: usize) -> io::Result<Self> {
        Self::bind_with(family, n, PoolOptions::default())
    }

    /// `n` listeners on a free loopback port, served as `options` say.
    pub fn bind_with(family: Family, n: usize, options: PoolOptions) -> io::Result<Self> {
        let (addr, sockets) = super::group(family, n)?;
        Self::serve(addr, sockets, options)
    }

    /// Serves already listening sockets of one group; socket `i` is listener `i`.
    pub fn serve(addr: SocketAddr, sockets: Vec<Socket>, options: PoolOptions) -> io::Result<Self> {
        if sockets.is_empty() {
            return Err(io::Error::other("a pool needs at least one listener"));
        }
        if options.answer == Answer::Index && sockets.len() > 256 {
            return Err(io::Error::other(
                "a pool answers with one byte: 256 listeners at most",
            ));
        }
        let acceptors = options
            .acceptors
            .unwrap_or(sockets.len())
            .clamp(1, sockets.len());
        let mut listeners = Vec::with_capacity(sockets.len());
        for socket in &sockets {
            socket.set_nonblocking(true)?;
            listeners.push(Listener {
                fd: socket.as_raw_fd(),
                state: Mutex::new(State::Serving),
                accepted: AtomicU64::new(0),
            });
        }
        let shared = Arc::new(Shared {
            listeners,
            errors: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let mut pool = Self {
            addr,
            sockets: sockets.into_iter().map(Some).collect(),
            shared,
            epolls: Vec::new(),
            threads: Vec::new(),
        };
        let mut epolls = Vec::with_capacity(acceptors);
        for a in 0..acceptors {
            let share: Vec<usize> = (a..pool.sockets.len()).step_by(acceptors).collect();
            let epoll = Arc::new(Epoll::new()?);
            for &i in &share {
                epoll.add(pool.shared.listeners[i].fd, i as u64)?;
            }
            let (shared, thread_epoll) = (pool.shared.clone(), epoll.clone());
            let thread = thread::Builder::new()
                .name(format!("accept-{a}"))
                .spawn(move || accept_loop(&share, &thread_epoll, &shared, options))?;
            pool.threads.push(thread);
            epolls.push(epoll);
        }
        pool.epolls = (0..pool.sockets.len())
            .map(|i| epolls[i % acceptors].clone())
            .collect();
        Ok(pool)
    }

    /// The group's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of listeners, closed ones included.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Listener `i`, to hand to the group. Fails once it was closed.
    pub fn socket(&self, i: usize) -> io::Result<&Socket> {
        self.sockets
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::other(format!("listener {i} is closed or unknown")))
    }

    /// The open listeners, in order.
    pub fn sockets(&self) -> Vec<&Socket> {
        self.sockets.iter().flatten().collect()
    }

    /// Stops accepting on listener `i` but keeps it open: connections sent to it queue up.
    pub fn pause(&mut self, i: usize) {
        self.set_state(i, State::Paused);
    }

    /// Stops accepting on listener `i` and closes it (its last fd), so the kernel takes it out
    /// of the group and the socket array. Queued connections migrate or reset.
    pub fn close(&mut self, i: usize) -> io::Result<()> {
        if self.sockets.get(i).is_none_or(Option::is_none) {
            return Err(io::Error::other(format!(
                "listener {i} is closed already or unknown"
            )));
        }
        self.set_state(i, State::Closed);
        // No accept thread uses the fd any more: closing it cannot race with an accept.
        self.sockets[i] = None;
        Ok(())
    }

    fn set_state(&mut self, i: usize, new: State) {
        let Some(listener) = self.shared.listeners.get(i) else {
            return;
        };
        let mut state = lock(&listener.state);
        if *state == State::Serving {
            // Level-triggered: a listener nobody accepts on would wake its thread forever.
            let _ = self.epolls[i].delete(listener.fd);
        }
        *state = new;
    }

    /// Connections accepted so far, per listener.
    pub fn accepted(&self) -> Vec<u64> {
        self.shared
            .listeners
            .iter()
            .map(|l| l.accepted.load(Ordering::Acquire))
            .collect()
    }

    /// Connections accepted so far in all.
    pub fn accepted_total(&self) -> u64 {
        self.accepted().iter().sum()
    }

    /// What went wrong in the accept threads (expected empty).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Waits until `total` connections were accepted in all; fails after `limit`, or as soon
    /// as an accept thread met an error.
    pub fn wait_accepted(&self, total: u64, limit: Duration) -> anyhow::Result<()> {
        let mut accepted = 0;
        let waited = wait::until_every(Duration::from_micros(200), limit, "accepting", || {
            accepted = self.accepted_total();
            accepted >= total || !self.errors().is_empty()
        });
        let errors = self.errors();
        if !errors.is_empty() {
            bail!("accepting failed ({accepted} of {total} connections accepted): {errors:?}");
        }
        waited.with_context(|| format!("only {accepted} of {total} connections accepted"))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Accepts on the listeners of `share` until told to stop.
fn accept_loop(share: &[usize], epoll: &Epoll, shared: &Shared, options: PoolOptions) {
    let wait = if options.sweep { POLL } else { IDLE_WAIT };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; share.len().min(256)];
    let mut held = VecDeque::new();
    while !shared.stop.load(Ordering::Acquire) {
        let ready = match epoll.wait(&mut events, wait) {
            Ok(n) => n,
            Err(e) => {
                shared.error(format!("epoll_wait: {e}"));
                thread::sleep(wait);
                continue;
            }
        };
        if options.sweep {
            for &i in share {
                drain(i, shared, options.answer, &mut held);
            }
        } else {
            for event in &events[..ready] {
                drain(event.u64 as usize, shared, options.answer, &mut held);
            }
        }
    }
}

/// Accepts on listener `index` until its queue is empty, answering each connection.
fn drain(index: usize, shared: &Shared, answer: Answer, held: &mut VecDeque<Socket>) {
    let listener = &shared.listeners[index];
    let state = lock(&listener.state);
    if *state != State::Serving {
        return;
    }
    // SAFETY: the fd stays open while `state` is Serving and its lock is held: the pool closes
    // it only after setting Closed under that lock.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.fd) };
    let socket = SockRef::from(&fd);
    loop {
        match socket.accept() {
            Ok((conn, _)) => {
                listener.accepted.fetch_add(1, Ordering::AcqRel);
                match answer {
                    Answer::Index => {
                        if let Err(e) = (&conn).write_all(&[index as u8]) {
                            shared.error(format!("listener {index}: answering: {e}"));
                        }
                    }
                    Answer::Hold => {
                        if held.len() == HOLD {
                            held.pop_front();
                        }
                        held.push_back(conn);
                    }
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    shared.error(format!("listener {index}: accept: {e}"));
                    return;
                }
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

    fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event argument.
        let r = unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fills `events` with the ready descriptors and returns how many (0 on timeout or signal).
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis() as i32,
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
