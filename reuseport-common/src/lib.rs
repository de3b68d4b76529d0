//! Types shared by the kernel program (`reuseport-ebpf`) and userspace (`reuseport-steer`).
//!
//! Everything a map holds is defined here once, `#[repr(C)]`, with its size pinned at compile
//! time, and [`maps`] states each map's name, value type and length, so the two sides cannot
//! drift apart. The enums the maps store as `u32` (a [`Policy`], an [`OnEmpty`], a
//! [`SlotState`]) are here too, with the names the command line and the control socket use.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod maps;
mod named;
#[cfg(any(test, feature = "std"))]
mod parse;

pub use named::{AttachMode, Family, OnEmpty, Policy, Protocol, SlotState};
#[cfg(any(test, feature = "std"))]
pub use parse::ParseError;

/// Slots in the socket array: the most listeners one group can steer between.
pub const MAX_SLOTS: u32 = 1024;
/// Entries in one half of the weighted schedule: the largest sum of (reduced) weights.
pub const MAX_SCHEDULE: u32 = 8192;
/// Candidates the program tries before it gives up on a selection (closed slots are skipped).
pub const MAX_TRIES: u32 = 32;
/// Largest weight a slot can have.
pub const MAX_WEIGHT: u32 = 1000;

/// Names of the programs in the object (the maps' are in [`maps`]).
pub mod names {
    pub const PROG_SELECT: &str = "reuseport_select";
    pub const PROG_MIGRATE: &str = "reuseport_migrate";
}

/// Index of the cursor each ticket-based policy advances in the `CURSORS` map.
pub mod cursor {
    pub const ROUND_ROBIN: u32 = 0;
    pub const WEIGHTED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// A dense list published by userspace: which half of its double-buffered map
/// ([`maps::TwoHalves`]) is live and how many entries it has, packed in one `u32` so the program reads both with one load and never
/// sees a half from one update with a length from another.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListRef(pub u32);

impl ListRef {
    const HALF_BIT: u32 = 1 << 31;

    pub const fn new(half: u32, len: u32) -> Self {
        Self(((half & 1) << 31) | (len & !Self::HALF_BIT))
    }
    /// 0 or 1: which half of the map holds the live list.
    pub const fn half(self) -> u32 {
        self.0 >> 31
    }
    pub const fn len(self) -> u32 {
        self.0 & !Self::HALF_BIT
    }
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// The single entry of the `CONFIG` map. Userspace rewrites it whole; every field is read once
/// per program run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// A [`Policy`] as `u32`: the program compares it against `Policy::X as u32`, and an
    /// unknown value behaves as `hash`.
    pub policy: u32,
    /// An [`OnEmpty`] as `u32`.
    pub on_empty: u32,
    /// Bumped by userspace on every change, so observers can tell two states apart.
    pub generation: u32,
    /// The live list of active slots in the `ACTIVE` map ([`maps::ACTIVE_LIST`]).
    pub active: ListRef,
    /// The live weighted schedule in the `SCHEDULE` map ([`maps::SCHEDULE_LIST`]).
    pub schedule: ListRef,
    pub _reserved: u32,
}

/// One entry of the `SLOTS` map: what userspace decided for a slot, kept in the kernel so a
/// restarted daemon (and the program) can read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    /// A [`SlotState`] as `u32`, or [`SlotConfig::EMPTY`].
    pub state: u32,
    /// Weight for the `weighted` policy (1..=MAX_WEIGHT).
    pub weight: u32,
    /// SO_COOKIE of the socket in the slot, 0 when empty.
    pub cookie: u64,
}

impl SlotConfig {
    /// `state` of a slot with no socket: no [`SlotState`] has this value.
    pub const EMPTY: u32 = 0;

    pub const fn is_empty(&self) -> bool {
        self.state == Self::EMPTY
    }
    /// The slot's state; `None` when it is empty (or holds a value this version does not know).
    pub const fn state(&self) -> Option<SlotState> {
        SlotState::from_raw(self.state)
    }
}

/// `BPF_F_MMAPABLE`: userspace maps the array into memory and reads or writes it with no
/// system call, which keeps sampling 64 workers every few milliseconds cheap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Per-slot counters (`SLOT_STATS`, shared by all CPUs, updated atomically, memory-mapped by
/// userspace).
///
/// `C` is the counter cell: `u64` in the program (which adds with an atomic instruction) and
/// `AtomicU64` in userspace's view of the mapping; one layout for both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats<C = u64> {
    /// New connections the program sent to this slot.
    pub selected: C,
    /// Queued connections moved to this slot from a closing listener.
    pub migrated: C,
}

