//! The decision trace: one [`TraceRecord`] per selection or migration the program makes, written
//! into the `TRACE` ring buffer while the `TRACING` flag is set.
//!
//! The flag is the first thing the program checks: with nobody tracing, a run pays one array
//! lookup and one compare. The daemon sets the flag while at least one trace client is attached
//! and clears it when the last one leaves (see docs/protocol.md, `trace`).

use crate::maps::MapSpec;

/// `TRACING`: one `u32`, non-zero while somebody reads `TRACE`.
pub const TRACING: MapSpec<u32> = MapSpec::new("TRACING", 1, 0);
/// Name of the ring buffer the records go to.
pub const TRACE: &str = "TRACE";
/// Bytes of the `TRACE` ring buffer (a power of two and a multiple of the page size): about
/// 4,000 records waiting for the daemon before the program starts dropping them.
pub const TRACE_BYTES: u32 = 256 * 1024;

/// [`TraceRecord::slot`] and [`TraceRecord::first`] when there is no slot.
pub const NO_SLOT: u32 = u32::MAX;
/// [`TraceRecord::policy`] when a policy program chose the first candidate.
pub const POLICY_PROGRAM: u32 = 0xff;

/// What kind of run a record is about.
pub mod kind {
    /// A new connection.
    pub const SELECT: u32 = 0;
    /// A queued connection of a closing listener.
    pub const MIGRATE: u32 = 1;
}

/// How a run ended.
pub mod outcome {
    /// The policy's first choice took the connection.
    pub const FIRST: u32 = 0;
    /// The first choice could not (closed, drained, none): the walk over the active list found
    /// the slot.
    pub const WALKED: u32 = 1;
    /// No active slot took it: `on-empty pass` handed it to the kernel's hash.
    pub const FELL_BACK: u32 = 2;
    /// No active slot took it: `on-empty drop` dropped it.
    pub const DROPPED: u32 = 3;
    /// UDP: the flow table kept a known flow on its slot, before any policy.
    pub const FLOW: u32 = 4;
    pub const NAMES: [&str; 5] = ["first", "walked", "fell-back", "dropped", "flow"];
}

/// One decision of the program, as it goes through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, in nanoseconds.
    pub time_ns: u64,
    /// The `LOAD` of the slot that took the connection as the run read it (0 when none did).
    pub load: u64,
    /// The connection's flow hash (`ctx.hash`).
    pub hash: u32,
    /// The slot that took the connection, or [`NO_SLOT`].
    pub slot: u32,
    /// The policy's first choice, or [`NO_SLOT`] (hash and round-robin start a walk instead).
    pub first: u32,
    /// The [`crate::Policy`] as `u32`, or [`POLICY_PROGRAM`].
    pub policy: u32,
    /// A [`kind`].
    pub kind: u32,
    /// An [`outcome`].
    pub outcome: u32,
    /// The generation of the publication the run steered by.
    pub generation: u32,
    /// The CPU the run was on.
    pub cpu: u32,
}

impl TraceRecord {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Reads a record from the bytes of a ring buffer entry; `None` if they are too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: `Self` is plain integers (every bit pattern valid) and the length is checked;
        // read_unaligned copes with any alignment of the ring buffer's bytes.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

const _: () = {
    assert!(core::mem::size_of::<TraceRecord>() == 48);
    assert!(TRACE_BYTES.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_its_bytes() {
        let record = TraceRecord {
            time_ns: 1,
            load: 3,
            hash: 4,
            slot: 5,
            first: NO_SLOT,
            policy: POLICY_PROGRAM,
            kind: kind::MIGRATE,
            outcome: outcome::WALKED,
            generation: 9,
            cpu: 1,
        };
        // SAFETY: a plain-integer struct viewed as its bytes.
        let bytes: [u8; TraceRecord::SIZE] = unsafe { core::mem::transmute(record) };
        // At an odd address, as a ring buffer entry may be.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(TraceRecord::from_bytes(&shifted[1..]), Some(record));
        assert_eq!(TraceRecord::from_bytes(&bytes), Some(record));
        assert_eq!(TraceRecord::from_bytes(&bytes[..10]), None);
    }
}
