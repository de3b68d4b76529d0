//! Load signals read at each selection (see `reuseport_common::signals`): the in-flight count a
//! cooperating worker publishes in its own memory-mapped map, and the connections open per
//! slot, counted here with no userspace work per connection: the select program remembers the
//! chosen slot under the connection's 4-tuple ([`record_flow`]), and `reuseport_conns`, a
//! sock_ops program on the root cgroup, moves it into the socket's storage when the handshake
//! completes (+1) and counts −1 when the socket reaches CLOSE.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        bpf_hdr_start_off::BPF_HDR_START_NET, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    btf_maps::{self, ArrayOfMaps, SkStorage},
    cty::c_void,
    helpers::generated::{
        bpf_sk_storage_delete, bpf_sk_storage_get, bpf_skb_load_bytes, bpf_skb_load_bytes_relative,
    },
    macros::{btf_map, map, sock_ops},
    maps::{Array, LruHashMap},
    programs::{SkReuseportContext, SockOpsContext},
    EbpfContext as _,
};
use reuseport_common::{
    signals::{maps, FlowKey, SlotSignals, WorkerCounters, SIGNAL_OPEN},
    Policy, BPF_F_MMAPABLE, MAX_SLOTS,
};

/// Each slot's worker counters, when its worker publishes them (one map per worker, created by
/// the daemon, mapped by that worker alone).
#[btf_map]
static WORKERS: ArrayOfMaps<
    btf_maps::Array<WorkerCounters, 1, { BPF_F_MMAPABLE as usize }>,
    { MAX_SLOTS as usize },
> = ArrayOfMaps::new();
/// Connections open per slot, counted by `reuseport_conns`.
#[map]
static SLOT_SIGNALS: Array<SlotSignals> =
    Array::with_max_entries(maps::SLOT_SIGNALS.max_entries, maps::SLOT_SIGNALS.flags);
/// [`SIGNAL_OPEN`]: the daemon attached `reuseport_conns`, so flows are recorded and open
/// connections count in the load.
#[map]
static SIGNAL_FLAGS: Array<u64> =
    Array::with_max_entries(maps::SIGNAL_FLAGS.max_entries, maps::SIGNAL_FLAGS.flags);
/// The slot chosen for a connection, from its SYN until its handshake completes.
#[map]
static SYNS: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(maps::SYNS.max_entries, maps::SYNS.flags);
/// The slot of each counted connection, for its close.
#[btf_map]
static CONN_SLOT: SkStorage<u32> = SkStorage::new();

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
fn flags() -> u64 {
    SIGNAL_FLAGS
        .get_ptr(0)
        // SAFETY: a live, aligned map value; the daemon writes it through its mapping.
        .map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
}

/// What the slot's live signal adds to its sampled load: the worker's in-flight requests when
/// it publishes them, else its open connections when they are counted, else nothing.
#[inline(always)]
pub fn live_load(slot: u32) -> u64 {
    if let Some(worker) = WORKERS.get_value(slot, &0) {
        // SAFETY: a live, aligned map value; the worker writes it through its mapping.
        return unsafe { core::ptr::read_volatile(&raw const worker.inflight) };
    }
    if flags() & SIGNAL_OPEN != 0 {
        if let Some(signals) = SLOT_SIGNALS.get_ptr(slot) {
            // SAFETY: as above; the sock_ops program adds to it atomically.
            return unsafe { core::ptr::read_volatile(&raw const (*signals).open) };
        }
    }
    0
}

/// Remembers `slot` for the connection of this SYN, when open connections are counted, the
/// group's policy steers by load and the slot's worker publishes no counters: recording costs a
/// map update per connection (a few hundred ns), which nothing else pays. Connections not
/// recorded are not counted, at their close either.
#[inline(always)]
pub fn record_flow(ctx: &SkReuseportContext, slot: u32, policy: u32, migrating: bool) {
    const LEAST_LOADED: u32 = Policy::LeastLoaded as u32;
    const P2C: u32 = Policy::P2c as u32;
    if migrating || !matches!(policy, LEAST_LOADED | P2C) {
        return;
    }
    if flags() & SIGNAL_OPEN == 0 || ctx.ip_protocol() != 6 {
        return;
    }
    // A worker that publishes its counters is steered by them: its open connections are not
    // needed.
    if WORKERS.get_value(slot, &0).is_some() {
        return;
    }
    let Some(key) = flow_of_packet(ctx) else {
        return;
    };
    let _ = SYNS.insert(key, slot, 0);
}