/// What the `LEAST` map holds: the least-loaded active slots, which `least-loaded` takes in turn.
/// The daemon rewrites the half that is not live through its memory mapping, then flips `head`.
///
/// The map is declared as `u64` entries (see [`maps::LEAST`]) so the program reads each word
/// with a bounds-checked lookup at [`LeastList::HEAD`] and [`LeastList::entry`]; `C` is the word
/// cell, `u64` there and `AtomicU64` in userspace's view.
#[repr(C)]
pub struct LeastList<C = u64> {
    /// A [`ListRef`] in the low 32 bits: the live half and its length.
    pub head: C,
    /// Slot numbers, in two halves ([`maps::LEAST_LIST`]).
    pub halves: [[C; MAX_SLOTS as usize]; 2],
}

impl LeastList {
    /// Entry of the `LEAST` map that holds [`LeastList::head`].
    pub const HEAD: u32 = (core::mem::offset_of!(LeastList, head) / 8) as u32;

    /// Entry of the `LEAST` map that holds entry `i` of `half`.
    pub const fn entry(half: u32, i: u32) -> u32 {
        (core::mem::offset_of!(LeastList, halves) / 8) as u32 + maps::LEAST_LIST.index(half, i)
    }
}

/// `bpf_sk_select_reuseport` failures, by errno, as counted in [`GlobalStats::errors`].
pub mod select_error {
    /// Empty slot, or its socket closed under us.
    pub const ENOENT: usize = 0;
    /// Socket not in a reuseport group.
    pub const EINVAL: usize = 1;
    /// Socket of another protocol than the packet.
    pub const EPROTOTYPE: usize = 2;
    /// Socket of another family than the packet.
    pub const EAFNOSUPPORT: usize = 3;
    /// Socket of another group (address or port).
    pub const EBADFD: usize = 4;
    /// Anything else.
    pub const OTHER: usize = 5;
    pub const COUNT: usize = 6;
    pub const NAMES: [&str; COUNT] = [
        "ENOENT",
        "EINVAL",
        "EPROTOTYPE",
        "EAFNOSUPPORT",
        "EBADFD",
        "other",
    ];

    /// Maps a negative return of `bpf_sk_select_reuseport` to its counter index.
    pub const fn index(ret: i64) -> usize {
        match -ret {
            2 => ENOENT,
            22 => EINVAL,
            91 => EPROTOTYPE,
            97 => EAFNOSUPPORT,
            77 => EBADFD,
            _ => OTHER,
        }
    }
}

/// Per-CPU group-wide counters (`GLOBAL_STATS`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Program runs for new connections.
    pub runs: u64,
    /// Program runs for a migrating request.
    pub migrations: u64,
    /// Runs where no active slot could take the connection and `on_empty = pass` applied.
    pub fallbacks: u64,
    /// Runs that returned `SK_DROP`.
    pub drops: u64,
    /// Failed `bpf_sk_select_reuseport` calls, by [`select_error`] index.
    pub errors: [u64; select_error::COUNT],
}

const _: () = {
    assert!(core::mem::size_of::<ListRef>() == 4);
    assert!(core::mem::size_of::<Config>() == 24);
    assert!(core::mem::align_of::<Config>() == 4);
    assert!(core::mem::size_of::<SlotConfig>() == 16);
    assert!(core::mem::size_of::<SlotStats>() == 16);
    assert!(LeastList::HEAD == 0 && LeastList::entry(0, 0) == 1);
    assert!(LeastList::entry(1, MAX_SLOTS - 1) == 2 * MAX_SLOTS);
    assert!(core::mem::size_of::<LeastList>() == 8 * (1 + maps::LEAST_LIST.entries() as usize));
    assert!(core::mem::size_of::<GlobalStats>() == 8 * (4 + select_error::COUNT));
    assert!(MAX_SLOTS.is_power_of_two() && MAX_SLOTS < ListRef::HALF_BIT);
    assert!(MAX_SCHEDULE.is_power_of_two() && MAX_SCHEDULE < ListRef::HALF_BIT);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]` plain integers with no padding (sizes pinned above).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SlotConfig {}
    unsafe impl aya::Pod for super::SlotStats {}
    unsafe impl aya::Pod for super::GlobalStats {}
}
