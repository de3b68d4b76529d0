//! Changes made while clients connect, against the real kernel: swapping the policy, closing a
//! listener (its queue migrates in select-or-migrate mode), detaching and re-attaching. None of
//! them may cost a connection.

use std::time::Duration;

use anyhow::Result;
use reuseport_steer::{AttachMode, Error, Family, GroupOptions, Policy};
use reuseport_testing::{
    clients::{self, Failure},
    fresh_netns, steer, wait,
};

const WAIT: Duration = Duration::from_secs(20);

fn options(mode: AttachMode) -> GroupOptions {
    GroupOptions {
        mode,
        policy: Policy::RoundRobin,
        ..GroupOptions::default()
    }
}

#[test]
fn policy_swaps_under_load_lose_no_connection() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(AttachMode::SelectOrMigrate))?;
    for (slot, w) in [(0, 1), (1, 1), (2, 2), (3, 4)] {
        group.set_weight(slot, w)?;
    }

    let before = reuseport_testing::netstat::TcpCounters::read();
    let load = clients::start(pool.addr(), n, 8, 250);
    let cycle = [Policy::Hash, Policy::RoundRobin, Policy::Weighted];
    let mut swaps = 0usize;
    // Bounded: the load ends within its timeouts, and so does this loop.
    while !load.is_finished() && swaps < 100_000 {
        group.set_policy(cycle[swaps % cycle.len()])?;
        swaps += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = load.join();
    assert!(swaps > 3, "only {swaps} swaps during the load");
    assert!(out.is_clean(), "{out}");
    assert_eq!(out.served(), 2000, "{out}");

    let stats = group.stats()?;
    steer::assert_runs_match(&stats, &out.counts, before);
    assert_eq!(stats.global.fallbacks, 0, "{stats:?}");
    assert_eq!(steer::select_errors(&stats), 0, "{stats:?}");
    Ok(())
}

#[test]
fn closing_a_listener_mid_load_refuses_and_resets_nothing() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (mut pool, mut group) = steer::pool(Family::Ipv4, n, options(AttachMode::SelectOrMigrate))?;

    let load = clients::start(pool.addr(), n, 8, 250);
    assert!(load.wait_for(500, WAIT), "the load made no progress");
    // Its accept thread stops, then the listener closes while the clients keep connecting.
    pool.close(3)?;
    assert_eq!(group.sync()?, vec![3]);
    assert_eq!(group.active_slots(), vec![0, 1, 2]);
    let out = load.join();

    assert!(out.is_clean(), "{out}");
    assert_eq!(out.served(), 2000, "{out}");
    assert!(
        out.counts[3] > 0,
        "listener 3 served nothing before it closed: {out}"
    );
    assert_eq!(pool.accepted(), out.counts, "servers and clients disagree");
    assert!(pool.errors().is_empty(), "{:?}", pool.errors());
    let stats = group.stats()?;
    assert_eq!(stats.global.fallbacks, 0, "{stats:?}");
    Ok(())
}

/// Queues `queued` connections on listener 1 (its accept thread paused), then closes it.
/// Returns what the clients saw and the group's counters.
fn close_with_a_queue(
    mode: AttachMode,
    queued: u64,
) -> Result<(clients::Outcome, reuseport_steer::GroupStats)> {
    let n = 2;
    let (mut pool, group) = steer::pool(Family::Ipv4, n, options(mode))?;
    pool.pause(1);

    // Round-robin over two slots: of 2*queued concurrent connections, exactly `queued` land
    // in listener 1's accept queue.
    let load = clients::start(pool.addr(), n, 2 * queued as usize, 1);
    // On a time-out, the assertion below says what is missing.
    let _ = wait::until(WAIT, "the connections queued", || {
        group.stats().is_ok_and(|stats| {
            steer::selected(&stats, n)[1] == queued && pool.accepted()[0] == queued
        })
    });
    assert_eq!(pool.accepted(), vec![queued, 0]);
    pool.close(1)?;
    let out = load.join();
    Ok((out, group.stats()?))
}

#[test]
fn queued_connections_of_a_closed_listener_migrate() -> Result<()> {
    fresh_netns()?;
    let queued = 10;
    let (out, stats) = close_with_a_queue(AttachMode::SelectOrMigrate, queued)?;
    assert!(out.is_clean(), "{out}");
    assert_eq!(out.counts, vec![2 * queued, 0], "{out}");
    assert_eq!(stats.global.migrations, queued, "{stats:?}");
    assert_eq!(stats.slot(0).map(|s| s.migrated), Some(queued), "{stats:?}");
    Ok(())
}

/// The contrast that shows the previous test can fail: without the migrate program, the queue
/// of a closed listener is reset.
#[test]
fn select_mode_resets_the_queue_of_a_closed_listener() -> Result<()> {
    fresh_netns()?;
    let queued = 10;
    let (out, stats) = close_with_a_queue(AttachMode::Select, queued)?;
    assert_eq!(out.counts, vec![queued, 0], "{out}");
    assert_eq!(out.failures, vec![Failure::Reset; queued as usize], "{out}");
    assert_eq!(stats.global.migrations, 0, "{stats:?}");
    Ok(())
}

#[test]
fn detach_returns_the_group_to_kernel_hashing() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(AttachMode::SelectOrMigrate))?;
    let steered = clients::run(pool.addr(), n, 4, 25);
    assert!(steered.is_clean(), "{steered}");
    assert_eq!(group.stats()?.global.runs, 100);

    group.detach(pool.socket(2)?)?;
    assert!(!group.is_attached());
    let hashed = clients::run(pool.addr(), n, 4, 50);
    assert!(hashed.is_clean(), "{hashed}");
    assert_eq!(
        group.stats()?.global.runs,
        100,
        "the program ran after detach"
    );

    match group.detach(pool.socket(0)?) {
        Err(Error::NothingToDetach(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("second detach: {other:?}"),
    }

    group.attach(pool.socket(1)?)?;
    let again = clients::run(pool.addr(), n, 4, 25);
    assert!(again.is_clean(), "{again}");
    assert_eq!(group.stats()?.global.runs, 200);
    Ok(())
}

/// The kernel keeps the program (and its maps) while the group lives: dropping the `Group`
/// does not detach it, and steering goes on by the last state.
#[test]
fn dropping_the_group_keeps_the_program_steering() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(AttachMode::SelectOrMigrate))?;
    group.set_state(0, reuseport_steer::SlotState::Draining)?;
    drop(group);
    let out = clients::run(pool.addr(), n, 4, 60);
    assert!(out.is_clean(), "{out}");
    assert_eq!(out.counts, vec![0, 80, 80, 80], "{out}");
    Ok(())
}
