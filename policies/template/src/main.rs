//! The template of a policy program (docs/experiments.md): copy this crate, rename it, add it
//! to policies/Cargo.toml, write `choose`, and build it with `cargo xtask build-policy NAME`.
//!
//! This one spreads connections by their flow hash over the active slots, as the built-in
//! `hash` policy does, and defers to the built-in policy when no slot is active.
#![no_std]
#![no_main]

use aya_ebpf::{macros::sk_reuseport, programs::SkReuseportContext};
use reuseport_policy::{spread, Choice, Group};

/// The policy: which slot should take this connection.
#[inline(always)]
fn choose(group: &Group) -> Choice {
    let count = group.active_len();
    if count == 0 {
        return Choice::Defer;
    }
    match group.active(spread(group.hash(), count)) {
        Some(slot) => Choice::Slot(slot),
        None => Choice::Defer,
    }
}

// The two entry points, one per attach mode; the daemon loads the one of the group's mode.
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
