//! Real processes for the health scenarios: a `reuseport run` daemon and `reuseport echo`
//! workers on one port of the bench's private loopback, as the shared process fixture
//! ([`reuseport_testing::daemon::Fixture`]) runs them, steered as a scenario asks; and the
//! anchors' processes ([`Cluster`]): the same workers on one shared socket (prefork), or on
//! ports of their own behind HAProxy.

use std::{
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use reuseport_testing::{daemon::Fixture, loadgen, wait};

use crate::{haproxy, steering::Steering};

/// Starts the daemon for `steering` (none for the kernel's hash) on `addr`, with
/// `--sample-ms sample_ms` and nothing pinned (each cell starts from a clean slate and leaves
/// nothing), and `workers` echo workers; returns once the workers answer (and, with a daemon,
/// all are registered).
pub fn start(
    addr: SocketAddr,
    steering: &Steering,
    workers: usize,
    sample_ms: u64,
) -> Result<Fixture> {
    if steering.is_anchor() {
        bail!(
            "{} is not run by the daemon's fixture: use Cluster",
            steering.label()
        );
    }
    let bin = reuseport_testing::binary::locate()?;
    let mut cluster = Fixture::on(addr, &format!("bench-{}", addr.port()), bin)?;
    cluster.rust_log = Some("warn".into());
    cluster.register = *steering != Steering::KernelHash;
    if let Steering::Program { policy, flags } = steering {
        let sample_ms = sample_ms.to_string();
        let mut args = vec![
            "--policy",
            policy.name(),
            "--sample-ms",
            &sample_ms,
            "--no-pin",
        ];
        args.extend_from_slice(flags);
        cluster.start_daemon(&args)?;
    }
    cluster.echo_workers(workers)?;
    wait_ready(&cluster, workers)?;
    Ok(cluster)
}

/// Waits until `n` workers are registered and active (with a daemon) and the port answers.
pub fn wait_ready(cluster: &Fixture, n: usize) -> Result<()> {
    if cluster.daemon_pid().is_some() {
        cluster.wait_active(n)?;
    }
    cluster.wait_answers(1)
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = crate::cpu::parse_own(&text).context("parsing /proc/PID/stat")?;
    Ok(crate::cpu::ticks(ticks))
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

/// `reuseport echo` workers on one address, steered one way: by the kernel's hash or the
/// daemon's program (the shared [`Fixture`]), or as an anchor (one shared socket, HAProxy).
/// Everything started is killed on drop.
pub struct Cluster {
    /// Where the clients connect.
    pub addr: SocketAddr,
    /// The daemon and its workers; for an anchor, no process, only its private directory.
    pub fixture: Fixture,
    /// An anchor's workers, in order.
    own: Vec<Child>,
    /// HAProxy, in front of the workers.
    proxy: Option<Child>,
    /// Prefork: the shared listening socket, kept open while the workers run.
    _shared: Option<socket2::Socket>,
}

impl Cluster {
    /// Starts `workers` echo workers steered by `steering` on `addr` (the daemon with
    /// `--sample-ms sample_ms` where there is one); returns once they answer.
    pub fn start(
        addr: SocketAddr,
        steering: &Steering,
        workers: usize,
        sample_ms: u64,
    ) -> Result<Self> {
        let mut cluster = match steering {
            Steering::Prefork | Steering::Haproxy(_) => Self {
                addr,
                fixture: Fixture::on(
                    addr,
                    &format!("bench-{}", addr.port()),
                    reuseport_testing::binary::locate()?,
                )?,
                own: Vec::new(),
                proxy: None,
                _shared: None,
            },
            Steering::Noop => bail!("the no-op program is for listener pools only"),
            _ => {
                return Ok(Self {
                    addr,
                    fixture: start(addr, steering, workers, sample_ms)?,
                    own: Vec::new(),
                    proxy: None,
                    _shared: None,
                })
            }
        };
        match steering {
            Steering::Prefork => cluster.prefork(workers)?,
            Steering::Haproxy(balance) => cluster.haproxy(*balance, workers)?,
            _ => {}
        }
        Ok(cluster)
    }

    /// One listening socket, inherited by every worker.
    fn prefork(&mut self, workers: usize) -> Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(self.addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&self.addr.into())
            .with_context(|| format!("binding {}", self.addr))?;
        socket.listen(1024)?;
        let fd = socket.as_raw_fd();
        for i in 0..workers {
            let mut cmd = self.echo_command(&format!("w{i}"), self.addr)?;
            cmd.args(["--shared-fd", &fd.to_string()]);
            // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on an fd this
            // process owns, in the child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            self.own
                .push(cmd.spawn().context("starting an echo worker")?);
        }
        self._shared = Some(socket);
        // The workers share one queue: a single answer says it is served.
        self.fixture.wait_answers(1)
    }

    /// Workers on ports of their own, HAProxy on the cluster's address in front of them.
    fn haproxy(&mut self, balance: crate::steering::Balance, workers: usize) -> Result<()> {
        let backends: Vec<SocketAddr> = (0..workers).map(|_| next_addr()).collect();
        for (i, b) in backends.iter().enumerate() {
            let cmd = &mut self.echo_command(&format!("w{i}"), *b)?;
            self.own
                .push(cmd.spawn().context("starting an echo worker")?);
        }
        for b in &backends {
            answers(*b)?;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.proxy = Some(haproxy::start(
            &self.fixture.dir,
            self.addr,
            &backends,
            balance,
            threads,
        )?);
        answers(self.addr).with_context(|| {
            let log = fs::read_to_string(self.fixture.dir.join("haproxy.log")).unwrap_or_default();
            format!("haproxy did not answer; its log: {log}")
        })
    }

    /// `reuseport echo` unregistered on `addr`, logging into the cluster's directory.
    fn echo_command(&self, name: &str, addr: SocketAddr) -> Result<Command> {
        let log = fs::File::create(self.fixture.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(reuseport_testing::binary::locate()?);
        cmd.args([
            "echo",
            "--listen",
            &addr.to_string(),
            "--no-register",
            "--name",
            name,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        Ok(cmd)
    }

    /// The workers' pids, in order (what the echo answers carry).
    pub fn worker_pids(&self) -> Vec<u32> {
        if self.own.is_empty() {
            self.fixture.worker_pids()
        } else {
            self.own.iter().map(Child::id).collect()
        }
    }

    /// Every process serving: workers, and the daemon or HAProxy (for their CPU time).
    pub fn server_pids(&self) -> Vec<u32> {
        let mut pids = self.worker_pids();
        pids.extend(self.fixture.daemon_pid());
        pids.extend(self.proxy.as_ref().map(Child::id));
        pids
    }

    /// The daemon's stuck events so far (0 without a daemon).
    pub fn stuck_events(&self) -> u64 {
        if self.fixture.daemon_pid().is_none() {
            return 0;
        }
        self.fixture.status().map_or(0, |s| s.stuck_events)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.own.iter_mut().chain(self.proxy.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `addr` answers a request.
fn answers(addr: SocketAddr) -> Result<()> {
    wait::until(
        reuseport_testing::daemon::START_LIMIT,
        format!("{addr} answering"),
        || loadgen::request(addr, "/", Duration::from_secs(1)).is_ok(),
    )
}
