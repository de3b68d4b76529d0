//! The closed-loop client driver: threads that each open connections one after another as fast
//! as the kernel completes handshakes, bounded in count and in time.
//!
//! Each connection is closed with SO_LINGER 0 (an RST): no TIME_WAIT is left behind, so hundreds
//! of thousands of connections to one address never run out of ports, and a later connection
//! may reuse a 4-tuple without meeting an old one.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

/// A bounded client load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: u64,
    pub threads: usize,
    pub source_ports: SourcePorts,
    /// Threads stop starting connections after this long.
    pub time_limit: Duration,
}

/// What the clients did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Opens `load.connections` connections to `target` from `load.threads` threads and waits for
/// all of them. Connection i goes to thread i % threads.
pub fn drive(target: SocketAddr, load: &Load) -> Outcome {
    let threads = load.threads.max(1);
    let start = Instant::now();
    let parts: Vec<Outcome> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    connect_loop(
                        target,
                        load,
                        (t as u64..load.connections).step_by(threads),
                        start,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Outcome {
                    failed: 1,
                    first_error: Some("client thread panicked".into()),
                    ..Outcome::default()
                })
            })
            .collect()
    });
    let mut total = Outcome {
        elapsed: start.elapsed(),
        ..Outcome::default()
    };
    for part in parts {
        total.connected += part.connected;
        total.failed += part.failed;
        total.timed_out |= part.timed_out;
        if total.first_error.is_none() {
            total.first_error = part.first_error;
        }
    }
    total
}

fn connect_loop(
    target: SocketAddr,
    load: &Load,
    connections: impl Iterator<Item = u64>,
    start: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let target = SockAddr::from(target);
    for i in connections {
        if start.elapsed() > load.time_limit {
            outcome.timed_out = true;
            break;
        }
        match connect_once(&target, load.source_ports.port(i)) {
            Ok(()) => outcome.connected += 1,
            Err(e) => {
                outcome.failed += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(e.to_string());
                }
            }
        }
    }
    outcome
}

/// One blocking connect (returns once the handshake completed), then an RST close.
fn connect_once(target: &SockAddr, source_port: Option<u16>) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(port) = source_port {
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    }
    socket.connect(target)?;
    socket.set_linger(Some(Duration::ZERO))?;
    Ok(())
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
