//! A [`Group`] steering a whole [`Pool`]: listener `i` in slot `i`, program attached.

use anyhow::{ensure, Result};
use reuseport_steer::{Family, Group, GroupOptions, GroupStats};

use crate::listeners::Pool;

/// A [`Pool`] of `n` listeners of `family` and a group steering it as [`group`] makes it.
pub fn pool(family: Family, n: usize, options: GroupOptions) -> Result<(Pool, Group)> {
    let pool = Pool::bind(family, n)?;
    let group = group(&pool, options)?;
    Ok((pool, group))
}

/// Loads a group, puts every listener of `pool` in the slot of its index, then attaches.
pub fn group(pool: &Pool, options: GroupOptions) -> Result<Group> {
    let mut group = slots(pool, options)?;
    group.attach(pool.socket(0)?)?;
    Ok(group)
}

/// Loads a group and puts every listener of `pool` in the slot of its index, in one
/// publication (what a thousand listeners need); nothing attached yet.
pub fn slots(pool: &Pool, options: GroupOptions) -> Result<Group> {
    let mut group = Group::load(options)?;
    let slots = group.insert_all(pool.sockets())?;
    for (i, &slot) in slots.iter().enumerate() {
        ensure!(slot == i as u32, "listener {i} went to slot {slot}");
    }
    Ok(group)
}

/// Checks the program's runs and per-slot selections against what the clients saw: equal,
/// except that a SYN the client sent again (`netstat` since `before`: a dropped SYN under load)
/// runs the program once more.
pub fn assert_runs_match(stats: &GroupStats, counts: &[u64], before: crate::netstat::TcpCounters) {
    let again = crate::netstat::TcpCounters::read()
        .since(before)
        .syn_retrans;
    let served: u64 = counts.iter().sum();
    let runs = stats.global.runs;
    assert!(
        runs >= served && runs - served <= again,
        "{runs} runs for {served} connections and {again} SYNs sent again: {stats:?}"
    );
    let picked = selected(stats, counts.len());
    for (slot, (&p, &c)) in picked.iter().zip(counts).enumerate() {
        assert!(
            p >= c && p - c <= again,
            "slot {slot}: selected {p} times, served {c}, {again} SYNs sent again: {stats:?}"
        );
    }
}

/// Per-slot `selected` counters for slots `0..n` (0 for a slot the group no longer holds).
pub fn selected(stats: &GroupStats, n: usize) -> Vec<u64> {
    (0..n as u32)
        .map(|i| stats.slot(i).map_or(0, |s| s.selected))
        .collect()
}

/// Sum of the failed-selection counters.
pub fn select_errors(stats: &GroupStats) -> u64 {
    stats.global.errors.iter().sum()
}
