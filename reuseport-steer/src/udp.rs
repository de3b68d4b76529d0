//! UDP groups: the flow table's idle time, and the Maglev lookup table of the `maglev` policy:
//! computed here over the active slots at every
//! publication that changes them, written into the memory-mapped `MAGLEV` map, which the
//! program indexes by the flow hash (`reuseport-ebpf/src/udp.rs`).
//!
//! Maglev (Eisenbud et al., NSDI 2016) gives every slot a permutation of the table's entries and
//! lets the slots take turns claiming their next free entry: each gets about 1/N of the table,
//! and a slot leaving frees only its own entries (the others keep theirs, save a handful), so
//! only its flows move; a slot joining takes about 1/N of the entries from the others.
//!
//! The program uses a table entry only if the live publication has its slot active, so the
//! table never needs to be in step with the publication: the entries that go to slots active
//! before and after a change are written before it is published, the others after. A reader
//! sees the old or the new slot of an entry, and falls back to the hash over the active list
//! in the moment a slot that just left is still written there.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use aya::maps::{Array, Map, MapData};
use reuseport_common::{
    udp::{maglev_slot, maglev_word, FLOW_IDLE, FLOW_IDLE_NS, MAGLEV, MAGLEV_SIZE, UDP_SETTINGS},
    Policy, Publication, SlotState,
};

use crate::{error::Error, error::Result, mmap::MappedArray};

/// The group's `MAGLEV` and `UDP_SETTINGS` maps, and what the table holds. Both are pinned
/// with the group's state, like `FLOWS` (which only the program touches), so a restarted
/// daemon keeps the flows on their workers.
pub(crate) struct UdpState {
    _map: Map,
    settings: Array<MapData, u64>,
    table: MappedArray<AtomicU64>,
    /// The active list the table was last computed for (`None`: not kept up to date, the
    /// policy is not `maglev`).
    computed_for: Option<Vec<u32>>,
    /// The table as computed for `computed_for`, one slot per entry.
    next: Vec<u32>,
}

impl UdpState {
    pub(crate) fn new(map: Map, settings: Map) -> Result<Self> {
        let table = crate::group::mapped(&map, &MAGLEV)?;
        let settings = Array::try_from(settings)
            .map_err(|e| Error::ebpf(format!("map {}", UDP_SETTINGS.name), e))?;
        let mut state = Self {
            _map: map,
            settings,
            table,
            computed_for: None,
            next: Vec::new(),
        };
        state.set_flow_idle(std::time::Duration::from_nanos(FLOW_IDLE_NS))?;
        Ok(state)
    }

    /// How long an idle flow keeps its slot; zero turns the flow table off.
    pub(crate) fn set_flow_idle(&mut self, idle: std::time::Duration) -> Result<()> {
        let ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.settings
            .set(FLOW_IDLE, ns, 0)
            .map_err(|e| Error::ebpf(format!("writing {}", UDP_SETTINGS.name), e))
    }

    /// Before `next` is published over `live`: computes the table for `next`'s active slots
    /// if the policy is `maglev` and they changed, and writes the entries whose slot is active
    /// in `live` too.
    pub(crate) fn before(&mut self, live: &Publication, next: &Publication) {
        if Policy::from_raw(next.config.policy) != Some(Policy::Maglev) {
            self.computed_for = None;
            return;
        }
        let active = next.active();
        if self.computed_for.as_deref() == Some(active) {
            return;
        }
        self.next = table(active, MAGLEV_SIZE as usize);
        self.computed_for = Some(active.to_vec());
        self.write(|slot| {
            live.slots
                .get(slot as usize)
                .is_some_and(|s| s.state() == Some(SlotState::Active))
        });
    }

    /// After the publication: writes every entry left.
    pub(crate) fn after(&mut self) {
        if self.computed_for.is_some() {
            self.write(|_| true);
        }
    }

    /// Writes the entries that differ from the table in the map and whose new slot `may` be
    /// written now.
    fn write(&self, may: impl Fn(u32) -> bool) {
        for (i, &slot) in self.next.iter().enumerate() {
            let Some(cell) = self.table.get(i) else {
                break;
            };
            let old = cell.load(Relaxed);
            if maglev_slot(old) != Some(slot) && may(slot) {
                cell.store(maglev_word(slot), Relaxed);
            }
        }
    }
}

/// The Maglev table of `size` entries (a prime) over `slots`: each entry's slot. Empty when
/// there is no slot.
pub fn table(slots: &[u32], size: usize) -> Vec<u32> {
    if slots.is_empty() || size == 0 {
        return Vec::new();
    }
    const FREE: u32 = u32::MAX;
    let size64 = size as u64;
    // Each slot's permutation: offset + j * skip (mod size), skip in 1..size, from the slot
    // number alone, so a slot keeps its permutation whoever else is in the table.
    let perms: Vec<(u64, u64)> = slots
        .iter()
        .map(|&slot| {
            let offset = mix(u64::from(slot) ^ 0x6d61_676c_6576_0001) % size64;
            let skip = mix(u64::from(slot) ^ 0x6d61_676c_6576_0002) % (size64 - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; slots.len()];
    let mut entries = vec![FREE; size];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % size64) as usize;
            while entries[c] != FREE {
                next[i] += 1;
                c = ((offset + next[i] * skip) % size64) as usize;
            }
            entries[c] = slots[i];
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    entries
}

/// SplitMix64's finaliser: a well-spread 64-bit hash of a small integer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn each_slot_gets_about_its_share() {
        let slots: Vec<u32> = (0..8).collect();
        let t = table(&slots, MAGLEV_SIZE as usize);
        for &s in &slots {
            let share = t.iter().filter(|&&x| x == s).count() as f64 / t.len() as f64;
            assert!((share - 0.125).abs() < 0.01, "slot {s}: {share}");
        }
    }

    #[test]
    fn a_slot_leaving_moves_little_more_than_its_own_entries() {
        let all: Vec<u32> = (0..8).collect();
        let before = table(&all, MAGLEV_SIZE as usize);
        let without: Vec<u32> = all.iter().copied().filter(|&s| s != 3).collect();
        let after = table(&without, MAGLEV_SIZE as usize);
        let own = before.iter().filter(|&&s| s == 3).count();
        let moved = moved(&before, &after);
        // Its own entries must move; Maglev moves a few more (under 2% of the table).
        assert!(moved >= own, "{moved} < {own}");
        assert!(
            (moved - own) * 50 < before.len(),
            "{moved} moved, {own} own"
        );
        // Joining is the same change backwards: about 1/N.
        let share = moved as f64 / before.len() as f64;
        assert!(share < 1.0 / 8.0 + 0.02, "{share}");
    }

    #[test]
    fn no_slot_no_table() {
        assert!(table(&[], 7).is_empty());
        assert_eq!(table(&[5], 7), vec![5; 7]);
    }
}
