//! Counters read back from the program's per-CPU maps, summed over CPUs.

use reuseport_common::{select_error, GlobalStats};

/// What the program did for one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub slot: u32,
    /// New connections sent to this slot.
    pub selected: u64,
    /// Queued connections moved here from a closing listener.
    pub migrated: u64,
}

/// Group-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    /// Program runs for new connections.
    pub runs: u64,
    /// Program runs for migrating requests.
    pub migrations: u64,
    /// Connections handed to the kernel's hash because no active slot took them.
    pub fallbacks: u64,
    /// Connections refused (`on_empty = drop`).
    pub drops: u64,
    /// Failed selections, by errno (see [`GlobalCounters::errors_by_name`]).
    pub errors: [u64; select_error::COUNT],
}

impl GlobalCounters {
    pub(crate) fn add(&mut self, v: &GlobalStats) {
        self.runs += v.runs;
        self.migrations += v.migrations;
        self.fallbacks += v.fallbacks;
        self.drops += v.drops;
        for (sum, x) in self.errors.iter_mut().zip(v.errors) {
            *sum += x;
        }
    }

    /// `(errno name, count)` for each kind of failed selection.
    pub fn errors_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        select_error::NAMES.into_iter().zip(self.errors)
    }
}

/// A snapshot of all counters of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// One entry per occupied slot, in slot order.
    pub slots: Vec<SlotCounters>,
    pub global: GlobalCounters,
}

impl GroupStats {
    pub fn slot(&self, slot: u32) -> Option<&SlotCounters> {
        self.slots.iter().find(|s| s.slot == slot)
    }
}
