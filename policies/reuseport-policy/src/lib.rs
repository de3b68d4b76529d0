//! What a policy program is built with (docs/experiments.md): the group's shared maps, declared
//! exactly as the steering program declares them (the daemon hands the policy the group's own
//! maps by these names), a read-only [`Group`] view over them, and [`answer`], which hands the
//! choice back to the steering program.
//!
//! A policy is a function from the connection and the group to a [`Choice`]. Its program has
//! two entry points, one per attach mode (the daemon loads the one of the group's mode):
//!
//! ```ignore
//! #[sk_reuseport]
//! pub fn policy_select(ctx: SkReuseportContext) -> u32 {
//!     reuseport_policy::answer(&ctx, choose)
//! }
//! #[sk_reuseport(migrate)]
//! pub fn policy_migrate(ctx: SkReuseportContext) -> u32 {
//!     reuseport_policy::answer(&ctx, choose)
//! }
//! ```
//!
//! Interface version [`reuseport_common::policy_program::VERSION`].
#![no_std]

use aya_ebpf::{
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action::SK_PASS},
    cty::c_void,
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::SkReuseportContext,
    EbpfContext as _,
};
pub use reuseport_common::policy_program::{mix, spread};
use reuseport_common::{
    cursor, maps,
    policy_program::{self, slot, Answer},
    Publication, Publications, SlotState, SlotStats, MAX_SLOTS, PUBLICATION_COPIES,
};

// The shared maps: same names and definitions as the steering program's.
#[map]
static PUBLICATION: Array<Publications> =
    Array::with_max_entries(maps::PUBLICATION.max_entries, maps::PUBLICATION.flags);
#[map]
static LOAD: Array<u64> = Array::with_max_entries(maps::LOAD.max_entries, maps::LOAD.flags);
#[map]
static SLOT_STATS: Array<SlotStats> =
    Array::with_max_entries(maps::SLOT_STATS.max_entries, maps::SLOT_STATS.flags);
#[map]
static CURSORS: Array<u64> =
    Array::with_max_entries(maps::CURSORS.max_entries, maps::CURSORS.flags);
#[map]
static POLICY_PROGS: ProgramArray = ProgramArray::with_max_entries(
    policy_program::PROGS.max_entries,
    policy_program::PROGS.flags,
);
#[map]
static POLICY_ANSWER: PerCpuArray<Answer> = PerCpuArray::with_max_entries(
    policy_program::ANSWER.max_entries,
    policy_program::ANSWER.flags,
);

/// What a policy answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Try this slot first. The steering program checks it: a slot that is not active (empty,
    /// draining, stuck) or whose socket is gone is skipped, and the built-in policy decides.
    Slot(u32),
    /// Let the group's built-in policy decide.
    Defer,
}

/// The group as the steering program sees it in this run: the live publication, the loads and
/// the counters. Read-only.
pub struct Group<'a> {
    ctx: &'a SkReuseportContext,
    publication: &'a Publication,
}

