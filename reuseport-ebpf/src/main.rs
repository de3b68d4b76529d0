//! The kernel side of reuseport: picks the listener of a SO_REUSEPORT group that gets each new
//! connection, by the policy userspace wrote into `CONFIG`, and moves the queued connections of
//! a closing listener to another one (`reuseport_migrate`).
//!
//! The hot path does a constant amount of work whatever the number of slots: userspace keeps a
//! dense list of the active slots (and a precomputed weighted schedule), so the program only
//! indexes into them. Each run reads which copy of the [`Publications`] ring is live once, then
//! reads only that copy: userspace never rewrites a copy a run may still be reading, so every
//! run steers by one whole publication.
#![no_std]
#![no_main]
// Atomic fetch-and-add: core has no AtomicU64::fetch_add for bpfel.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod policy_program;
mod signals;
mod trace;
mod udp;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    btf_maps::reuseport_sock_array::ReusePortSockArrayImpl,
    cty::c_void,
    helpers::generated::{bpf_get_prandom_u32, bpf_sk_select_reuseport},
    macros::{btf_map, map, sk_reuseport},
    maps::{Array, PerCpuArray},
    programs::SkReuseportContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use reuseport_common::{
    cursor,
    maps::{self, MapSpec},
    select_error,
    trace::{outcome, NO_SLOT},
    GlobalStats, LeastList, OnEmpty, Policy, Publication, Publications, SlotStats, MAX_SCHEDULE,
    MAX_SLOTS, MAX_TRIES, PUBLICATION_COPIES,
};
use trace::Decision;

/// The benchmark's no-op program: a second, separate program of the object.
mod noop;

/// The group's sockets by slot. 8-byte values, so userspace can read a slot back (the kernel
/// answers a lookup with the socket's cookie only then) and tell a closed socket from a live one.
#[btf_map]
static SOCKETS: ReusePortSockArrayImpl<u64, { maps::SOCKETS.max_entries as usize }> =
    ReusePortSockArrayImpl::new();
/// The ring of publications and which one is live, written by userspace through its memory
/// mapping.
#[map]
static PUBLICATION: Array<Publications> = array(&maps::PUBLICATION);
/// Shared tickets of the round-robin and weighted policies, advanced atomically.
#[map]
static CURSORS: Array<u64> = array(&maps::CURSORS);
/// Per-slot counters; shared and memory-mapped, so the daemon reads them every sample with no
/// system call.
#[map]
static SLOT_STATS: Array<SlotStats> = array(&maps::SLOT_STATS);
/// Per-slot sampled load for `least-loaded` and `p2c`, written by the daemon every sample (the
/// accept queue, in-flight `load` reports, time busy); the program adds the slot's live signal
/// ([`signals::live_load`]) to it at each selection.
#[map]
static LOAD: Array<u64> = array(&maps::LOAD);
/// The least-loaded active slots, a [`LeastList`] read word by word, each word tagged with the
/// publication it belongs to. Written by the daemon through its memory mapping.
#[map]
static LEAST: Array<u64> = array(&maps::LEAST);
#[map]
static GLOBAL_STATS: PerCpuArray<GlobalStats> =
    PerCpuArray::with_max_entries(maps::GLOBAL_STATS.max_entries, maps::GLOBAL_STATS.flags);

/// Declares an array as its spec says; the spec's value type must be the map's.
const fn array<V>(spec: &MapSpec<V>) -> Array<V> {
    Array::with_max_entries(spec.max_entries, spec.flags)
}

#[sk_reuseport]
pub fn reuseport_select(ctx: SkReuseportContext) -> u32 {
    let answer = policy_program::consult(&ctx);
    steer(&ctx, false, answer)
}

#[sk_reuseport(migrate)]
pub fn reuseport_migrate(ctx: SkReuseportContext) -> u32 {
    let answer = policy_program::consult(&ctx);
    let migrating = ctx.migrating_sk().is_some();
    steer(&ctx, migrating, answer)
}

