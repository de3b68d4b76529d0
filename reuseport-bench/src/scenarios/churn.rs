//! `churn`: everything changing under load. A closed-loop load of new-connection requests runs
//! while every worker is replaced one by one (a new one starts, the old one goes), and, with the
//! daemon, the policy is swapped every 10 ms. With the daemon an old worker is drained first and
//! killed once its queue has had a moment to empty; whatever still waits moves to the others
//! (select-or-migrate). Under the kernel's hash a worker can only be killed: the connections in
//! its queue are reset. Counted: failed requests.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use reuseport_steer::Policy;
use reuseport_testing::{
    daemon::Fixture,
    loadgen::{ClosedLoop, Recording, Target},
};
use reuseport_worker::{ControlClient, Request};

use crate::{
    cluster,
    machine::Watch,
    report::{num, Report, Section, Table},
    scenario::{Options, Scenario},
    steering::Steering,
};

const WORKERS: usize = 4;
const CONCURRENCY: usize = 8;
const SWAP_EVERY: Duration = Duration::from_millis(10);
/// How long a drained worker keeps serving before it is killed.
const DRAIN_GRACE: Duration = Duration::from_millis(50);
const SWAPPED: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::LeastLoaded,
    Policy::P2c,
    Policy::Hash,
    Policy::Weighted,
];

pub struct Churn;

struct Cell {
    steering: Steering,
    recording: Recording,
    swaps: u64,
    replaced: usize,
}

impl Scenario for Churn {
    fn name(&self) -> &'static str {
        "churn"
    }

    fn about(&self) -> &'static str {
        "policy swapped every 10 ms and all workers replaced one by one under load: failed requests"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let (duration, default_rounds) = if options.quick {
            (Duration::from_millis(1500), 1)
        } else {
            (Duration::from_secs(8), 2)
        };
        let rounds = options.rounds.unwrap_or(default_rounds);
        let steerings = [Steering::KernelHash, Steering::policy(Policy::RoundRobin)];
        let watch = Watch::start();
        let progress = crate::progress::bar("churn", (rounds * steerings.len()) as u64);
        let mut cells = Vec::new();
        for round in 0..rounds {
            for k in 0..steerings.len() {
                let steering = &steerings[(k + round) % steerings.len()];
                let cell = run_cell(steering, duration)?;
                progress.suspend(|| {
                    eprintln!(
                        "churn: round {}/{rounds} {:<12} {} requests, {} failed, {} swaps, {} workers replaced",
                        round + 1,
                        label(steering),
                        cell.recording.samples.len(),
                        cell.recording.failed(),
                        cell.swaps,
                        cell.replaced
                    )
                });
                cells.push(cell);
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        Ok(report(duration, rounds, &cells, watch.lines()))
    }
}

fn run_cell(steering: &Steering, duration: Duration) -> Result<Cell> {
    let mut cluster = cluster::start(cluster::next_addr(), steering, WORKERS, 5)?;
    let with_daemon = *steering != Steering::KernelHash;
    let mut target = Target::new(cluster.addr);
    target.paths = vec!["/sleep?ms=1".into()];
    target.timeout = Duration::from_secs(5);
    // Bounded by time; the count is only a ceiling.
    let mut load = ClosedLoop::new(target, CONCURRENCY, 1_000_000);
    load.time_limit = duration;
    let done = AtomicBool::new(false);
    let swaps = AtomicU64::new(0);
    let control = cluster.control.clone();
    let (recording, replaced) = std::thread::scope(|scope| -> Result<(Recording, usize)> {
        let swapper = with_daemon.then(|| {
            scope.spawn(|| -> Result<()> {
                let mut client = ControlClient::connect(&control)?;
                let mut next = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    let n = swaps.load(Ordering::Relaxed);
                    let policy = SWAPPED[(n % SWAPPED.len() as u64) as usize];
                    client.request(&Request::PolicySet {
                        policy: policy.into(),
                        group: None,
                    })?;
                    swaps.fetch_add(1, Ordering::Relaxed);
                    next += SWAP_EVERY;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(())
            })
        });
        let loader = scope.spawn(|| load.run_blocking());
        // Replace the workers one by one, spread over the middle of the load.
        let gap = duration / (WORKERS as u32 + 1);
        let mut replaced = 0;
        let mut failure = None;
        for old in 0..WORKERS {
            std::thread::sleep(gap / 2);
            if let Err(e) = replace(&mut cluster, old, with_daemon) {
                failure = Some(e);
                break;
            }
            replaced += 1;
            std::thread::sleep(gap / 2);
        }
        let recording = loader.join();
        done.store(true, Ordering::Relaxed);
        if let Some(swapper) = swapper {
            match swapper.join() {
                Ok(r) => r.context("swapping policies")?,
                Err(_) => bail!("the policy swapper panicked"),
            }
        }
        if let Some(e) = failure {
            return Err(e.context("replacing workers"));
        }
        match recording {
            Ok(r) => Ok((r.context("running the load")?, replaced)),
            Err(_) => bail!("the load thread panicked"),
        }
    })?;
    Ok(Cell {
        steering: *steering,
        recording,
        swaps: swaps.load(Ordering::Relaxed),
        replaced,
    })
}

