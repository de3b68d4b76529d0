//! A program that chooses nothing: it returns SK_PASS, so the kernel hashes as if no program
//! were attached. The benchmark attaches it to measure what running any SK_REUSEPORT program
//! costs (the call, and the kernel's run-time statistics around it), so the policies' cost can
//! be shown net of it. Userspace never attaches it to a group the daemon steers.

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_reuseport, programs::SkReuseportContext};

#[sk_reuseport]
pub fn reuseport_noop(_ctx: SkReuseportContext) -> u32 {
    SK_PASS
}
