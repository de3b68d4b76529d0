//! Load generators for `reuseport echo` workers (or anything answering `pid=<PID>`), used by the
//! demo, the tests and the benchmark alike, so they all count and time requests the same way.
//! Loopback or a private network namespace only; every load is bounded in count and time.
//!
//! - [`blocking`]: threads making sequential requests on new connections (simple, no runtime).
//! - [`open_loop`]: requests sent at a fixed rate whatever the server does, latency measured
//!   from each request's *scheduled* time, so a slow or stuck worker shows in the latency
//!   instead of slowing the load down (no coordinated omission).
//! - [`closed_loop`]: a fixed number of clients, each sending its next request when the last
//!   one is answered.
//! - [`paced`]: a few clients in the background, pausing between requests, until stopped.
//!
//! The async loads record every request ([`Sample`]: which worker answered, latency) and a
//! latency histogram ([`Recording`]).

pub mod blocking;
pub mod closed_loop;
mod exchange;
pub mod http;
pub mod open_loop;
pub mod paced;
mod record;

pub use blocking::{request, tally, tally_ok, Load, Outcome};
pub use closed_loop::ClosedLoop;
pub use http::parse_pid;
pub use open_loop::OpenLoop;
pub use paced::{Paced, PacedOutcome};
pub use record::{Recording, Sample};

use std::{net::SocketAddr, time::Duration};

/// Whether each request opens a connection of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Connections {
    /// A new connection per request (closed with an RST once answered: no TIME_WAIT left):
    /// every request is a new choice of the steering program.
    #[default]
    PerRequest,
    /// Long-lived connections, reused request after request (HTTP/1.1 keep-alive).
    KeepAlive,
}

/// What to send where.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Request `i` asks for `paths[i % paths.len()]` (e.g. nine `/` and one `/sleep?ms=50`).
    pub paths: Vec<String>,
    pub connections: Connections,
    /// Bound on one request, connect included; a request that takes longer fails.
    pub timeout: Duration,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            paths: vec!["/".into()],
            connections: Connections::PerRequest,
            timeout: Duration::from_secs(5),
        }
    }

    fn path(&self, index: u64) -> &str {
        if self.paths.is_empty() {
            return "/";
        }
        &self.paths[(index % self.paths.len() as u64) as usize]
    }
}

/// A runtime for the async loads when the caller has none: two worker threads are plenty for
/// the client side of a loopback benchmark.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        thread,
    };

    use super::*;

    /// A worker answering `pid=4242` to every request of every connection (keep-alive
    /// honoured), one thread per connection, that first stalls `stall` before accepting.
    /// Returns its address and a count of accepted connections.
    fn server(stall: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            thread::sleep(stall);
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::Relaxed);
                thread::spawn(move || answer(stream));
            }
        });
        (addr, accepted)
    }

    fn answer(mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npid=4242\n";
                if stream.write_all(reply).is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[test]
    fn open_loop_latency_counts_from_the_scheduled_time() {
        reuseport_steer::netns::enter_new().unwrap();
        // The server accepts nothing for 300 ms: the requests due meanwhile must show that
        // wait in full, the later ones must not.
        let (addr, _) = server(Duration::from_millis(300));
        let r = OpenLoop::new(Target::new(addr), 100.0, 60)
            .run_blocking()
            .unwrap();
        assert_eq!((r.answered(), r.failed()), (60, 0), "{:?}", r.first_error());
        assert_eq!(r.per_worker(), BTreeMap::from([(4242, 60)]));
        let latency = |i| r.samples.iter().find(|s| s.index == i).unwrap().latency;
        assert!(latency(0) >= Duration::from_millis(250), "{:?}", latency(0));
        assert!(
            latency(10) >= Duration::from_millis(150),
            "{:?}",
            latency(10)
        );
        assert!(
            latency(59) < Duration::from_millis(100),
            "{:?}",
            latency(59)
        );
        assert!(r.max() >= Duration::from_millis(250));
        assert!(!r.cut_short);
    }

    #[test]
    fn closed_loop_keeps_its_connections_and_counts_every_request() {
        reuseport_steer::netns::enter_new().unwrap();
        let (addr, accepted) = server(Duration::ZERO);
        let mut target = Target::new(addr);
        target.connections = Connections::KeepAlive;
        let r = ClosedLoop::new(target.clone(), 3, 90)
            .run_blocking()
            .unwrap();
        assert_eq!((r.answered(), r.failed()), (90, 0), "{:?}", r.first_error());
        assert_eq!(accepted.load(Ordering::Relaxed), 3);

        // A new connection per request, and an open loop on kept connections.
        target.connections = Connections::PerRequest;
        let r = ClosedLoop::new(target.clone(), 3, 30)
            .run_blocking()
            .unwrap();
        assert_eq!(r.answered(), 30);
        assert_eq!(accepted.load(Ordering::Relaxed), 3 + 30);
        target.connections = Connections::KeepAlive;
        let mut open = OpenLoop::new(target, 500.0, 50);
        open.kept_connections = 2;
        assert_eq!(open.run_blocking().unwrap().answered(), 50);
        assert!(accepted.load(Ordering::Relaxed) <= 3 + 30 + 2);
    }

    #[test]
    fn a_refused_connection_is_a_failure_not_a_latency() {
        reuseport_steer::netns::enter_new().unwrap();
        // Nothing listens on this port of the fresh namespace.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = ClosedLoop::new(Target::new(addr), 1, 3)
            .run_blocking()
            .unwrap();
        assert_eq!((r.answered(), r.failed()), (0, 3));
        assert!(r.histogram.is_empty());
        assert!(r.first_error().is_some());
    }
}
