//! Draining slots against the real kernel: a draining slot gets no new connection under any
//! policy, gets its share back once active again, and with every slot draining `on_empty`
//! decides: `drop` refuses the connection, `pass` lets the kernel hash over the whole group.

use anyhow::Result;
use reuseport_steer::{Family, GroupOptions, OnEmpty, Policy, SlotState};
use reuseport_testing::{
    clients::{self, Failure},
    expect, fresh_netns, steer,
};

fn options(policy: Policy) -> GroupOptions {
    GroupOptions {
        policy,
        ..GroupOptions::default()
    }
}

#[test]
fn hash_never_selects_a_draining_slot() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(Policy::Hash))?;
    group.set_state(1, SlotState::Draining)?;
    group.set_state(3, SlotState::Draining)?;
    assert_eq!(group.active_slots(), vec![0, 2]);

    let out = clients::run(pool.addr(), n, 8, 100);
    assert!(out.is_clean(), "{out}");
    assert_eq!((out.counts[1], out.counts[3]), (0, 0), "{out}");
    // 800 flow hashes over two slots: one of them getting none is a 2^-799 event.
    assert!(out.counts[0] > 0 && out.counts[2] > 0, "{out}");

    let stats = group.stats()?;
    assert_eq!(steer::selected(&stats, n), out.counts, "{stats:?}");
    assert_eq!(stats.global.fallbacks, 0, "{stats:?}");
    Ok(())
}

#[test]
fn draining_then_active_again_restores_traffic() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(Family::Ipv4, n, options(Policy::RoundRobin))?;

    group.set_state(2, SlotState::Draining)?;
    let drained = clients::run(pool.addr(), n, 8, 45);
    assert!(drained.is_clean(), "{drained}");
    assert_eq!(drained.counts[2], 0, "{drained}");
    let others = [drained.counts[0], drained.counts[1], drained.counts[3]];
    assert!(expect::is_exact_round_robin(&others), "{drained}");

    group.set_state(2, SlotState::Active)?;
    let restored = clients::run(pool.addr(), n, 8, 50);
    assert!(restored.is_clean(), "{restored}");
    assert!(restored.counts[2] > 0, "{restored}");
    assert!(expect::is_exact_round_robin(&restored.counts), "{restored}");
    Ok(())
}

#[test]
fn all_draining_with_drop_refuses_and_with_pass_serves() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(
        Family::Ipv4,
        n,
        GroupOptions {
            on_empty: OnEmpty::Drop,
            ..options(Policy::RoundRobin)
        },
    )?;
    for slot in 0..n as u32 {
        group.set_state(slot, SlotState::Draining)?;
    }
    assert!(group.active_slots().is_empty());

    let refused = clients::sequence(pool.addr(), n, 20);
    assert!(
        refused.iter().all(|r| *r == Err(Failure::Refused)),
        "{refused:?}"
    );
    let stats = group.stats()?;
    assert_eq!(stats.global.drops, 20, "{stats:?}");
    assert_eq!(stats.global.fallbacks, 0, "{stats:?}");

    group.set_on_empty(OnEmpty::Pass)?;
    let out = clients::run(pool.addr(), n, 4, 25);
    assert!(out.is_clean(), "{out}");
    let stats = group.stats()?;
    assert_eq!(stats.global.fallbacks, 100, "{stats:?}");
    assert_eq!(stats.global.drops, 20, "{stats:?}");
    assert_eq!(steer::selected(&stats, n), vec![0; n], "{stats:?}");
    Ok(())
}
