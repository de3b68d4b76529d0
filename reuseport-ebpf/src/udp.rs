//! UDP groups, where the program runs once per datagram: the Maglev policy (a lookup table the
//! daemon computes over the active slots) and the flow table that keeps a flow on its slot
//! while that slot drains. Keys and layouts: `reuseport_common::udp`.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::SkReuseportContext,
};
use reuseport_common::{
    udp::{self as spec, Flow, FLOW_IDLE, IPPROTO_UDP, MAGLEV_SIZE},
    Config, Publication, SlotState, MAX_SLOTS,
};

use crate::bounded;

/// The Maglev lookup table: flow hash modulo [`MAGLEV_SIZE`] to a slot word
/// ([`spec::maglev_word`]). Memory-mapped and rewritten in place by the daemon.
#[map]
static MAGLEV: Array<u64> = Array::with_max_entries(spec::MAGLEV.max_entries, spec::MAGLEV.flags);

/// Flow hash to the slot the flow goes to.
#[map]
static FLOWS: LruHashMap<u32, Flow> =
    LruHashMap::with_max_entries(spec::FLOWS.max_entries, spec::FLOWS.flags);

/// The group's settings ([`spec::UDP_SETTINGS`]), written by the daemon.
#[map]
static UDP_SETTINGS: Array<u64> =
    Array::with_max_entries(spec::UDP_SETTINGS.max_entries, spec::UDP_SETTINGS.flags);

/// Whether this run steers a datagram of a flow-sticky policy ([`spec::sticky`]) with the
/// flow table on.
#[inline(always)]
pub fn sticky(ctx: &SkReuseportContext, config: &Config) -> bool {
    ctx.ip_protocol() == IPPROTO_UDP && spec::sticky(config.policy) && flow_idle() != 0
}

#[inline(always)]
fn flow_idle() -> u64 {
    UDP_SETTINGS.get(FLOW_IDLE).copied().unwrap_or(0)
}

/// The slot this datagram's flow went to, if the flow is known, recent, and its socket is
/// still in that slot, active or draining: a draining slot keeps its flows. Marks the flow as
/// seen now.
#[inline(always)]
pub fn flow_slot(ctx: &SkReuseportContext, publication: &Publication) -> Option<u32> {
    let flow = FLOWS.get_ptr_mut(ctx.hash())?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value for the run; another CPU may write it at the same time, which
    // at worst makes one datagram pick its slot again.
    let flow = unsafe { &mut *flow };
    if now.saturating_sub(flow.seen_ns) > flow_idle() {
        return None;
    }
    let slot = flow.slot;
    let config = publication.slots.get(bounded(slot, MAX_SLOTS))?;
    let live =
        config.state == SlotState::Active as u32 || config.state == SlotState::Draining as u32;
    if !live || config.cookie != flow.cookie {
        return None;
    }
    flow.seen_ns = now;
    Some(slot)
}

/// Records that this datagram's flow went to `slot` (sticky runs only).
#[inline(always)]
pub fn picked(ctx: &SkReuseportContext, publication: &Publication, slot: u32) {
    if !sticky(ctx, &publication.config) {
        return;
    }
    let Some(config) = publication.slots.get(bounded(slot, MAX_SLOTS)) else {
        return;
    };
    let flow = Flow {
        slot,
        _reserved: 0,
        cookie: config.cookie,
        // SAFETY: helper without arguments.
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full table evicts its least recently used flow; a failure only means the next
    // datagram picks again.
    let _ = FLOWS.insert(ctx.hash(), flow, 0);
}

/// Maglev's choice: the table's slot for this flow hash if the publication has it active, and
/// the hash scaled onto the active list as where the walk starts.
#[inline(always)]
pub fn maglev(
    ctx: &SkReuseportContext,
    publication: &Publication,
    count: u32,
) -> (Option<u32>, u32) {
    let hash = ctx.hash();
    let start = ((hash as u64 * count as u64) >> 32) as u32;
    let slot = MAGLEV
        .get(hash % MAGLEV_SIZE)
        .and_then(|&word| spec::maglev_slot(word))
        .filter(|&slot| {
            publication
                .slots
                .get(bounded(slot, MAX_SLOTS))
                .is_some_and(|s| s.state == SlotState::Active as u32)
        });
    (slot, start)
}
