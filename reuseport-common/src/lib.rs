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
pub mod udp;

pub mod policy_program;
pub mod signals;
pub mod trace;

pub use named::{AttachMode, Family, OnEmpty, Policy, Protocol, SlotState};
#[cfg(any(test, feature = "std"))]
pub use parse::ParseError;

/// Slots in the socket array: the most listeners one group can steer between.
pub const MAX_SLOTS: u32 = 1024;
/// Entries of the weighted schedule: the largest sum of (reduced) weights.
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

/// What a [`Publication`] says about the whole group. Userspace never rewrites it in place: it
/// is part of one publication, replaced whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// A [`Policy`] as `u32`: the program compares it against `Policy::X as u32`, and an
    /// unknown value behaves as `hash`.
    pub policy: u32,
    /// An [`OnEmpty`] as `u32`.
    pub on_empty: u32,
    /// Bumped by userspace on every publication (never 0 once published), so observers can
    /// tell two states apart and the least-loaded list says which publication it belongs to.
    pub generation: u32,
    /// Entries of [`Publication::active`] in use.
    pub active_len: u32,
    /// Entries of [`Publication::schedule`] in use.
    pub schedule_len: u32,
    pub _reserved: u32,
}

/// Everything the program reads to steer, as one value: the group's [`Config`], the slot table,
/// the dense list of active slots and the weighted schedule. See [`Publications`] for how a
/// program run sees one whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publication {
    pub config: Config,
    /// Userspace's record of each slot (the program does not need it; a restarted daemon
    /// reads it back, and it changes with the lists in the same step).
    pub slots: [SlotConfig; MAX_SLOTS as usize],
    /// The active slots in slot order: what the policies index.
    pub active: [u32; MAX_SLOTS as usize],
    /// One period of the smooth weighted round-robin over the active slots.
    pub schedule: [u32; MAX_SCHEDULE as usize],
}

impl Publication {
    /// No slot, policy 0 (`hash`), never published.
    pub const EMPTY: Self = Self {
        config: Config {
            policy: 0,
            on_empty: 0,
            generation: 0,
            active_len: 0,
            schedule_len: 0,
            _reserved: 0,
        },
        slots: [SlotConfig::EMPTY_SLOT; MAX_SLOTS as usize],
        active: [0; MAX_SLOTS as usize],
        schedule: [0; MAX_SCHEDULE as usize],
    };

    /// The active list, as long as the program may trust it.
    pub fn active(&self) -> &[u32] {
        let len = (self.config.active_len as usize).min(self.active.len());
        &self.active[..len]
    }

    /// The weighted schedule, as long as the program may trust it.
    pub fn schedule(&self) -> &[u32] {
        let len = (self.config.schedule_len as usize).min(self.schedule.len());
        &self.schedule[..len]
    }
}

/// Copies of the [`Publication`] in the `PUBLICATION` map.
pub const PUBLICATION_COPIES: u32 = 8;

/// The one value of the `PUBLICATION` map (memory-mapped by userspace): a ring of publications
/// and which one is live.
///
/// A program run reads `live` once, then only that copy. Userspace writes the next publication
/// into a copy that is not live, then stores its index in `live`: one 8-byte store, so a run
/// steers by the publication before or the one after, never a mix. A copy is rewritten only
/// after an RCU grace period has passed since it stopped being live (program runs are RCU
/// read-side sections, and userspace waits for a grace period with a system call that does
/// exactly that: an update of an array of maps), so a run that picked a copy reads it intact
/// however long it takes. With [`PUBLICATION_COPIES`] copies, and grace periods waited for in
/// the background, a publication waits only when `PUBLICATION_COPIES - 1` others came within one
/// grace period.
///
/// Not one map value replaced by each publication: a hash map without preallocation reuses a
/// replaced element at once since Linux 6.1 (its memory allocator is "typesafe by RCU", like a
/// preallocated one), so a run could see it rewritten; and a new inner map swapped into an array
/// of maps is safe, but the update waits for a grace period in the system call itself (~15 ms
/// idle, hundreds under load) at every publication.
#[repr(C)]
pub struct Publications {
    /// Index of the live copy (in the low bits; the program masks it).
    pub live: u64,
    pub copies: [Publication; PUBLICATION_COPIES as usize],
}

