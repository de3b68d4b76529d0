//! `overhead` and `scale`: what the program costs per connection, for each policy, measured by
//! the kernel's BPF run-time statistics, and the connection rate with no program against each
//! policy under the same closed-loop client load. `overhead` uses 4 slots; `scale` 2, 64 and
//! 1024 slots (and 1024 slots of which 4 are active, as a control).
//!
//! All cells run in every round, each group's cells back to back and in an order rotated each
//! round, so slow phases of a shared machine hit every cell alike and each policy is compared
//! with a no-program cell measured next to it; tables show the median over rounds.

use anyhow::Result;
use reuseport_steer::Policy;

use reuseport_testing::{
    clients::{Exchange, Load, SourcePorts},
    limits,
};

use crate::{
    bpf_stats,
    cell::{self, Measurement, SteeredPool},
    machine::Watch,
    netstat::TcpCounters,
    report::{num, Report, Section, Table},
    samples::Summary,
    scenario::{Options, Scenario},
    steering::Steering,
};

const fn shape(slots: usize, active: usize) -> Shape {
    Shape { slots, active }
}

/// `overhead`: the rate cost of each policy on a small group.
pub const OVERHEAD: Cost = Cost {
    name: "overhead",
    about: "connection rate with no program vs each policy (ratios), and program ns/connection, 4 slots",
    title: "Overhead: connection rate and program run time, 4 slots",
    shapes: &[shape(4, 4)],
    quick_shapes: 1,
    default_rounds: 15,
};

/// `scale`: the program's cost as the group grows. The last group is a control: as many
/// listeners as the largest with only 4 active, telling the size of the group from the number
/// of sockets in use.
pub const SCALE: Cost = Cost {
    name: "scale",
    about: "program ns/connection per policy with 2, 64 and 1024 slots (and 1024 with 4 active)",
    title: "Scale: program run time by group size",
    shapes: &[
        shape(2, 2),
        shape(64, 64),
        shape(1024, 1024),
        shape(1024, 4),
    ],
    quick_shapes: 2,
    default_rounds: 7,
};

const DEFAULT_CONNECTIONS: u64 = 20_000;
/// `--quick`: enough to exercise every cell.
const QUICK_CONNECTIONS: u64 = 300;
const QUICK_ROUNDS: usize = 2;
const DEFAULT_CLIENTS: usize = 4;
const ACCEPTORS: usize = 2;
/// Connections per cell in the discarded warm-up round.
const WARMUP_CONNECTIONS: u64 = 2_000;
/// Descriptors to ask for, and the least that works: 1024 + 4 listeners, plus accepted and
/// client sockets in flight.
const FILE_LIMIT: u64 = 65_536;
const FILES_NEEDED: u64 = 8_192;

/// Without a daemon the load map stays zero: `least-loaded` and `p2c` then run their full
/// selection over equally loaded slots, which is what their cost is.
/// The no-op program runs in every round beside the policies: their cost net of it is what
/// the policy itself adds to running a program at all (the call, the kernel's statistics).
const STEERINGS: [Steering; 7] = [
    Steering::KernelHash,
    Steering::Noop,
    Steering::policy(Policy::Hash),
    Steering::policy(Policy::RoundRobin),
    Steering::policy(Policy::Weighted),
    Steering::policy(Policy::LeastLoaded),
    Steering::policy(Policy::P2c),
];

/// Weights 1, 2, 3, 4, 1, 2, ... for the `weighted` policy.
pub fn weights(slots: usize) -> Vec<u32> {
    (0..slots).map(|i| (i % 4) as u32 + 1).collect()
}

/// One cost scenario: the groups it measures and how many rounds by default.
pub struct Cost {
    name: &'static str,
    about: &'static str,
    title: &'static str,
    shapes: &'static [Shape],
    /// `--quick` measures only this many of the first shapes (the control is skipped).
    quick_shapes: usize,
    default_rounds: usize,
}

/// A group of `slots` listeners of which the first `active` get connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    slots: usize,
    active: usize,
}

