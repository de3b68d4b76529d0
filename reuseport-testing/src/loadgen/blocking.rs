//! The blocking load: T threads each make K requests, every one on a new connection, and record
//! which worker (`pid=` in the body) answered and how long it took. Used by the demo and the
//! tests, where simple sequential requests are all that is needed.

use super::http::parse_pid;
use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// What one request gave.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The answering worker's pid, or the error.
    pub result: Result<u32, String>,
    /// From connect to the end of the response.
    pub latency: Duration,
}

/// How to load.
#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: String,
    pub threads: usize,
    pub per_thread: usize,
    /// Per-socket connect/read/write timeout.
    pub timeout: Duration,
}

impl Load {
    pub fn new(addr: SocketAddr, total: usize, threads: usize) -> Self {
        let threads = threads.max(1);
        Self {
            addr,
            path: "/".into(),
            threads,
            per_thread: total.div_ceil(threads),
            timeout: Duration::from_secs(5),
        }
    }

    /// Runs the load to completion.
    pub fn run(&self) -> Vec<Outcome> {
        let count = (self.threads * self.per_thread) as u64;
        crate::clients::spread(self.threads, count, |_| self.one())
    }

    fn one(&self) -> Outcome {
        let start = Instant::now();
        let result = request(self.addr, &self.path, self.timeout).map_err(|e| e.to_string());
        Outcome {
            result,
            latency: start.elapsed(),
        }
    }
}

/// One `GET` on a fresh connection; returns the answering pid.
pub fn request(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u32> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(super::http::get(addr, path, false).as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_pid(&response).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no pid in response {response:?}"),
        )
    })
}

/// Successful requests per pid; panics, naming the first failures, if any request failed.
pub fn tally_ok(outcomes: &[Outcome]) -> BTreeMap<u32, u64> {
    let (counts, errors) = tally(outcomes);
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    counts
}

/// Successful requests per pid, and the errors.
pub fn tally(outcomes: &[Outcome]) -> (BTreeMap<u32, u64>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut errors = Vec::new();
    for o in outcomes {
        match &o.result {
            Ok(pid) => *counts.entry(*pid).or_insert(0) += 1,
            Err(e) => errors.push(e.clone()),
        }
    }
    (counts, errors)
}
