//! Fuzzing of the daemon's control protocol: framing, JSON, descriptor passing and the session
//! state machine, against the real daemon and the real kernel.
//!
//! The libFuzzer target (`fuzz_targets/control_protocol.rs`, run by `cargo xtask fuzz`) and the
//! corpus replay test (`tests/corpus.rs`, part of `cargo test`) share [`Harness`]: an input is
//! decoded into a script of client actions ([`input`]), played on real control connections
//! with descriptors from a [`pool`] attached, and every invariant is checked after it.

pub mod harness;
pub mod input;
pub mod pool;
pub mod seeds;

pub use harness::{Harness, Summary};
