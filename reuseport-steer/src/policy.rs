//! The user-facing names of what the program can be told to do.

use std::{fmt, str::FromStr};

use reuseport_common::{on_empty, policy, slot_state};

/// How the program picks a listener among the active slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// The connection's flow hash over the active slots (like the kernel, minus drained ones).
    Hash,
    /// Exact round-robin: with N slots and M connections each gets floor(M/N) or ceil(M/N).
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin: over any W = sum-of-weights connections, each slot gets
    /// exactly its weight.
    Weighted,
    /// Round-robin over the active slots with the lowest load (accept queue plus requests in
    /// flight, sampled by the daemon): equally loaded slots take turns. O(1) per connection.
    LeastLoaded,
    /// The less loaded of two random active slots.
    P2c,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Hash,
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::LeastLoaded,
        Policy::P2c,
    ];

    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Self::Hash => policy::HASH,
            Self::RoundRobin => policy::ROUND_ROBIN,
            Self::Weighted => policy::WEIGHTED,
            Self::LeastLoaded => policy::LEAST_LOADED,
            Self::P2c => policy::P2C,
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.to_raw() == raw)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::RoundRobin => "round-robin",
            Self::Weighted => "weighted",
            Self::LeastLoaded => "least-loaded",
            Self::P2c => "p2c",
        }
    }
}

/// What happens to a connection when no active slot can take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OnEmpty {
    /// Let the kernel hash over the whole group (draining sockets included).
    #[default]
    Pass,
    /// Refuse the connection.
    Drop,
}

impl OnEmpty {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Self::Pass => on_empty::PASS,
            Self::Drop => on_empty::DROP,
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Self {
        if raw == on_empty::DROP {
            Self::Drop
        } else {
            Self::Pass
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
        }
    }
}

/// Which program is attached: plain selection, or selection plus migration of the queued
/// connections of a closing listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AttachMode {
    Select,
    #[default]
    SelectOrMigrate,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::SelectOrMigrate => "select-or-migrate",
        }
    }
}

/// Whether a slot receives new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotState {
    Active,
    /// Keeps its socket and its queue, gets no new connection.
    Draining,
    /// Out of the active set because its worker stopped accepting (set by the daemon's health
    /// monitor, cleared when the worker accepts again).
    Stuck,
}

impl SlotState {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Self::Active => slot_state::ACTIVE,
            Self::Draining => slot_state::DRAINING,
            Self::Stuck => slot_state::STUCK,
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            slot_state::ACTIVE => Some(Self::Active),
            slot_state::DRAINING => Some(Self::Draining),
            slot_state::STUCK => Some(Self::Stuck),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Stuck => "stuck",
        }
    }
}

/// An unknown name given for one of the enums above.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {got:?}: expected one of {expected}")]
pub struct ParseError {
    what: &'static str,
    got: String,
    expected: &'static str,
}

macro_rules! named_enum {
    ($ty:ty, $what:literal, $expected:literal, [$($variant:expr),*]) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, ParseError> {
                [$($variant),*]
                    .into_iter()
                    .find(|v: &$ty| v.name() == s)
                    .ok_or_else(|| ParseError { what: $what, got: s.to_owned(), expected: $expected })
            }
        }
    };
}

named_enum!(
    Policy,
    "policy",
    "hash, round-robin, weighted, least-loaded, p2c",
    [
        Policy::Hash,
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::LeastLoaded,
        Policy::P2c
    ]
);
named_enum!(
    OnEmpty,
    "on-empty action",
    "pass, drop",
    [OnEmpty::Pass, OnEmpty::Drop]
);
named_enum!(
    AttachMode,
    "attach mode",
    "select, select-or-migrate",
    [AttachMode::Select, AttachMode::SelectOrMigrate]
);
named_enum!(
    SlotState,
    "slot state",
    "active, draining, stuck",
    [SlotState::Active, SlotState::Draining, SlotState::Stuck]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().ok(), Some(p));
            assert_eq!(Policy::from_raw(p.to_raw()), Some(p));
        }
        assert_eq!("drop".parse::<OnEmpty>().ok(), Some(OnEmpty::Drop));
        let err = "fastest".parse::<Policy>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown policy \"fastest\": expected one of hash, round-robin, weighted, \
                 least-loaded, p2c"
            )
        );
    }
}