/// The 4-tuple of the packet: addresses from the network header, ports from the TCP header
/// (where the context's data starts).
#[inline(always)]
fn flow_of_packet(ctx: &SkReuseportContext) -> Option<FlowKey> {
    let skb = ctx.as_ptr() as *const c_void;
    let mut key = FlowKey::default();
    let mut first = 0u8;
    // SAFETY: the helpers write at most `len` bytes into the locals given.
    unsafe {
        if bpf_skb_load_bytes_relative(skb, 0, (&raw mut first).cast(), 1, BPF_HDR_START_NET) != 0 {
            return None;
        }
        match first >> 4 {
            4 => {
                let mut addrs = [0u32; 2];
                if bpf_skb_load_bytes_relative(
                    skb,
                    12,
                    (&raw mut addrs).cast(),
                    8,
                    BPF_HDR_START_NET,
                ) != 0
                {
                    return None;
                }
                key.remote[0] = addrs[0];
                key.local[0] = addrs[1];
                key.version = 4;
            }
            6 => {
                let mut addrs = [0u32; 8];
                if bpf_skb_load_bytes_relative(
                    skb,
                    8,
                    (&raw mut addrs).cast(),
                    32,
                    BPF_HDR_START_NET,
                ) != 0
                {
                    return None;
                }
                key.remote = [addrs[0], addrs[1], addrs[2], addrs[3]];
                key.local = [addrs[4], addrs[5], addrs[6], addrs[7]];
                key.version = 6;
                unmap_v4(&mut key);
            }
            _ => return None,
        }
        let mut ports = [0u16; 2];
        if bpf_skb_load_bytes(skb, 0, (&raw mut ports).cast(), 4) != 0 {
            return None;
        }
        key.remote_port = ports[0];
        key.local_port = u16::from_be(ports[1]);
    }
    Some(key)
}

/// An IPv4-mapped IPv6 pair (a dual-stack socket's IPv4 peer) as the IPv4 one.
#[inline(always)]
fn unmap_v4(key: &mut FlowKey) {
    let mapped = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == 0xffffu32.to_be();
    if mapped(&key.remote) && mapped(&key.local) {
        key.remote = [key.remote[3], 0, 0, 0];
        key.local = [key.local[3], 0, 0, 0];
        key.version = 4;
    }
}

/// The 4-tuple of a sock_ops socket, as [`flow_of_packet`] builds it.
#[inline(always)]
fn flow_of_socket(ctx: &SockOpsContext) -> Option<FlowKey> {
    let mut key = FlowKey {
        remote_port: (ctx.remote_port() >> 16) as u16,
        local_port: ctx.local_port() as u16,
        ..FlowKey::default()
    };
    match ctx.family() {
        AF_INET => {
            key.remote[0] = ctx.remote_ip4();
            key.local[0] = ctx.local_ip4();
            key.version = 4;
        }
        AF_INET6 => {
            key.remote = ctx.remote_ip6();
            key.local = ctx.local_ip6();
            key.version = 6;
            unmap_v4(&mut key);
        }
        _ => return None,
    }
    Some(key)
}

#[sock_ops]
pub fn reuseport_conns(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(&ctx),
        _ => {}
    }
    1
}

/// A handshake completed: if the select program chose its slot, count it there, and ask for
/// the state callbacks that tell its close.
#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let Some(key) = flow_of_socket(ctx) else {
        return;
    };
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(mut slot) = (unsafe { SYNS.get(key) }).copied() else {
        return;
    };
    let _ = SYNS.remove(key);
    // SAFETY: reads the context's socket pointer.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: the map is socket storage of u32 and `sk` a full socket of this context.
    let stored = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&CONN_SLOT).cast_mut().cast(),
            sk.cast(),
            (&raw mut slot).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    };
    if stored.is_null() || ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32).is_err() {
        return;
    }
    count(slot, 1, true);
}

/// A counted connection closed: −1 for its slot.
#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    // SAFETY: reads the context's socket pointer.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let map = core::ptr::from_ref(&CONN_SLOT).cast_mut().cast::<c_void>();
    // SAFETY: the map is socket storage of u32; no value given, so nothing is created.
    let stored = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) };
    if stored.is_null() {
        return;
    }
    // SAFETY: a live u32 of the socket's storage.
    let slot = unsafe { core::ptr::read_volatile(stored.cast::<u32>()) };
    // SAFETY: as above; deleting the socket's own storage entry.
    unsafe { bpf_sk_storage_delete(map, sk.cast()) };
    count(slot, u64::MAX, false);
}

/// Adds `delta` (wrapping: `u64::MAX` is −1) to the slot's open count, and one to its
/// established or closed total.
#[inline(always)]
fn count(slot: u32, delta: u64, established: bool) {
    if let Some(signals) = SLOT_SIGNALS.get_ptr_mut(slot) {
        // SAFETY: live, aligned map value shared by all CPUs.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*signals).open, delta);
            let total = if established {
                &raw mut (*signals).established
            } else {
                &raw mut (*signals).closed
            };
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(total, 1);
        }
    }
}
