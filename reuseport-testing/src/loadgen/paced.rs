//! Paced load in the background while a test changes the servers (reloads, kills, stops):
//! a few clients, each making a request on a new connection then pausing, until stopped or
//! until a bound. Every request's outcome and latency is kept.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::request;

/// One request: its latency, and the pid that answered or the error.
type Seen = (Duration, Result<u32, String>);

/// Requests under way in the background.
pub struct Paced {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Seen>>>,
}

/// What a paced load saw.
#[derive(Debug, Default)]
pub struct PacedOutcome {
    /// Answers per pid.
    pub answers: BTreeMap<u32, u64>,
    /// Each failed request, with its latency.
    pub failures: Vec<String>,
    /// The slowest request, answered or not.
    pub slowest: Duration,
}

impl Paced {
    /// `clients` clients, each pausing `pause` between requests, each request given `timeout`,
    /// at most `per_client` requests each.
    pub fn start(
        addr: SocketAddr,
        clients: usize,
        pause: Duration,
        timeout: Duration,
        per_client: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) && seen.len() < per_client {
                        let started = Instant::now();
                        let answer =
                            request(addr, "/", timeout).map_err(|e| format!("{:?}: {e}", e.kind()));
                        seen.push((started.elapsed(), answer));
                        std::thread::sleep(pause);
                    }
                    seen
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients and gathers what they saw.
    pub fn finish(self) -> PacedOutcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcome = PacedOutcome::default();
        for client in self.clients {
            let Ok(seen) = client.join() else {
                outcome.failures.push("a client panicked".into());
                continue;
            };
            for (latency, answer) in seen {
                outcome.slowest = outcome.slowest.max(latency);
                match answer {
                    Ok(pid) => *outcome.answers.entry(pid).or_default() += 1,
                    Err(e) => outcome.failures.push(format!("after {latency:?}: {e}")),
                }
            }
        }
        outcome
    }
}

impl PacedOutcome {
    pub fn answered(&self) -> u64 {
        self.answers.values().sum()
    }
}