impl Default for Publication {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// One entry of [`Publication::slots`]: what userspace decided for a slot, kept in the kernel so
/// a restarted daemon can read it.
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
    /// A slot with no socket.
    pub const EMPTY_SLOT: Self = Self {
        state: Self::EMPTY,
        weight: 0,
        cookie: 0,
    };

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

/// What the `LEAST` map holds: the least-loaded active slots, which `least-loaded` takes in turn,
/// rewritten in place by the daemon through its memory mapping at every sample that changes it
/// (no system call).
///
/// Every word carries the [`Config::generation`] of the publication whose active list it was
/// computed from, next to its value: the program uses an entry only when its generation is the
/// one of the publication the run looked up, and falls back to round-robin over that
/// publication's active list otherwise. A word is read with one 8-byte load, so whatever the
/// program reads mid-rewrite (an entry of the last set or of the next, a length of either), an
/// entry it uses was in that publication's active list: it never picks a slot drained since.
///
/// The map is declared as `u64` entries (see [`maps::LEAST`]) so the program reads each word
/// through a bounds-checked lookup ([`LeastList::HEAD`], [`LeastList::entry`]); `C` is the word
/// cell, `u64` there and `AtomicU64` in userspace's view.
#[repr(C)]
pub struct LeastList<C = u64> {
    /// The list's length, tagged ([`LeastList::tag`]).
    pub head: C,
    /// Slot numbers, tagged.
    pub entries: [C; MAX_SLOTS as usize],
}

impl LeastList {
    /// Entry of the `LEAST` map that holds [`LeastList::head`].
    pub const HEAD: u32 = (core::mem::offset_of!(LeastList, head) / 8) as u32;

    /// Entry of the `LEAST` map that holds entry `i` of the list.
    pub const fn entry(i: u32) -> u32 {
        (core::mem::offset_of!(LeastList, entries) / 8) as u32 + i
    }

    /// A word: `value` of the publication of `generation`.
    pub const fn tag(generation: u32, value: u32) -> u64 {
        ((generation as u64) << 32) | value as u64
    }

    /// The value of a word, if it belongs to the publication of `generation`.
    pub const fn untag(word: u64, generation: u32) -> Option<u32> {
        if (word >> 32) as u32 == generation {
            Some(word as u32)
        } else {
            None
        }
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
    assert!(core::mem::size_of::<Config>() == 24);
    assert!(core::mem::offset_of!(Publication, slots).is_multiple_of(8));
    assert!(
        core::mem::size_of::<Publication>()
            == 24 + 16 * MAX_SLOTS as usize + 4 * (MAX_SLOTS + MAX_SCHEDULE) as usize
    );
    assert!(core::mem::align_of::<Config>() == 4);
    assert!(core::mem::size_of::<SlotConfig>() == 16);
    assert!(core::mem::size_of::<SlotStats>() == 16);
    assert!(LeastList::HEAD == 0 && LeastList::entry(0) == 1);
    assert!(core::mem::size_of::<LeastList>() == 8 * (1 + MAX_SLOTS as usize));
    assert!(core::mem::size_of::<GlobalStats>() == 8 * (4 + select_error::COUNT));
    assert!(MAX_SLOTS.is_power_of_two() && MAX_SCHEDULE.is_power_of_two());
    assert!(PUBLICATION_COPIES.is_power_of_two() && PUBLICATION_COPIES > 1);
    assert!(core::mem::offset_of!(Publications, copies) == 8);
    assert!(core::mem::size_of::<Publication>().is_multiple_of(8));
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]` plain integers with no padding (sizes pinned above).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SlotConfig {}
    unsafe impl aya::Pod for super::SlotStats {}
    unsafe impl aya::Pod for super::GlobalStats {}
    unsafe impl aya::Pod for super::policy_program::Answer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A least-loaded word counts only for its own publication; a fresh map's zeros count for
    /// none (no publication has generation 0).
    #[test]
    fn least_loaded_words_belong_to_one_publication() {
        let word = LeastList::tag(7, 42);
        assert_eq!(LeastList::untag(word, 7), Some(42));
        assert_eq!(LeastList::untag(word, 8), None);
        assert_eq!(LeastList::untag(word, 6), None);
        assert_eq!(LeastList::untag(0, 1), None);
        assert_eq!(
            LeastList::untag(LeastList::tag(u32::MAX, u32::MAX), u32::MAX),
            Some(u32::MAX)
        );
    }

    #[test]
    fn a_publication_trusts_no_length_past_its_lists() {
        let mut p = Publication::EMPTY;
        p.config.active_len = MAX_SLOTS + 5;
        p.config.schedule_len = u32::MAX;
        assert_eq!(p.active().len(), MAX_SLOTS as usize);
        assert_eq!(p.schedule().len(), MAX_SCHEDULE as usize);
    }
}
