//! The client side: connections that learn which listener answered, sequentially or from
//! several threads at once. Every failure is counted and kept, never retried or ignored, and
//! every socket has a timeout so nothing hangs.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Read},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Connect and read timeout of every client socket.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection did not come back with a listener's index.
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
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset => Self::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Timeout,
            io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Other(e.to_string()),
        }
    }
}

/// Opens one connection to `addr` and returns the index the listener answered (`< listeners`).
pub fn connect_once(addr: SocketAddr, listeners: usize) -> Result<usize, Failure> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let index = usize::from(byte[0]);
    if index >= listeners {
        return Err(Failure::BadIndex(byte[0]));
    }
    Ok(index)
}

/// What a batch of connections saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Connections answered, per listener index.
    pub counts: Vec<u64>,
    /// Connections tried.
    pub attempted: u64,
    /// Every failed connection.
    pub failures: Vec<Failure>,
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
        self.counts.iter().sum()
    }

    /// Counts one connection's result.
    pub fn record(&mut self, result: Result<usize, Failure>) {
        self.attempted += 1;
        match result {
            Ok(i) => self.counts[i] += 1,
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

    fn merge(&mut self, other: Outcome) {
        for (sum, n) in self.counts.iter_mut().zip(other.counts) {
            *sum += n;
        }
        self.attempted += other.attempted;
        self.failures.extend(other.failures);
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

/// `count` connections one after the other; the answers in order.
pub fn sequence(addr: SocketAddr, listeners: usize, count: usize) -> Vec<Result<usize, Failure>> {
    (0..count).map(|_| connect_once(addr, listeners)).collect()
}

/// `threads` client threads running `per_thread` connections each, in the background.
pub struct Load {
    threads: Vec<JoinHandle<Outcome>>,
    done: Arc<AtomicU64>,
    total: u64,
}

impl Load {
    pub fn start(addr: SocketAddr, listeners: usize, threads: usize, per_thread: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let done = done.clone();
                thread::spawn(move || {
                    let mut outcome = Outcome::new(listeners);
                    for _ in 0..per_thread {
                        outcome.record(connect_once(addr, listeners));
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                    outcome
                })
            })
            .collect::<Vec<_>>();
        Self {
            total: threads.len() as u64 * per_thread,
            threads,
            done,
        }
    }

    /// Connections finished so far (answered or failed).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Connections this load will try in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits (at most `limit`) until `count` connections finished; returns whether they did.
    pub fn wait_for(&self, count: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.done() < count {
            if Instant::now() >= deadline || self.is_finished() {
                return self.done() >= count;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Waits for every thread and merges what they saw.
    pub fn join(self) -> Outcome {
        let mut total = Outcome::default();
        for thread in self.threads {
            match thread.join() {
                Ok(outcome) => {
                    if total.counts.is_empty() {
                        total.counts = vec![0; outcome.counts.len()];
                    }
                    total.merge(outcome);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        total
    }
}

/// Runs a load to completion.
pub fn run(addr: SocketAddr, listeners: usize, threads: usize, per_thread: u64) -> Outcome {
    Load::start(addr, listeners, threads, per_thread).join()
}
