//! `--scenario FILE`: an experiment described in a TOML file (docs/experiments.md), run with the
//! interleaving, tables and plots of the built-in latency scenarios, so a new experiment needs
//! no Rust:
//!
//! ```toml
//! name = "slow-tail"              # output file stem
//! title = "10% of requests 20x slower"
//! workers = 4                     # `reuseport echo` workers, one request at a time each,
//!                                 # or one [[worker]] entry each (below)
//! rounds = 3                      # cells per steering, interleaved, order rotated each round
//! trace = true                    # every decision into <name>-trace.csv (`reuseport trace`)
//!
//! [service]                       # each request's service time (the same sequence for every
//! kind = "bimodal"                # steering): fixed | uniform | exponential | bimodal
//! fast_ms = 1
//! slow_ms = 20
//! slow_fraction = 0.1
//!
//! [load]                          # open loop at `rate` requests/s, or closed loop with
//! rate = 200                      # `concurrency` clients; for `duration_s` seconds a cell
//! duration_s = 4
//!
//! [[worker]]                      # a worker's own service time per request, on top of the
//! service = "fixed:0"             # request's: fixed:MS, uniform:MIN:MAX, exp:MEAN,
//! [[worker]]                      # bimodal:FAST:SLOW:FRACTION
//! service = "exp:5"
//!
//! [[steering]]
//! kernel = true                   # no program: the kernel's hash
//! [[steering]]
//! policy = "least-loaded"         # a built-in policy
//! [[steering]]
//! program = "target/policies/least_recent.o"   # a policy program, over `policy` (default
//! policy = "round-robin"                        # round-robin) when it defers
//! ```

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use reuseport_steer::Policy;
use reuseport_testing::{
    daemon::Fixture,
    distribution::Distribution,
    loadgen::{ClosedLoop, OpenLoop, Recording, Target},
};
use reuseport_worker::{trace::TraceEvent, ControlClient, Request};
use serde::Deserialize;

use crate::{
    cluster, plot,
    report::{num, Report, Section, Table},
    scenario::{Options, Scenario},
    steering::Steering,
};

/// The file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    /// How many workers (default 4, or as many as `[[worker]]` entries).
    #[serde(default)]
    pub workers: Option<usize>,
    /// The workers one by one, when they differ: `service` is the worker's own service time
    /// per request, on top of what the request asks (`reuseport echo --service-ms`).
    #[serde(default)]
    pub worker: Vec<WorkerSpec>,
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// Record every decision of the steering program (`reuseport trace`) into
    /// `<name>-trace.csv`, for offline analysis (cells with a daemon only).
    #[serde(default)]
    pub trace: bool,
    #[serde(default)]
    pub service: Service,
    pub load: Load,
    pub steering: Vec<SteeringSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// `fixed:MS`, `uniform:MIN:MAX`, `exp:MEAN` or `bimodal:FAST:SLOW:FRACTION`.
    #[serde(default)]
    pub service: Option<String>,
}

/// Checks a worker's service spec as `reuseport echo --service-ms` reads it.
fn check_service(spec: &str) -> Result<()> {
    let mut parts = spec.split(':');
    let kind = parts.next().unwrap_or_default();
    let numbers: Option<Vec<f64>> = parts
        .map(|p| p.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0))
        .collect();
    let ok = match (kind, numbers.as_deref()) {
        ("fixed" | "exp", Some([_])) => true,
        ("uniform", Some([min, max])) => min <= max,
        ("bimodal", Some([_, _, fraction])) => *fraction <= 1.0,
        _ => false,
    };
    ensure!(
        ok,
        "worker service {spec:?}: give fixed:MS, uniform:MIN:MAX, exp:MEAN or \
         bimodal:FAST:SLOW:FRACTION (milliseconds, a fraction in 0..=1)"
    );
    Ok(())
}

fn default_rounds() -> usize {
    3
}

/// A request's service time, in ms, drawn per request from a fixed seed.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Service {
    Fixed {
        ms: u64,
    },
    Uniform {
        min_ms: u64,
        max_ms: u64,
    },
    Exponential {
        mean_ms: f64,
    },
    Bimodal {
        fast_ms: u64,
        slow_ms: u64,
        slow_fraction: f64,
    },
}

