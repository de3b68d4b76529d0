//! `reuseport demo`: the whole story in one command, inside a private network namespace. Four
//! independent `reuseport echo` workers share a port; clients first see the kernel's hash
//! (no daemon yet), then the daemon starts and the workers join it: round-robin, then weighted
//! 1:1:2:4, swapped live. One table per policy, checked: round-robin must be exact and weighted
//! in ratio, or the demo fails.

use std::net::SocketAddr;

use anyhow::Context as _;

use reuseport_steer::Policy;
use reuseport_testing::{
    daemon::Fixture,
    distribution::Distribution,
    loadgen::{self, tally, Load},
    netns,
};
use reuseport_worker::{GroupStatus, Request};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub connections: usize,
    pub workers: usize,
    pub port: u16,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            connections: 1000,
            workers: 4,
            port: 8080,
        }
    }
}

/// Weights of the weighted phase, by worker index.
const WEIGHTS: [u32; 4] = [1, 1, 2, 4];

pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.workers == WEIGHTS.len(),
        "the demo runs {} workers",
        WEIGHTS.len()
    );
    // First, before any thread exists: everything below lives in its own namespace.
    netns::fresh().context("creating the demo's network namespace")?;
    let exe = std::env::current_exe().context("locating the reuseport binary")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
    let mut fixture = Fixture::on(addr, "demo", exe)?;
    let result = story(options, &mut fixture);
    if result.is_err() {
        eprintln!("{}", fixture.logs());
    }
    result
}

fn story(options: &DemoOptions, fixture: &mut Fixture) -> anyhow::Result<()> {
    let addr = fixture.addr;
    let workers: Vec<(u32, String)> = (fixture.echo_workers(options.workers)?.into_iter())
        .zip((0..).map(|i| format!("w{i}")))
        .collect();
    println!(
        "reuseport demo: {} single-process echo workers share {addr} (private network namespace)\n",
        options.workers
    );
    // Every worker answers once (they bind asynchronously).
    fixture.wait_answers(workers.len())?;

    let mut report = Report::new(workers);
    report.phase(
        "kernel hash (no program)",
        &Load::new(addr, options.connections, 4).run(),
        None,
    )?;

    // No pins: the demo leaves nothing behind in bpffs.
    fixture.start_daemon(&["--policy", "round-robin", "--no-pin"])?;
    let status = fixture.wait_workers(options.workers)?;
    println!("daemon started; all workers registered:\n");
    print!(
        "{}",
        crate::cli::status_table(std::slice::from_ref(&status))
    );
    println!();

    report.phase(
        "round-robin",
        &Load::new(addr, options.connections, 4).run(),
        Some(&status),
    )?;

    for w in &status.workers {
        let index: usize = w.name.trim_start_matches('w').parse()?;
        fixture.request(&Request::Weight {
            slot: w.slot,
            weight: WEIGHTS[index],
            group: None,
        })?;
    }
    fixture.set_policy(Policy::Weighted)?;
    let status = fixture.status()?;
    report.phase(
        "weighted 1:1:2:4 (swapped live)",
        &Load::new(addr, options.connections, 4).run(),
        Some(&status),
    )?;

    // SIGTERM, so the daemon stops cleanly.
    fixture.stop_daemon(libc::SIGTERM)?;
    report.check(options.connections)?;
    println!("demo passed: round-robin exact, weighted in ratio, no connection failed");
    Ok(())
}

/// The per-phase tables, and the checks made on them.
struct Report {
    /// (pid, name) in spawn order: w0, w1, ...
    workers: Vec<(u32, String)>,
    phases: Vec<(String, Distribution, usize)>,
}

impl Report {
    fn new(workers: Vec<(u32, String)>) -> Self {
        Self {
            workers,
            phases: Vec::new(),
        }
    }

    fn phase(
        &mut self,
        title: &str,
        outcomes: &[loadgen::Outcome],
        status: Option<&GroupStatus>,
    ) -> anyhow::Result<()> {
        let (counts, errors) = tally(outcomes);
        let per_worker: Vec<u64> = self
            .workers
            .iter()
            .map(|(pid, _)| counts.get(pid).copied().unwrap_or(0))
            .collect();
        let total: u64 = per_worker.iter().sum();
        let d = Distribution::new(per_worker);
        println!("== {title}: {} connections ==", outcomes.len());
        println!(
            "  {:<6} {:>8} {:>5} {:>7} {:>12} {:>7}",
            "WORKER", "PID", "SLOT", "WEIGHT", "CONNECTIONS", "SHARE"
        );
        for ((pid, name), &count) in self.workers.iter().zip(&d.counts) {
            let worker = status.and_then(|s| s.workers.iter().find(|w| w.pid == *pid));
            let share = if total == 0 {
                0.0
            } else {
                100.0 * count as f64 / total as f64
            };
            println!(
                "  {:<6} {:>8} {:>5} {:>7} {:>12} {:>6.1}%",
                name,
                pid,
                worker.map_or("-".into(), |w| w.slot.to_string()),
                worker.map_or("-".into(), |w| w.weight.to_string()),
                count,
                share
            );
        }
        println!("  {}; failed connections: {}\n", d.summary(), errors.len());
        self.phases.push((title.to_owned(), d, errors.len()));
        Ok(())
    }

    fn check(&self, connections: usize) -> anyhow::Result<()> {
        for (title, _, errors) in &self.phases {
            anyhow::ensure!(*errors == 0, "{title}: {errors} connections failed");
        }
        let rr = &self.phases[1].1;
        anyhow::ensure!(
            rr.max() - rr.min() <= 1,
            "round-robin is not exact: {:?}",
            rr.counts
        );
        let weighted = &self.phases[2].1;
        let period: u64 = WEIGHTS.iter().map(|&w| u64::from(w)).sum();
        let windows = connections as u64 / period;
        for (count, &w) in weighted.counts.iter().zip(&WEIGHTS) {
            let want = windows * u64::from(w);
            anyhow::ensure!(
                count.abs_diff(want) <= u64::from(w),
                "weighted is not in ratio 1:1:2:4: {:?}",
                weighted.counts
            );
        }
        Ok(())
    }
}
