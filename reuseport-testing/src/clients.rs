//! The client side of a [`crate::listeners::Pool`]: threads opening connections one after
//! another, bounded in count and in time, each learning which listener answered
//! ([`Exchange::Index`]) or only completing the handshake ([`Exchange::Reset`]). Every failure
//! is counted and kept, never retried or ignored, and every socket has a timeout.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Read},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::wait;

/// Connect and read timeout of every client socket.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection did not come back with a listener's index (or did not connect).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// ECONNREFUSED: no listener took the SYN (or the program dropped it).
    Refused,
    /// ECONNRESET: the connection was accepted by the kernel, then reset.
    Reset,
    /// No answer within [`TIMEOUT`].
    Timeout,
    /// The server closed without answering.
    Closed,
    /// The answer is not the index of a listener of the pool.
    BadIndex(u8),
    Other(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            // A blocking connect that ran out of SO_SNDTIMEO.
            return Self::Timeout;
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset => Self::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Timeout,
            io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Other(e.to_string()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(e) => f.write_str(e),
            other => write!(f, "{other:?}"),
        }
    }
}

/// What a client does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Reads the byte an [`crate::listeners::Answer::Index`] pool writes: the index of the
    /// listener, which must be below `listeners`.
    Index { listeners: usize },
    /// Nothing: the handshake is all. Closed with SO_LINGER 0 (an RST): no TIME_WAIT is left
    /// behind, so hundreds of thousands of connections to one address never run out of ports,
    /// and a later connection may reuse a 4-tuple without meeting an old one.
    Reset,
}

/// Where connections come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePorts {
    /// The kernel picks an ephemeral port per connect.
    Kernel,
    /// Connection i binds port `first + i` (wrapping below the ephemeral range), so the first
    /// `SourcePorts::distinct_span(first)` connections have distinct 4-tuples.
    Distinct { first: u16 },
}

impl SourcePorts {
    /// Ports start of the kernel's default ephemeral range (where listeners get their port).
    pub const EPHEMERAL_START: u16 = 32768;

    /// How many distinct source ports `Distinct { first }` walks through before wrapping.
    pub fn distinct_span(first: u16) -> u64 {
        u64::from(Self::EPHEMERAL_START.saturating_sub(first))
    }

    fn port(self, connection: u64) -> Option<u16> {
        match self {
            Self::Kernel => None,
            Self::Distinct { first } => {
                let span = Self::distinct_span(first).max(1);
                Some(first + (connection % span) as u16)
            }
        }
    }
}

/// Opens one connection to `addr` (from `source_port` of the same address when given) and does
/// `exchange`; returns the index the listener answered, if it was asked for.
pub fn connect(
    addr: SocketAddr,
    exchange: Exchange,
    source_port: Option<u16>,
) -> Result<Option<usize>, Failure> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(port) = source_port {
        socket.bind(&SocketAddr::new(addr.ip(), port).into())?;
    }
    // Bounds the blocking connect (one system call, unlike a non-blocking connect and poll).
    socket.set_write_timeout(Some(TIMEOUT))?;
    socket.connect(&SockAddr::from(addr))?;
    match exchange {
        Exchange::Index { listeners } => {
            socket.set_read_timeout(Some(TIMEOUT))?;
            let mut byte = [0u8; 1];
            (&socket).read_exact(&mut byte)?;
            let index = usize::from(byte[0]);
            if index >= listeners {
                return Err(Failure::BadIndex(byte[0]));
            }
            Ok(Some(index))
        }
        Exchange::Reset => {
            socket.set_linger(Some(Duration::ZERO))?;
            Ok(None)
        }
    }
}

/// Opens one connection to `addr` and returns the index the listener answered (`< listeners`).
pub fn connect_once(addr: SocketAddr, listeners: usize) -> Result<usize, Failure> {
    connect(addr, Exchange::Index { listeners }, None)?.ok_or(Failure::Closed)
}

/// What a batch of connections saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Connections answered, per listener index (with [`Exchange::Index`]).
    pub counts: Vec<u64>,
    /// Connections tried.
    pub attempted: u64,
    /// Connections that got an answer (or, with [`Exchange::Reset`], connected).
    pub connected: u64,
    /// Every failed connection.
    pub failures: Vec<Failure>,
    /// The load's time limit cut it short.
    pub timed_out: bool,
    /// From the start of the load to its end.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn new(listeners: usize) -> Self {
        Self {
            counts: vec![0; listeners],
            ..Self::default()
        }
    }

    /// Connections that got an answer.
    pub fn served(&self) -> u64 {
        self.connected
    }

    /// Counts one connection's result.
    pub fn record(&mut self, result: Result<Option<usize>, Failure>) {
        self.attempted += 1;
        match result {
            Ok(index) => {
                self.connected += 1;
                if let Some(i) = index {
                    self.counts[i] += 1;
                }
            }
            Err(f) => self.failures.push(f),
        }
    }

    /// Failures by kind.
    pub fn failure_kinds(&self) -> BTreeMap<Failure, usize> {
        let mut kinds = BTreeMap::new();
        for f in &self.failures {
            *kinds.entry(f.clone()).or_default() += 1;
        }
        kinds
    }

    /// True when every attempt was answered.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.served() == self.attempted
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempted {}, served {}, per listener {:?}, failures {:?}",
            self.attempted,
            self.served(),
            self.counts,
            self.failure_kinds()
        )
    }
}

