//! Who used the CPUs while a cell ran: this benchmark, other processes, or the hypervisor
//! (steal). On a shared machine that tells a slow cell from a slow program.

use std::fs;

/// Cumulative CPU time in clock ticks (USER_HZ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// All CPUs: user + nice + system.
    pub busy: u64,
    /// All CPUs: every state, idle included.
    pub total: u64,
    pub softirq: u64,
    pub irq: u64,
    pub steal: u64,
    /// This process, all threads: utime + stime.
    pub own: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat` and `/proc/self/stat`; zeros where unreadable (advisory figures).
    pub fn read() -> Self {
        let mut times = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| Self::parse_stat(&s))
            .unwrap_or_default();
        times.own = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_own(&s))
            .unwrap_or(0);
        times
    }

    /// The aggregate `cpu` line of /proc/stat.
    fn parse_stat(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        Some(Self {
            busy: at(0) + at(1) + at(2),
            total: (0..8).map(at).sum(),
            softirq: at(6),
            irq: at(5),
            steal: at(7),
            own: 0,
        })
    }

    /// Ticks of all CPUs spent working (user, nice, system, irq, softirq) since `earlier`,
    /// whoever the work was for.
    pub fn used_since(self, earlier: Self) -> u64 {
        let used = |t: Self| t.busy + t.irq + t.softirq;
        used(self).saturating_sub(used(earlier))
    }

    pub fn since(self, earlier: Self) -> CpuShare {
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let total = d(self.total, earlier.total);
        if total == 0.0 {
            return CpuShare::default();
        }
        let own = d(self.own, earlier.own);
        let busy = d(self.busy, earlier.busy);
        CpuShare {
            own: own / total,
            others: (busy - own).max(0.0) / total,
            softirq: d(self.softirq, earlier.softirq) / total,
            steal: d(self.steal, earlier.steal) / total,
        }
    }
}

/// Clock ticks (USER_HZ) as time.
pub fn ticks(ticks: u64) -> std::time::Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    std::time::Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// utime + stime: fields 14 and 15, counted after the parenthesised command name.
pub(crate) fn parse_own(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Fractions of all CPU time (every core) over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuShare {
    /// This benchmark's threads (clients, accept threads).
    pub own: f64,
    /// Other processes: the noise to watch.
    pub others: f64,
    /// Softirq, mostly the loopback packet path of this benchmark.
    pub softirq: f64,
    /// Time the hypervisor gave to other guests.
    pub steal: f64,
}

impl CpuShare {
    pub fn describe(&self) -> String {
        format!(
            "other processes {:.0}%, steal {:.0}% of all CPU time (this benchmark's threads \
             {:.0}%, softirq {:.0}%; these two overlap)",
            100.0 * self.others,
            100.0 * self.steal,
            100.0 * self.own,
            100.0 * self.softirq,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_self_stat() {
        let stat = "cpu  100 5 50 800 10 1 20 14 0 0\ncpu0 50 2 25 400 5 0 10 7 0 0\n";
        let t = CpuTimes::parse_stat(stat).unwrap();
        assert_eq!((t.busy, t.total, t.softirq, t.steal), (155, 1000, 20, 14));
        assert_eq!(t.used_since(CpuTimes::default()), 155 + 1 + 20);
        let own = "1234 (reuseport bench) R 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 7 0";
        assert_eq!(parse_own(own), Some(100));
    }

    #[test]
    fn shares_split_the_interval() {
        let a = CpuTimes::default();
        let b = CpuTimes {
            busy: 60,
            total: 200,
            softirq: 20,
            irq: 0,
            steal: 10,
            own: 40,
        };
        let s = b.since(a);
        assert_eq!((s.own, s.others, s.softirq, s.steal), (0.2, 0.1, 0.1, 0.05));
    }

    #[test]
    fn this_process_has_cpu_times() {
        let t = CpuTimes::read();
        assert!(t.total > 0);
    }
}
