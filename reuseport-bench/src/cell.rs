//! One measured cell: a listener pool with the program loaded for it, steered one way, under one
//! client load. Every scenario is built from these.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reuseport_steer::{noop::NoopProgram, Family, Group, GroupOptions, GroupStats, SlotState};
use reuseport_testing::{
    clients::Load,
    listeners::{Answer, Pool, PoolOptions},
    steer,
};

use crate::{
    bpf_stats::Runs,
    cpu::{CpuShare, CpuTimes},
    netstat::TcpCounters,
    steering::Steering,
};

/// How long the accept threads may take to catch up once the clients are done.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How the pool scenarios name a steering: "none" says that no program ran at all.
pub fn label(steering: Steering) -> String {
    match steering {
        Steering::KernelHash => "none (kernel hash)".into(),
        program => program.label(),
    }
}

/// A listener pool whose slot i holds listener i, with per-slot weights.
pub struct SteeredPool {
    pub pool: Pool,
    pub group: Group,
    pub weights: Vec<u32>,
    /// The no-op program, loaded the first time a cell asks for it.
    noop: Option<NoopProgram>,
    /// Whether the no-op program is the one attached (the group's own is then not).
    noop_attached: bool,
}

impl SteeredPool {
    /// Binds `weights.len()` listeners, loads a program (default mode: select-or-migrate, as the
    /// tool runs it) and puts listener i in slot i with weight `weights[i]`. Nothing is
    /// attached until [`SteeredPool::steer`].
    pub fn new(weights: Vec<u32>, acceptors: usize) -> Result<Self> {
        // Clients that only connect and reset; a few accept threads on epoll, so a thousand
        // listeners cost no more than a handful.
        let options = PoolOptions {
            acceptors: Some(acceptors),
            answer: Answer::Hold,
            sweep: false,
        };
        let pool = Pool::bind_with(Family::Ipv4, weights.len(), options)?;
        // One publication for all the sockets and one for all the weights.
        let mut group = steer::slots(&pool, GroupOptions::default())
            .context("loading the program for the listeners")?;
        let weighted: Vec<(u32, u32)> = (0..)
            .zip(weights.iter().copied())
            .filter(|&(_, w)| w != 1)
            .collect();
        group
            .set_weights(&weighted)
            .context("setting the weights")?;
        Ok(Self {
            pool,
            group,
            weights,
            noop: None,
            noop_attached: false,
        })
    }

    pub fn slots(&self) -> usize {
        self.pool.len()
    }

    /// Keeps slots `0..active` active and marks the others draining: the program then chooses
    /// among `active` listeners while the group, and its maps, keep their full size.
    pub fn set_active(&mut self, active: usize) -> Result<()> {
        let states: Vec<(u32, SlotState)> = (0..self.pool.len())
            .map(|slot| {
                let state = if slot < active {
                    SlotState::Active
                } else {
                    SlotState::Draining
                };
                (slot as u32, state)
            })
            .collect();
        self.group
            .set_states(&states)
            .context("setting the slot states")
    }

    /// Attaches or detaches the program (the group's, or the no-op one) and sets its policy.
    pub fn steer(&mut self, steering: Steering) -> Result<()> {
        let first = self.pool.socket(0)?;
        match steering {
            Steering::KernelHash => {
                if self.group.is_attached() || self.noop_attached {
                    self.group.detach(first).context("detaching the program")?;
                }
                self.noop_attached = false;
            }
            Steering::Program { policy, .. } => {
                self.group
                    .set_policy(policy)
                    .context("setting the policy")?;
                if !self.group.is_attached() {
                    // Replaces the no-op program, if attached, atomically.
                    self.group.attach(first).context("attaching the program")?;
                }
                self.noop_attached = false;
            }
            Steering::Noop => {
                if self.group.is_attached() {
                    self.group.detach(first).context("detaching the program")?;
                }
                let noop = match &mut self.noop {
                    Some(noop) => noop,
                    None => self
                        .noop
                        .insert(NoopProgram::load().context("loading the no-op program")?),
                };
                noop.attach(first).context("attaching the no-op program")?;
                self.noop_attached = true;
            }
            Steering::Prefork | Steering::Haproxy(_) => {
                bail!(
                    "{} runs worker processes, not a listener pool",
                    steering.label()
                )
            }
        }
        Ok(())
    }

