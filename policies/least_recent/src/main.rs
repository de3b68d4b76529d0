//! "Least recently chosen": each connection goes to the active slot this policy chose longest
//! ago (never chosen counts as longest; ties go to the lower position in the active list). With
//! one client at a time this is round-robin in slot order; unlike round-robin, a slot that joins
//! is chosen at once, and a slot that comes back from draining goes first.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::map, macros::sk_reuseport, maps::Array,
    programs::SkReuseportContext,
};
use reuseport_policy::{Choice, Group};

/// Slots scanned at most per connection (the first ones of the active list).
const SCAN: u32 = 64;
/// When this policy last chose each slot (CLOCK_MONOTONIC ns; 0: never). Its own map.
#[map]
static LAST_CHOSEN: Array<u64> = Array::with_max_entries(1024, 0);

#[inline(always)]
fn choose(group: &Group) -> Choice {
    let count = group.active_len();
    let mut best: Option<(u32, u64)> = None;
    let mut i = 0;
    while i < SCAN && i < count {
        if let Some(slot) = group.active(i) {
            let last = LAST_CHOSEN.get(slot).copied().unwrap_or(u64::MAX);
            if best.is_none_or(|(_, oldest)| last < oldest) {
                best = Some((slot, last));
            }
        }
        i += 1;
    }
    let Some((slot, _)) = best else {
        return Choice::Defer;
    };
    if let Some(last) = LAST_CHOSEN.get_ptr_mut(slot) {
        // SAFETY: a live map value; a race with another CPU only blurs "least recent".
        unsafe { *last = bpf_ktime_get_ns() };
    }
    Choice::Slot(slot)
}

#[sk_reuseport]
pub fn policy_select(ctx: SkReuseportContext) -> u32 {
    reuseport_policy::answer(&ctx, choose)
}

#[sk_reuseport(migrate)]
pub fn policy_migrate(ctx: SkReuseportContext) -> u32 {
    reuseport_policy::answer(&ctx, choose)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