impl Shape {
    fn label(self) -> String {
        if self.active == self.slots {
            self.slots.to_string()
        } else {
            format!("{} ({} active)", self.slots, self.active)
        }
    }

    fn heading(self) -> String {
        if self.active == self.slots {
            format!("{} slots", self.slots)
        } else {
            format!("{} slots, {} active", self.slots, self.active)
        }
    }
}

/// One (slot count, steering) combination and its rounds.
struct Cell {
    pool: usize,
    steering: Steering,
    rounds: Vec<Measurement>,
    /// This cell's rate over the no-program rate of the same pool in the same round.
    ratios: Vec<f64>,
    /// This cell's ns/run minus the no-op program's in the same pool and round.
    net: Vec<f64>,
}

impl Scenario for Cost {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn run(&self, options: &Options) -> Result<Report> {
        let shapes = if options.quick {
            &self.shapes[..self.quick_shapes.min(self.shapes.len())]
        } else {
            self.shapes
        };
        let name = self.name;
        let (default_connections, default_rounds) = if options.quick {
            (QUICK_CONNECTIONS, QUICK_ROUNDS)
        } else {
            (DEFAULT_CONNECTIONS, self.default_rounds)
        };
        let connections = options.connections.unwrap_or(default_connections);
        let rounds = options.rounds.unwrap_or(default_rounds);
        let clients = options.clients.unwrap_or(DEFAULT_CLIENTS);
        limits::raise_nofile(FILE_LIMIT, FILES_NEEDED)?;
        let watch = Watch::start();
        // Held until the end: the kernel counts run time only while it is open.
        let _stats = bpf_stats::enable()?;

        let mut pools = Vec::new();
        for &shape in shapes {
            eprintln!("{name}: setting up {} listeners", shape.label());
            let mut pool = SteeredPool::new(weights(shape.slots), ACCEPTORS)?;
            if shape.active < shape.slots {
                pool.set_active(shape.active)?;
            }
            pools.push(pool);
        }
        let mut cells: Vec<Cell> = (0..pools.len())
            .flat_map(|pool| {
                STEERINGS.map(|steering| Cell {
                    pool,
                    steering,
                    rounds: Vec::new(),
                    ratios: Vec::new(),
                    net: Vec::new(),
                })
            })
            .collect();
        let load = |connections| Load {
            connections,
            threads: clients,
            exchange: Exchange::Reset,
            source_ports: SourcePorts::Kernel,
            time_limit: options.time_limit,
        };

        // Warm-up: caches, the program's JIT image and the socket allocator, not measured.
        for cell in cells.iter().filter(|_| !options.quick) {
            let pool = &mut pools[cell.pool];
            pool.steer(cell.steering)?;
            pool.measure(&load(WARMUP_CONNECTIONS.min(connections)))?;
        }
        let mut raw = Table::new(&RAW_COLUMNS);
        let progress = crate::progress::bar(name, (rounds * cells.len()) as u64);
        for round in 0..rounds {
            for (order, index) in round_order(round, shapes.len()).into_iter().enumerate() {
                let cell = &mut cells[index];
                let pool = &mut pools[cell.pool];
                pool.steer(cell.steering)?;
                let m = pool.measure(&load(connections))?;
                let shape = shapes[cell.pool];
                progress.suspend(|| {
                    eprintln!(
                        "{name}: round {}/{rounds} {:>17} slots {:<20} {:>7.0} conn/s {:>6} ns/run",
                        round + 1,
                        shape.label(),
                        cell::label(cell.steering),
                        m.rate(),
                        m.runs.ns_per_run().map_or("-".into(), num),
                    )
                });
                progress.inc(1);
                raw.push(raw_row(round, order, shape, cell.steering, &m));
                cell.rounds.push(m);
            }
            pair_with_baselines(&mut cells);
        }
        progress.finish_and_clear();

        let setup = Setup {
            connections,
            rounds,
            clients,
            machine: watch.lines(),
        };
        Ok(report(self, shapes, &setup, &cells, raw))
    }
}

