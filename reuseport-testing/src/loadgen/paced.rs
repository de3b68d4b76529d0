//! Paced load in the background while a test changes the servers (reloads, kills, stops):
//! a few clients, each making a request on a new connection then pausing, until stopped or
//! until a bound. Every request's outcome and latency is kept. [`Paced::between`] runs an
//! action while no request is in flight (a process killed in the middle of a request loses
//! it with it, whatever steers the connections).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
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
    /// While set, clients start no request.
    hold: Arc<AtomicBool>,
    inflight: Arc<AtomicUsize>,
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
        let hold = Arc::new(AtomicBool::new(false));
        let inflight = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, hold, inflight) = (stop.clone(), hold.clone(), inflight.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) && seen.len() < per_client {
                        inflight.fetch_add(1, Ordering::SeqCst);
                        if hold.load(Ordering::SeqCst) {
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        let started = Instant::now();
                        let answer =
                            request(addr, "/", timeout).map_err(|e| format!("{:?}: {e}", e.kind()));
                        inflight.fetch_sub(1, Ordering::SeqCst);
                        seen.push((started.elapsed(), answer));
                        std::thread::sleep(pause);
                    }
                    seen
                })
            })
            .collect();
        Self {
            stop,
            hold,
            inflight,
            clients,
        }
    }

    /// Runs `action` between requests: no new one starts, the ones in flight are answered
    /// first; the load goes on right after.
    pub fn between<T>(&self, action: impl FnOnce() -> T) -> T {
        self.hold.store(true, Ordering::SeqCst);
        while self.inflight.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = action();
        self.hold.store(false, Ordering::SeqCst);
        out
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