impl Default for Service {
    fn default() -> Self {
        Self::Fixed { ms: 1 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Open loop: requests per second.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Closed loop: clients, each sending its next request when the last is answered.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default = "default_duration")]
    pub duration_s: f64,
}

fn default_duration() -> f64 {
    4.0
}

/// One steering to compare.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringSpec {
    /// The kernel's hash: no daemon, workers unregistered.
    #[serde(default)]
    pub kernel: bool,
    /// A built-in policy (with `program`: the one it defers to).
    #[serde(default)]
    pub policy: Option<String>,
    /// A policy program's object, relative to the file's directory or absolute.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// A label for the tables (default: the policy's or the program's name).
    #[serde(default)]
    pub label: Option<String>,
}

/// A steering ready to run.
#[derive(Clone, Debug)]
struct Cell {
    label: String,
    steering: Steering,
    program: Option<PathBuf>,
}

/// The scenario a file describes.
pub struct FileScenario {
    name: &'static str,
    title: String,
    workers: usize,
    file: File,
    cells: Vec<Cell>,
}

/// Reads and checks a scenario file.
pub fn load(path: &std::path::Path) -> Result<FileScenario> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the scenario file {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("scenario file {}", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    FileScenario::new(file, base).with_context(|| format!("scenario file {}", path.display()))
}

impl FileScenario {
    fn new(file: File, base: &std::path::Path) -> Result<Self> {
        ensure!(
            !file.name.is_empty()
                && file
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "name {:?}: letters, digits, - and _ only (it names the output files)",
            file.name
        );
        let workers = match (file.workers, file.worker.len()) {
            (None, 0) => 4,
            (None, n) => n,
            (Some(n), 0) => n,
            (Some(n), m) if n == m => n,
            (Some(n), m) => {
                bail!("workers = {n} but {m} [[worker]] entries: give one or the other")
            }
        };
        ensure!((1..=64).contains(&workers), "workers: 1 to 64");
        for w in &file.worker {
            if let Some(spec) = &w.service {
                check_service(spec)?;
            }
        }
        ensure!(file.rounds >= 1, "rounds: at least 1");
        ensure!(file.load.duration_s > 0.0, "load.duration_s: more than 0");
        match (file.load.rate, file.load.concurrency) {
            (Some(rate), None) if rate > 0.0 => {}
            (None, Some(c)) if c > 0 => {}
            _ => bail!("load: give either rate (requests/s, open loop) or concurrency (clients, closed loop)"),
        }
        ensure!(!file.steering.is_empty(), "no [[steering]] to compare");
        let cells = file
            .steering
            .iter()
            .map(|spec| cell(spec, base))
            .collect::<Result<Vec<_>>>()?;
        let title = file
            .title
            .clone()
            .unwrap_or_else(|| format!("Scenario {}", file.name));
        Ok(Self {
            name: Box::leak(file.name.clone().into_boxed_str()),
            title,
            workers,
            file,
            cells,
        })
    }

    /// `paths[i]` is request `i`'s: `/sleep?ms=N` drawn from the service distribution.
    fn paths(&self) -> Vec<String> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            state = splitmix(state);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..1000)
            .map(|_| {
                let ms = match self.file.service {
                    Service::Fixed { ms } => ms,
                    Service::Uniform { min_ms, max_ms } => {
                        min_ms + (uniform() * (max_ms.saturating_sub(min_ms) + 1) as f64) as u64
                    }
                    Service::Exponential { mean_ms } => {
                        (-(1.0 - uniform()).ln() * mean_ms).round() as u64
                    }
                    Service::Bimodal {
                        fast_ms,
                        slow_ms,
                        slow_fraction,
                    } => {
                        if uniform() < slow_fraction {
                            slow_ms
                        } else {
                            fast_ms
                        }
                    }
                };
                format!("/sleep?ms={ms}")
            })
            .collect()
    }
}

