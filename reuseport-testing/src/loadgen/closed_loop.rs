//! Closed loop: a fixed number of clients, each sending its next request as soon as the last
//! one is answered. Measures throughput at a given concurrency; a slow worker slows the load
//! down (the latency each request sees is its own, from connect or send to response).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};

use super::{exchange, runtime, Connections, Recording, Sample, Target};

/// `requests` requests over `concurrency` clients, stopped early by `time_limit`.
#[derive(Clone, Debug)]
pub struct ClosedLoop {
    pub target: Target,
    pub concurrency: usize,
    pub requests: u64,
    /// No request starts after this.
    pub time_limit: Duration,
}

impl ClosedLoop {
    pub fn new(target: Target, concurrency: usize, requests: u64) -> Self {
        Self {
            target,
            concurrency,
            requests,
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
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.time_limit;
        let requests = self.requests;
        let mut clients = JoinSet::new();
        for _ in 0..self.concurrency.max(1) {
            let (target, next) = (target.clone(), next.clone());
            clients.spawn(async move {
                let mut samples = Vec::new();
                let mut conn = None;
                let mut cut_short = false;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        break;
                    }
                    let began = Instant::now();
                    if began >= deadline {
                        cut_short = true;
                        break;
                    }
                    let result = match target.connections {
                        Connections::PerRequest => {
                            exchange::on_new_connection(&target, index).await
                        }
                        Connections::KeepAlive => {
                            exchange::on_kept_connection(&target, index, &mut conn).await
                        }
                    };
                    samples.push(Sample {
                        index,
                        at: began - start,
                        result,
                        latency: began.elapsed(),
                    });
                }
                if let Some(c) = conn {
                    c.reset();
                }
                (samples, cut_short)
            });
        }
        while let Some(done) = clients.join_next().await {
            match done {
                Ok((samples, cut_short)) => {
                    recording.cut_short |= cut_short;
                    for s in samples {
                        recording.push(s);
                    }
                }
                Err(e) => recording.push(Sample {
                    index: u64::MAX,
                    at: Duration::ZERO,
                    result: Err(format!("client task failed: {e}")),
                    latency: Duration::ZERO,
                }),
            }
        }
        recording.elapsed = start.elapsed();
        Ok(recording)
    }
}
