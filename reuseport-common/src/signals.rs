//! Load signals the program reads at each selection, so `least-loaded` and `p2c` compare the
//! load of a slot as it is at that moment, not as the daemon last sampled it:
//!
//! - [`WorkerCounters`]: what a cooperating worker publishes about itself (requests in flight,
//!   connections accepted, requests finished) into a one-entry memory-mapped array of its own.
//!   The daemon creates one such map per registration and passes its descriptor back to the
//!   worker alone; the program finds it through the `WORKERS` array of maps, indexed by slot. A
//!   worker holds no descriptor of any other worker's map, so it can write only its own slot's
//!   figures.
//! - [`SlotSignals`]: connections open per slot, counted in the kernel for every server
//!   (cooperating or not): the select program records the chosen slot under the connection's
//!   4-tuple ([`FlowKey`]), a sock_ops program counts +1 when the handshake completes and −1
//!   when the connection closes.
//!
//! What the program adds to the daemon's sampled `LOAD` word for a slot, in this order: the
//! worker's in-flight count when it publishes one, else the slot's open connections when they
//! are counted ([`SIGNAL_OPEN`] set), else nothing.

use core::mem::size_of;

use crate::{
    maps::{MapShape, MapSpec},
    BPF_F_MMAPABLE, MAX_SLOTS,
};

/// The value of a worker's own counters map (one entry, memory-mapped by the worker, which is
/// the only writer; the program and the daemon read it).
///
/// `C` is the cell: `u64` in the program, `AtomicU64` in userspace's view of the mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters<C = u64> {
    /// Requests the worker is serving now: what `least-loaded` and `p2c` add to the slot's load.
    pub inflight: C,
    /// Connections the worker accepted so far.
    pub accepted: C,
    /// Requests the worker finished so far: a worker with requests in flight and this count
    /// standing still is busy with the same ones (the daemon adds one to the load per sample
    /// period of that, as it does for `load` reports).
    pub finished: C,
    pub _reserved: [C; 5],
}

impl WorkerCounters {
    /// Byte offsets of the words, for workers in other languages (docs/protocol.md).
    pub const INFLIGHT_OFFSET: usize = core::mem::offset_of!(WorkerCounters, inflight);
    pub const ACCEPTED_OFFSET: usize = core::mem::offset_of!(WorkerCounters, accepted);
    pub const FINISHED_OFFSET: usize = core::mem::offset_of!(WorkerCounters, finished);
}

/// Per-slot counters kept by the sock_ops program (`SLOT_SIGNALS`, memory-mapped by the
/// daemon). Never reset by userspace: connections of a slot's earlier socket still open count
/// on it until they close, so the count returns to zero by itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotSignals<C = u64> {
    /// Connections open now (established, queued or accepted, not closed yet).
    pub open: C,
    /// Connections established so far.
    pub established: C,
    /// Connections closed so far.
    pub closed: C,
}

/// A connection as both programs see it: the remote and local address (IPv4 in the first word,
/// the rest zero; IPv4-mapped IPv6 addresses as IPv4) and ports. The remote port is kept as it
/// is in the packet (network order), the local one in host order, as sock_ops gives them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: [u32; 4],
    pub local: [u32; 4],
    pub remote_port: u16,
    pub local_port: u16,
    /// 4 or 6.
    pub version: u32,
}

/// `BPF_F_NO_COMMON_LRU`: an LRU map with a list per CPU.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Bits of the `SIGNAL_FLAGS` word (written by the daemon).
pub const SIGNAL_OPEN: u64 = 1;

/// Connections between their SYN and their handshake's end the select program remembers
/// (an LRU map: a SYN never answered ages out).
pub const SYNS_MAX: u32 = 65536;

pub mod maps {
    use super::*;

    /// Each slot's worker's [`WorkerCounters`] map (an array of maps; not pinned: a restarted
    /// daemon hands each worker a fresh map when it registers again).
    pub const WORKERS: MapSpec<u32> = MapSpec::new("WORKERS", MAX_SLOTS, 0);
    /// The inner map's shape: every worker map must match it exactly.
    pub const WORKER: MapSpec<WorkerCounters> = MapSpec::new("WORKER", 1, BPF_F_MMAPABLE);
    pub const SLOT_SIGNALS: MapSpec<SlotSignals> =
        MapSpec::new("SLOT_SIGNALS", MAX_SLOTS, BPF_F_MMAPABLE);
    pub const SIGNAL_FLAGS: MapSpec<u64> = MapSpec::new("SIGNAL_FLAGS", 1, BPF_F_MMAPABLE);
    /// An LRU hash with a list per CPU (`BPF_F_NO_COMMON_LRU`): no lock shared by all CPUs
    /// on the select program's path.
    pub const SYNS: MapSpec<u32> = MapSpec::new("SYNS", SYNS_MAX, BPF_F_NO_COMMON_LRU);
    /// Socket storage: the slot of each counted connection (`max_entries` 0, as the kernel
    /// wants for socket storage).
    pub const CONN_SLOT: MapSpec<u32> = MapSpec::new("CONN_SLOT", 0, 0);

    /// The signal maps whose shape the object must have (none is pinned).
    pub const SHAPES: [MapShape; 3] = [WORKERS.shape(), SLOT_SIGNALS.shape(), SIGNAL_FLAGS.shape()];
}

/// Name of the sock_ops program in the object.
pub const PROG_CONNS: &str = "reuseport_conns";

const _: () = {
    assert!(size_of::<WorkerCounters>() == 64);
    assert!(size_of::<SlotSignals>() == 24);
    assert!(size_of::<FlowKey>() == 40);
    assert!(WorkerCounters::INFLIGHT_OFFSET == 0);
    assert!(WorkerCounters::ACCEPTED_OFFSET == 8);
    assert!(WorkerCounters::FINISHED_OFFSET == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` plain integers with no padding (sizes pinned above).
    unsafe impl aya::Pod for super::WorkerCounters {}
    unsafe impl aya::Pod for super::SlotSignals {}
    unsafe impl aya::Pod for super::FlowKey {}
}
