//! The next [`Publication`] of a group, computed whole from the live one with no kernel
//! involved: a change that cannot be published (a weight out of range, a schedule past
//! `MAX_SCHEDULE`) is refused here, before anything is written, and the live publication is
//! never touched (every [`Group`](crate::Group) change is all-or-nothing).

use reuseport_common::{Publication, SlotConfig, MAX_SLOTS, MAX_WEIGHT};

use crate::{
    error::{Error, Result},
    policy::SlotState,
    schedule,
};

/// `live` with `change` applied to a copy, its lists recomputed and its generation bumped.
pub(crate) fn next(
    live: &Publication,
    change: impl FnOnce(&mut Publication) -> Result<()>,
) -> Result<Box<Publication>> {
    let mut next = Box::new(*live);
    change(&mut next)?;
    relist(&mut next)?;
    next.config.generation = next_generation(live.config.generation);
    Ok(next)
}

/// The generation after `generation`: never 0, which no publication has (a `LEAST` word of a
/// fresh map, all zeros, then belongs to none).
pub(crate) fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// Recomputes the active list (the active slots in slot order) and the weighted schedule from
/// the slot table. On an error `publication` is unchanged.
pub(crate) fn relist(publication: &mut Publication) -> Result<()> {
    let active: Vec<(u32, u32)> = publication
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() == Some(SlotState::Active))
        .map(|(i, s)| (i as u32, s.weight))
        .collect();
    let schedule = schedule::smooth_weighted(&active)?;
    publication.active.fill(0);
    for (cell, &(slot, _)) in publication.active.iter_mut().zip(&active) {
        *cell = slot;
    }
    publication.schedule.fill(0);
    publication.schedule[..schedule.len()].copy_from_slice(&schedule);
    publication.config.active_len = active.len() as u32;
    publication.config.schedule_len = schedule.len() as u32;
    Ok(())
}

/// Fails unless `slot` holds a socket.
pub(crate) fn occupied(publication: &Publication, slot: u32) -> Result<()> {
    check_range(slot)?;
    if publication.slots[slot as usize].is_empty() {
        return Err(Error::SlotEmpty(slot));
    }
    Ok(())
}

pub(crate) fn check_range(slot: u32) -> Result<()> {
    if slot >= MAX_SLOTS {
        return Err(Error::SlotOutOfRange {
            slot,
            max: MAX_SLOTS,
        });
    }
    Ok(())
}

/// Sets the state of occupied slots.
pub(crate) fn set_states(
    publication: &mut Publication,
    changes: &[(u32, SlotState)],
) -> Result<()> {
    for &(slot, state) in changes {
        occupied(publication, slot)?;
        publication.slots[slot as usize].state = state as u32;
    }
    Ok(())
}

/// Sets the weight of occupied slots (1..=MAX_WEIGHT).
pub(crate) fn set_weights(publication: &mut Publication, changes: &[(u32, u32)]) -> Result<()> {
    for &(slot, weight) in changes {
        occupied(publication, slot)?;
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(Error::InvalidWeight {
                weight,
                max: MAX_WEIGHT,
            });
        }
        publication.slots[slot as usize].weight = weight;
    }
    Ok(())
}