fn cell(spec: &SteeringSpec, base: &std::path::Path) -> Result<Cell> {
    let policy = match &spec.policy {
        Some(name) => Some(
            name.parse::<Policy>()
                .map_err(|e| anyhow::anyhow!("steering policy {name:?}: {e}"))?,
        ),
        None => None,
    };
    let (steering, program, label) = match (spec.kernel, policy, &spec.program) {
        (true, None, None) => (Steering::KernelHash, None, "kernel hash".to_owned()),
        (true, _, _) => bail!("a steering with kernel = true takes no policy or program"),
        (false, Some(p), None) => (Steering::policy(p), None, p.name().to_owned()),
        (false, p, Some(path)) => {
            let path = base.join(path);
            ensure!(
                path.is_file(),
                "program {}: no such file (build it with `cargo xtask build-policy NAME`)",
                path.display()
            );
            let stem = path
                .file_stem()
                .map_or_else(|| "program".into(), |s| s.to_string_lossy().into_owned());
            let p = p.unwrap_or(Policy::RoundRobin);
            (Steering::policy(p), Some(path), format!("program {stem}"))
        }
        (false, None, None) => bail!("a steering needs kernel = true, a policy or a program"),
    };
    Ok(Cell {
        label: spec.label.clone().unwrap_or(label),
        steering,
        program,
    })
}

/// A `trace` stream read by a thread of its own while a cell's load runs.
struct Tracing {
    stop: std::os::unix::net::UnixStream,
    reader: std::thread::JoinHandle<Result<Vec<TraceEvent>>>,
}

impl Tracing {
    fn start(control: &std::path::Path) -> Result<Self> {
        let mut client = ControlClient::connect(control)?;
        client.request(&Request::Trace {
            group: None,
            count: None,
        })?;
        let stop = client.stream().try_clone()?;
        let reader = std::thread::spawn(move || -> Result<Vec<TraceEvent>> {
            let mut events = Vec::new();
            loop {
                let reply = client.next_reply()?;
                match reply.trace {
                    Some(event) => events.push(event),
                    None => return Ok(events),
                }
            }
        });
        Ok(Self { stop, reader })
    }

    /// Ends the stream (any line from the client does) and returns what it carried.
    fn stop(mut self) -> Result<Vec<TraceEvent>> {
        use std::io::Write as _;
        // Give the last decisions of the load time to reach the stream.
        std::thread::sleep(Duration::from_millis(200));
        self.stop.write_all(b"{\"op\":\"status\"}\n")?;
        match self.reader.join() {
            Ok(events) => events,
            Err(_) => bail!("the trace reader panicked"),
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Scenario for FileScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        "an experiment described in a TOML file (--scenario FILE)"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let rounds = options.rounds.unwrap_or(self.file.rounds);
        let duration = if options.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(self.file.load.duration_s)
        };
        let n = self.cells.len();
        let mut recordings: Vec<Option<Recording>> = vec![None; n];
        let mut per_worker = vec![vec![0u64; self.workers]; n];
        let mut failed = vec![0u64; n];
        let mut trace = Table::new(&[
            "round", "steering", "mono_ns", "kind", "slot", "first", "policy", "outcome", "hash",
            "load", "cpu",
        ]);
        for round in 0..rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let (recording, pids, events) = self.cell(&self.cells[i], duration)?;
                let slot = |s: Option<u32>| s.map_or_else(String::new, |s| s.to_string());
                for e in events {
                    trace.push(vec![
                        round.to_string(),
                        self.cells[i].label.clone(),
                        e.mono_ns.to_string(),
                        e.kind,
                        slot(e.slot),
                        slot(e.first),
                        e.policy,
                        e.outcome,
                        format!("{:08x}", e.hash),
                        e.load.to_string(),
                        e.cpu.to_string(),
                    ]);
                }
                eprintln!(
                    "{}: round {}/{} {:<28} p50 {:>7} ms p99 {:>7} ms, {} failed",
                    self.name,
                    round + 1,
                    rounds,
                    self.cells[i].label,
                    num(ms(recording.quantile(0.5))),
                    num(ms(recording.quantile(0.99))),
                    recording.failed()
                );
                failed[i] += recording.failed();
                for (pid, count) in recording.per_worker() {
                    if let Some(w) = pids.iter().position(|&p| p == pid) {
                        per_worker[i][w] += count;
                    }
                }
                match &mut recordings[i] {
                    Some(all) => all
                        .histogram
                        .add(&recording.histogram)
                        .context("merging histograms")?,
                    None => recordings[i] = Some(recording),
                }
            }
        }
        let mut report = self.report(rounds, duration, &recordings, &per_worker, &failed)?;
        if self.file.trace {
            report.extra_csv.push(("trace".into(), trace));
        }
        Ok(report)
    }
}

