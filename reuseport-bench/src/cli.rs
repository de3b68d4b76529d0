//! Command line of `reuseport-bench` (also what `cargo xtask bench` forwards to).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::Parser;

use crate::scenario::{self, Options, Scenario};

/// Benchmarks of the reuseport steering program, in a private network namespace on loopback.
#[derive(Debug, Parser)]
#[command(name = "reuseport-bench", version)]
pub struct Cli {
    /// Scenarios to run (all when none is given; see --list).
    pub scenarios: Vec<String>,
    /// Connections per measured cell, to scale a run down for a quick check (default: per scenario).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: Option<u64>,
    /// Interleaved rounds (default: per scenario).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: Option<u64>,
    /// Client threads (default: per scenario).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub clients: Option<u64>,
    /// Upper bound, in seconds, on the client phase of one cell.
    #[arg(long, default_value_t = 120)]
    pub time_limit: u64,
    /// Directory for the Markdown and CSV results.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Also run the experiment this TOML file describes (docs/experiments.md); alone when no
    /// scenario is named.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Every scenario small enough for CI: checks that the harness works, not the numbers.
    #[arg(long)]
    pub quick: bool,
    /// After the run, write this Markdown document from every result in --out (plots copied
    /// into a `bench/` directory beside it), e.g. `docs/benchmarks.md`.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// With --doc: run nothing, only write the document from the results already in --out.
    #[arg(long, requires = "doc")]
    pub doc_only: bool,
    /// What the run's conditions were, for the document's facts (e.g. "other builds ran on
    /// the machine throughout").
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

impl Cli {
    /// The scenarios to run, in command-line order (registry order when none is named).
    pub fn selected(&self) -> Result<Vec<&'static dyn Scenario>> {
        let mut chosen: Vec<&'static dyn Scenario> = Vec::new();
        if let Some(file) = &self.scenario {
            // Made once per run: the one registration hook of a scenario file.
            chosen.push(Box::leak(Box::new(crate::scenarios::file::load(file)?)));
            if self.scenarios.is_empty() {
                return Ok(chosen);
            }
        }
        if self.scenarios.is_empty() {
            return Ok(scenario::registry().to_vec());
        }
        for name in &self.scenarios {
            let Some(s) = scenario::find(name) else {
                let known: Vec<_> = scenario::registry().iter().map(|s| s.name()).collect();
                bail!("unknown scenario {name:?} (known: {})", known.join(", "));
            };
            if !chosen.iter().any(|c| c.name() == s.name()) {
                chosen.push(s);
            }
        }
        Ok(chosen)
    }

    pub fn options(&self) -> Options {
        Options {
            connections: self.connections,
            rounds: self.rounds.map(|r| r as usize),
            clients: self.clients.map(|c| c as usize),
            time_limit: Duration::from_secs(self.time_limit),
            quick: self.quick,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_named_scenarios_in_order_without_duplicates() {
        let cli = Cli::parse_from(["reuseport-bench", "stuck", "throughput", "scale", "stuck"]);
        let names: Vec<_> = cli.selected().unwrap().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["stuck", "throughput", "scale"]);
    }

    #[test]
    fn runs_everything_by_default_and_rejects_unknown_names() {
        let cli = Cli::parse_from(["reuseport-bench"]);
        assert_eq!(cli.selected().unwrap().len(), scenario::registry().len());
        let cli = Cli::parse_from(["reuseport-bench", "latency"]);
        assert!(cli.selected().is_err());
    }

    #[test]
    fn connections_scale_down_and_zero_is_refused() {
        let cli = Cli::parse_from(["reuseport-bench", "--connections", "500", "--out", "/tmp/x"]);
        assert_eq!(cli.options().connections, Some(500));
        assert_eq!(cli.out, PathBuf::from("/tmp/x"));
        assert!(Cli::try_parse_from(["reuseport-bench", "--connections", "0"]).is_err());
    }

    #[test]
    fn quick_and_doc_flags() {
        let cli = Cli::parse_from([
            "reuseport-bench",
            "--quick",
            "--doc",
            "d.md",
            "--note",
            "busy",
        ]);
        assert!(cli.options().quick);
        assert_eq!(cli.note.as_deref(), Some("busy"));
        assert_eq!(cli.doc, Some(PathBuf::from("d.md")));
        assert!(Cli::try_parse_from(["reuseport-bench", "--doc-only"]).is_err());
    }
}
