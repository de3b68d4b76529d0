//! Real processes for the health scenarios: a `reuseport run` daemon and `reuseport echo`
//! workers on one port of the bench's private loopback, as the shared process fixture
//! ([`reuseport_testing::daemon::Fixture`]) runs them, steered as a scenario asks.

use std::{fs, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use reuseport_testing::daemon::Fixture;

use crate::steering::Steering;

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
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
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