const RAW_COLUMNS: [&str; 18] = [
    "round",
    "order",
    "slots",
    "active_slots",
    "steering",
    "connections",
    "elapsed_s",
    "conn_per_s",
    "run_count",
    "run_time_ns",
    "ns_per_run",
    "syn_retrans",
    "listen_drops",
    "syncookies_sent",
    "cpu_own",
    "cpu_softirq",
    "cpu_others",
    "cpu_steal",
];

/// The cells of one round, as indices into the (pool-major) cell list: each pool's cells run
/// back to back, so every policy is compared with a no-program cell measured within a second
/// of it; pools and, within a pool, steerings start one later each round, so no cell is always
/// first after a switch.
fn round_order(round: usize, pools: usize) -> Vec<usize> {
    let steerings = STEERINGS.len();
    (0..pools)
        .flat_map(|p| {
            let pool = (p + round) % pools;
            (0..steerings).map(move |s| pool * steerings + (s + round) % steerings)
        })
        .collect()
}

/// One line of `cost-rounds.csv`.
fn raw_row(
    round: usize,
    order: usize,
    shape: Shape,
    steering: Steering,
    m: &Measurement,
) -> Vec<String> {
    vec![
        round.to_string(),
        order.to_string(),
        shape.slots.to_string(),
        shape.active.to_string(),
        cell::label(steering),
        m.connections.to_string(),
        format!("{:.6}", m.elapsed.as_secs_f64()),
        format!("{:.1}", m.rate()),
        m.runs.count.to_string(),
        m.runs.time.as_nanos().to_string(),
        m.runs
            .ns_per_run()
            .map_or(String::new(), |x| format!("{x:.2}")),
        m.tcp.syn_retrans.to_string(),
        m.tcp.listen_drops.to_string(),
        m.tcp.syncookies_sent.to_string(),
        format!("{:.3}", m.cpu.own),
        format!("{:.3}", m.cpu.softirq),
        format!("{:.3}", m.cpu.others),
        format!("{:.3}", m.cpu.steal),
    ]
}

/// After a round: each cell's rate over the no-program rate of the same pool in that round,
/// and its run time net of the no-op program's. Pairing within a round cancels the slow
/// drifts of a shared machine.
fn pair_with_baselines(cells: &mut [Cell]) {
    for i in 0..cells.len() {
        let last_of = |steering: Steering| {
            cells
                .iter()
                .find(|c| c.pool == cells[i].pool && c.steering == steering)
                .and_then(|c| c.rounds.last())
        };
        let baseline = last_of(Steering::KernelHash).map(Measurement::rate);
        let noop = last_of(Steering::Noop).and_then(|m| m.runs.ns_per_run());
        let last = cells[i].rounds.last();
        let rate = last.map(Measurement::rate);
        let cost = last.and_then(|m| m.runs.ns_per_run());
        if let (Some(base), Some(rate)) = (baseline, rate) {
            cells[i].ratios.push(rate / base);
        }
        if let (Some(noop), Some(cost)) = (noop, cost) {
            cells[i].net.push(cost - noop);
        }
    }
}

/// The goals for the program's cost: net of the no-op program, at most this at 1,024 slots.
pub const NET_GOAL_NS: f64 = 50.0;
/// And from 2 to 1,024 slots, the run time grows by at most this factor.
pub const FLAT_GOAL: f64 = 1.2;

/// How far a measured value is from a ceiling: "met (x% under)" or "x% over".
pub fn against_ceiling(value: f64, ceiling: f64) -> String {
    if !value.is_finite() {
        return "not measured".into();
    }
    let off = 100.0 * (value / ceiling - 1.0);
    // A decimal near the goal, so a hair over never reads "0% over".
    let digits = if off.abs() < 10.0 { 1 } else { 0 };
    if value <= ceiling {
        format!("met ({:.*}% under)", digits, -off)
    } else {
        format!("missed ({off:.digits$}% over)")
    }
}

