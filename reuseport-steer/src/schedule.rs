//! The weighted schedule: nginx's smooth weighted round-robin, unrolled once in userspace so the
//! program only indexes it with a shared ticket. Any W consecutive tickets (W = sum of the
//! reduced weights) cover the schedule exactly once, so every slot gets exactly its weight in
//! every window, however many CPUs take tickets at once.

use reuseport_common::MAX_SCHEDULE;

use crate::error::{Error, Result};

/// Unrolls one period of smooth weighted round-robin over `(slot, weight)` pairs. Weights are
/// divided by their greatest common divisor first, so 100:100:200 costs as much as 1:1:2.
pub fn smooth_weighted(slots: &[(u32, u32)]) -> Result<Vec<u32>> {
    let slots: Vec<(u32, u64)> = slots
        .iter()
        .filter(|&&(_, w)| w > 0)
        .map(|&(s, w)| (s, u64::from(w)))
        .collect();
    let divisor = slots.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
    let weights: Vec<i64> = slots.iter().map(|&(_, w)| (w / divisor) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total as u64 > u64::from(MAX_SCHEDULE) {
        return Err(Error::ScheduleTooLong {
            len: total as u64,
            max: MAX_SCHEDULE,
        });
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(slots[best].0);
    }
    Ok(schedule)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], slot: u32) -> usize {
        schedule.iter().filter(|&&s| s == slot).count()
    }

    #[test]
    fn one_period_gives_each_slot_its_weight() -> Result<()> {
        let s = smooth_weighted(&[(0, 1), (1, 1), (2, 2), (3, 4)])?;
        assert_eq!(s.len(), 8);
        for (slot, w) in [(0, 1), (1, 1), (2, 2), (3, 4)] {
            assert_eq!(counts(&s, slot), w);
        }
        // Smooth: the heaviest slot never gets three in a row.
        assert!(!s.windows(3).any(|w| w.iter().all(|&x| x == 3)), "{s:?}");
        Ok(())
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() -> Result<()> {
        let s = smooth_weighted(&[(5, 300), (9, 600)])?;
        assert_eq!(s.len(), 3);
        assert_eq!(counts(&s, 9), 2);
        Ok(())
    }

    #[test]
    fn too_long_a_schedule_is_refused() {
        let slots: Vec<(u32, u32)> = (0..20).map(|i| (i, 997 + i)).collect();
        assert!(matches!(
            smooth_weighted(&slots),
            Err(Error::ScheduleTooLong { .. })
        ));
    }

    #[test]
    fn empty_input_gives_an_empty_schedule() -> Result<()> {
        assert!(smooth_weighted(&[])?.is_empty());
        Ok(())
    }

    use proptest::prelude::*;

    /// Up to 16 slots (any numbers, distinct) with weights 1..=MAX_WEIGHT, sometimes all
    /// multiples of a common factor.
    fn weighted_slots() -> impl Strategy<Value = Vec<(u32, u32)>> {
        let weights = prop_oneof![
            prop::collection::vec(1..=20u32, 1..=16),
            prop::collection::vec(1..=reuseport_common::MAX_WEIGHT, 1..=16),
            (prop::collection::vec(1..=10u32, 1..=16), 2..=100u32)
                .prop_map(|(ws, k)| ws.into_iter().map(|w| w * k).collect()),
        ];
        (weights, 0..1000u32).prop_map(|(ws, first)| {
            ws.into_iter()
                .enumerate()
                .map(|(i, w)| (first + 3 * i as u32, w))
                .collect()
        })
    }

    /// The weights divided by their greatest common divisor, and their sum.
    fn reduced(slots: &[(u32, u32)]) -> (Vec<u64>, u64) {
        let g = slots.iter().fold(0, |g, &(_, w)| gcd(g, u64::from(w)));
        let ws: Vec<u64> = slots.iter().map(|&(_, w)| u64::from(w) / g).collect();
        let total = ws.iter().sum();
        (ws, total)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Refused exactly when the reduced weights add up past `MAX_SCHEDULE`; otherwise one
        /// period long, and every window of W consecutive tickets (wrapping, as the program's
        /// ticket modulo the length does) gives each slot exactly its reduced weight.
        #[test]
        fn every_window_of_one_period_is_exact(slots in weighted_slots()) {
            let (weights, total) = reduced(&slots);
            let schedule = match smooth_weighted(&slots) {
                Err(Error::ScheduleTooLong { len, max }) => {
                    prop_assert!(total > u64::from(MAX_SCHEDULE));
                    prop_assert_eq!((len, max), (total, MAX_SCHEDULE));
                    return Ok(());
                }
                other => other.map_err(|e| TestCaseError::fail(e.to_string()))?,
            };
            prop_assert!(total <= u64::from(MAX_SCHEDULE));
            prop_assert_eq!(schedule.len() as u64, total);
            let w = schedule.len();
            let index: std::collections::HashMap<u32, usize> =
                slots.iter().enumerate().map(|(i, &(s, _))| (s, i)).collect();
            let mut window = vec![0u64; slots.len()];
            for &s in &schedule {
                window[index[&s]] += 1;
            }
            // Slide the window once around the period: one slot leaves, one comes in.
            for start in 0..w {
                prop_assert_eq!(&window, &weights, "window at {}", start);
                window[index[&schedule[start]]] -= 1;
                window[index[&schedule[(start + w) % w]]] += 1;
            }
        }

        /// Smooth: in any prefix of the period, no slot is ahead of its exact share by a whole
        /// connection (the slot picked has the largest credit, which is positive, so its
        /// credit never falls to -W), nor behind by n - 1 (the credits sum to zero); in any
        /// window, wrapping, the deviation stays below n.
        #[test]
        fn every_prefix_and_window_is_close_to_the_weights(slots in weighted_slots()) {
            let Ok(schedule) = smooth_weighted(&slots) else {
                return Ok(());
            };
            let (weights, total) = reduced(&slots);
            let n = slots.len() as f64;
            let index: std::collections::HashMap<u32, usize> =
                slots.iter().enumerate().map(|(i, &(s, _))| (s, i)).collect();
            let share = |i: usize, len: usize| len as f64 * weights[i] as f64 / total as f64;
            let mut counts = vec![0u64; slots.len()];
            for (t, &s) in schedule.iter().enumerate() {
                counts[index[&s]] += 1;
                for (i, &c) in counts.iter().enumerate() {
                    let ahead = c as f64 - share(i, t + 1);
                    prop_assert!(ahead < 1.0, "slot {} ahead by {} after {}", i, ahead, t + 1);
                    prop_assert!(-ahead < (n - 1.0).max(1.0), "slot {} behind by {}", i, -ahead);
                }
            }
            let w = schedule.len();
            for len in [1, w / 3, w / 2, w - 1] {
                if len == 0 {
                    continue;
                }
                let mut window = vec![0u64; slots.len()];
                for &s in &schedule[..len] {
                    window[index[&s]] += 1;
                }
                for start in 0..w {
                    for (i, &c) in window.iter().enumerate() {
                        let off = (c as f64 - share(i, len)).abs();
                        prop_assert!(off < n.max(1.0), "window {}+{}: slot {} off by {}", start, len, i, off);
                    }
                    window[index[&schedule[start]]] -= 1;
                    window[index[&schedule[(start + len) % w]]] += 1;
                }
            }
        }
    }
}
