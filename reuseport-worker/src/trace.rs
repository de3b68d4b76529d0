//! One decision of the steering program as the `trace` request streams it (docs/protocol.md):
//! the wire form of a [`reuseport_common::trace::TraceRecord`].

use serde::{Deserialize, Serialize};

use reuseport_common::{
    trace::{kind, outcome, TraceRecord, NO_SLOT, POLICY_PROGRAM},
    Policy,
};

/// A `trace` line's event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// When the program ran: CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub mono_ns: u64,
    /// `select` (a new connection) or `migrate` (a queued one of a closing listener).
    pub kind: String,
    /// The slot that took the connection; `None` when no slot did.
    pub slot: Option<u32>,
    /// The policy's first choice, when it had one (hash and round-robin start a walk).
    pub first: Option<u32>,
    /// The built-in policy's name, or `program` when a policy program answered.
    pub policy: String,
    /// `first` (the first choice took it), `walked` (the walk over the active list did),
    /// `fell-back` (no active slot: the kernel's hash over the group) or `dropped`.
    pub outcome: String,
    /// No active slot took it (`outcome` is `fell-back` or `dropped`).
    pub fell_back: bool,
    /// The connection's flow hash.
    pub hash: u32,
    /// The load (`LOAD` map: accept queue plus requests in flight) of `slot` as the program
    /// read it.
    pub load: u64,
    /// Generation of the publication the program steered by.
    pub generation: u32,
    pub cpu: u32,
}

impl From<&TraceRecord> for TraceEvent {
    fn from(r: &TraceRecord) -> Self {
        let slot = |s: u32| (s != NO_SLOT).then_some(s);
        let policy = if r.policy == POLICY_PROGRAM {
            "program".to_owned()
        } else {
            Policy::from_raw(r.policy).map_or_else(
                || format!("unknown ({})", r.policy),
                |p| p.name().to_owned(),
            )
        };
        Self {
            mono_ns: r.time_ns,
            kind: if r.kind == kind::MIGRATE {
                "migrate"
            } else {
                "select"
            }
            .to_owned(),
            slot: slot(r.slot),
            first: slot(r.first),
            policy,
            outcome: outcome::NAMES
                .get(r.outcome as usize)
                .map_or_else(|| format!("unknown ({})", r.outcome), |n| (*n).to_owned()),
            fell_back: r.outcome == outcome::FELL_BACK || r.outcome == outcome::DROPPED,
            hash: r.hash,
            load: r.load,
            generation: r.generation,
            cpu: r.cpu,
        }
    }
}
