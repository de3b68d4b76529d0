//! `throughput`: how many requests per second the same `reuseport echo` workers serve, and what
//! each request costs in CPU, under every steering and its anchors (prefork, HAProxy). A closed
//! loop of clients, each sending its next `GET /` when the last is answered, once with a new
//! connection per request (every request is a steering decision) and once on kept connections
//! (only the first of each is).
//!
//! CPU per request, two ways: the machine's (every CPU's user, system, irq and softirq time over
//! the cell, whoever it was for: what the hand measurement counted, and noisy on a
//! shared machine), and the cell's own processes' (the bench's client threads, the workers, the
//! daemon or HAProxy: utime + stime, which on this kernel's tick accounting includes the
//! softirq work done while they ran).

use std::time::Duration;

use anyhow::{bail, Result};
use reuseport_steer::Policy;
use reuseport_testing::loadgen::{ClosedLoop, Connections, Recording, Target};

use crate::{
    cluster::{self, Cluster},
    cpu::{self, CpuTimes},
    machine::Watch,
    report::{num, Report, Section, Table},
    samples::Summary,
    scenario::{Options, Scenario},
    steering::{Balance, Steering},
};

const WORKERS: usize = 4;
/// As the hand measurement the issue quotes (wrk, 16 connections).
const DEFAULT_CLIENTS: usize = 16;
const SAMPLE_MS: u64 = 5;

const STEERINGS: [Steering; 7] = [
    Steering::KernelHash,
    Steering::policy(Policy::RoundRobin),
    Steering::policy(Policy::LeastLoaded),
    Steering::policy(Policy::P2c),
    Steering::Prefork,
    Steering::Haproxy(Balance::RoundRobin),
    Steering::Haproxy(Balance::LeastConn),
];

const MODES: [Connections; 2] = [Connections::PerRequest, Connections::KeepAlive];

fn mode_label(mode: Connections) -> &'static str {
    match mode {
        Connections::PerRequest => "new connection per request",
        Connections::KeepAlive => "keep-alive",
    }
}

pub struct Throughput;

/// One measured cell.
struct Cell {
    round: usize,
    steering: Steering,
    mode: Connections,
    recording: Recording,
    /// All CPUs' working time over the cell.
    machine: Duration,
    /// The cell's processes' CPU time (clients, workers, daemon or HAProxy).
    processes: Duration,
}

impl Cell {
    fn answered(&self) -> u64 {
        self.recording.answered()
    }

    fn rate(&self) -> f64 {
        self.answered() as f64 / self.recording.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of `cpu` per answered request.
    fn per_request(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.answered().max(1) as f64
    }
}

impl Scenario for Throughput {
    fn name(&self) -> &'static str {
        "throughput"
    }

    fn about(&self) -> &'static str {
        "closed-loop requests/s and CPU per request, new connection per request and keep-alive, every steering and the anchors"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let (duration, default_rounds) = if options.quick {
            (Duration::from_millis(500), 1)
        } else {
            (Duration::from_secs(3), 3)
        };
        let rounds = options.rounds.unwrap_or(default_rounds);
        let clients = options.clients.unwrap_or(DEFAULT_CLIENTS);
        let watch = Watch::start();
        let progress = crate::progress::bar(
            "throughput",
            (rounds * STEERINGS.len() * MODES.len()) as u64,
        );
        let mut cells = Vec::new();
        for round in 0..rounds {
            for k in 0..STEERINGS.len() {
                let steering = STEERINGS[(k + round) % STEERINGS.len()];
                let cluster = Cluster::start(cluster::next_addr(), &steering, WORKERS, SAMPLE_MS)?;
                for m in 0..MODES.len() {
                    let mode = MODES[(m + round) % MODES.len()];
                    let cell = measure(&cluster, steering, mode, clients, duration, round)?;
                    progress.suspend(|| {
                        eprintln!(
                            "throughput: round {}/{rounds} {:<24} {:<27} {:>7.0} req/s, machine {:>6} µs/req, processes {:>6} µs/req",
                            round + 1,
                            steering.label(),
                            mode_label(mode),
                            cell.rate(),
                            num(cell.per_request(cell.machine)),
                            num(cell.per_request(cell.processes)),
                        )
                    });
                    cells.push(cell);
                    progress.inc(1);
                }
            }
        }
        progress.finish_and_clear();
        Ok(report(&cells, duration, rounds, clients, watch.lines()))
    }
}