/// A slot just filled: active, weight 1.
pub(crate) fn filled(cookie: u64) -> SlotConfig {
    SlotConfig {
        state: SlotState::Active as u32,
        weight: 1,
        cookie,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use reuseport_common::MAX_SCHEDULE;

    use super::*;

    /// A change a group may be asked for, on slots 0..16 (so collisions are frequent).
    #[derive(Clone, Debug)]
    enum Change {
        Fill(u32),
        Empty(u32),
        States(Vec<(u32, bool)>),
        Weights(Vec<(u32, u32)>),
    }

    fn change() -> impl Strategy<Value = Change> {
        let slot = 0..16u32;
        // Mostly filling and reactivating, so groups get heavy enough to be refused.
        prop_oneof![
            4 => slot.clone().prop_map(Change::Fill),
            1 => slot.clone().prop_map(Change::Empty),
            3 => prop::collection::vec((slot.clone(), prop::bool::weighted(0.8)), 1..4)
                .prop_map(Change::States),
            // Heavy enough that 16 slots overflow the schedule; sometimes out of range.
            3 => prop::collection::vec((slot, weight()), 1..4).prop_map(Change::Weights),
        ]
    }

    fn weight() -> impl Strategy<Value = u32> {
        prop_oneof![
            8 => 800..=MAX_WEIGHT,
            1 => 1..500u32,
            1 => prop_oneof![Just(0), Just(MAX_WEIGHT + 1)],
        ]
    }

    fn apply(live: &Publication, change: &Change) -> Result<Box<Publication>> {
        next(live, |p| match change {
            Change::Fill(slot) => {
                let slot = *slot as usize;
                if p.slots[slot].is_empty() {
                    p.slots[slot] = filled(100 + slot as u64);
                }
                Ok(())
            }
            Change::Empty(slot) => {
                p.slots[*slot as usize] = SlotConfig::EMPTY_SLOT;
                Ok(())
            }
            Change::States(changes) => {
                let changes: Vec<(u32, SlotState)> = changes
                    .iter()
                    .map(|&(slot, on)| {
                        let state = if on {
                            SlotState::Active
                        } else {
                            SlotState::Draining
                        };
                        (slot, state)
                    })
                    .collect();
                set_states(p, &changes)
            }
            Change::Weights(changes) => set_weights(p, changes),
        })
    }

    /// What the model says the error is, if any: checked before anything is applied.
    fn expected_error(live: &Publication, change: &Change) -> Option<&'static str> {
        let mut slots = live.slots;
        match change {
            Change::Fill(slot) => {
                if slots[*slot as usize].is_empty() {
                    slots[*slot as usize] = filled(0);
                }
            }
            Change::Empty(slot) => slots[*slot as usize] = SlotConfig::EMPTY_SLOT,
            Change::States(changes) => {
                for &(slot, on) in changes {
                    if slots[slot as usize].is_empty() {
                        return Some("slot_empty");
                    }
                    slots[slot as usize].state = if on {
                        SlotState::Active as u32
                    } else {
                        SlotState::Draining as u32
                    };
                }
            }
            Change::Weights(changes) => {
                for &(slot, weight) in changes {
                    if slots[slot as usize].is_empty() {
                        return Some("slot_empty");
                    }
                    if !(1..=MAX_WEIGHT).contains(&weight) {
                        return Some("invalid_weight");
                    }
                    slots[slot as usize].weight = weight;
                }
            }
        }
        let weights: Vec<u64> = slots
            .iter()
            .filter(|s| s.state() == Some(SlotState::Active))
            .map(|s| u64::from(s.weight))
            .collect();
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let total: u64 = weights.iter().map(|w| w / divisor).sum();
        (total > u64::from(MAX_SCHEDULE)).then_some("schedule_too_long")
    }

    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }

    /// What the program relies on: the active list is exactly the active slots in slot order,
    /// the schedule holds only active slots, and unused entries are zero.
    fn check_lists(p: &Publication) {
        let want: Vec<u32> = (0..MAX_SLOTS)
            .filter(|&i| p.slots[i as usize].state() == Some(SlotState::Active))
            .collect();
        assert_eq!(p.active(), &want[..]);
        assert!(p.active[want.len()..].iter().all(|&x| x == 0));
        let mut active = [false; MAX_SLOTS as usize];
        for &slot in &want {
            active[slot as usize] = true;
        }
        assert!(p.schedule().iter().all(|&s| active[s as usize]));
        assert!(p.schedule[p.schedule().len()..].iter().all(|&x| x == 0));
        assert_eq!(want.is_empty(), p.schedule().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Every change either publishes lists that match the slot table, with a new
        /// generation, or fails exactly when the model says, with the live publication as it
        /// was (the failed change is not half-applied when the next one builds on it).
        #[test]
        fn every_change_publishes_whole_lists_or_nothing(
            changes in prop::collection::vec(change(), 1..60)
        ) {
            // Sixteen sockets to start with, so most changes find their slots occupied.
            let mut live = next(&Publication::EMPTY, |p| {
                for (slot, cell) in p.slots.iter_mut().take(16).enumerate() {
                    *cell = filled(100 + slot as u64);
                }
                Ok(())
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for change in &changes {
                let before = live.clone();
                let expected = expected_error(&live, change);
                match apply(&live, change) {
                    Ok(next) => {
                        prop_assert_eq!(expected, None, "{:?} published", change);
                        check_lists(&next);
                        prop_assert_ne!(next.config.generation, live.config.generation);
                        prop_assert_ne!(next.config.generation, 0);
                        live = next;
                    }
                    Err(e) => {
                        prop_assert_eq!(expected, Some(e.code()), "{:?}: {}", change, e);
                        prop_assert_eq!(&live, &before);
                    }
                }
            }
        }
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(u32::MAX), 1);
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(7), 8);
    }
}
