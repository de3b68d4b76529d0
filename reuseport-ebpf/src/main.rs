//! The kernel side of reuseport: picks the listener of a SO_REUSEPORT group that gets each new
//! connection, by the policy userspace wrote into `CONFIG`, and moves the queued connections of
//! a closing listener to another one (`reuseport_migrate`).
//!
//! The hot path does a constant amount of work whatever the number of slots: userspace keeps a
//! dense list of the active slots (and a precomputed weighted schedule), so the program only
//! indexes into them.
#![no_std]
#![no_main]
// Atomic fetch-and-add: core has no AtomicU64::fetch_add for bpfel.
#![allow(internal_features)]
#![feature(core_intrinsics)]

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
    maps::{self, MapSpec, ACTIVE_LIST, LEAST_LIST, SCHEDULE_LIST},
    select_error, Config, GlobalStats, LeastList, ListRef, OnEmpty, Policy, SlotConfig, SlotStats,
    MAX_TRIES,
};

/// The group's sockets by slot. 8-byte values, so userspace can read a slot back (the kernel
/// answers a lookup with the socket's cookie only then) and tell a closed socket from a live one.
#[btf_map]
static SOCKETS: ReusePortSockArrayImpl<u64, { maps::SOCKETS.max_entries as usize }> =
    ReusePortSockArrayImpl::new();
#[map]
static CONFIG: Array<Config> = array(&maps::CONFIG);
/// Two halves of active slots; `Config::active` says which one is live.
#[map]
static ACTIVE: Array<u32> = array(&maps::ACTIVE);
/// Two halves of the weighted schedule; `Config::schedule` says which one is live.
#[map]
static SCHEDULE: Array<u32> = array(&maps::SCHEDULE);
/// Userspace's record of each slot; the program does not need it on the hot path.
#[map]
static SLOTS: Array<SlotConfig> = array(&maps::SLOTS);
/// Shared tickets of the round-robin and weighted policies, advanced atomically.
#[map]
static CURSORS: Array<u64> = array(&maps::CURSORS);
/// Per-slot counters; shared and memory-mapped, so the daemon reads them every sample with no
/// system call.
#[map]
static SLOT_STATS: Array<SlotStats> = array(&maps::SLOT_STATS);
/// Per-slot load for `least-loaded` and `p2c`, written by the daemon every sample: the accept
/// queue plus the requests in flight. The program only reads it; between two samples, equally
/// loaded slots take turns (least-loaded) or two random picks spread the choices (p2c).
#[map]
static LOAD: Array<u64> = array(&maps::LOAD);
/// The least-loaded active slots, a [`LeastList`] read word by word. Written by the daemon
/// through its memory mapping.
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
    steer(&ctx, false)
}

#[sk_reuseport(migrate)]
pub fn reuseport_migrate(ctx: SkReuseportContext) -> u32 {
    let migrating = ctx.migrating_sk().is_some();
    steer(&ctx, migrating)
}

/// Picks a socket for this connection and returns the verdict.
#[inline(always)]
fn steer(ctx: &SkReuseportContext, migrating: bool) -> u32 {
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
    let Some(config) = CONFIG.get(0) else {
        return SK_PASS;
    };
    let config = *config;

    let active = config.active;
    let count = ACTIVE_LIST.clamp(active.len());
    if count > 0 {
        let base = ACTIVE_LIST.start(active.half());
        let (first, start) = first_candidate(ctx, &config, count, base);
        if let Some(slot) = first {
            if try_slot(ctx, slot, migrating, global) {
                return SK_PASS;
            }
        }
        // Walk the active list from `start`; never hand the connection to the whole group while
        // an active slot can take it.
        let mut i = 0;
        while i < MAX_TRIES && i < count {
            let index = base + (start + i) % count;
            if let Some(&slot) = ACTIVE.get(index) {
                if try_slot(ctx, slot, migrating, global) {
                    return SK_PASS;
                }
            }
            i += 1;
        }
    }

    if config.on_empty == OnEmpty::Drop as u32 {
        global.drops += 1;
        SK_DROP
    } else {
        global.fallbacks += 1;
        if global.fallbacks.is_power_of_two() {
            warn!(
                ctx,
                "no active slot took the connection: kernel hash over the group"
            );
        }
        SK_PASS
    }
}

/// The policy's first choice, as (slot to try first, position in the active list to walk from).
#[inline(always)]
fn first_candidate(
    ctx: &SkReuseportContext,
    config: &Config,
    count: u32,
    base: u32,
) -> (Option<u32>, u32) {
    // The policy stays a `u32` in the map; comparing it against each variant's value keeps an
    // unknown value harmless (it falls through to the hash).
    const LEAST_LOADED: u32 = Policy::LeastLoaded as u32;
    const P2C: u32 = Policy::P2c as u32;
    const ROUND_ROBIN: u32 = Policy::RoundRobin as u32;
    const WEIGHTED: u32 = Policy::Weighted as u32;
    match config.policy {
        LEAST_LOADED => least_loaded(count),
        P2C => two_choices(count, base),
        ROUND_ROBIN => (None, (ticket(cursor::ROUND_ROBIN) % count as u64) as u32),
        WEIGHTED => {
            let schedule = config.schedule;
            let len = SCHEDULE_LIST.clamp(schedule.len());
            if len == 0 {
                return (None, (ticket(cursor::ROUND_ROBIN) % count as u64) as u32);
            }
            let t = ticket(cursor::WEIGHTED);
            let index = SCHEDULE_LIST.index(schedule.half(), (t % len as u64) as u32);
            let slot = SCHEDULE.get(index).copied();
            (slot, (t % count as u64) as u32)
        }
        // Policy::Hash and anything unknown: the flow hash, scaled onto the active list.
        _ => (None, ((ctx.hash() as u64 * count as u64) >> 32) as u32),
    }
}

/// Round-robin over the least-loaded active slots, a list the daemon republishes whenever a
/// sample changes it: equally loaded slots take turns, and the cost is O(1) whatever the count.
#[inline(always)]
fn least_loaded(count: u32) -> (Option<u32>, u32) {
    let t = ticket(cursor::ROUND_ROBIN);
    let start = (t % count as u64) as u32;
    let Some(&head) = LEAST.get(LeastList::HEAD) else {
        return (None, start);
    };
    let list = ListRef(head as u32);
    let len = list.len();
    if len == 0 || len > LEAST_LIST.half_len {
        return (None, start);
    }
    let index = LeastList::entry(list.half(), (t % len as u64) as u32);
    (LEAST.get(index).map(|&slot| slot as u32), start)
}

/// Power of two choices: the less loaded of two distinct random active slots.
#[inline(always)]
fn two_choices(count: u32, base: u32) -> (Option<u32>, u32) {
    // SAFETY: helper without arguments.
    let a = unsafe { bpf_get_prandom_u32() } % count;
    let b = if count > 1 {
        // SAFETY: as above.
        (a + 1 + unsafe { bpf_get_prandom_u32() } % (count - 1)) % count
    } else {
        a
    };
    let slot_a = ACTIVE.get(base + a).copied();
    let slot_b = ACTIVE.get(base + b).copied();
    match (slot_a, slot_b) {
        (Some(sa), Some(sb)) if load_of(sb) < load_of(sa) => (Some(sb), (b + 1) % count),
        (Some(sa), _) => (Some(sa), (a + 1) % count),
        (None, other) => (other, (b + 1) % count),
    }
}

#[inline(always)]
fn load_of(slot: u32) -> u64 {
    LOAD.get(slot).copied().unwrap_or(u64::MAX)
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
