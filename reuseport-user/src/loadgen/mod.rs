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
//!
//! The async loads record every request ([`Sample`]: which worker answered, latency) and a
//! latency histogram ([`Recording`]).

pub mod blocking;
pub mod closed_loop;
mod exchange;
pub mod http;
pub mod open_loop;
mod record;

pub use blocking::{request, tally, Load, Outcome};
pub use closed_loop::ClosedLoop;
pub use http::parse_pid;
pub use open_loop::OpenLoop;
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
