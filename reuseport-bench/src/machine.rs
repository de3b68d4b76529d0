//! What the numbers were measured on, printed with every report so results stay comparable.

use std::fs;

use crate::cpu::CpuTimes;

/// Kernel, CPU and load of this machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
}

impl Machine {
    pub fn current() -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| cpu_model(&info))
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Self { kernel, cpu, cores }
    }

    pub fn describe(&self) -> String {
        format!("Linux {}, {}, {} cores", self.kernel, self.cpu, self.cores)
    }
}

/// The state of the machine around one scenario run.
#[derive(Clone, Debug)]
pub struct Watch {
    load_before: Option<f64>,
    cpu: CpuTimes,
}

impl Watch {
    pub fn start() -> Self {
        Self {
            load_before: load_average(),
            cpu: CpuTimes::read(),
        }
    }

    /// Report lines: the machine, the load before the run (during it, the benchmark's own
    /// threads dominate the load average), and where CPU time went since [`Watch::start`].
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("Machine: {}", Machine::current().describe())];
        if let Some(load) = self.load_before {
            lines.push(format!("Load average (1 min) before the run: {load:.2}"));
        }
        lines.push(format!(
            "CPU during the run: {}",
            CpuTimes::read().since(self.cpu).describe()
        ));
        lines
    }
}

/// The 1-minute load average, to judge how quiet the machine was.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_name() {
        let info =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }
}
