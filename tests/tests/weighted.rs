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
    let out = clients::run(pool.addr(), WEIGHTS.len(), 8, periods);
    assert!(out.is_clean(), "{out}");
    let want: Vec<u64> = WEIGHTS.iter().map(|w| w * periods).collect();
    assert_eq!(out.counts, want, "{out}");
    let stats = group.stats()?;
    assert_eq!(steer::selected(&stats, WEIGHTS.len()), want, "{stats:?}");
    assert_eq!(stats.global.runs, out.served(), "{stats:?}");
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