/// Picks a socket for this connection and returns the verdict. `answer`: the slot a policy
/// program answered, or `NO_SLOT` (a plain `u32`, not an `Option`: the payload of a `None`
/// is undefined, and LLVM may spill it from a register the verifier calls unreadable).
#[inline(always)]
fn steer(ctx: &SkReuseportContext, migrating: bool, answer: u32) -> u32 {
    let Some(global) = GLOBAL_STATS.get_ptr_mut(0) else {
        return SK_PASS;
    };
    // SAFETY: per-CPU value of this CPU; nothing else writes it while we run.
    let global = unsafe { &mut *global };
    if migrating {
        global.migrations += 1;
    } else {
        global.runs += 1;
    }
    let Some(publication) = live_publication() else {
        return SK_PASS;
    };
    let (verdict, decision) = decide(ctx, publication, migrating, answer, global);
    // One place for what a pick records and for the trace, after every path has joined: the
    // verifier checks each once per state that reaches here, not once per way out of the walk.
    trace::decided(ctx, migrating, &decision);
    // Last, when nothing else of the decision is read any more: the verifier then finds the
    // states of the different ways here alike and checks the packet parsing once, not once per
    // way (before the trace, it took the program past a million instructions).
    let (slot, recorded) = (decision.slot, decision.outcome == outcome::FLOW);
    if slot != NO_SLOT && !recorded {
        udp::picked(ctx, publication, slot);
        signals::record_flow(ctx, slot, publication.config.policy, migrating);
    }
    verdict
}

/// The verdict for this connection by `publication`, and what the trace says of it.
#[inline(always)]
fn decide(
    ctx: &SkReuseportContext,
    publication: &Publication,
    migrating: bool,
    answer: u32,
    global: &mut GlobalStats,
) -> (u32, Decision) {
    let config = publication.config;
    let mut decision = Decision::new(&config, answer);
    // UDP, flow-sticky policies: a known flow stays on its slot (udp.rs).
    if udp::sticky(ctx, &config) {
        if let Some(slot) = udp::flow_slot(ctx, publication) {
            decision.first = slot;
            if try_slot(ctx, slot, migrating, global) {
                return (SK_PASS, decision.ended(slot, outcome::FLOW));
            }
        }
    }
    let count = config.active_len;
    if count > 0 && count <= MAX_SLOTS {
        // A policy program's answer is tried first; if its slot cannot take the connection
        // (not active, or closed), the built-in policy decides as if it had deferred.
        if policy_program::is_active(publication, answer) {
            decision.first = answer;
            if try_slot(ctx, answer, migrating, global) {
                return (SK_PASS, decision.ended(answer, outcome::FIRST));
            }
        }
        let (first, start) = first_candidate(ctx, publication, count);
        if let Some(slot) = first {
            decision.first = slot;
            if try_slot(ctx, slot, migrating, global) {
                return (SK_PASS, decision.ended(slot, outcome::FIRST));
            }
        }
        // Walk the active list from `start`; never hand the connection to the whole group while
        // an active slot can take it.
        let mut i = 0;
        while i < MAX_TRIES && i < count {
            let index = (start + i) % count;
            if let Some(&slot) = publication.active.get(bounded(index, MAX_SLOTS)) {
                if try_slot(ctx, slot, migrating, global) {
                    return (SK_PASS, decision.ended(slot, outcome::WALKED));
                }
            }
            i += 1;
        }
    }

    if config.on_empty == OnEmpty::Drop as u32 {
        global.drops += 1;
        (SK_DROP, decision.ended(NO_SLOT, outcome::DROPPED))
    } else {
        global.fallbacks += 1;
        if global.fallbacks.is_power_of_two() {
            warn!(
                ctx,
                "no active slot took the connection: kernel hash over the group"
            );
        }
        (SK_PASS, decision.ended(NO_SLOT, outcome::FELL_BACK))
    }
}

