//! Policy programs (docs/experiments.md): the steering program tail-calls the installed one,
//! which answers through `POLICY_ANSWER` and tail-calls our finishing program, which steers by
//! the answer with every guarantee of the built-in policies.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::SkReuseportContext,
};
use reuseport_common::{
    policy_program::{self, slot, Answer},
    trace::NO_SLOT,
    Publication, SlotState, MAX_SLOTS,
};

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

/// The slot the policy program answered for this connection, when this run is the one its
/// tail call came back to ([`NO_SLOT`] when it deferred); otherwise hands the run to the
/// installed policy program, and returns ([`NO_SLOT`]) only when there is none (or the tail
/// call failed): the built-in policy decides.
#[inline(always)]
pub fn consult(ctx: &SkReuseportContext) -> u32 {
    let hash = ctx.hash();
    let (given, answered, slot) = take_answer();
    if given && answered == hash {
        return slot;
    }
    // SAFETY: the context is this program's; an empty entry makes the helper return.
    unsafe { POLICY_PROGS.tail_call(ctx, slot::POLICY) };
    NO_SLOT
}

/// The answer left in this CPU's `POLICY_ANSWER`, taken (so no later run reuses it), as
/// (one was waiting, the flow hash it is for, the slot or [`NO_SLOT`]). Plain values, no
/// `Option` (see `steer`).
#[inline(always)]
fn take_answer() -> (bool, u32, u32) {
    let Some(answer) = POLICY_ANSWER.get_ptr_mut(0) else {
        return (false, 0, NO_SLOT);
    };
    // SAFETY: this CPU's value; the chain that wrote it is the one running.
    unsafe {
        let given = (*answer).given;
        if given == Answer::NONE {
            return (false, 0, NO_SLOT);
        }
        (*answer).given = Answer::NONE;
        let slot = if given == Answer::GIVEN {
            (*answer).slot
        } else {
            NO_SLOT
        };
        (true, (*answer).hash, slot)
    }
}

/// Whether `slot` (a policy program's answer, or [`NO_SLOT`]) is active in `publication`: a
/// slot being drained, stuck or empty is skipped as a closed one is.
#[inline(always)]
pub fn is_active(publication: &Publication, slot: u32) -> bool {
    slot < MAX_SLOTS
        && publication
            .slots
            .get(crate::bounded(slot, MAX_SLOTS))
            .is_some_and(|s| s.state == SlotState::Active as u32)
}
