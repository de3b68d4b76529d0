//! Real processes for the health scenarios: a `reuseport run` daemon and `reuseport echo`
//! workers on one port of the bench's private loopback. Everything started is killed when the
//! [`Cluster`] is dropped, and its temporary directory removed.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use reuseport_steer::Policy;
use reuseport_worker::{ControlClient, GroupStatus, Request};

/// The `reuseport` binary (see [`reuseport_testing::binary::locate`]).
pub fn reuseport_bin() -> Result<PathBuf> {
    Ok(reuseport_testing::binary::locate()?)
}

/// How the group is steered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Steering {
    /// No daemon; workers unregistered: the kernel's hash.
    KernelHash,
    /// A daemon with this policy and these extra flags (e.g. `--on-stuck skip`).
    Daemon { policy: Policy, flags: Vec<String> },
}

impl Steering {
    pub fn daemon(policy: Policy) -> Self {
        Self::Daemon {
            policy,
            flags: Vec::new(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::KernelHash => "kernel hash".into(),
            Self::Daemon { policy, flags } if flags.is_empty() => policy.name().into(),
            Self::Daemon { policy, flags } => format!("{} ({})", policy.name(), flags.join(" ")),
        }
    }
}

/// A daemon (maybe) and workers on one address.
pub struct Cluster {
    pub addr: SocketAddr,
    bin: PathBuf,
    dir: PathBuf,
    pub control: PathBuf,
    daemon: Option<Child>,
    workers: Vec<Child>,
    register: bool,
}

impl Cluster {
    /// Starts the daemon for `steering` (none for the kernel's hash) on `addr`, with
    /// `--sample-ms sample_ms`, and `workers` echo workers; returns once the workers answer
    /// (and, with a daemon, all are registered).
    pub fn start(
        addr: SocketAddr,
        steering: &Steering,
        workers: usize,
        sample_ms: u64,
    ) -> Result<Self> {
        let bin = reuseport_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "reuseport-bench-{}-{}",
            std::process::id(),
            addr.port()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let control = dir.join("control.sock");
        let mut cluster = Self {
            addr,
            bin,
            dir,
            control,
            daemon: None,
            workers: Vec::new(),
            register: *steering != Steering::KernelHash,
        };
        if let Steering::Daemon { policy, flags } = steering {
            let mut args = vec![
                "run".to_owned(),
                "--listen".into(),
                addr.to_string(),
                "--policy".into(),
                policy.name().into(),
                "--sample-ms".into(),
                sample_ms.to_string(),
                // Nothing pinned: each cell starts from a clean slate and leaves nothing.
                "--no-pin".into(),
            ];
            args.extend(flags.iter().cloned());
            let daemon = cluster.spawn("daemon", &args)?;
            cluster.daemon = Some(daemon);
            wait_for(Duration::from_secs(10), || cluster.control.exists())
                .context("the daemon did not create its control socket")?;
        }
        for i in 0..workers {
            cluster.add_worker(&format!("w{i}"))?;
        }
        cluster.wait_ready(workers)?;
        Ok(cluster)
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        Command::new(&self.bin)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {name}", self.bin.display()))
    }

    /// Starts one more echo worker; returns its pid.
    pub fn add_worker(&mut self, name: &str) -> Result<u32> {
        let mut args = vec![
            "echo".to_owned(),
            "--listen".into(),
            self.addr.to_string(),
            "--name".into(),
            name.into(),
        ];
        if !self.register {
            args.push("--no-register".into());
        }
        let child = self.spawn(name, &args)?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    /// Waits until `n` workers are registered (with a daemon) and the port answers.
    pub fn wait_ready(&self, n: usize) -> Result<()> {
        if self.daemon.is_some() {
            let mut last = 0;
            wait_for(Duration::from_secs(15), || {
                last = self.status().map_or(0, |s| {
                    s.workers
                        .iter()
                        .filter(|w| w.state == reuseport_worker::protocol::WorkerState::Active)
                        .count()
                });
                last == n
            })
            .with_context(|| format!("{last} of {n} workers registered"))?;
        }
        wait_for(Duration::from_secs(15), || {
            reuseport_testing::loadgen::request(self.addr, "/", Duration::from_secs(1)).is_ok()
        })
        .context("the workers do not answer")
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn status(&self) -> Result<GroupStatus> {
        let reply = ControlClient::connect(&self.control)?.request(&Request::Status)?;
        reply
            .groups
            .and_then(|g| g.into_iter().next())
            .context("no group in the daemon's status")
    }

    pub fn set_policy(&self, policy: Policy) -> Result<()> {
        ControlClient::connect(&self.control)?.request(&Request::PolicySet {
            policy: policy.into(),
            group: None,
        })?;
        Ok(())
    }

    /// Kills the worker started `index`-th (SIGKILL) and reaps it.
    pub fn kill_worker(&mut self, index: usize) -> Result<()> {
        let child = self.workers.get_mut(index).context("no such worker")?;
        child.kill().context("killing a worker")?;
        child.wait().context("reaping a worker")?;
        Ok(())
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(self.daemon.as_mut()) {
            // A stopped worker dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to `pid` (SIGSTOP makes a worker stuck, SIGCONT frees it).
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) with a pid of a child this process started.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill()");
    }
    Ok(())
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = crate::cpu::parse_own(&text).context("parsing /proc/PID/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A fresh port on the namespace's loopback for each cluster of a run, so no cell meets the
/// leftovers (TIME_WAIT, closing listeners) of the one before.
pub fn next_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(18_000);
    SocketAddr::from(([127, 0, 0, 1], NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// For the reports of scenarios that run processes: the CPU line counts them as others.
pub const OTHERS_NOTE: &str = "In the CPU line above, \"other processes\" include this \
                               scenario's own daemon and workers, besides any other work on \
                               the machine";
