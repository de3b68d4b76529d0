//! reuseport-steer: steer the connections of a SO_REUSEPORT group with an eBPF program.
//!
//! [`Group`] loads the kernel program, attaches it to a group and manages its slots, policy and
//! weights live; [`pin`] keeps its state in bpffs across restarts; [`diag`] reads accept queues
//! through sock_diag; [`netns`] gives tests and demos a private network namespace; [`procs`]
//! reads process ancestry (whose pid a registration may name).

pub mod diag;
pub mod error;
mod grace;
pub mod group;
pub mod holders;
mod mmap;
pub mod netns;
pub mod noop;
mod object;
pub mod pidfd;
pub mod pin;
pub mod policy;
pub mod policy_program;
pub mod preflight;
pub mod procs;
mod publication;
pub mod schedule;
pub mod signals;
pub mod socket;
pub mod stats;
mod sys;
pub mod udp;

pub mod trace;

pub use error::{Error, Result};
pub use group::{Group, GroupOptions, Slot};
pub use object::fingerprint as object_fingerprint;
pub use policy::{AttachMode, OnEmpty, Policy, SlotState};
pub use reuseport_common::{MAX_SLOTS, MAX_WEIGHT};
pub use socket::{Family, Protocol, SocketInfo};
pub use stats::{GlobalCounters, GroupStats, SlotCounters};
