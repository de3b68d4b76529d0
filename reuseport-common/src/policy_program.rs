//! The interface of a policy program: a selection policy written as an eBPF program of its own,
//! which the steering program calls through a tail call (docs/experiments.md).
//!
//! The steering program (`reuseport_select`, or `reuseport_migrate`) tail-calls entry
//! [`slot::POLICY`] of the `POLICY_PROGS` program array when a policy program is installed.
//! The policy program reads what it likes of the group's shared maps (by name: `PUBLICATION`,
//! `LOAD`, `SLOT_STATS`, `CURSORS`; their layouts are in this crate), writes its [`Answer`]
//! into `POLICY_ANSWER` (per CPU) and tail-calls entry [`slot::FINISH`]: the steering program
//! itself, which finds the answer for this connection (same flow hash), takes it, and applies
//! it with the built-in guarantees (a slot that is not active, or whose socket is gone, is
//! skipped by the walk over the active list; the counters count; a migration is a migration)
//! or, for [`Answer::defer`], runs the group's built-in policy.
//!
//! A tail call does not return, hence the round trip through a map and a second tail call,
//! rather than the policy program calling us back; and the way back is the steering program
//! itself rather than a "finish" program of its own, so the verifier checks the steering code
//! once per program, not twice. If any step fails (no policy program, a policy program that
//! returns without the tail call), the connection is never lost: the steering program carries
//! on with the built-in policy in the first case, and the kernel's hash over the group takes
//! the connection in the second (an answer left behind is ignored by the next connection: its
//! hash differs, and it is taken away).
//!
//! The interface is versioned by [`VERSION`]; policies/template states the version it is for.

use crate::maps::MapSpec;

/// Version of this interface. Bumped on any change to the maps or the answer a policy program
/// relies on.
pub const VERSION: u32 = 1;

/// Entries of the `POLICY_PROGS` program array.
pub mod slot {
    /// The installed policy program (empty: the built-in policy decides).
    pub const POLICY: u32 = 0;
    /// The steering program itself, where a policy program's answer comes back to.
    pub const FINISH: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `POLICY_PROGS`: the program array both tail calls go through.
pub const PROGS: MapSpec<u32> = MapSpec::new("POLICY_PROGS", slot::COUNT, 0);
/// `POLICY_ANSWER`: one [`Answer`] per CPU. A tail-call chain runs on one CPU from start to
/// end, so the steering program reads the answer of the chain it is part of.
pub const ANSWER: MapSpec<Answer> = MapSpec::new("POLICY_ANSWER", 1, 0);

/// Names of the programs a policy object must contain.
pub mod names {
    /// The policy program for a group attached in `select` mode (`#[sk_reuseport]`).
    pub const POLICY_SELECT: &str = "policy_select";
    /// The policy program for a group attached in `migrate` mode (`#[sk_reuseport(migrate)]`).
    pub const POLICY_MIGRATE: &str = "policy_migrate";
}

/// The shared maps a policy object may declare (with the same definitions as ours): the daemon
/// gives it the group's own maps of these names. Any other map of the object is its own.
pub const SHARED_MAPS: [&str; 6] = [
    crate::maps::PUBLICATION.name,
    crate::maps::LOAD.name,
    crate::maps::SLOT_STATS.name,
    crate::maps::CURSORS.name,
    PROGS.name,
    ANSWER.name,
];

/// What a policy program answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The slot to try first (when `given` is [`Answer::GIVEN`]).
    pub slot: u32,
    /// [`Answer::GIVEN`], [`Answer::DEFERRED`], or [`Answer::NONE`] (no answer waiting).
    pub given: u32,
    /// The flow hash of the connection answered for (`ctx.hash()`): the steering program takes
    /// an answer only for that connection.
    pub hash: u32,
    pub _reserved: u32,
}

impl Answer {
    /// No answer waiting (what the steering program leaves after taking one).
    pub const NONE: u32 = 0;
    pub const GIVEN: u32 = 0x5107_0001;
    pub const DEFERRED: u32 = 0x5107_0002;

    /// Try `slot` first, for the connection of flow hash `hash`.
    pub const fn slot(hash: u32, slot: u32) -> Self {
        Self {
            slot,
            given: Self::GIVEN,
            hash,
            _reserved: 0,
        }
    }

    /// Let the group's built-in policy decide the connection of flow hash `hash`.
    pub const fn defer(hash: u32) -> Self {
        Self {
            slot: 0,
            given: Self::DEFERRED,
            hash,
            _reserved: 0,
        }
    }

    /// The slot answered, if any.
    pub const fn chosen(&self) -> Option<u32> {
        if self.given == Self::GIVEN {
            Some(self.slot)
        } else {
            None
        }
    }
}

/// `key` scaled onto `0..count` (multiply and shift, as the built-in `hash` policy does): an
/// even spread for an evenly spread key, with no division.
pub const fn spread(key: u32, count: u32) -> u32 {
    ((key as u64 * count as u64) >> 32) as u32
}

/// A 32-bit mix (the MurmurHash3 finalizer), to spread keys that are not spread themselves,
/// like IPv4 addresses of one subnet.
pub const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

const _: () = assert!(core::mem::size_of::<Answer>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_given_answer_names_a_slot() {
        assert_eq!(Answer::slot(7, 3).chosen(), Some(3));
        assert_eq!(Answer::defer(7).chosen(), None);
        assert_eq!(Answer::default().chosen(), None);
    }

    #[test]
    fn spread_stays_in_range() {
        for key in [0, 1, u32::MAX / 2, u32::MAX] {
            for count in 1..=9 {
                assert!(spread(mix(key), count) < count);
            }
        }
        assert_eq!(spread(u32::MAX, 4), 3);
        assert_eq!(spread(0, 4), 0);
    }
}