/// CPU time of the cell's processes so far: this one (the clients) and the cluster's.
fn processes_cpu(cluster: &Cluster) -> Duration {
    let own = cpu::ticks(CpuTimes::read().own);
    cluster
        .server_pids()
        .into_iter()
        .filter_map(|pid| cluster::cpu_time(pid).ok())
        .fold(own, |sum, t| sum + t)
}

fn measure(
    cluster: &Cluster,
    steering: Steering,
    mode: Connections,
    clients: usize,
    duration: Duration,
    round: usize,
) -> Result<Cell> {
    let mut target = Target::new(cluster.addr);
    target.connections = mode;
    // Bounded by time; the count is only a ceiling.
    let mut load = ClosedLoop::new(target, clients, 100_000_000);
    load.time_limit = duration;
    let machine_before = CpuTimes::read();
    let processes_before = processes_cpu(cluster);
    let recording = load.run_blocking()?;
    let processes = processes_cpu(cluster).saturating_sub(processes_before);
    let machine = cpu::ticks(CpuTimes::read().used_since(machine_before));
    if recording.answered() == 0 {
        bail!(
            "{} ({}): no request answered (first error: {})",
            steering.label(),
            mode_label(mode),
            recording.first_error().unwrap_or("none")
        );
    }
    Ok(Cell {
        round,
        steering,
        mode,
        recording,
        machine,
        processes,
    })
}

