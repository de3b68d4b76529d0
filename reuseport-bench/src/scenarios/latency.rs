//! `stuck` and `mixed`: request latency through real `reuseport echo` workers (one request at a
//! time each), under an open-loop load of new-connection requests at a rate the workers can
//! serve, so what shows is where the steering sends requests, not a saturated server.
//!
//! - `stuck`: one of 4 workers is stopped (SIGSTOP) for a while in the middle of each cell:
//!   the kernel's hash keeps sending it a quarter of the connections, which wait in its queue;
//!   the daemon's health monitor sees it stopped and the policy skips it.
//! - `mixed`: 10% of the requests take 50 times as long as the others (50 ms against 1 ms):
//!   the policies that look at load route around a worker busy with a slow one.
//!
//! Both compare the tool with its anchors: prefork (one socket shared by every worker: a
//! central queue, the reference for latency) and HAProxy in front of the same workers.
//! Cells (one per steering) run in rounds, in an order rotated each round, each on fresh
//! processes and a fresh port; latencies of all rounds are merged per steering.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context, Result};
use reuseport_steer::Policy;
use reuseport_testing::{
    daemon,
    distribution::Distribution,
    loadgen::{OpenLoop, Recording, Target},
};

use crate::{
    cluster::{self, Cluster},
    machine::Watch,
    plot,
    report::{num, Report, Section, Table},
    samples,
    scenario::{Options, Scenario},
    steering::{Balance, Steering},
};

const WORKERS: usize = 4;
const SAMPLE_MS: u64 = 5;

/// One latency scenario.
pub struct Latency {
    name: &'static str,
    about: &'static str,
    title: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stuck,
    Mixed,
}

pub const STUCK: Latency = Latency {
    name: "stuck",
    about: "p50/p99/max latency with 1 of 4 workers stopped: kernel hash vs round-robin (skip, evict) vs least-loaded vs prefork vs haproxy leastconn",
    title: "Stuck worker: latency of new-connection requests with 1 of 4 workers stopped",
    kind: Kind::Stuck,
};

pub const MIXED: Latency = Latency {
    name: "mixed",
    about:
        "latency with 10% of requests 50x slower, and of the fast ones: kernel hash, policies, prefork, haproxy",
    title: "Mixed workload: 10% of requests 50x slower",
    kind: Kind::Mixed,
};

/// The load and timing of one cell.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rate: f64,
    duration: Duration,
    rounds: usize,
    /// `stuck`: worker 0 is stopped from `stop_at` for `stop_for`.
    stop_at: Duration,
    stop_for: Duration,
}

impl Latency {
    fn steerings(&self) -> Vec<Steering> {
        let skip = |policy| Steering::Program {
            policy,
            flags: &["--on-stuck", "skip"],
        };
        match self.kind {
            Kind::Stuck => vec![
                Steering::KernelHash,
                skip(Policy::RoundRobin),
                skip(Policy::LeastLoaded),
                Steering::Program {
                    policy: Policy::RoundRobin,
                    flags: &["--on-stuck", "evict"],
                },
                Steering::Prefork,
                Steering::Haproxy(Balance::LeastConn),
            ],
            Kind::Mixed => vec![
                Steering::KernelHash,
                Steering::policy(Policy::RoundRobin),
                Steering::policy(Policy::LeastLoaded),
                Steering::policy(Policy::P2c),
                Steering::Prefork,
                Steering::Haproxy(Balance::RoundRobin),
                Steering::Haproxy(Balance::LeastConn),
            ],
        }
    }

    fn plan(&self, options: &Options) -> Plan {
        let quick = options.quick;
        let mut plan = match (self.kind, quick) {
            (Kind::Stuck, false) => Plan {
                rate: 200.0,
                duration: Duration::from_secs(4),
                rounds: 3,
                stop_at: Duration::from_millis(500),
                stop_for: Duration::from_secs(2),
            },
            (Kind::Stuck, true) => Plan {
                rate: 100.0,
                duration: Duration::from_millis(1200),
                rounds: 1,
                stop_at: Duration::from_millis(200),
                stop_for: Duration::from_millis(500),
            },
            (Kind::Mixed, false) => Plan {
                rate: 300.0,
                duration: Duration::from_secs(5),
                rounds: 3,
                stop_at: Duration::ZERO,
                stop_for: Duration::ZERO,
            },
            (Kind::Mixed, true) => Plan {
                rate: 100.0,
                duration: Duration::from_secs(1),
                rounds: 1,
                stop_at: Duration::ZERO,
                stop_for: Duration::ZERO,
            },
        };
        if let Some(rounds) = options.rounds {
            plan.rounds = rounds;
        }
        plan
    }

