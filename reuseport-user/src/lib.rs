//! reuseport: steer the connections of a SO_REUSEPORT group with an eBPF program.
//!
//! [`Group`] loads the kernel program, attaches it to a group and manages its slots, policy and
//! weights live; [`netns`] gives tests and demos a private network namespace.

pub mod binary;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod diag;
pub mod distribution;
pub mod echo;
pub mod error;
pub mod group;
pub mod loadgen;
pub mod metrics;
mod mmap;
pub mod netns;
mod object;
pub mod pin;
pub mod policy;
pub mod preflight;
pub mod schedule;
pub mod socket;
pub mod stats;
mod sys;
pub mod top;
pub mod worker;

pub use error::{Error, Result};
pub use group::{Group, GroupOptions, Slot};
pub use policy::{AttachMode, OnEmpty, Policy, SlotState};
pub use reuseport_common::{MAX_SLOTS, MAX_WEIGHT};
pub use socket::{Family, Protocol, SocketInfo};
pub use stats::{GlobalCounters, GroupStats, SlotCounters};
