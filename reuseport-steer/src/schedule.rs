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
}