impl Group<'_> {
    /// The connection's flow hash (non-zero; the same the `hash` policy uses).
    pub fn hash(&self) -> u32 {
        self.ctx.hash()
    }

    /// Whether this run moves a queued connection of a closing listener (a group in
    /// `select-or-migrate` mode) rather than a new one.
    pub fn migrating(&self) -> bool {
        self.ctx.migrating_sk().is_some()
    }

    /// How many slots are active (0..=MAX_SLOTS).
    pub fn active_len(&self) -> u32 {
        self.publication.config.active_len.min(MAX_SLOTS)
    }

    /// The `i`-th active slot, in slot order (`i < active_len()`).
    pub fn active(&self, i: u32) -> Option<u32> {
        if i >= self.active_len() {
            return None;
        }
        self.publication.active.get(bounded(i)).copied()
    }

    /// Whether `slot` is active.
    pub fn is_active(&self, slot: u32) -> bool {
        slot < MAX_SLOTS
            && self
                .publication
                .slots
                .get(bounded(slot))
                .is_some_and(|s| s.state == SlotState::Active as u32)
    }

    /// The slot's weight (for the `weighted` policy, 1..=1000; 0 for an empty slot).
    pub fn weight(&self, slot: u32) -> u32 {
        self.publication
            .slots
            .get(bounded(slot))
            .map_or(0, |s| s.weight)
    }

    /// The slot's load as the daemon last sampled it (accept queue plus requests in flight).
    pub fn load(&self, slot: u32) -> u64 {
        LOAD.get(slot).copied().unwrap_or(u64::MAX)
    }

    /// Connections the steering program gave the slot so far.
    pub fn selected(&self, slot: u32) -> u64 {
        SLOT_STATS.get(slot).map_or(0, |s| s.selected)
    }

    /// The ticket of the built-in round-robin (read, not taken).
    pub fn round_robin_ticket(&self) -> u64 {
        CURSORS.get(cursor::ROUND_ROBIN).copied().unwrap_or(0)
    }

    /// The client's IPv4 address (as a number: 10.0.0.1 is 0x0a000001), from the packet; for
    /// an IPv6 packet, the four words of its address folded with xor. `None` if unreadable.
    pub fn source_address(&self) -> Option<u32> {
        const ETH_P_IP: u32 = 0x0800;
        const ETH_P_IPV6: u32 = 0x86dd;
        // `eth_protocol` is in network byte order.
        let protocol = u32::from(u16::from_be(self.ctx.eth_protocol() as u16));
        match protocol {
            ETH_P_IP => {
                let bytes: [u8; 4] = self.load_net(12)?;
                Some(u32::from_be_bytes(bytes))
            }
            ETH_P_IPV6 => {
                let bytes: [u8; 16] = self.load_net(8)?;
                let word = |i: usize| {
                    u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
                };
                Some(word(0) ^ word(4) ^ word(8) ^ word(12))
            }
            _ => None,
        }
    }

    /// `N` bytes at `offset` of the network header.
    fn load_net<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: the context is this program's; the helper writes at most N bytes to buf.
        let ret = unsafe {
            bpf_skb_load_bytes_relative(
                self.ctx.as_ptr(),
                offset,
                buf.as_mut_ptr().cast::<c_void>(),
                N as u32,
                BPF_HDR_START_NET,
            )
        };
        (ret == 0).then_some(buf)
    }
}

/// Runs `choose` on this connection and hands its choice back to the steering program, which
/// applies it (a tail call: it does not return). Returns only if that tail call fails (no
/// steering program in the array: the group is going away); the kernel's hash then decides.
#[inline(always)]
pub fn answer(ctx: &SkReuseportContext, choose: impl FnOnce(&Group) -> Choice) -> u32 {
    let hash = ctx.hash();
    let answer = match live_publication() {
        Some(publication) => match choose(&Group { ctx, publication }) {
            Choice::Slot(slot) => Answer::slot(hash, slot),
            Choice::Defer => Answer::defer(hash),
        },
        None => Answer::defer(hash),
    };
    if let Some(place) = POLICY_ANSWER.get_ptr_mut(0) {
        // SAFETY: this CPU's value; the steering program reads it in the same chain of calls.
        unsafe { *place = answer };
    }
    // SAFETY: the context is this program's.
    unsafe { POLICY_PROGS.tail_call(ctx, slot::FINISH) };
    SK_PASS
}

/// The live publication, read as the steering program reads it.
#[inline(always)]
fn live_publication() -> Option<&'static Publication> {
    let ring = PUBLICATION.get_ptr(0)?;
    // SAFETY: a live, aligned map value for the whole run; userspace does not rewrite a copy
    // a run may read (see `reuseport_common::Publications`).
    let live = unsafe { core::ptr::read_volatile(&raw const (*ring).live) };
    // SAFETY: as above.
    let copies = unsafe { &(*ring).copies };
    copies.get(bounded_by(live as u32, PUBLICATION_COPIES))
}

/// `index` below MAX_SLOTS as the verifier can see it bounded (see the steering program's
/// `bounded`).
#[inline(always)]
pub fn bounded(index: u32) -> usize {
    bounded_by(index, MAX_SLOTS)
}

#[inline(always)]
fn bounded_by(index: u32, len: u32) -> usize {
    // SAFETY: reads a live local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    (index & (len - 1)) as usize
}
