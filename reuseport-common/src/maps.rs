//! The maps of the object, stated once: name, value type, number of entries and flags. The
//! program declares its maps from these specs, userspace opens, memory-maps and checks pinned
//! maps against them, so a change here changes both sides.

use core::{marker::PhantomData, mem::size_of};

use crate::{cursor, GlobalStats, LeastList, Publications, SlotStats, BPF_F_MMAPABLE, MAX_SLOTS};

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
    pub(crate) const fn new(name: &'static str, max_entries: u32, flags: u32) -> Self {
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

/// The group's sockets by slot (a `REUSEPORT_SOCKARRAY`; userspace reads a slot back as the
/// socket's cookie).
pub const SOCKETS: MapSpec<u64> = MapSpec::new("SOCKETS", MAX_SLOTS, 0);
/// What the program steers by: one [`Publications`] ring, memory-mapped by userspace, which
/// writes a publication with no system call.
pub const PUBLICATION: MapSpec<Publications> = MapSpec::new("PUBLICATION", 1, BPF_F_MMAPABLE);
pub const CURSORS: MapSpec<u64> = MapSpec::new("CURSORS", cursor::COUNT, 0);
pub const SLOT_STATS: MapSpec<SlotStats> = MapSpec::new("SLOT_STATS", MAX_SLOTS, BPF_F_MMAPABLE);
pub const LOAD: MapSpec<u64> = MapSpec::new("LOAD", MAX_SLOTS, BPF_F_MMAPABLE);
/// One [`LeastList`] spread over `u64` entries, so the program reads each word through a
/// bounds-checked lookup ([`LeastList::HEAD`], [`LeastList::entry`]) and userspace maps the
/// whole struct. Not part of the publication: it changes at every sample that moves a load.
pub const LEAST: MapSpec<u64> = MapSpec::new(
    "LEAST",
    (size_of::<LeastList>() / size_of::<u64>()) as u32,
    BPF_F_MMAPABLE,
);
/// Per-CPU.
pub const GLOBAL_STATS: MapSpec<GlobalStats> = MapSpec::new("GLOBAL_STATS", 1, 0);

/// Every map that holds a group's state: what is pinned, and what a pin must match.
pub const STATE: [MapShape; 7] = [
    SOCKETS.shape(),
    PUBLICATION.shape(),
    CURSORS.shape(),
    SLOT_STATS.shape(),
    GLOBAL_STATS.shape(),
    LOAD.shape(),
    LEAST.shape(),
];

/// Maps that earlier layouts pinned and this one has not (the state they held is in
/// [`PUBLICATION`] now): a pin directory that holds one of them belongs to an older build.
pub const RETIRED: [&str; 4] = ["CONFIG", "ACTIVE", "SCHEDULE", "SLOTS"];

const _: () = {
    assert!(LEAST.value_size() == 8 && LEAST.max_entries == 1 + MAX_SLOTS);
    assert!(size_of::<LeastList>() % size_of::<u64>() == 0);
    assert!(SLOT_STATS.value_size() == 16);
};
