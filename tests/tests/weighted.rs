//! Smooth weighted round-robin against the real kernel: with weights 1:1:2:4, every 8
//! consecutive connections split exactly 1,1,2,4, and k*8 concurrent connections exactly k*w.

use anyhow::Result;
use reuseport_steer::{Family, Group, GroupOptions, Policy, SlotState};
use reuseport_testing::{clients, expect, fresh_netns, listeners::Pool, steer};

const WEIGHTS: [u64; 4] = [1, 1, 2, 4];
const PERIOD: usize = 8;

fn weighted_pool() -> Result<(Pool, Group)> {
    let (pool, mut group) = steer::pool(
        Family::Ipv4,
        WEIGHTS.len(),
        GroupOptions {
            policy: Policy::Weighted,
            ..GroupOptions::default()
        },
    )?;
    for (slot, &w) in WEIGHTS.iter().enumerate() {
        group.set_weight(slot as u32, w as u32)?;
    }
    Ok((pool, group))
}

#[test]
fn weighted_is_exact_in_every_window_of_one_client() -> Result<()> {
    fresh_netns()?;
    let (pool, group) = weighted_pool()?;
    let count = 12 * PERIOD + 3;
    let answers = clients::sequence(pool.addr(), WEIGHTS.len(), count)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|f| anyhow::anyhow!("connection failed: {f:?}"))?;
    for (start, window) in answers.windows(PERIOD).enumerate() {
        assert_eq!(
            expect::tally(window, WEIGHTS.len()),
            WEIGHTS,
            "window at {start} of {answers:?}"
        );
    }
    let stats = group.stats()?;
    assert_eq!(
        steer::selected(&stats, WEIGHTS.len()),
        expect::tally(&answers, WEIGHTS.len())
    );
    Ok(())
}

#[test]
fn weighted_totals_are_exact_under_concurrency() -> Result<()> {
    fresh_netns()?;
    let (pool, group) = weighted_pool()?;
    // 8 threads x 90 = 720 connections = 90 periods.
    let periods = 90;
    let before = reuseport_testing::netstat::TcpCounters::read();
    let out = clients::run(pool.addr(), WEIGHTS.len(), 8, periods);
    assert!(out.is_clean(), "{out}");
    let want: Vec<u64> = WEIGHTS.iter().map(|w| w * periods).collect();
    assert_eq!(out.counts, want, "{out}");
    steer::assert_runs_match(&group.stats()?, &want, before);
    Ok(())
}

#[test]
fn weighted_leaves_out_a_draining_slot() -> Result<()> {
    fresh_netns()?;
    let (pool, mut group) = weighted_pool()?;
    // Without slot 3 the weights are 1:1:2, a period of 4.
    group.set_state(3, SlotState::Draining)?;
    let answers = clients::sequence(pool.addr(), WEIGHTS.len(), 6 * 4 + 1)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|f| anyhow::anyhow!("connection failed: {f:?}"))?;
    for (start, window) in answers.windows(4).enumerate() {
        assert_eq!(
            expect::tally(window, WEIGHTS.len()),
            [1, 1, 2, 0],
            "window at {start} of {answers:?}"
        );
    }
    Ok(())
}

/// A reactivation the schedule cannot hold (past `MAX_SCHEDULE` entries) is refused and changes
/// nothing: the slot stays draining in memory, in the pinned slot table a restarted daemon reads
/// and for the program, and later changes still go through (a new worker is not refused).
#[test]
fn a_refused_undrain_leaves_the_group_as_it_was() -> Result<()> {
    fresh_netns()?;
    let dir = std::path::Path::new(reuseport_steer::pin::BPFFS)
        .join(format!("reuseport-test-undrain-{}", std::process::id()));
    let outcome = refused_undrain(&dir);
    reuseport_steer::pin::unpin(&dir)?;
    outcome
}

fn refused_undrain(dir: &std::path::Path) -> Result<()> {
    let n = 10;
    let pool = Pool::bind(Family::Ipv4, n)?;
    let options = || GroupOptions {
        policy: Policy::Weighted,
        pin: Some(dir.to_path_buf()),
        ..GroupOptions::default()
    };
    let mut group = steer::slots(&pool, options())?;
    // Slots 0..8 weigh 991..998 and slot 9 weighs 1: a schedule of 7,957 entries (no common
    // divisor to reduce by). Slot 8, draining, weighs 1,000: back in, it would need 8,957.
    group.set_state(8, SlotState::Draining)?;
    let mut weights: Vec<(u32, u32)> = (0..8).map(|i| (i, 991 + i)).collect();
    weights.push((8, 1000));
    group.set_weights(&weights)?;
    group.attach(pool.socket(0)?)?;
    let generation = group.generation();
    let active = group.active_slots();

    match group.set_state(8, SlotState::Active) {
        Err(reuseport_steer::Error::ScheduleTooLong { len, max }) => {
            assert_eq!((len, max), (8957, 8192))
        }
        other => anyhow::bail!("undrain past the schedule's length: {other:?}"),
    }
    assert_eq!(group.slot_state(8), Some(SlotState::Draining));
    assert_eq!(group.active_slots(), active);
    assert_eq!(group.generation(), generation, "something was published");
    // What a restarted daemon reads back from the kernel.
    let adopted = Group::load(options())?;
    assert!(adopted.adopted());
    assert_eq!(adopted.slot_state(8), Some(SlotState::Draining));
    assert_eq!(adopted.active_slots(), active);
    drop(adopted);

    let out = clients::run(pool.addr(), n, 4, 50);
    assert!(out.is_clean(), "{out}");
    assert_eq!(out.counts[8], 0, "the draining slot got connections: {out}");
    // Later publications go through.
    group.set_weight(9, 2)?;
    assert_ne!(group.generation(), generation);
    Ok(())
}