impl FileScenario {
    /// One cell: fresh daemon and workers on a fresh port, the policy program loaded if any,
    /// then the load (traced if the file asks). Returns the recording, the workers' pids and
    /// the trace.
    fn cell(
        &self,
        cell: &Cell,
        duration: Duration,
    ) -> Result<(Recording, Vec<u32>, Vec<TraceEvent>)> {
        let cluster = self.start(&cell.steering)?;
        if let Some(program) = &cell.program {
            let path = program
                .canonicalize()
                .with_context(|| program.display().to_string())?;
            let path = path.to_str().context("non-UTF-8 program path")?;
            let out = cluster.cli(&["policy", "load", path])?;
            ensure!(
                out.status.success(),
                "policy load {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pids = cluster.worker_pids();
        let mut target = Target::new(cluster.addr);
        target.paths = self.paths();
        target.timeout = Duration::from_secs(10);
        let tracing = (self.file.trace && cell.steering != Steering::KernelHash)
            .then(|| Tracing::start(&cluster.control))
            .transpose()?;
        let recording = match (self.file.load.rate, self.file.load.concurrency) {
            (Some(rate), _) => {
                let requests = (rate * duration.as_secs_f64()).round() as u64;
                let mut load = OpenLoop::new(target, rate, requests);
                load.time_limit = duration + Duration::from_secs(5);
                load.run_blocking()
            }
            (None, concurrency) => {
                let mut load = ClosedLoop::new(target, concurrency.unwrap_or(1), u64::MAX);
                load.time_limit = duration;
                load.run_blocking()
            }
        }
        .context("running the load")?;
        let events = match tracing {
            Some(tracing) => tracing.stop()?,
            None => Vec::new(),
        };
        Ok((recording, pids, events))
    }

    /// The daemon (unless the kernel's hash steers) and the workers, each with its own
    /// service time if the file gives one, on a fresh port; as `cluster::start` does.
    fn start(&self, steering: &Steering) -> Result<Fixture> {
        let bin = reuseport_testing::binary::locate()?;
        let addr = cluster::next_addr();
        let mut fixture = Fixture::on(addr, &format!("bench-{}", addr.port()), bin)?;
        fixture.rust_log = Some("warn".into());
        fixture.register = *steering != Steering::KernelHash;
        if let Steering::Program { policy, flags } = steering {
            let mut args = vec!["--policy", policy.name(), "--sample-ms", "5", "--no-pin"];
            args.extend_from_slice(flags);
            fixture.start_daemon(&args)?;
        }
        for i in 0..self.workers {
            let service = self.file.worker.get(i).and_then(|w| w.service.as_deref());
            let extra: Vec<&str> = service.map_or_else(Vec::new, |s| vec!["--service-ms", s]);
            fixture.echo_with(&format!("w{i}"), &extra)?;
        }
        cluster::wait_ready(&fixture, self.workers)?;
        Ok(fixture)
    }

    fn report(
        &self,
        rounds: usize,
        duration: Duration,
        recordings: &[Option<Recording>],
        per_worker: &[Vec<u64>],
        failed: &[u64],
    ) -> Result<Report> {
        let load = match (self.file.load.rate, self.file.load.concurrency) {
            (Some(rate), _) => format!("open loop, {rate} requests/s"),
            (None, c) => format!("closed loop, {} clients", c.unwrap_or(1)),
        };
        let own: Vec<String> = self
            .file
            .worker
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.service.as_ref().map(|s| format!("w{i} {s}")))
            .collect();
        let mut preamble = vec![
            format!(
                "{} `reuseport echo` workers (one request at a time each); {load} for {:.1} s per \
                 cell, a new connection per request; service time asked by each request {:?}",
                self.workers,
                duration.as_secs_f64(),
                self.file.service
            ),
            format!(
                "{rounds} rounds, steerings in an order rotated each round, fresh processes and \
                 port for every cell"
            ),
        ];
        if !own.is_empty() {
            preamble.push(format!(
                "Workers' own service time per request, on top (ms): {}",
                own.join(", ")
            ));
        }
        let mut table = Table::new(&[
            "steering", "requests", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        ]);
        let mut csv = Table::new(&[
            "steering",
            "requests",
            "failed",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "per_worker",
            "jain",
        ]);
        let mut worker_headers = vec!["steering".to_owned()];
        worker_headers.extend((0..self.workers).map(|w| format!("w{w}")));
        worker_headers.extend(["max/min".to_owned(), "Jain".to_owned()]);
        let mut workers = Table {
            headers: worker_headers,
            rows: Vec::new(),
        };
        let mut cdfs = Vec::new();
        let mut bars = Vec::new();
        for (i, cell) in self.cells.iter().enumerate() {
            let r = recordings[i].as_ref();
            let q = |q: f64| r.map_or(0.0, |r| ms(r.quantile(q)));
            let max = r.map_or(0.0, |r| ms(r.max()));
            let requests = r.map_or(0, |r| r.histogram.len()) + failed[i];
            let d = Distribution::new(per_worker[i].clone());
            table.push(vec![
                cell.label.clone(),
                requests.to_string(),
                failed[i].to_string(),
                num(q(0.5)),
                num(q(0.9)),
                num(q(0.99)),
                num(q(0.999)),
                num(max),
            ]);
            csv.push(vec![
                cell.label.clone(),
                requests.to_string(),
                failed[i].to_string(),
                format!("{:.3}", q(0.5)),
                format!("{:.3}", q(0.9)),
                format!("{:.3}", q(0.99)),
                format!("{:.3}", q(0.999)),
                format!("{max:.3}"),
                per_worker[i]
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                format!("{:.4}", d.jain()),
            ]);
            let mut row = vec![cell.label.clone()];
            row.extend(per_worker[i].iter().map(u64::to_string));
            row.push(format!("{:.2}", d.max_over_min()));
            row.push(format!("{:.4}", d.jain()));
            workers.push(row);
            if let Some(r) = r {
                cdfs.push((
                    cell.label.clone(),
                    r.cdf().into_iter().map(|(d, f)| (ms(d), f)).collect(),
                ));
            }
            bars.push((cell.label.clone(), per_worker[i].clone()));
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
        Ok(Report {
            scenario: self.name.into(),
            title: self.title.clone(),
            preamble,
            sections: vec![
                Section {
                    heading: "Latency".into(),
                    text: "Latency of answered requests, all rounds merged (HdrHistogram, 3 \
                           significant digits)."
                        .into(),
                    table: Some(table),
                    extra: String::new(),
                },
                Section {
                    heading: "Requests answered per worker".into(),
                    text: String::new(),
                    table: Some(workers),
                    extra: String::new(),
                },
            ],
            csv,
            extra_csv: Vec::new(),
            plots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileScenario> {
        let file: File = toml::from_str(text)?;
        FileScenario::new(file, std::path::Path::new("."))
    }

    #[test]
    fn a_file_names_its_steerings_and_load() -> Result<()> {
        let s = parse(
            r#"
            name = "tail"
            workers = 3
            [service]
            kind = "bimodal"
            fast_ms = 1
            slow_ms = 20
            slow_fraction = 0.1
            [load]
            rate = 100
            [[steering]]
            kernel = true
            [[steering]]
            policy = "p2c"
            "#,
        )?;
        assert_eq!(s.name(), "tail");
        let labels: Vec<_> = s.cells.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["kernel hash", "p2c"]);
        let slow = s.paths().iter().filter(|p| p.ends_with("ms=20")).count();
        assert!((60..=140).contains(&slow), "{slow} slow of 1000");
        Ok(())
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| {
            parse(text)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(
            err("name = \"x\"\n[load]\nrate = 1\n[[steering]]\npolicy = \"nope\"").contains("nope")
        );
        assert!(err("name = \"x\"\n[load]\n[[steering]]\nkernel = true").contains("rate"));
        assert!(
            err("name = \"x\"\n[load]\nrate = 1\n[[steering]]\nprogram = \"/no/such.o\"")
                .contains("build-policy")
        );
        assert!(err("name = \"x\"\n[load]\nrate = 1\nsteering = []").contains("steering"));
        assert!(
            err("name = \"../x\"\n[load]\nrate = 1\n[[steering]]\nkernel = true").contains("name")
        );
        let both =
            "name = \"x\"\nworkers = 3\n[[worker]]\n[load]\nrate = 1\n[[steering]]\nkernel = true";
        assert!(err(both).contains("[[worker]]"));
        let slow = "name = \"x\"\n[[worker]]\nservice = \"slow\"\n[load]\nrate = 1\n[[steering]]\nkernel = true";
        assert!(err(slow).contains("fixed:MS"));
    }
}