/// A bounded client load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: u64,
    pub threads: usize,
    pub exchange: Exchange,
    pub source_ports: SourcePorts,
    /// Threads stop starting connections after this long.
    pub time_limit: Duration,
}

impl Load {
    /// `threads` threads making `per_thread` connections each that learn which of `listeners`
    /// answered, from kernel-chosen ports: what the tests run.
    pub fn answered(listeners: usize, threads: usize, per_thread: u64) -> Self {
        let threads = threads.max(1);
        Self {
            connections: threads as u64 * per_thread,
            threads,
            exchange: Exchange::Index { listeners },
            source_ports: SourcePorts::Kernel,
            time_limit: Duration::from_secs(600),
        }
    }

    /// Starts the load in the background. Connection i goes to thread i % threads.
    pub fn start(self, addr: SocketAddr) -> Running {
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let driver = thread::spawn(move || {
            let start = Instant::now();
            let mut total = Outcome::new(self.listeners());
            let results = spread(self.threads, self.connections, |i| {
                if start.elapsed() > self.time_limit {
                    return None;
                }
                let result = connect(addr, self.exchange, self.source_ports.port(i));
                counter.fetch_add(1, Ordering::AcqRel);
                Some(result)
            });
            for result in results {
                match result {
                    Some(r) => total.record(r),
                    None => total.timed_out = true,
                }
            }
            total.elapsed = start.elapsed();
            total
        });
        Running {
            driver,
            done,
            total: self.connections,
        }
    }

    /// Runs the load to completion.
    pub fn run(self, addr: SocketAddr) -> Outcome {
        self.start(addr).join()
    }

    fn listeners(&self) -> usize {
        match self.exchange {
            Exchange::Index { listeners } => listeners,
            Exchange::Reset => 0,
        }
    }
}

/// Runs `one(i)` for every i in `0..count` from `threads` threads, i on thread i % threads,
/// each thread in order; returns the results thread by thread. What every client driver of
/// the harness (these connections, the blocking HTTP load) runs on. A panicking `one` panics
/// the caller.
pub fn spread<T: Send>(threads: usize, count: u64, one: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = threads.max(1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let one = &one;
                scope.spawn(move || {
                    (t as u64..count)
                        .step_by(threads)
                        .map(one)
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// A load running in the background.
pub struct Running {
    driver: JoinHandle<Outcome>,
    done: Arc<AtomicU64>,
    total: u64,
}

impl Running {
    /// Connections finished so far (answered or failed).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Connections this load will try in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_finished(&self) -> bool {
        self.driver.is_finished()
    }

    /// Waits (at most `limit`) until `count` connections finished; returns whether they did.
    pub fn wait_for(&self, count: u64, limit: Duration) -> bool {
        let _ = wait::until_every(Duration::from_millis(1), limit, "connections", || {
            self.done() >= count || self.is_finished()
        });
        self.done() >= count
    }

    /// Waits for every thread and merges what they saw.
    pub fn join(self) -> Outcome {
        self.driver
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// `threads` client threads running `per_thread` connections each, in the background.
pub fn start(addr: SocketAddr, listeners: usize, threads: usize, per_thread: u64) -> Running {
    Load::answered(listeners, threads, per_thread).start(addr)
}

/// Runs such a load to completion.
pub fn run(addr: SocketAddr, listeners: usize, threads: usize, per_thread: u64) -> Outcome {
    start(addr, listeners, threads, per_thread).join()
}

/// `count` connections one after the other; the answers in order.
pub fn sequence(addr: SocketAddr, listeners: usize, count: usize) -> Vec<Result<usize, Failure>> {
    (0..count).map(|_| connect_once(addr, listeners)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ports_stay_below_the_ephemeral_range() {
        let ports = SourcePorts::Distinct { first: 32760 };
        let seen: Vec<_> = (0..10).filter_map(|i| ports.port(i)).collect();
        assert_eq!(
            seen,
            [32760, 32761, 32762, 32763, 32764, 32765, 32766, 32767, 32760, 32761]
        );
        assert_eq!(SourcePorts::Kernel.port(3), None);
    }
}