    /// `stuck`: light 1 ms requests. `mixed`: 1 ms requests, and 50 ms ones at random places
    /// (10%, from a fixed seed: the same sequence for every steering).
    fn paths(&self) -> Vec<String> {
        match self.kind {
            Kind::Stuck => vec!["/sleep?ms=1".into()],
            Kind::Mixed => {
                let mut state = 0x9e37_79b9_7f4a_7c15u64;
                (0..1000)
                    .map(|_| {
                        state = splitmix(state);
                        if state.is_multiple_of(10) {
                            "/sleep?ms=50".into()
                        } else {
                            "/sleep?ms=1".into()
                        }
                    })
                    .collect()
            }
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the cells of one steering gave, merged over rounds.
struct Merged {
    steering: Steering,
    recording: Option<Recording>,
    /// Answered requests per worker index (w0 is the one stopped in `stuck`).
    per_worker: Vec<u64>,
    stuck_events: u64,
    requests: u64,
    failed: u64,
    first_error: Option<String>,
    /// `mixed`: latencies (ms) of the answered fast requests, all rounds.
    fast_ms: Vec<f64>,
}

impl Scenario for Latency {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let plan = self.plan(options);
        let steerings = self.steerings();
        let watch = Watch::start();
        let mut merged: Vec<Merged> = steerings
            .iter()
            .map(|s| Merged {
                steering: *s,
                recording: None,
                per_worker: vec![0; WORKERS],
                stuck_events: 0,
                requests: 0,
                failed: 0,
                first_error: None,
                fast_ms: Vec::new(),
            })
            .collect();
        let mut requests_csv = Table::new(&[
            "round",
            "steering",
            "index",
            "at_ms",
            "worker",
            "latency_ms",
            "error",
        ]);
        let progress = crate::progress::bar(self.name, (plan.rounds * steerings.len()) as u64);
        for round in 0..plan.rounds {
            for k in 0..steerings.len() {
                let i = (k + round) % steerings.len();
                let (recording, pids, stuck_events) = self.cell(&steerings[i], &plan)?;
                let m = &mut merged[i];
                m.stuck_events += stuck_events;
                m.requests += recording.samples.len() as u64;
                m.failed += recording.failed();
                if m.first_error.is_none() {
                    m.first_error = recording.first_error().map(str::to_owned);
                }
                for (pid, count) in recording.per_worker() {
                    if let Some(w) = pids.iter().position(|&p| p == pid) {
                        m.per_worker[w] += count;
                    }
                }
                let label = steerings[i].label();
                let paths = self.paths();
                m.fast_ms.extend(
                    recording
                        .samples
                        .iter()
                        .filter(|s| s.result.is_ok() && is_fast(&paths, s.index))
                        .map(|s| ms(s.latency)),
                );
                for s in &recording.samples {
                    let worker = match &s.result {
                        Ok(pid) => pids
                            .iter()
                            .position(|p| p == pid)
                            .map_or(format!("pid {pid}"), |w| format!("w{w}")),
                        Err(_) => String::new(),
                    };
                    requests_csv.push(vec![
                        round.to_string(),
                        label.clone(),
                        s.index.to_string(),
                        format!("{:.3}", s.at.as_secs_f64() * 1e3),
                        worker,
                        format!("{:.3}", s.latency.as_secs_f64() * 1e3),
                        s.result.as_ref().err().cloned().unwrap_or_default(),
                    ]);
                }
                progress.suspend(|| {
                    eprintln!(
                        "{}: round {}/{} {:<28} p50 {:>7} ms p99 {:>7} ms max {:>7} ms, {} failed",
                        self.name,
                        round + 1,
                        plan.rounds,
                        label,
                        num(ms(recording.quantile(0.5))),
                        num(ms(recording.quantile(0.99))),
                        num(ms(recording.max())),
                        recording.failed()
                    )
                });
                match &mut m.recording {
                    Some(all) => {
                        all.histogram
                            .add(&recording.histogram)
                            .context("merging histograms")?;
                    }
                    None => m.recording = Some(recording),
                }
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        self.report(&plan, &merged, requests_csv, watch.lines())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The fast requests of `mixed` are the 1 ms ones; request `index` asks for
/// `paths[index % paths.len()]` (as [`Target`] sends them).
fn is_fast(paths: &[String], index: u64) -> bool {
    !paths.is_empty() && paths[(index % paths.len() as u64) as usize] == FAST_PATH
}

const FAST_PATH: &str = "/sleep?ms=1";

/// The goals of `mixed` for least-loaded's fast-request p99: at most this many times
/// prefork's, and at most this many times the kernel hash's, in the same run.
pub const FAST_P99_VS_PREFORK: f64 = 1.2;
pub const FAST_P99_VS_HASH: f64 = 0.5;

/// "1.35×, missed (13% over)": a ratio against a ceiling.
fn ratio_against(ratio: f64, ceiling: f64) -> String {
    if !ratio.is_finite() {
        return "-".into();
    }
    let verdict = crate::scenarios::cost::against_ceiling(ratio, ceiling);
    format!("{ratio:.2}×, {verdict}")
}

impl Latency {
    /// One cell: fresh processes, the load, and (for `stuck`) worker 0 stopped for a while.
    /// Returns the recording, the workers' pids by index, and the daemon's stuck events.
    fn cell(&self, steering: &Steering, plan: &Plan) -> Result<(Recording, Vec<u32>, u64)> {
        let cluster = Cluster::start(cluster::next_addr(), steering, WORKERS, SAMPLE_MS)?;
        let pids = cluster.worker_pids();
        let mut target = Target::new(cluster.addr);
        target.paths = self.paths();
        target.timeout = Duration::from_secs(10);
        let requests = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
        let mut load = OpenLoop::new(target, plan.rate, requests);
        load.time_limit = plan.duration + Duration::from_secs(5);
        let stopped = pids[0];
        let recording = std::thread::scope(|scope| -> Result<Recording> {
            let stopper = (self.kind == Kind::Stuck).then(|| {
                scope.spawn(move || -> Result<()> {
                    std::thread::sleep(plan.stop_at);
                    daemon::signal(stopped, libc::SIGSTOP)?;
                    std::thread::sleep(plan.stop_for);
                    daemon::signal(stopped, libc::SIGCONT)
                })
            });
            let recording = load.run_blocking().context("running the load");
            if let Some(stopper) = stopper {
                match stopper.join() {
                    Ok(r) => r.context("stopping and resuming worker 0")?,
                    Err(_) => bail!("the stopping thread panicked"),
                }
            }
            recording
        })?;
        let stuck_events = cluster.stuck_events();
        Ok((recording, pids, stuck_events))
    }

    fn report(
        &self,
        plan: &Plan,
        merged: &[Merged],
        requests_csv: Table,
        machine: Vec<String>,
    ) -> Result<Report> {
        let mut preamble = machine;
        preamble.push(crate::cluster::OTHERS_NOTE.into());
        preamble.push(format!(
            "{WORKERS} `reuseport echo` workers (one request at a time each); the daemon samples \
             every {SAMPLE_MS} ms (`--sample-ms {SAMPLE_MS}`, default `--stuck-ms 50`); kernel \
             hash: no daemon, workers unregistered; prefork: no daemon, every worker accepts \
             from one shared listening socket; haproxy: HAProxy (`mode tcp`, `nbthread` = \
             cores, no health checks) in front of the workers on ports of their own"
        ));
        preamble.push(format!(
            "Open loop: {} requests/s for {:.1} s per cell, each on a new connection; latency from \
             the request's scheduled send time to the end of its response; {} rounds, steerings \
             in an order rotated each round, fresh processes and port for every cell",
            plan.rate,
            plan.duration.as_secs_f64(),
            plan.rounds
        ));
        match self.kind {
            Kind::Stuck => preamble.push(format!(
                "Worker w0 stopped (SIGSTOP) {:.1} s into each cell and resumed (SIGCONT) {:.1} s \
                 later; requests are `GET /sleep?ms=1`",
                plan.stop_at.as_secs_f64(),
                plan.stop_for.as_secs_f64()
            )),
            Kind::Mixed => preamble.push(
                "Requests: `GET /sleep?ms=1`, and `GET /sleep?ms=50` for 10% of them at random \
                 places (the same sequence for every steering)"
                    .into(),
            ),
        }
        let mut headers = vec![
            "steering", "requests", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        ];
        if self.kind == Kind::Stuck {
            headers.push("stuck events");
        }
        let mut table = Table::new(&headers);
        let mut csv = Table::new(&[
            "steering",
            "requests",
            "failed",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "stuck_events",
            "per_worker",
            "fast_requests",
            "fast_p50_ms",
            "fast_p90_ms",
            "fast_p99_ms",
            "fast_p999_ms",
            "fast_max_ms",
        ]);
        let mut fast = Table::new(&[
            "steering",
            "fast requests",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
        ]);
        let fast_p99 = |steering: Steering| {
            merged
                .iter()
                .find(|m| m.steering == steering)
                .and_then(|m| fast_quantiles(&m.fast_ms))
                .map_or(f64::NAN, |q| q[2])
        };
        let (prefork_p99, hash_p99) = (fast_p99(Steering::Prefork), fast_p99(Steering::KernelHash));
        let mut goals = Table::new(&[
            "steering",
            "fast p99 ms",
            "vs prefork (goal for least-loaded ≤ 1.2×)",
            "vs kernel hash (goal for least-loaded ≤ 0.5×)",
        ]);
        let mut worker_headers = vec!["steering".to_owned()];
        worker_headers.extend((0..WORKERS).map(|w| format!("w{w}")));
        worker_headers.extend(["max/min".to_owned(), "Jain".to_owned()]);
        let mut workers = Table {
            headers: worker_headers,
            rows: Vec::new(),
        };
        let mut cdfs = Vec::new();
        let mut bars = Vec::new();
        for m in merged {
            let label = m.steering.label();
            let q = |q: f64| m.recording.as_ref().map_or(0.0, |r| ms(r.quantile(q)));
            let max = m.recording.as_ref().map_or(0.0, |r| ms(r.max()));
            let mut row = vec![
                label.clone(),
                m.requests.to_string(),
                m.failed.to_string(),
                num(q(0.5)),
                num(q(0.9)),
                num(q(0.99)),
                num(q(0.999)),
                num(max),
            ];
            if self.kind == Kind::Stuck {
                row.push(if matches!(m.steering, Steering::Program { .. }) {
                    m.stuck_events.to_string()
                } else {
                    "-".into()
                });
            }
            table.push(row);
            csv.push(vec![
                label.clone(),
                m.requests.to_string(),
                m.failed.to_string(),
                format!("{:.3}", q(0.5)),
                format!("{:.3}", q(0.9)),
                format!("{:.3}", q(0.99)),
                format!("{:.3}", q(0.999)),
                format!("{max:.3}"),
                m.stuck_events.to_string(),
                m.per_worker
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
            let fq = fast_quantiles(&m.fast_ms);
            if let Some(row) = csv.rows.last_mut() {
                row.push(m.fast_ms.len().to_string());
                row.extend((0..5).map(|i| fq.map_or(String::new(), |q| format!("{:.3}", q[i]))));
            }
            let mut fast_row = vec![label.clone(), m.fast_ms.len().to_string()];
            fast_row.extend((0..5).map(|i| fq.map_or("-".into(), |q| num(q[i]))));
            fast.push(fast_row);
            let p99 = fq.map_or(f64::NAN, |q| q[2]);
            goals.push(vec![
                label.clone(),
                num(p99),
                if m.steering == Steering::Prefork {
                    "(reference)".into()
                } else {
                    ratio_against(p99 / prefork_p99, FAST_P99_VS_PREFORK)
                },
                if m.steering == Steering::KernelHash {
                    "(reference)".into()
                } else {
                    ratio_against(p99 / hash_p99, FAST_P99_VS_HASH)
                },
            ]);
            let d = Distribution::new(m.per_worker.clone());
            let mut row = vec![label.clone()];
            row.extend(m.per_worker.iter().map(u64::to_string));
            row.push(format!("{:.2}", d.max_over_min()));
            row.push(format!("{:.4}", d.jain()));
            workers.push(row);
            if let Some(r) = &m.recording {
                cdfs.push((
                    label.clone(),
                    r.cdf().into_iter().map(|(d, f)| (ms(d), f)).collect(),
                ));
            }
            bars.push((label, m.per_worker.clone()));
        }
        let failures: u64 = merged.iter().map(|m| m.failed).sum();
        let mut text = "Latency of answered requests, all rounds merged (HdrHistogram, 3 \
                        significant digits)."
            .to_owned();
        if failures > 0 {
            let first = merged.iter().find_map(|m| m.first_error.clone());
            text.push_str(&format!(
                " Failed requests are not in the latencies (first error: {}).",
                first.unwrap_or_default()
            ));
        }
        let plots = vec![
            (
                "cdf".to_owned(),
                format!("{}: latency CDF per steering", self.name),
                plot::latency_cdf(&format!("{}: latency CDF", self.name), &cdfs)?,
            ),
            (
                "workers".to_owned(),
                format!("{}: requests per worker", self.name),
                plot::worker_bars(
                    &format!("{}: share of requests per worker", self.name),
                    &bars,
                )?,
            ),
        ];
        let mut sections = vec![Section {
            heading: "Latency".into(),
            text,
            table: Some(table),
            extra: String::new(),
        }];
        if self.kind == Kind::Mixed {
            sections.push(Section {
                heading: "Fast requests".into(),
                text: "The 1 ms requests alone (90% of them): how long the fast requests wait \
                       behind slow ones. Nearest-rank percentiles over every answered fast \
                       request of every round."
                    .into(),
                table: Some(fast),
                extra: String::new(),
            });
            sections.push(Section {
                heading: "Goals".into(),
                text: format!(
                    "For `least-loaded`: a fast-request p99 within {FAST_P99_VS_PREFORK}× of \
                     prefork's (the central queue) in the same run, and at most \
                     {FAST_P99_VS_HASH}× the kernel hash's. Every steering's ratios are shown; \
                     the goals are stated for least-loaded."
                ),
                table: Some(goals),
                extra: String::new(),
            });
        }
        Ok(Report {
            scenario: self.name.into(),
            title: self.title.into(),
            preamble,
            sections: {
                sections.extend([Section {
                    heading: "Requests answered per worker".into(),
                    text: match self.kind {
                        Kind::Stuck => "w0 is the worker stopped in each cell.".into(),
                        Kind::Mixed => String::new(),
                    },
                    table: Some(workers),
                    extra: String::new(),
                }]);
                sections
            },
            csv,
            extra_csv: vec![("requests".into(), requests_csv)],
            plots,
        })
    }
}

/// p50, p90, p99, p99.9 and max of latencies in ms (any order); `None` when there are none.
fn fast_quantiles(latencies: &[f64]) -> Option<[f64; 5]> {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |q| samples::quantile(&sorted, q);
    Some([q(0.5)?, q(0.9)?, q(0.99)?, q(0.999)?, q(1.0)?])
}

/// Per-worker counts keyed by pid, in worker order (for tests and callers that hold pids).
pub fn by_worker(counts: &BTreeMap<u32, u64>, pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|p| counts.get(p).copied().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_of_mixed_requests_are_slow() {
        let paths = MIXED.paths();
        let slow = paths.iter().filter(|p| p.ends_with("ms=50")).count();
        assert!((70..=130).contains(&slow), "{slow} slow of 1000");
        assert_eq!(STUCK.paths(), ["/sleep?ms=1"]);
    }

    #[test]
    fn fast_requests_are_told_by_their_path() {
        let paths = MIXED.paths();
        let fast = (0..2000).filter(|&i| is_fast(&paths, i)).count();
        let slow_paths = paths.iter().filter(|p| p.as_str() != FAST_PATH).count();
        assert_eq!(fast, 2 * (1000 - slow_paths));
        assert!(!is_fast(&[], 0));
        let q = fast_quantiles(&[3.0, 1.0, 2.0, 100.0]).unwrap();
        assert_eq!(q, [2.0, 100.0, 100.0, 100.0, 100.0]);
        assert!(fast_quantiles(&[]).is_none());
        assert_eq!(ratio_against(1.5, 1.2), "1.50×, missed (25% over)");
        assert_eq!(ratio_against(f64::NAN, 1.2), "-");
    }

    #[test]
    fn counts_follow_worker_order() {
        let counts = BTreeMap::from([(7, 3), (9, 5)]);
        assert_eq!(by_worker(&counts, &[9, 8, 7]), [5, 0, 3]);
    }
}
