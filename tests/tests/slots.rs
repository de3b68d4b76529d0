//! Slot bookkeeping against the real kernel: removing a slot stops its traffic, putting a
//! socket back restarts it with fresh counters, and `sync` frees the slots whose socket closed.

use anyhow::Result;
use reuseport_steer::{Family, Group, GroupOptions, Policy};
use reuseport_testing::{clients, expect, fresh_netns, listeners, steer};

#[test]
fn sync_frees_the_slot_of_a_closed_listener() -> Result<()> {
    fresh_netns()?;
    let (addr, mut socks) = listeners::group(Family::Ipv4, 3)?;
    let mut group = Group::load(GroupOptions::default())?;
    for s in &socks {
        group.insert(s)?;
    }
    group.attach(&socks[0])?;
    assert_eq!(group.sync()?, Vec::<u32>::new(), "nothing closed yet");

    drop(socks.remove(1));
    assert_eq!(group.sync()?, vec![1]);
    assert_eq!(group.active_slots(), vec![0, 2]);
    assert_eq!(group.sync()?, Vec::<u32>::new(), "freed already");

    let replacement = listeners::listener(addr, true)?;
    assert_eq!(group.insert(&replacement)?, 1, "the freed slot is reused");
    Ok(())
}

#[test]
fn a_removed_slot_gets_nothing_until_put_back() -> Result<()> {
    fresh_netns()?;
    let n = 4;
    let (pool, mut group) = steer::pool(
        Family::Ipv4,
        n,
        GroupOptions {
            policy: Policy::RoundRobin,
            ..GroupOptions::default()
        },
    )?;
    let before = clients::run(pool.addr(), n, 4, 20);
    assert!(before.is_clean() && before.counts[1] > 0, "{before}");

    group.remove(1)?;
    assert_eq!(group.active_slots(), vec![0, 2, 3]);
    let removed = clients::run(pool.addr(), n, 4, 30);
    assert!(removed.is_clean(), "{removed}");
    assert_eq!(removed.counts[1], 0, "{removed}");
    let others = [removed.counts[0], removed.counts[2], removed.counts[3]];
    assert!(expect::is_exact_round_robin(&others), "{removed}");
    assert!(group.stats()?.slot(1).is_none());

    group.insert_at(1, pool.socket(1)?)?;
    let back = clients::run(pool.addr(), n, 4, 40);
    assert!(back.is_clean(), "{back}");
    assert!(expect::is_exact_round_robin(&back.counts), "{back}");
    let stats = group.stats()?;
    // Counters of a re-filled slot start from zero.
    assert_eq!(
        stats.slot(1).map(|s| s.selected),
        Some(back.counts[1]),
        "{stats:?}"
    );
    Ok(())
}