fn report(
    cells: &[Cell],
    duration: Duration,
    rounds: usize,
    clients: usize,
    machine: Vec<String>,
) -> Report {
    let mut preamble = machine;
    preamble.push(crate::cluster::OTHERS_NOTE.into());
    preamble.push(format!(
        "{WORKERS} `reuseport echo` workers (one request at a time each); closed loop, \
         {clients} clients sending `GET /`, {:.1} s per cell; {rounds} rounds, steerings in an \
         order rotated each round, fresh processes and port per steering and round (both \
         connection modes measured on them, in an order rotated each round)",
        duration.as_secs_f64()
    ));
    preamble.push(
        "Steerings: kernel hash (no daemon); the daemon's program with a policy \
         (`--sample-ms 5`); prefork: every worker accepts from one shared socket; haproxy: \
         HAProxy `mode tcp`, `nbthread` = cores, in front of the workers on ports of their own"
            .into(),
    );
    preamble.push(
        "CPU per request: *machine* is every CPU's user + system + irq + softirq time over \
         the cell divided by the requests answered (it includes whatever else ran: compare \
         within this run only); *processes* is the utime + stime of this cell's own processes \
         (the bench's clients, the workers, the daemon or HAProxy)"
            .into(),
    );
    let mut table = Table::new(&[
        "steering",
        "connections",
        "req/s (median)",
        "req/s (min–max)",
        "vs kernel hash",
        "machine µs/req",
        "processes µs/req",
        "p50 ms",
        "p99 ms",
        "failed",
    ]);
    let mut csv = Table::new(&[
        "steering",
        "connections",
        "rounds",
        "requests_per_s_median",
        "requests_per_s_min",
        "requests_per_s_max",
        "rate_vs_kernel_hash",
        "machine_us_per_request_median",
        "processes_us_per_request_median",
        "p50_ms_median",
        "p99_ms_median",
        "failed",
    ]);
    let mut raw = Table::new(&[
        "round",
        "steering",
        "connections",
        "requests",
        "failed",
        "elapsed_s",
        "requests_per_s",
        "machine_cpu_s",
        "processes_cpu_s",
        "p50_ms",
        "p99_ms",
    ]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for c in cells {
        raw.push(vec![
            c.round.to_string(),
            c.steering.label(),
            mode_label(c.mode).into(),
            c.answered().to_string(),
            c.recording.failed().to_string(),
            format!("{:.3}", c.recording.elapsed.as_secs_f64()),
            format!("{:.1}", c.rate()),
            format!("{:.3}", c.machine.as_secs_f64()),
            format!("{:.3}", c.processes.as_secs_f64()),
            format!("{:.3}", ms(c.recording.quantile(0.5))),
            format!("{:.3}", ms(c.recording.quantile(0.99))),
        ]);
    }
    let median = |values: Vec<f64>| Summary::of(&values);
    for mode in MODES {
        let of = |steering: Steering| {
            cells
                .iter()
                .filter(move |c| c.steering == steering && c.mode == mode)
        };
        let hash_rate = median(of(Steering::KernelHash).map(Cell::rate).collect());
        for steering in STEERINGS {
            let rate = median(of(steering).map(Cell::rate).collect());
            let machine = median(of(steering).map(|c| c.per_request(c.machine)).collect());
            let processes = median(of(steering).map(|c| c.per_request(c.processes)).collect());
            let p50 = median(
                of(steering)
                    .map(|c| ms(c.recording.quantile(0.5)))
                    .collect(),
            );
            let p99 = median(
                of(steering)
                    .map(|c| ms(c.recording.quantile(0.99)))
                    .collect(),
            );
            let failed: u64 = of(steering).map(|c| c.recording.failed()).sum();
            let n = of(steering).count();
            let vs_hash = match (rate, hash_rate) {
                (Some(r), Some(h)) => r.median / h.median,
                _ => f64::NAN,
            };
            let show = |s: Option<Summary>| s.map_or("-".into(), |s| num(s.median));
            let field =
                |s: Option<Summary>| s.map_or(String::new(), |s| format!("{:.2}", s.median));
            table.push(vec![
                steering.label(),
                mode_label(mode).into(),
                show(rate),
                rate.map_or("-".into(), |s| format!("{}–{}", num(s.min), num(s.max))),
                if steering == Steering::KernelHash {
                    "(baseline)".into()
                } else {
                    format!("{:.2}×", vs_hash)
                },
                show(machine),
                show(processes),
                show(p50),
                show(p99),
                failed.to_string(),
            ]);
            csv.push(vec![
                steering.label(),
                mode_label(mode).into(),
                n.to_string(),
                field(rate),
                rate.map_or(String::new(), |s| format!("{:.1}", s.min)),
                rate.map_or(String::new(), |s| format!("{:.1}", s.max)),
                format!("{vs_hash:.4}"),
                field(machine),
                field(processes),
                field(p50),
                field(p99),
                failed.to_string(),
            ]);
        }
    }
    Report {
        scenario: "throughput".into(),
        title: "Throughput and CPU per request".into(),
        preamble,
        sections: vec![Section {
            heading: "Requests per second and CPU per request".into(),
            text: "Medians over rounds; \"vs kernel hash\": the median rate over the kernel \
                   hash's median rate with the same kind of connections. p50 and p99: each \
                   round's latency percentiles (from the client's send, connect included), \
                   median over rounds."
                .into(),
            table: Some(table),
            extra: String::new(),
        }],
        csv,
        extra_csv: vec![("rounds".into(), raw)],
        plots: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_steering_and_its_anchors_in_both_modes() {
        assert!(STEERINGS.contains(&Steering::Prefork));
        assert!(STEERINGS.contains(&Steering::Haproxy(Balance::LeastConn)));
        assert!(STEERINGS.contains(&Steering::KernelHash));
        let labels: Vec<_> = MODES.iter().map(|m| mode_label(*m)).collect();
        assert_eq!(labels, ["new connection per request", "keep-alive"]);
    }
}