/// The live publication: its index is read once (one volatile 8-byte load), and every later read
/// of this run goes to that copy.
#[inline(always)]
fn live_publication() -> Option<&'static Publication> {
    let ring = PUBLICATION.get_ptr(0)?;
    // SAFETY: a live, aligned map value for the whole run.
    let live = unsafe { core::ptr::read_volatile(&raw const (*ring).live) };
    // SAFETY: as above; userspace does not write this copy while a run may read it.
    let copies = unsafe { &(*ring).copies };
    copies.get(bounded(live as u32, PUBLICATION_COPIES))
}

/// The policy's first choice, as (slot to try first, position in the active list to walk from).
/// `count` is the length of the active list, 1..=MAX_SLOTS.
#[inline(always)]
fn first_candidate(
    ctx: &SkReuseportContext,
    publication: &Publication,
    count: u32,
) -> (Option<u32>, u32) {
    // SAFETY: the caller checked; said again because LLVM loses it in some programs (the
    // finishing ones) and would keep a division-by-zero panic the verifier refuses.
    unsafe { core::hint::assert_unchecked(count > 0) };
    // The policy stays a `u32` in the map; comparing it against each variant's value keeps an
    // unknown value harmless (it falls through to the hash).
    const LEAST_LOADED: u32 = Policy::LeastLoaded as u32;
    const P2C: u32 = Policy::P2c as u32;
    const ROUND_ROBIN: u32 = Policy::RoundRobin as u32;
    const WEIGHTED: u32 = Policy::Weighted as u32;
    const MAGLEV: u32 = Policy::Maglev as u32;
    let config = &publication.config;
    match config.policy {
        LEAST_LOADED => least_loaded(publication, count),
        P2C => two_choices(publication, count),
        MAGLEV => udp::maglev(ctx, publication, count),
        ROUND_ROBIN => (None, (ticket(cursor::ROUND_ROBIN) % count as u64) as u32),
        WEIGHTED => {
            let len = config.schedule_len;
            if len == 0 || len > MAX_SCHEDULE {
                return (None, (ticket(cursor::ROUND_ROBIN) % count as u64) as u32);
            }
            let t = ticket(cursor::WEIGHTED);
            let index = bounded((t % len as u64) as u32, MAX_SCHEDULE);
            let slot = publication.schedule.get(index).copied();
            (slot, (t % count as u64) as u32)
        }
        // Policy::Hash and anything unknown: the flow hash, scaled onto the active list.
        _ => (None, ((ctx.hash() as u64 * count as u64) >> 32) as u32),
    }
}

/// The least-loaded active slot at this moment (sampled load plus the live signal,
/// [`load_of`]), equally loaded ones in turn: the daemon's list of its least-loaded slots (a
/// list it republishes whenever a sample changes it, so the cost stays O(1) whatever the count),
/// or the next slot in turn instead when that one is less loaded now. (Scanning a small group
/// whole took the program, with the trace, UDP and policy programs, past the verifier's
/// million instructions.) Only words of the
/// list tagged with this run's publication count ([`LeastList`]); otherwise (the list of a
/// publication just replaced) the walk over the active list decides.
#[inline(always)]
fn least_loaded(publication: &Publication, count: u32) -> (Option<u32>, u32) {
    let t = ticket(cursor::ROUND_ROBIN);
    let start = (t % count as u64) as u32;
    let generation = publication.config.generation;
    let Some(len) = least_word(LeastList::HEAD, generation) else {
        return (None, start);
    };
    if len == 0 || len > MAX_SLOTS {
        return (None, start);
    }
    let listed = least_word(LeastList::entry((t % len as u64) as u32), generation);
    let next = publication.active.get(bounded(start, MAX_SLOTS)).copied();
    match (listed, next) {
        (Some(a), Some(b)) if load_of(b) < load_of(a) => (Some(b), start),
        (listed, _) => (listed, start),
    }
}

