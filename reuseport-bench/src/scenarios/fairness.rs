//! `fairness`: how 10,000 connections spread over 8 listeners under the kernel's own hash, the
//! program's hash, exact round-robin and smooth weighted round-robin (weights 1,1,2,2,3,3,4,4).

use anyhow::Result;
use reuseport_steer::Policy;
use reuseport_testing::distribution::{markdown_table, Distribution};

use reuseport_testing::clients::{Exchange, Load, SourcePorts};

use crate::{
    cell::{self, Measurement, SteeredPool},
    machine::Watch,
    netstat::TcpCounters,
    report::{num, Report, Section, Table},
    scenario::{Options, Scenario},
    steering::Steering,
};

const WEIGHTS: [u32; 8] = [1, 1, 2, 2, 3, 3, 4, 4];
const DEFAULT_CONNECTIONS: u64 = 10_000;
const DEFAULT_CLIENTS: usize = 8;
const ACCEPTORS: usize = 2;
/// Client source ports start here, below the ephemeral range the listener port comes from.
const FIRST_SOURCE_PORT: u16 = 10_000;

const STEERINGS: [Steering; 4] = [
    Steering::KernelHash,
    Steering::policy(Policy::Hash),
    Steering::policy(Policy::RoundRobin),
    Steering::policy(Policy::Weighted),
];

pub struct Fairness;

impl Scenario for Fairness {
    fn name(&self) -> &'static str {
        "fairness"
    }

    fn about(&self) -> &'static str {
        "spread of 10,000 connections over 8 listeners: kernel hash vs hash vs round-robin vs weighted"
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let default = if options.quick {
            800
        } else {
            DEFAULT_CONNECTIONS
        };
        let connections = options.connections.unwrap_or(default);
        let clients = options.clients.unwrap_or(DEFAULT_CLIENTS);
        let watch = Watch::start();
        let mut pool = SteeredPool::new(WEIGHTS.to_vec(), ACCEPTORS)?;
        let load = Load {
            connections,
            threads: clients,
            exchange: Exchange::Reset,
            source_ports: SourcePorts::Distinct {
                first: FIRST_SOURCE_PORT,
            },
            time_limit: options.time_limit,
        };
        let mut results = Vec::new();
        for steering in STEERINGS {
            pool.steer(steering)?;
            let m = pool.measure(&load)?;
            eprintln!(
                "fairness: {:<20} {} connections, {:.0} conn/s",
                cell::label(steering),
                m.connections,
                m.rate()
            );
            results.push((steering, m));
        }
        report(connections, clients, &results, watch.lines())
    }
}

fn report(
    connections: u64,
    clients: usize,
    results: &[(Steering, Measurement)],
    machine: Vec<String>,
) -> Result<Report> {
    let slots = WEIGHTS.len();
    let distinct = connections.min(SourcePorts::distinct_span(FIRST_SOURCE_PORT));
    let mut preamble = machine;
    preamble.extend([
        format!(
            "{connections} connections per row over {slots} listeners on one port; {clients} client \
             threads, {distinct} distinct source ports from {FIRST_SOURCE_PORT} (one 4-tuple per \
             connection), RST close; {ACCEPTORS} accept threads"
        ),
        format!("Weights for `weighted`: {WEIGHTS:?}"),
    ]);
    let mut tcp = TcpCounters::default();
    for (_, m) in results {
        tcp.add(m.tcp);
    }
    preamble.push(format!("TCP during the runs: {}", tcp.describe()));

    let rows: Vec<(String, Distribution)> = results
        .iter()
        .map(|(s, m)| (cell::label(*s), Distribution::new(m.per_slot.clone())))
        .collect();
    let mut summary = Table::new(&[
        "steering",
        "connections",
        "max",
        "min",
        "max/min",
        "Jain",
        "CV",
        "program runs",
        "stray runs",
    ]);
    for ((label, d), (s, m)) in rows.iter().zip(results) {
        summary.push(vec![
            label.clone(),
            d.total().to_string(),
            d.max().to_string(),
            d.min().to_string(),
            format!("{:.3}", d.max_over_min()),
            format!("{:.4}", d.jain()),
            format!("{:.4}", d.cv()),
            m.program.runs.to_string(),
            if *s == Steering::KernelHash {
                "-".into()
            } else {
                m.program.runs.saturating_sub(m.connections).to_string()
            },
        ]);
    }

    let mut sections = vec![Section {
        heading: "Connections per listener".into(),
        text: format!(
            "Jain's index is 1 for a perfectly even spread; a uniformly random assignment of \
             {connections} connections over {slots} listeners has an expected CV of about {:.3}. \
             The `weighted` row is uneven by design: see the next table.",
            random_cv(slots, connections)
        ),
        table: None,
        extra: markdown_table(&rows),
    }];
    let weighted = results
        .iter()
        .find(|(s, _)| *s == Steering::policy(Policy::Weighted));
    if let Some((_, m)) = weighted {
        let relative = relative_to_weight(&m.per_slot, &WEIGHTS);
        sections.push(Section {
            heading: "Weighted: counts against expected shares".into(),
            text: format!(
                "Expected count = connections × weight / Σweights (Σ = {}). Counts divided by \
                 weight: {}.",
                WEIGHTS.iter().sum::<u32>(),
                relative.summary()
            ),
            table: Some(weighted_table(&m.per_slot)),
            extra: String::new(),
        });
    }
    sections.push(Section {
        heading: "Summary".into(),
        text: "program runs: the program's own run counter. stray runs: runs beyond one per \
               connection: a client RST that arrives after the server closed its end finds no \
               socket, goes through the listener lookup (which runs the program) and is dropped \
               there. The per-listener counts above are accepted connections, not runs."
            .into(),
        table: Some(summary.clone()),
        extra: String::new(),
    });

    let bars: Vec<(String, Vec<u64>)> = results
        .iter()
        .map(|(s, m)| (cell::label(*s), m.per_slot.clone()))
        .collect();
    let plot = crate::plot::worker_bars("fairness: share of connections per listener", &bars)?;
    Ok(Report {
        scenario: "fairness".into(),
        title: "Fairness: connections per listener".into(),
        preamble,
        sections,
        csv: per_slot_csv(results),
        extra_csv: vec![("summary".into(), summary)],
        plots: vec![(
            "workers".into(),
            "fairness: connections per listener".into(),
            plot,
        )],
    })
}