/// Starts a new worker, waits until it serves (is registered), then retires worker `old`:
/// drained and killed after a grace period with the daemon, killed at once without.
fn replace(cluster: &mut Fixture, old: usize, with_daemon: bool) -> Result<()> {
    let pid = cluster.worker_pids()[old];
    cluster.echo(&format!("n{old}"))?;
    if with_daemon {
        cluster::wait_ready(cluster, WORKERS + 1)?;
        let slot = cluster
            .status()?
            .workers
            .iter()
            .find(|w| w.pid == pid)
            .map(|w| w.slot)
            .context("the old worker is not registered")?;
        cluster.request(&Request::Drain {
            slot,
            group: None,
            close: None,
        })?;
        std::thread::sleep(DRAIN_GRACE);
    } else {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill_worker(old)
}

fn label(steering: &Steering) -> String {
    match steering {
        Steering::KernelHash => "kernel hash (workers killed)".into(),
        Steering::Program { .. } => "daemon (drain then kill; policy swaps)".into(),
        anchor => anchor.label(),
    }
}

fn report(duration: Duration, rounds: usize, cells: &[Cell], machine: Vec<String>) -> Report {
    let mut preamble = machine;
    preamble.push(crate::cluster::OTHERS_NOTE.into());
    preamble.push(format!(
        "{WORKERS} `reuseport echo` workers; closed loop, {CONCURRENCY} clients, each request \
         (`GET /sleep?ms=1`) on a new connection, {:.1} s per cell, {rounds} rounds alternating \
         the steerings",
        duration.as_secs_f64()
    ));
    preamble.push(format!(
        "During each cell every worker is replaced once: a new worker starts, then the old one \
         is killed (SIGKILL); with the daemon it is first drained and killed {} ms later, and \
         the policy is swapped every {} ms through {}",
        DRAIN_GRACE.as_millis(),
        SWAP_EVERY.as_millis(),
        SWAPPED.map(|p| p.name()).join(", ")
    ));
    let mut table = Table::new(&[
        "steering",
        "round",
        "requests",
        "failed",
        "policy swaps",
        "workers replaced",
        "req/s",
        "p99 ms",
        "first error",
    ]);
    let mut csv = Table::new(&[
        "steering",
        "round",
        "requests",
        "failed",
        "policy_swaps",
        "workers_replaced",
        "requests_per_s",
        "p99_ms",
    ]);
    let per_round = 2;
    for (i, c) in cells.iter().enumerate() {
        let r = &c.recording;
        let rate = r.samples.len() as f64 / r.elapsed.as_secs_f64().max(1e-9);
        let p99 = r.quantile(0.99).as_secs_f64() * 1e3;
        let round = (i / per_round).to_string();
        table.push(vec![
            label(&c.steering),
            round.clone(),
            r.samples.len().to_string(),
            r.failed().to_string(),
            c.swaps.to_string(),
            c.replaced.to_string(),
            num(rate),
            num(p99),
            r.first_error().unwrap_or("").chars().take(60).collect(),
        ]);
        csv.push(vec![
            label(&c.steering),
            round,
            r.samples.len().to_string(),
            r.failed().to_string(),
            c.swaps.to_string(),
            c.replaced.to_string(),
            format!("{rate:.1}"),
            format!("{p99:.3}"),
        ]);
    }
    Report {
        scenario: "churn".into(),
        title: "Churn: policy swaps and worker replacement under load".into(),
        preamble,
        sections: vec![Section {
            heading: "Failed requests".into(),
            text: "A failed request is one whose connection was refused or reset, or that got \
                   no complete response."
                .into(),
            table: Some(table),
            extra: String::new(),
        }],
        csv,
        extra_csv: Vec::new(),
        plots: Vec::new(),
    }
}
