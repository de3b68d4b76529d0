//! What the program keeps for UDP groups, where it runs once per datagram: the Maglev lookup
//! table (consistent hashing over the active slots) and the flow table that keeps each flow on
//! its slot while that slot drains.
//!
//! Both are keyed by the context's `hash`: for UDP the kernel's 4-tuple hash (`udp_ehashfn`,
//! seeded once per boot), the same for every datagram of a flow. Two flows that collide share
//! one entry, so they share a slot: harmless, as both stay on a live socket. Reading the 4-tuple
//! from the packet instead would cost two `bpf_skb_load_bytes` per datagram and buy nothing the
//! hash does not already give.

use crate::{maps::MapSpec, Policy, Protocol, BPF_F_MMAPABLE};

/// Entries of the Maglev table: a prime (the permutations need it), over 100 times the number
/// of slots a group typically has, so each slot's share is within about 1% of 1/N.
pub const MAGLEV_SIZE: u32 = 65537;

/// Flows the flow table remembers; the least recently used one goes when it is full.
pub const FLOWS_MAX: u32 = 65536;

/// A flow with no datagram for this long is forgotten: its next datagram is steered as new.
/// The default of [`UDP_SETTINGS`]' `flow_idle_ns`.
pub const FLOW_IDLE_NS: u64 = 30_000_000_000;

/// Entry of [`UDP_SETTINGS`] holding the flow idle time in nanoseconds (0: no flow table, every
/// datagram steered by the policy alone).
pub const FLOW_IDLE: u32 = 0;

/// One word of the Maglev table: the slot plus one; 0 (a fresh map) means no slot, and the
/// program falls back to the hash over the active list.
pub const fn maglev_word(slot: u32) -> u64 {
    slot as u64 + 1
}

/// The slot of a Maglev table word, if any.
pub const fn maglev_slot(word: u64) -> Option<u32> {
    if word == 0 || word > crate::MAX_SLOTS as u64 {
        None
    } else {
        Some((word - 1) as u32)
    }
}

/// The `IPPROTO_*` number of UDP, as the context's `ip_protocol` gives it.
pub const IPPROTO_UDP: u32 = Protocol::Udp as u32;

/// Whether datagrams of a UDP group stay on the slot their flow first went to. Not for the
/// per-datagram policies (`round-robin`, `weighted`: stateless protocols such as plain DNS
/// want every datagram spread); every other policy picks a slot for a flow's first datagram,
/// and the flow table keeps the flow there until it idles out or its slot stops being active
/// or draining.
pub const fn sticky(policy: u32) -> bool {
    policy != Policy::RoundRobin as u32 && policy != Policy::Weighted as u32
}

/// A flow table entry (`FLOWS`, an LRU hash keyed by the flow hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The slot the flow goes to.
    pub slot: u32,
    pub _reserved: u32,
    /// SO_COOKIE of the socket in that slot when the flow started: a slot reused by another
    /// socket does not inherit the flows of the one before.
    pub cookie: u64,
    /// `bpf_ktime_get_ns` of the flow's last datagram.
    pub seen_ns: u64,
}

/// The Maglev lookup table, memory-mapped by the daemon, which rewrites it after each change
/// of the active slots. Each word is [`maglev_word`].
pub const MAGLEV: MapSpec<u64> = MapSpec::new("MAGLEV", MAGLEV_SIZE, BPF_F_MMAPABLE);
/// The flow table: flow hash ([`u32`]) to [`Flow`].
pub const FLOWS: MapSpec<Flow> = MapSpec::new("FLOWS", FLOWS_MAX, 0);
/// Settings of a UDP group, written by the daemon ([`FLOW_IDLE`]). A fresh map's 0 would turn
/// the flow table off, so the daemon writes the setting at load, before any socket joins.
pub const UDP_SETTINGS: MapSpec<u64> = MapSpec::new("UDP_SETTINGS", 1, 0);

const _: () = {
    assert!(core::mem::size_of::<Flow>() == 24);
    assert!(maglev_slot(maglev_word(0)).is_some());
    assert!(maglev_slot(0).is_none());
};

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain integers with no padding (size pinned above).
unsafe impl aya::Pod for Flow {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_datagram_policies_are_not_sticky() {
        for p in Policy::ALL {
            let per_datagram = matches!(p, Policy::RoundRobin | Policy::Weighted);
            assert_eq!(sticky(p as u32), !per_datagram, "{p}");
        }
    }

    #[test]
    fn maglev_words_round_trip() {
        for slot in [0, 1, 7, crate::MAX_SLOTS - 1] {
            assert_eq!(maglev_slot(maglev_word(slot)), Some(slot));
        }
        assert_eq!(maglev_slot(u64::from(crate::MAX_SLOTS) + 1), None);
    }
}
