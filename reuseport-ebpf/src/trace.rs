//! The decision trace (`reuseport trace`): a [`TraceRecord`] per decision into the `TRACE` ring
//! buffer, only while the daemon has set `TRACING`. Checking the flag is the whole cost when
//! nobody traces.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, RingBuf},
    programs::SkReuseportContext,
};
use reuseport_common::{
    trace::{self, kind, TraceRecord, NO_SLOT, POLICY_PROGRAM},
    Config,
};

#[map]
static TRACING: Array<u32> =
    Array::with_max_entries(trace::TRACING.max_entries, trace::TRACING.flags);
#[map]
static TRACE: RingBuf = RingBuf::with_byte_size(trace::TRACE_BYTES, 0);

/// Whether somebody traces: the first thing a hook checks.
#[inline(always)]
fn enabled() -> bool {
    matches!(TRACING.get(0), Some(&on) if on != 0)
}

/// What a run decided, for the trace: plain `u32`s, all set on every path (no `Option`, whose
/// undefined payload LLVM may spill from a register the verifier calls unreadable).
pub struct Decision {
    /// The [`reuseport_common::Policy`] as `u32`, or [`POLICY_PROGRAM`].
    pub policy: u32,
    pub generation: u32,
    /// The first choice, or [`NO_SLOT`].
    pub first: u32,
    /// The slot that took the connection, or [`NO_SLOT`].
    pub slot: u32,
    /// A [`trace::outcome`].
    pub outcome: u32,
}

impl Decision {
    /// A run steered by `config`; `answer` is a policy program's slot, or [`NO_SLOT`].
    #[inline(always)]
    pub fn new(config: &Config, answer: u32) -> Self {
        Self {
            policy: if answer == NO_SLOT {
                config.policy
            } else {
                POLICY_PROGRAM
            },
            generation: config.generation,
            first: NO_SLOT,
            slot: NO_SLOT,
            outcome: trace::outcome::FELL_BACK,
        }
    }

    /// This decision, ended with `slot` ([`NO_SLOT`]: none) and `outcome`.
    #[inline(always)]
    pub fn ended(self, slot: u32, outcome: u32) -> Self {
        Self {
            slot,
            outcome,
            ..self
        }
    }
}

/// Records one decision, if somebody traces.
#[inline(always)]
pub fn decided(ctx: &SkReuseportContext, migrating: bool, decision: &Decision) {
    if !enabled() {
        return;
    }
    let Some(mut entry) = TRACE.reserve::<TraceRecord>(0) else {
        // Full: the reader sees the gap in nothing but the count; the program cannot wait.
        return;
    };
    entry.write(TraceRecord {
        // SAFETY: helpers without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        load: seen(decision.slot),
        hash: ctx.hash(),
        slot: decision.slot,
        first: decision.first,
        policy: decision.policy,
        kind: if migrating {
            kind::MIGRATE
        } else {
            kind::SELECT
        },
        outcome: decision.outcome,
        generation: decision.generation,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
    });
    entry.submit(0);
}

/// The sampled load (`LOAD`) of `slot`; 0 for [`NO_SLOT`]. (Only the chosen slot's, and without
/// the live signals the policies add: each more lookup at this join multiplies the verifier's
/// work, and with them the program passed its million instructions.)
#[inline(always)]
fn seen(slot: u32) -> u64 {
    if slot == NO_SLOT {
        0
    } else {
        crate::LOAD.get(slot).copied().unwrap_or(0)
    }
}