/// Word `index` of `LEAST`, if it belongs to the publication of `generation`.
#[inline(always)]
fn least_word(index: u32, generation: u32) -> Option<u32> {
    let word = LEAST.get_ptr(index)?;
    // SAFETY: a live, aligned map value; one volatile 8-byte load, so the tag and the value
    // checked are the ones used, whatever the daemon writes meanwhile.
    let word = unsafe { core::ptr::read_volatile(word) };
    LeastList::untag(word, generation)
}

/// Power of two choices: the less loaded of two distinct random active slots.
#[inline(always)]
fn two_choices(publication: &Publication, count: u32) -> (Option<u32>, u32) {
    // SAFETY: helper without arguments.
    let a = unsafe { bpf_get_prandom_u32() } % count;
    let b = if count > 1 {
        // SAFETY: as above.
        (a + 1 + unsafe { bpf_get_prandom_u32() } % (count - 1)) % count
    } else {
        a
    };
    let slot_a = publication.active.get(bounded(a, MAX_SLOTS)).copied();
    let slot_b = publication.active.get(bounded(b, MAX_SLOTS)).copied();
    match (slot_a, slot_b) {
        (Some(sa), Some(sb)) if load_of(sb) < load_of(sa) => (Some(sb), (b + 1) % count),
        (Some(sa), _) => (Some(sa), (a + 1) % count),
        (None, other) => (other, (b + 1) % count),
    }
}

/// `index` (below `len`, a power of two) as the verifier can see it bounded: it does not follow
/// a modulo, and LLVM drops a mask it proves redundant, so the value goes through a volatile
/// read (opaque to LLVM) before the mask.
#[inline(always)]
fn bounded(index: u32, len: u32) -> usize {
    // SAFETY: reads a live local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    (index & (len - 1)) as usize
}

#[inline(always)]
fn load_of(slot: u32) -> u64 {
    LOAD.get(slot).map_or(u64::MAX, |&sampled| {
        sampled.saturating_add(signals::live_load(slot))
    })
}

/// Takes the next ticket of a cursor. One atomic fetch-and-add shared by all CPUs is what makes
/// round-robin exact under concurrency. SeqCst, because LLVM lowers a Relaxed one to a plain
/// (non-fetching) add whose "old value" is garbage; `xtask test` checks the object for the
/// fetch form.
#[inline(always)]
fn ticket(which: u32) -> u64 {
    match CURSORS.get_ptr_mut(which) {
        // SAFETY: the map value is a live, 8-byte aligned u64 for the program's whole run.
        Some(ptr) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, 1) },
        None => 0,
    }
}

/// Selects `slot`; counts the outcome. Returns whether the socket was taken.
#[inline(always)]
fn try_slot(
    ctx: &SkReuseportContext,
    slot: u32,
    migrating: bool,
    global: &mut GlobalStats,
) -> bool {
    let mut key = slot;
    // SAFETY: the context and the map are what the helper expects; `key` lives across the call.
    let ret = unsafe {
        bpf_sk_select_reuseport(
            ctx.as_ptr().cast(),
            core::ptr::from_ref(&SOCKETS).cast_mut().cast::<c_void>(),
            core::ptr::from_mut(&mut key).cast::<c_void>(),
            0,
        )
    };
    match ret {
        0 => {
            if let Some(stats) = SLOT_STATS.get_ptr_mut(slot) {
                // SAFETY: live, aligned map value shared by all CPUs.
                unsafe {
                    let counter = if migrating {
                        &raw mut (*stats).migrated
                    } else {
                        &raw mut (*stats).selected
                    };
                    atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1);
                }
            }
            true
        }
        ret => {
            let which = select_error::index(ret);
            if let Some(counter) = global.errors.get_mut(which) {
                *counter += 1;
                // ENOENT is routine (a slot closed before userspace noticed); the others mean
                // a socket of another group got into the array: rare, and worth a log line.
                if which != select_error::ENOENT && counter.is_power_of_two() {
                    warn!(
                        ctx,
                        "bpf_sk_select_reuseport(slot {}) failed: {}", slot, ret
                    );
                }
            }
            false
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
