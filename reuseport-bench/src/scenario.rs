//! The scenario registry: every benchmark is a [`Scenario`] with a name the command line selects
//! it by. Adding one is a module under `scenarios/` plus a line in [`registry`].

use std::time::Duration;

use anyhow::Result;

use crate::{report::Report, scenarios};

/// Knobs shared by all scenarios; `None` means the scenario's own default.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections per measured cell.
    pub connections: Option<u64>,
    /// Interleaved rounds, for scenarios that repeat cells.
    pub rounds: Option<usize>,
    /// Client threads.
    pub clients: Option<usize>,
    /// Upper bound on the client phase of one cell.
    pub time_limit: Duration,
    /// Small enough for CI: checks the harness, not the numbers.
    pub quick: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connections: None,
            rounds: None,
            clients: None,
            time_limit: Duration::from_secs(120),
            quick: false,
        }
    }
}

/// One benchmark.
pub trait Scenario: Sync {
    /// What the command line calls it; also the stem of its output files.
    fn name(&self) -> &'static str;
    /// One line for `--list`.
    fn about(&self) -> &'static str;
    /// Runs it. Called from a thread inside a private network namespace.
    fn run(&self, options: &Options) -> Result<Report>;
}

/// All scenarios, in the order they run when none is named. A new scenario is one line here
/// (its module under `scenarios/` and a `pub mod` line in `scenarios/mod.rs`).
pub fn registry() -> &'static [&'static dyn Scenario] {
    &[
        &scenarios::fairness::Fairness,
        &scenarios::cost::OVERHEAD,
        &scenarios::cost::SCALE,
        &scenarios::throughput::Throughput,
        &scenarios::latency::STUCK,
        &scenarios::latency::MIXED,
        &scenarios::churn::Churn,
        &scenarios::monitor::Monitor,
        &scenarios::udp::Udp,
    ]
}

pub fn find(name: &str) -> Option<&'static dyn Scenario> {
    registry().iter().copied().find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_findable() {
        let names: Vec<_> = registry().iter().map(|s| s.name()).collect();
        for name in [
            "fairness",
            "overhead",
            "scale",
            "throughput",
            "stuck",
            "mixed",
            "churn",
            "monitor",
            "udp",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} registered twice");
            assert_eq!(find(name).map(|s| s.name()), Some(*name));
            assert!(!find(name).map_or("", |s| s.about()).is_empty(), "{name}");
        }
        assert!(find("nope").is_none());
    }
}