struct Setup {
    connections: u64,
    rounds: usize,
    clients: usize,
    /// From [`Watch::lines`].
    machine: Vec<String>,
}

fn report(scenario: &Cost, shapes: &[Shape], setup: &Setup, cells: &[Cell], raw: Table) -> Report {
    let name = scenario.name;
    let Setup {
        connections,
        rounds,
        clients,
        ..
    } = *setup;
    let mut preamble = setup.machine.clone();
    preamble.extend([
        format!(
            "{connections} connections per cell, {rounds} rounds (all cells each round, each \
             group's cells back to back, order rotated), after one discarded warm-up round; closed loop with {clients} client \
             threads (blocking connect, RST close), {ACCEPTORS} accept threads per pool"
        ),
        "Program: the select-or-migrate program (the tool's default); weights 1,2,3,4 repeating \
         for `weighted`"
            .to_owned(),
    ]);
    let mut tcp = TcpCounters::default();
    for m in cells.iter().flat_map(|c| &c.rounds) {
        tcp.add(m.tcp);
    }
    preamble.push(format!(
        "TCP during the measured cells: {}{}",
        tcp.describe(),
        if tcp.is_clean() {
            ""
        } else {
            " (see the -rounds.csv file for the cells affected)"
        }
    ));

    let mut table = Table::new(&[
        "slots",
        "program",
        "conn/s (median)",
        "conn/s (min–max)",
        "rate vs no program",
        "ns/run (median)",
        "ns/run (min–max)",
        "net of no-op (median)",
        "runs/conn",
    ]);
    let mut csv = Table::new(&[
        "slots",
        "active_slots",
        "steering",
        "rounds",
        "connections_per_round",
        "conn_per_s_median",
        "conn_per_s_min",
        "conn_per_s_max",
        "rate_ratio_median",
        "ns_per_run_median",
        "ns_per_run_min",
        "ns_per_run_max",
        "net_ns_per_run_median",
        "runs_per_connection",
    ]);
    let mut pivot_headers = vec!["policy".to_owned()];
    pivot_headers.extend(shapes.iter().map(|s| s.heading()));
    let mut pivot = Table {
        headers: pivot_headers,
        rows: Vec::new(),
    };

    for cell in cells {
        let slots = shapes[cell.pool].label();
        let rates: Vec<f64> = cell.rounds.iter().map(Measurement::rate).collect();
        let costs: Vec<f64> = cell
            .rounds
            .iter()
            .filter_map(|m| m.runs.ns_per_run())
            .collect();
        let rate = Summary::of(&rates);
        let cost = Summary::of(&costs);
        let ratio = Summary::of(&cell.ratios);
        let net = Summary::of(&cell.net);
        let is_policy = matches!(cell.steering, Steering::Program { .. });
        let total_runs: u64 = cell.rounds.iter().map(|m| m.runs.count).sum();
        let total_connections: u64 = cell.rounds.iter().map(|m| m.connections).sum();
        let runs_per_conn = total_runs as f64 / total_connections.max(1) as f64;
        let is_program = cell.steering != Steering::KernelHash;
        let median = |s: Option<Summary>| s.map_or("-".into(), |s| num(s.median));
        let range =
            |s: Option<Summary>| s.map_or("-".into(), |s| format!("{}–{}", num(s.min), num(s.max)));
        table.push(vec![
            slots.clone(),
            cell::label(cell.steering),
            median(rate),
            range(rate),
            if is_program {
                ratio.map_or("-".into(), |r| format!("{:+.1}%", 100.0 * (r.median - 1.0)))
            } else {
                "(baseline)".into()
            },
            median(cost),
            range(cost),
            if is_policy { median(net) } else { "-".into() },
            if is_program {
                format!("{runs_per_conn:.2}")
            } else {
                "0".into()
            },
        ]);
        let field = |s: Option<Summary>, f: fn(&Summary) -> f64| {
            s.map_or(String::new(), |s| format!("{:.2}", f(&s)))
        };
        csv.push(vec![
            shapes[cell.pool].slots.to_string(),
            shapes[cell.pool].active.to_string(),
            cell::label(cell.steering),
            cell.rounds.len().to_string(),
            connections.to_string(),
            field(rate, |s| s.median),
            field(rate, |s| s.min),
            field(rate, |s| s.max),
            ratio.map_or(String::new(), |r| format!("{:.4}", r.median)),
            field(cost, |s| s.median),
            field(cost, |s| s.min),
            field(cost, |s| s.max),
            if is_policy {
                field(net, |s| s.median)
            } else {
                String::new()
            },
            format!("{runs_per_conn:.3}"),
        ]);
    }
    let mut net_pivot = Table {
        headers: pivot.headers.clone(),
        rows: Vec::new(),
    };
    let median_of = |pool: usize, steering: Steering, net: bool| {
        let values: Vec<f64> = cells
            .iter()
            .filter(|c| c.pool == pool && c.steering == steering)
            .flat_map(|c| {
                if net {
                    c.net.clone()
                } else {
                    c.rounds
                        .iter()
                        .filter_map(|m| m.runs.ns_per_run())
                        .collect()
                }
            })
            .collect();
        Summary::of(&values).map_or(f64::NAN, |s| s.median)
    };
    for steering in STEERINGS.iter().filter(|s| **s != Steering::KernelHash) {
        let mut row = vec![cell::label(*steering)];
        let mut net_row = vec![cell::label(*steering)];
        for pool in 0..shapes.len() {
            row.push(num(median_of(pool, *steering, false)));
            net_row.push(num(median_of(pool, *steering, true)));
        }
        pivot.rows.push(row);
        if matches!(steering, Steering::Program { .. }) {
            net_pivot.rows.push(net_row);
        }
    }
    let at = |slots: usize| {
        shapes
            .iter()
            .position(|s| s.slots == slots && s.active == slots)
    };
    let goal_rows: Vec<GoalRow> = STEERINGS
        .iter()
        .filter(|s| matches!(s, Steering::Program { .. }))
        .map(|&steering| {
            let pick =
                |pool: Option<usize>, net| pool.map_or(f64::NAN, |p| median_of(p, steering, net));
            GoalRow {
                policy: cell::label(steering),
                net_1024: pick(at(1024), true),
                gross_2: pick(at(2), false),
                gross_1024: pick(at(1024), false),
            }
        })
        .collect();

    let sections = vec![
        Section {
            heading: "Per-connection cost and connection rate".into(),
            text: "ns/run: the kernel's run_time / run_count for the program over the cell \
                   (BPF_ENABLE_STATS). rate vs no program: median over rounds of this cell's \
                   rate divided by the no-program rate of the same group in the same round."
                .into(),
            table: Some(table),
            extra: String::new(),
        },
        Section {
            heading: "Cost by slot count (median ns per run)".into(),
            text: if shapes.iter().any(|s| s.active < s.slots) {
                "The last column is a control: a group of 1024 listeners with 4 active, so \
                 the program indexes the same full-size maps but touches only 4 sockets."
                    .into()
            } else {
                String::new()
            },
            table: Some(pivot),
            extra: String::new(),
        },
        Section {
            heading: "Cost net of the no-op program (median ns per run)".into(),
            text: "Each round, each policy's ns/run minus the no-op program's ns/run in the same \
                   group: what the policy adds to running any SK_REUSEPORT program (the call \
                   and the kernel's own run-time statistics, which the no-op program pays too)."
                .into(),
            table: Some(net_pivot),
            extra: String::new(),
        },
        Section {
            heading: "Goals".into(),
            text: format!(
                "Every policy at most {NET_GOAL_NS:.0} ns per run net of the no-op program at \
                 1,024 slots; and from 2 to 1,024 slots, the (gross) run time flat within \
                 {:.0}%.",
                100.0 * (FLAT_GOAL - 1.0)
            ),
            table: Some(goals_table(&goal_rows)),
            extra: String::new(),
        },
    ];
    Report {
        scenario: name.into(),
        title: scenario.title.into(),
        preamble,
        sections,
        csv,
        extra_csv: vec![("rounds".into(), raw)],
        plots: Vec::new(),
    }
}

