//! `monitor`: what the daemon's health monitor costs. A daemon sampling every 5 ms with 64
//! registered `reuseport echo` workers; its CPU time (utime + stime from /proc/PID/stat) over
//! idle windows and over windows under a moderate open-loop load, alternated.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reuseport_user::{
    loadgen::{OpenLoop, Target},
    Policy,
};

use crate::{
    cluster::{self, Cluster, Steering},
    machine::Watch,
    report::{num, Report, Section, Table},
    samples::Summary,
    scenario::{Options, Scenario},
};

const WORKERS: usize = 64;
const SAMPLE_MS: u64 = 5;

pub struct Monitor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Load,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Load => "under load",
        }
    }
}

impl Scenario for Monitor {
    fn name(&self) -> &'static str {
        "monitor"
    }

    fn about(&self) -> &'static str {
        "CPU of the daemon (--sample-ms 5) monitoring 64 workers, idle and under load, in % of one core"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let (window, rate, default_rounds) = if options.quick {
            (Duration::from_secs(1), 200.0, 1)
        } else {
            (Duration::from_secs(10), 500.0, 2)
        };
        let rounds = options.rounds.unwrap_or(default_rounds);
        let watch = Watch::start();
        let steering = Steering::daemon(Policy::LeastLoaded);
        let cluster = Cluster::start(cluster::next_addr(), &steering, WORKERS, SAMPLE_MS)?;
        let daemon = cluster.daemon_pid().context("no daemon")?;
        // Let registration settle before measuring.
        std::thread::sleep(Duration::from_millis(500));
        let progress = crate::progress::bar("monitor", (2 * rounds) as u64);
        let mut windows = Vec::new();
        for round in 0..rounds {
            for phase in [Phase::Idle, Phase::Load] {
                let before = cluster::cpu_time(daemon)?;
                let start = Instant::now();
                let mut requests = 0;
                match phase {
                    Phase::Idle => std::thread::sleep(window),
                    Phase::Load => {
                        let n = (rate * window.as_secs_f64()) as u64;
                        let mut load = OpenLoop::new(Target::new(cluster.addr), rate, n);
                        load.time_limit = window;
                        let r = load.run_blocking()?;
                        requests = r.answered();
                    }
                }
                let wall = start.elapsed();
                let cpu = cluster::cpu_time(daemon)?.saturating_sub(before);
                let share = cpu.as_secs_f64() / wall.as_secs_f64();
                progress.suspend(|| {
                    eprintln!(
                        "monitor: round {}/{rounds} {:<10} daemon CPU {:.2}% of one core",
                        round + 1,
                        phase.label(),
                        100.0 * share
                    )
                });
                windows.push((phase, wall, cpu, requests));
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        let status = cluster.status()?;
        let registered = status.workers.len();

        let mut preamble = watch.lines();
        preamble.push(crate::cluster::OTHERS_NOTE.into());
        preamble.push(format!(
            "`reuseport run --sample-ms {SAMPLE_MS} --policy least-loaded` with {registered} \
             registered `reuseport echo` workers (of {WORKERS} started); windows of {:.0} s, \
             idle and under an open-loop load of {rate} new-connection requests/s, alternated, \
             {rounds} rounds",
            window.as_secs_f64()
        ));
        preamble.push(
            "Daemon CPU: utime + stime from /proc/PID/stat (10 ms ticks) over the window, \
             divided by the window's wall time"
                .into(),
        );
        let mut table = Table::new(&[
            "phase",
            "windows",
            "daemon CPU (% of one core, median)",
            "min–max",
            "requests answered",
        ]);
        let mut csv = Table::new(&["phase", "wall_s", "cpu_s", "core_percent", "requests"]);
        for (phase, wall, cpu, requests) in &windows {
            csv.push(vec![
                phase.label().into(),
                format!("{:.3}", wall.as_secs_f64()),
                format!("{:.3}", cpu.as_secs_f64()),
                format!("{:.3}", 100.0 * cpu.as_secs_f64() / wall.as_secs_f64()),
                requests.to_string(),
            ]);
        }
        for phase in [Phase::Idle, Phase::Load] {
            let shares: Vec<f64> = windows
                .iter()
                .filter(|w| w.0 == phase)
                .map(|w| 100.0 * w.2.as_secs_f64() / w.1.as_secs_f64())
                .collect();
            let requests: u64 = windows.iter().filter(|w| w.0 == phase).map(|w| w.3).sum();
            let s = Summary::of(&shares);
            table.push(vec![
                phase.label().into(),
                shares.len().to_string(),
                s.map_or("-".into(), |s| format!("{}%", num(s.median))),
                s.map_or("-".into(), |s| format!("{}–{}%", num(s.min), num(s.max))),
                requests.to_string(),
            ]);
        }
        Ok(Report {
            scenario: "monitor".into(),
            title: format!(
                "Monitor: daemon CPU with {WORKERS} workers sampled every {SAMPLE_MS} ms"
            ),
            preamble,
            sections: vec![Section {
                heading: "Daemon CPU".into(),
                text: "The goal: under 2% of one core.".into(),
                table: Some(table),
                extra: String::new(),
            }],
            csv,
            extra_csv: Vec::new(),
            plots: Vec::new(),
        })
    }
}
