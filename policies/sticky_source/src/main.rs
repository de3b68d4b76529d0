//! "Hash by source address, sticky per client": every connection from one client address goes
//! to the same slot while the active set stays the same, whatever its source port; different
//! addresses spread over the active slots by `spread(mix(address), active_len)`.
#![no_std]
#![no_main]

use aya_ebpf::{macros::sk_reuseport, programs::SkReuseportContext};
use reuseport_policy::{mix, spread, Choice, Group};

#[inline(always)]
fn choose(group: &Group) -> Choice {
    let count = group.active_len();
    let Some(address) = group.source_address() else {
        return Choice::Defer;
    };
    if count == 0 {
        return Choice::Defer;
    }
    match group.active(spread(mix(address), count)) {
        Some(slot) => Choice::Slot(slot),
        None => Choice::Defer,
    }
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
