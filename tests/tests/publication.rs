//! Publications against the real kernel: thousands of state, weight, policy and load changes
//! while clients connect. The program must steer only by whole publications: a slot that is
//! in no publication's active list gets no connection, whatever policy, and no connection is
//! lost. A change refused half-way leaves nothing behind in the kernel either.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::Result;
use reuseport_steer::{Error, Family, Group, GroupOptions, Policy, SlotState};
use reuseport_testing::{
    clients::{self, Exchange, Outcome},
    fresh_netns,
    listeners::{self, Pool},
    steer,
};

/// Listeners: slots 0 and 1 are drained before the program is attached and stay so; slot 2
/// stays active (the group never empties); slots 3.. flip.
const N: usize = 8;
const NEVER: [u32; 2] = [0, 1];
const ALWAYS: u32 = 2;
/// Publications the storm makes at least.
const CHANGES: u64 = 2000;
const POLICIES: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::Weighted,
    Policy::LeastLoaded,
    Policy::P2c,
    Policy::Hash,
];

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn a_storm_of_changes_never_steers_outside_a_publication() -> Result<()> {
    fresh_netns()?;
    let pool = Pool::bind(Family::Ipv4, N)?;
    let mut group = steer::slots(&pool, GroupOptions::default())?;
    let never: Vec<(u32, SlotState)> = NEVER.iter().map(|&s| (s, SlotState::Draining)).collect();
    group.set_states(&never)?;
    // Bait: the never-active slots look the most attractive to every policy that looks.
    for slot in NEVER {
        group.set_weight(slot, 1000)?;
        group.set_load(slot, 0);
    }
    group.attach(pool.socket(0)?)?;

    let stop = AtomicBool::new(false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let (outcome, changes) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Outcome::new(N);
                    while !stop.load(Ordering::Relaxed) {
                        out.record(clients::connect(
                            pool.addr(),
                            Exchange::Index { listeners: N },
                            None,
                        ));
                    }
                    out
                })
            })
            .collect();
        let storm = storm(&mut group, &mut rng);
        stop.store(true, Ordering::Relaxed);
        let mut total = Outcome::new(N);
        for client in clients {
            let out = client
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            total.attempted += out.attempted;
            total.connected += out.connected;
            total.failures.extend(out.failures);
            for (sum, count) in total.counts.iter_mut().zip(&out.counts) {
                *sum += count;
            }
        }
        (total, storm)
    });
    let changes = changes?;
    eprintln!(
        "{changes} changes in {:?} while {} connections: {outcome}",
        started.elapsed(),
        outcome.attempted
    );
    assert!(changes >= CHANGES);
    assert!(outcome.is_clean(), "{outcome}");
    assert!(outcome.served() >= 1000, "too few connections: {outcome}");
    for slot in NEVER {
        assert_eq!(outcome.counts[slot as usize], 0, "slot {slot}: {outcome}");
    }
    assert!(
        (3..N).all(|i| outcome.counts[i] > 0),
        "a flipping slot got nothing: {outcome}"
    );
    let stats = group.stats()?;
    for slot in NEVER {
        assert_eq!(stats.slot(slot).map(|s| s.selected), Some(0), "{stats:?}");
    }
    assert_eq!(stats.global.fallbacks, 0, "{stats:?}");
    assert_eq!(stats.global.drops, 0, "{stats:?}");
    assert_eq!(steer::select_errors(&stats), 0, "{stats:?}");
    // What the program counted is what the clients saw, but for a SYN the kernel sent twice
    // (a retransmission on a loaded machine runs the program again): a handful at most.
    let selected = steer::selected(&stats, N);
    let extra: u64 = selected
        .iter()
        .zip(&outcome.counts)
        .map(|(&s, &c)| {
            assert!(s >= c, "{stats:?} against {outcome}");
            s - c
        })
        .sum();
    assert!(
        extra <= outcome.served() / 1000 + 2,
        "{extra} selections answered by no client: {stats:?}"
    );
    Ok(())
}

/// Changes states, weights, the policy and the loads (republishing the least-loaded list, as
/// the daemon does at every sample) `CHANGES` times; returns how many publications it made.
fn storm(group: &mut Group, rng: &mut Rng) -> Result<u64> {
    let flipping: Vec<u32> = (ALWAYS + 1..N as u32).collect();
    let mut changes = 0u64;
    while changes < CHANGES {
        let before = group.generation();
        match rng.below(4) {
            0 | 1 => {
                let batch: Vec<(u32, SlotState)> = (0..1 + rng.below(3))
                    .map(|_| {
                        let slot = flipping[rng.below(flipping.len() as u64) as usize];
                        let state = if rng.below(2) == 0 {
                            SlotState::Active
                        } else {
                            SlotState::Draining
                        };
                        (slot, state)
                    })
                    .collect();
                group.set_states(&batch)?;
            }
            2 => {
                let slot = ALWAYS + rng.below((N as u32 - ALWAYS).into()) as u32;
                group.set_weight(slot, 1 + rng.below(1000) as u32)?;
            }
            _ => group.set_policy(POLICIES[rng.below(POLICIES.len() as u64) as usize])?,
        }
        assert_ne!(group.generation(), before, "nothing published");
        changes += 1;
        // A sample: new loads, the least-loaded list republished.
        for slot in ALWAYS..N as u32 {
            group.set_load(slot, 1 + rng.below(4));
        }
        group.publish_least_loaded();
    }
    Ok(changes)
}

/// All or nothing in the kernel too: a batch with one socket the group must refuse places none
/// of the others, so each can then be inserted (a socket left in the kernel's array would be
/// refused as held elsewhere).
#[test]
fn a_refused_batch_leaves_no_socket_in_the_kernel() -> Result<()> {
    fresh_netns()?;
    let (addr, socks) = listeners::group(Family::Ipv4, 3)?;
    let mut group = Group::load(GroupOptions::default())?;
    let other_port = listeners::listener(std::net::SocketAddr::new(addr.ip(), 0), true)?;
    let generation = group.generation();
    let batch = [&socks[0], &socks[1], &other_port, &socks[2]];
    match group.insert_all(batch) {
        Err(Error::WrongAddress { .. }) => {}
        other => anyhow::bail!("a batch with a socket of another port: {other:?}"),
    }
    assert!(group.slots().is_empty());
    assert_eq!(group.generation(), generation, "something was published");
    for sock in &socks {
        group.insert(sock)?;
    }
    assert_eq!(group.active_slots(), vec![0, 1, 2]);
    Ok(())
}
