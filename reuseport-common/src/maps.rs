//! The maps of the object, stated once: name, value type, number of entries and flags. The
//! program declares its maps from these specs, userspace opens, memory-maps and checks pinned
//! maps against them, so a change here changes both sides.

use core::{marker::PhantomData, mem::size_of};

use crate::{
    cursor, Config, GlobalStats, LeastList, SlotConfig, SlotStats, BPF_F_MMAPABLE, MAX_SCHEDULE,
    MAX_SLOTS,
};

/// One map of the object, typed by its value.
#[derive(Debug)]
pub struct MapSpec<V> {
    /// The map's name in the object (the program's static has the same name).
    pub name: &'static str,
    pub max_entries: u32,
    /// `BPF_F_*` flags the map is created with.
    pub flags: u32,
    value: PhantomData<V>,
}

impl<V> MapSpec<V> {
    const fn new(name: &'static str, max_entries: u32, flags: u32) -> Self {
        Self {
            name,
            max_entries,
            flags,
            value: PhantomData,
        }
    }

    pub const fn value_size(&self) -> u32 {
        size_of::<V>() as u32
    }

    /// The untyped shape, as the kernel reports it for a pinned map.
    pub const fn shape(&self) -> MapShape {
        MapShape {
            name: self.name,
            value_size: self.value_size(),
            max_entries: self.max_entries,
        }
    }
}

/// What a pinned map must look like to be reused: a map of another shape belongs to a build with
/// another layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub name: &'static str,
    pub value_size: u32,
    pub max_entries: u32,
}

/// A list published while the program reads it: the map holds two halves of `half_len`
/// entries; userspace rewrites the half that is not live, then flips a [`ListRef`] to it, so the
/// program never sees a half-written list.
///
/// [`ListRef`]: crate::ListRef
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoHalves {
    pub half_len: u32,
}

impl TwoHalves {
    /// Entries of the map: both halves.
    pub const fn entries(self) -> u32 {
        2 * self.half_len
    }
    /// Map index of the first entry of `half` (0 or 1).
    pub const fn start(self, half: u32) -> u32 {
        half * self.half_len
    }
    /// Map index of entry `i` of `half`.
    pub const fn index(self, half: u32, i: u32) -> u32 {
        self.start(half) + i
    }
    /// A list's length as the program may trust it: at most one half.
    pub const fn clamp(self, len: u32) -> u32 {
        if len > self.half_len {
            self.half_len
        } else {
            len
        }
    }
}

/// The active slots, in the order the policies index them (`Config::active` says which half).
pub const ACTIVE_LIST: TwoHalves = TwoHalves {
    half_len: MAX_SLOTS,
};
/// The weighted schedule (`Config::schedule` says which half).
pub const SCHEDULE_LIST: TwoHalves = TwoHalves {
    half_len: MAX_SCHEDULE,
};
/// The least-loaded active slots ([`LeastList::head`] says which half).
pub const LEAST_LIST: TwoHalves = TwoHalves {
    half_len: MAX_SLOTS,
};

/// The group's sockets by slot (a `REUSEPORT_SOCKARRAY`; userspace reads a slot back as the
/// socket's cookie).
pub const SOCKETS: MapSpec<u64> = MapSpec::new("SOCKETS", MAX_SLOTS, 0);
pub const CONFIG: MapSpec<Config> = MapSpec::new("CONFIG", 1, 0);
pub const ACTIVE: MapSpec<u32> = MapSpec::new("ACTIVE", ACTIVE_LIST.entries(), 0);
pub const SCHEDULE: MapSpec<u32> = MapSpec::new("SCHEDULE", SCHEDULE_LIST.entries(), 0);
pub const SLOTS: MapSpec<SlotConfig> = MapSpec::new("SLOTS", MAX_SLOTS, 0);
pub const CURSORS: MapSpec<u64> = MapSpec::new("CURSORS", cursor::COUNT, 0);
pub const SLOT_STATS: MapSpec<SlotStats> = MapSpec::new("SLOT_STATS", MAX_SLOTS, BPF_F_MMAPABLE);
pub const LOAD: MapSpec<u64> = MapSpec::new("LOAD", MAX_SLOTS, BPF_F_MMAPABLE);
/// One [`LeastList`] spread over `u64` entries, so the program reads each word through a
/// bounds-checked lookup ([`LeastList::HEAD`], [`LeastList::entry`]) and userspace maps the
/// whole struct.
pub const LEAST: MapSpec<u64> = MapSpec::new(
    "LEAST",
    (size_of::<LeastList>() / size_of::<u64>()) as u32,
    BPF_F_MMAPABLE,
);
/// Per-CPU.
pub const GLOBAL_STATS: MapSpec<GlobalStats> = MapSpec::new("GLOBAL_STATS", 1, 0);

/// Every map that holds a group's state: what is pinned, and what a pin must match.
pub const STATE: [MapShape; 10] = [
    SOCKETS.shape(),
    CONFIG.shape(),
    ACTIVE.shape(),
    SCHEDULE.shape(),
    SLOTS.shape(),
    CURSORS.shape(),
    SLOT_STATS.shape(),
    GLOBAL_STATS.shape(),
    LOAD.shape(),
    LEAST.shape(),
];

// Pins of earlier builds stay compatible: these are the shapes they were created with.
const _: () = {
    assert!(ACTIVE.max_entries == 2 * MAX_SLOTS);
    assert!(SCHEDULE.max_entries == 2 * MAX_SCHEDULE);
    assert!(LEAST.value_size() == 8 && LEAST.max_entries == 1 + 2 * MAX_SLOTS);
    assert!(size_of::<LeastList>() % size_of::<u64>() == 0);
    assert!(SLOT_STATS.value_size() == 16);
};
