//! The kernel's own accounting of program runs (`run_cnt`, `run_time_ns` in bpf_prog_info): the
//! cost of the program measured where it runs, without instrumenting it.

use std::{fs, os::fd::OwnedFd, time::Duration};

use anyhow::{Context, Result};
use reuseport_steer::Group;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Keeps run-time statistics on while alive. The kernel only counts while some BPF_ENABLE_STATS
/// fd is open (or the sysctl is set), because timing every run has a cost of its own.
#[derive(Debug)]
pub enum StatsGuard {
    /// From BPF_ENABLE_STATS; closing it turns counting off again.
    Fd(OwnedFd),
    /// From the sysctl, for kernels without BPF_ENABLE_STATS; restored on drop.
    Sysctl { previous: String },
}

/// Turns run-time statistics on, preferring the fd (which cannot be left on by a crash).
pub fn enable() -> Result<StatsGuard> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Ok(StatsGuard::Fd(fd)),
        Err(syscall_error) => {
            let previous = fs::read_to_string(SYSCTL).with_context(|| {
                format!("BPF_ENABLE_STATS failed ({syscall_error}); reading {SYSCTL}")
            })?;
            fs::write(SYSCTL, "1").with_context(|| {
                format!("BPF_ENABLE_STATS failed ({syscall_error}); writing {SYSCTL}")
            })?;
            Ok(StatsGuard::Sysctl {
                previous: previous.trim().to_owned(),
            })
        }
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Self::Sysctl { previous } = self {
            // Best effort: nothing useful to do on failure while dropping.
            let _ = fs::write(SYSCTL, previous.as_bytes());
        }
    }
}

/// Cumulative run count and run time of a group's program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    pub count: u64,
    pub time: Duration,
}

impl Runs {
    pub fn read(group: &Group) -> Result<Self> {
        Self::from_stats(group.run_stats())
    }

    /// From a program's (run count, run time).
    pub fn from_stats(stats: reuseport_steer::Result<(u64, Duration)>) -> Result<Self> {
        let (count, time) = stats.context("reading the program's run statistics")?;
        Ok(Self { count, time })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Runs) -> Runs {
        Runs {
            count: self.count.saturating_sub(earlier.count),
            time: self.time.saturating_sub(earlier.time),
        }
    }

    /// Mean nanoseconds per run; `None` when the program did not run.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.count > 0).then(|| self.time.as_nanos() as f64 / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_a_delta() {
        let before = Runs {
            count: 10,
            time: Duration::from_nanos(1_000),
        };
        let after = Runs {
            count: 30,
            time: Duration::from_nanos(3_000),
        };
        assert_eq!(after.since(before).ns_per_run(), Some(100.0));
        assert_eq!(before.since(before).ns_per_run(), None);
    }
}
