//! `reuseport demo`: the whole story in one command, inside a private network namespace. Four
//! independent `reuseport echo` workers share a port; clients first see the kernel's hash
//! (no daemon yet), then the daemon starts and the workers join it: round-robin, then weighted
//! 1:1:2:4, swapped live. One table per policy, checked: round-robin must be exact and weighted
//! in ratio, or the demo fails.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use reuseport_steer::netns;
use reuseport_testing::{
    distribution::Distribution,
    loadgen::{self, tally, Load},
};
use reuseport_worker::{protocol::Policy, ControlClient, GroupStatus, Request};

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

/// Child processes, killed when dropped so nothing outlives the demo.
struct Children {
    dir: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, exe: &Path, args: &[String]) -> anyhow::Result<u32> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.procs.push((name.to_owned(), child));
        Ok(pid)
    }

    fn stop(&mut self, name: &str) {
        if let Some((_, child)) = self.procs.iter_mut().find(|(n, _)| n == name) {
            // SIGTERM, so the daemon stops cleanly.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.procs {
            let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let _ = writeln!(out, "--- {name} ---\n{text}");
        }
        out
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.workers == WEIGHTS.len(),
        "the demo runs {} workers",
        WEIGHTS.len()
    );
    // First, before any thread exists: everything below lives in its own namespace.
    netns::enter_new().context("creating the demo's network namespace")?;
    let exe = std::env::current_exe().context("locating the reuseport binary")?;
    let dir = std::env::temp_dir().join(format!("reuseport-demo-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let control = dir.join("control.sock");
    let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
    let mut children = Children {
        dir,
        procs: Vec::new(),
    };
    let result = story(options, &exe, &control, addr, &mut children);
    if result.is_err() {
        eprintln!("{}", children.logs());
    }
    result
}

fn story(
    options: &DemoOptions,
    exe: &Path,
    control: &Path,
    addr: SocketAddr,
    children: &mut Children,
) -> anyhow::Result<()> {
    let control_arg = control.display().to_string();
    let mut workers = Vec::new();
    for i in 0..options.workers {
        let name = format!("w{i}");
        let args = [
            "echo",
            "--listen",
            &addr.to_string(),
            "--name",
            &name,
            "--control",
            &control_arg,
        ]
        .map(String::from);
        workers.push((children.spawn(&name, exe, &args)?, name));
    }
    println!(
        "reuseport demo: {} single-process echo workers share {addr} (private network namespace)\n",
        options.workers
    );
    wait_for_workers(addr, workers.len())?;

    let mut report = Report::new(workers);
    report.phase(
        "kernel hash (no program)",
        &Load::new(addr, options.connections, 4).run(),
        None,
    )?;

    // No pins: the demo leaves nothing behind in bpffs.
    let args = [
        "run",
        "--listen",
        &addr.to_string(),
        "--policy",
        "round-robin",
        "--no-pin",
        "--control",
        &control_arg,
    ]
    .map(String::from);
    children.spawn("daemon", exe, &args)?;
    let status = wait_for_registrations(control, options.workers)?;
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

    let mut client = ControlClient::connect(control)?;
    for w in &status.workers {
        let index: usize = w.name.trim_start_matches('w').parse()?;
        client.request(&Request::Weight {
            slot: w.slot,
            weight: WEIGHTS[index],
            group: None,
        })?;
    }
    client.request(&Request::PolicySet {
        policy: Policy::Weighted.into(),
        group: None,
    })?;
    let status = current_status(control)?;
    report.phase(
        "weighted 1:1:2:4 (swapped live)",
        &Load::new(addr, options.connections, 4).run(),
        Some(&status),
    )?;

    children.stop("daemon");
    report.check(options.connections)?;
    println!("demo passed: round-robin exact, weighted in ratio, no connection failed");
    Ok(())
}

/// Waits until every worker has answered once (they bind asynchronously).
fn wait_for_workers(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < count {
        if Instant::now() > deadline {
            bail!("workers did not come up on {addr} within 10 s");
        }
        match loadgen::request(addr, "/", Duration::from_secs(1)) {
            Ok(pid) => {
                seen.insert(pid);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok(())
}

fn current_status(control: &Path) -> anyhow::Result<GroupStatus> {
    crate::cli::fetch_status(control)?
        .into_iter()
        .next()
        .context("the daemon reports no group")
}

fn wait_for_registrations(control: &Path, workers: usize) -> anyhow::Result<GroupStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(status) = current_status(control) {
            if status.workers.len() == workers {
                return Ok(status);
            }
        }
        if Instant::now() > deadline {
            bail!("the workers did not register with the daemon within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