    /// The run statistics of whichever program is attached (the group's when none is).
    fn runs(&self) -> Result<Runs> {
        match (&self.noop, self.noop_attached) {
            (Some(noop), true) => Runs::from_stats(noop.run_stats()),
            _ => Runs::read(&self.group),
        }
    }

    /// Runs `load` against the pool as currently steered and waits until every connection was
    /// accepted. Fails when a connection failed or went missing: counts would be wrong.
    pub fn measure(&mut self, load: &Load) -> Result<Measurement> {
        let counts_before = self.pool.accepted();
        let stats_before = self
            .group
            .stats()
            .context("reading the program's counters")?;
        let runs_before = self.runs()?;
        let tcp_before = TcpCounters::read();
        let cpu_before = CpuTimes::read();
        let start = Instant::now();
        let client = load.run(self.pool.addr());
        if !client.failures.is_empty() || client.timed_out {
            bail!(
                "{} of {} connections failed{} (first error: {})",
                client.failures.len(),
                load.connections,
                if client.timed_out {
                    ", time limit reached"
                } else {
                    ""
                },
                client
                    .failures
                    .first()
                    .map_or("none".into(), ToString::to_string)
            );
        }
        let expected: u64 = counts_before.iter().sum::<u64>() + client.connected;
        self.pool.wait_accepted(expected, DRAIN_LIMIT)?;
        let elapsed = start.elapsed();
        let cpu = CpuTimes::read().since(cpu_before);
        let tcp = TcpCounters::read().since(tcp_before);
        let runs = self.runs()?.since(runs_before);
        let stats_after = self
            .group
            .stats()
            .context("reading the program's counters")?;
        let program = ProgramCounts::between(&stats_before, &stats_after, self.pool.len());
        let per_slot: Vec<u64> = self
            .pool
            .accepted()
            .iter()
            .zip(&counts_before)
            .map(|(after, before)| after - before)
            .collect();
        Ok(Measurement {
            connections: client.connected,
            per_slot,
            elapsed,
            runs,
            program,
            tcp,
            cpu,
        })
    }
}

/// What one cell measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub connections: u64,
    /// Connections each listener accepted.
    pub per_slot: Vec<u64>,
    /// From the first connect to the last accept.
    pub elapsed: Duration,
    /// The program's runs during the cell, from the kernel's statistics (zero without a
    /// program, or while statistics are off).
    pub runs: Runs,
    /// What the program itself counted during the cell.
    pub program: ProgramCounts,
    /// TCP trouble during the cell (SYN retransmits, drops).
    pub tcp: TcpCounters,
    /// Where the CPU time went during the cell (10 ms ticks: coarse for short cells).
    pub cpu: CpuShare,
}

/// The program's own counters over a cell: a cross-check of the accept counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounts {
    pub runs: u64,
    /// Connections left to the kernel's hash because no active slot took them.
    pub fallbacks: u64,
    /// Connections the program sent to each slot.
    pub selected: Vec<u64>,
}

impl ProgramCounts {
    fn between(before: &GroupStats, after: &GroupStats, slots: usize) -> Self {
        let per_slot = |stats: &GroupStats| {
            let mut v = vec![0u64; slots];
            for s in &stats.slots {
                if let Some(x) = v.get_mut(s.slot as usize) {
                    *x = s.selected;
                }
            }
            v
        };
        let selected = per_slot(after)
            .iter()
            .zip(per_slot(before))
            .map(|(a, b)| a.saturating_sub(b))
            .collect();
        Self {
            runs: after.global.runs.saturating_sub(before.global.runs),
            fallbacks: after
                .global
                .fallbacks
                .saturating_sub(before.global.fallbacks),
            selected,
        }
    }
}

impl Measurement {
    /// Connections per second.
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Program runs per connection: 1 normally, 2 when SYN cookies made it run on the ACK too.
    pub fn runs_per_connection(&self) -> f64 {
        if self.connections == 0 {
            0.0
        } else {
            self.runs.count as f64 / self.connections as f64
        }
    }
}
