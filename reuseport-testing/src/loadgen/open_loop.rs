//! Open loop: requests go out at a fixed rate whatever the server does. Each request's latency
//! runs from when it was *scheduled*, so a request that had to wait (for a late timer, a free
//! kept connection, or a stuck worker's queue) counts all of that wait: no coordinated omission.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use super::{
    exchange::{self, Conn},
    runtime, Connections, Recording, Sample, Target,
};

/// `requests` requests at `rate` per second, stopped early by `time_limit`.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    pub target: Target,
    /// Requests per second.
    pub rate: f64,
    pub requests: u64,
    /// Keep-alive only: how many connections the requests share (a request waits for a free
    /// one, and that wait is part of its latency).
    pub kept_connections: usize,
    /// No request is scheduled after this; the load then waits at most `target.timeout` for
    /// the ones in flight.
    pub time_limit: Duration,
}

impl OpenLoop {
    pub fn new(target: Target, rate: f64, requests: u64) -> Self {
        Self {
            target,
            rate,
            requests,
            kept_connections: 64,
            time_limit: Duration::from_secs(60),
        }
    }

    /// Runs the load on a runtime of its own.
    pub fn run_blocking(&self) -> std::io::Result<Recording> {
        runtime()?.block_on(self.run())
    }

    pub async fn run(&self) -> std::io::Result<Recording> {
        let mut recording = Recording::new()?;
        let target = Arc::new(self.target.clone());
        let pool = Arc::new(Pool::new(self.kept_connections.max(1)));
        let interval = 1.0 / self.rate.max(1e-3);
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for index in 0..self.requests {
            let due = Duration::from_secs_f64(index as f64 * interval);
            if due > self.time_limit {
                recording.cut_short = true;
                break;
            }
            let at = start + due;
            tokio::time::sleep_until(at).await;
            let (target, pool) = (target.clone(), pool.clone());
            tasks.spawn(async move {
                let result = match target.connections {
                    Connections::PerRequest => exchange::on_new_connection(&target, index).await,
                    Connections::KeepAlive => pool.request(&target, index).await,
                };
                Sample {
                    index,
                    at: due,
                    result,
                    latency: at.elapsed(),
                }
            });
            while let Some(done) = tasks.try_join_next() {
                push(&mut recording, done);
            }
        }
        // Every request is bounded by the target's timeout, so this ends.
        while let Some(done) = tasks.join_next().await {
            push(&mut recording, done);
        }
        recording.elapsed = start.elapsed();
        Ok(recording)
    }
}

fn push(recording: &mut Recording, done: Result<Sample, tokio::task::JoinError>) {
    match done {
        Ok(sample) => recording.push(sample),
        Err(e) => recording.push(Sample {
            index: u64::MAX,
            at: Duration::ZERO,
            result: Err(format!("request task failed: {e}")),
            latency: Duration::ZERO,
        }),
    }
}

/// Kept connections shared by the open loop's requests: a permit per connection, idle ones on
/// a stack (opened on first use, dropped after a failure).
struct Pool {
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn new(size: usize) -> Self {
        Self {
            permits: Semaphore::new(size),
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn request(&self, target: &Target, index: u64) -> Result<u32, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| format!("connection pool closed: {e}"))?;
        let mut conn = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let result = exchange::on_kept_connection(target, index, &mut conn).await;
        if let (Some(conn), Ok(mut idle)) = (conn, self.idle.lock()) {
            idle.push(conn);
        }
        result
    }
}
