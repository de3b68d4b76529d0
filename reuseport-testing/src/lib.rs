//! reuseport-testing: the harness the integration tests, the bench and the demo share.
//!
//! [`loadgen`] drives HTTP load (blocking, open-loop, closed-loop), [`distribution`] turns
//! per-worker counts into fairness figures, and [`binary`] finds the `reuseport` binary.

pub mod binary;
pub mod distribution;
pub mod loadgen;