/// Expected coefficient of variation of `slots` binomial counts: sqrt((n - 1) / N).
fn random_cv(slots: usize, connections: u64) -> f64 {
    ((slots as f64 - 1.0) / connections.max(1) as f64).sqrt()
}

/// Counts scaled by lcm(weights) / weight: integers again, and perfectly weighted counts become
/// equal, so the usual fairness measures apply.
fn relative_to_weight(counts: &[u64], weights: &[u32]) -> Distribution {
    let lcm = weights
        .iter()
        .fold(1u64, |acc, &w| acc / gcd(acc, u64::from(w)) * u64::from(w));
    Distribution::new(
        counts
            .iter()
            .zip(weights)
            .map(|(&c, &w)| c * (lcm / u64::from(w.max(1))))
            .collect(),
    )
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

fn weighted_table(counts: &[u64]) -> Table {
    let total: u64 = counts.iter().sum();
    let weight_sum: u32 = WEIGHTS.iter().sum();
    let mut table = Table::new(&[
        "slot",
        "weight",
        "expected share",
        "expected count",
        "count",
        "share",
        "count − expected",
    ]);
    for (slot, (&count, &weight)) in counts.iter().zip(&WEIGHTS).enumerate() {
        let expected_share = f64::from(weight) / f64::from(weight_sum);
        let expected = total as f64 * expected_share;
        table.push(vec![
            slot.to_string(),
            weight.to_string(),
            format!("{:.2}%", 100.0 * expected_share),
            num(expected),
            count.to_string(),
            format!("{:.2}%", 100.0 * share(count, total)),
            format!("{:+.1}", count as f64 - expected),
        ]);
    }
    table
}

fn share(count: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}

fn per_slot_csv(results: &[(Steering, Measurement)]) -> Table {
    let weight_sum: u32 = WEIGHTS.iter().sum();
    let mut csv = Table::new(&[
        "steering",
        "slot",
        "weight",
        "count",
        "share",
        "expected_share",
    ]);
    for (steering, m) in results {
        let total: u64 = m.per_slot.iter().sum();
        let weighted = *steering == Steering::policy(Policy::Weighted);
        for (slot, (&count, &weight)) in m.per_slot.iter().zip(&WEIGHTS).enumerate() {
            let expected = if weighted {
                f64::from(weight) / f64::from(weight_sum)
            } else {
                1.0 / WEIGHTS.len() as f64
            };
            csv.push(vec![
                cell::label(*steering),
                slot.to_string(),
                if weighted { weight } else { 1 }.to_string(),
                count.to_string(),
                format!("{:.6}", share(count, total)),
                format!("{expected:.6}"),
            ]);
        }
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_weighted_counts_are_perfectly_fair_relative_to_weight() {
        let counts: Vec<u64> = WEIGHTS.iter().map(|&w| u64::from(w) * 500).collect();
        let d = relative_to_weight(&counts, &WEIGHTS);
        assert_eq!(d.jain(), 1.0);
        assert_eq!(d.counts, vec![6000; 8]);
        let skewed = relative_to_weight(&[600, 400, 1000, 1000, 1500, 1500, 2000, 2000], &WEIGHTS);
        assert!(skewed.jain() < 1.0);
    }

    #[test]
    fn random_spread_cv_matches_the_binomial() {
        assert!((random_cv(8, 10_000) - 0.026_457).abs() < 1e-5);
    }

    #[test]
    fn weighted_table_compares_with_expected_counts() {
        let counts: Vec<u64> = WEIGHTS.iter().map(|&w| u64::from(w) * 500).collect();
        let table = weighted_table(&counts);
        assert_eq!(table.rows.len(), 8);
        assert_eq!(
            table.rows[0],
            ["0", "1", "5.00%", "500", "500", "5.00%", "+0.0"]
        );
        assert_eq!(table.rows[7][2], "20.00%");
    }
}