/// One policy's figures against the goals (NaN where the group size was not measured).
#[derive(Clone, Debug)]
pub struct GoalRow {
    pub policy: String,
    pub net_1024: f64,
    pub gross_2: f64,
    pub gross_1024: f64,
}

/// The goals table: each policy, its figure and how far it is from the goal.
pub fn goals_table(rows: &[GoalRow]) -> Table {
    let mut table = Table::new(&[
        "policy",
        "net ns/run, 1024 slots",
        format!("≤ {NET_GOAL_NS:.0} ns").as_str(),
        "ns/run 2 → 1024 slots",
        "growth",
        format!("≤ {:.0}%", 100.0 * (FLAT_GOAL - 1.0)).as_str(),
    ]);
    for r in rows {
        let growth = r.gross_1024 / r.gross_2;
        table.push(vec![
            r.policy.clone(),
            num(r.net_1024),
            against_ceiling(r.net_1024, NET_GOAL_NS),
            format!("{} → {}", num(r.gross_2), num(r.gross_1024)),
            if growth.is_finite() {
                format!("{:+.0}%", 100.0 * (growth - 1.0))
            } else {
                "-".into()
            },
            // In percentage points of growth: the goal's own unit.
            match 100.0 * (growth - FLAT_GOAL) {
                off if !off.is_finite() => "not measured".into(),
                off if off <= 0.0 => format!("met ({:.0} points under)", -off),
                off => format!("missed ({off:.0} points over)"),
            },
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cycle_one_to_four() {
        assert_eq!(weights(6), [1, 2, 3, 4, 1, 2]);
        assert_eq!(
            weights(1024).iter().map(|&w| u64::from(w)).sum::<u64>(),
            2560
        );
    }

    #[test]
    fn every_round_runs_every_cell_once_with_pools_contiguous() {
        let pools = SCALE.shapes.len();
        let n = pools * STEERINGS.len();
        for round in 0..2 * n {
            let order = round_order(round, pools);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            for chunk in order.chunks(STEERINGS.len()) {
                let pool = chunk[0] / STEERINGS.len();
                assert!(chunk.iter().all(|&i| i / STEERINGS.len() == pool));
            }
        }
        assert_ne!(round_order(0, pools)[0], round_order(1, pools)[0]);
    }

    #[test]
    fn goals_say_how_far_each_policy_is() {
        assert_eq!(against_ceiling(40.0, 50.0), "met (20% under)");
        assert_eq!(against_ceiling(75.0, 50.0), "missed (50% over)");
        assert_eq!(against_ceiling(f64::NAN, 50.0), "not measured");
        assert_eq!(against_ceiling(0.5002, 0.5), "missed (0.0% over)");
        assert_eq!(against_ceiling(0.48, 0.5), "met (4.0% under)");
        let table = goals_table(&[
            GoalRow {
                policy: "round-robin".into(),
                net_1024: 60.0,
                gross_2: 200.0,
                gross_1024: 260.0,
            },
            GoalRow {
                policy: "hash".into(),
                net_1024: f64::NAN,
                gross_2: 100.0,
                gross_1024: f64::NAN,
            },
        ]);
        assert_eq!(table.rows[0][2], "missed (20% over)");
        assert_eq!(table.rows[0][4], "+30%");
        assert_eq!(table.rows[0][5], "missed (10 points over)");
        assert_eq!(table.rows[1][2], "not measured");
        assert_eq!(table.rows[1][5], "not measured");
    }

    #[test]
    fn shapes_name_the_control_group() {
        let labels: Vec<_> = SCALE
            .shapes
            .iter()
            .map(|s| (s.label(), s.heading()))
            .collect();
        assert_eq!(labels[0], ("2".into(), "2 slots".into()));
        assert_eq!(
            labels[3],
            ("1024 (4 active)".into(), "1024 slots, 4 active".into())
        );
    }
}
