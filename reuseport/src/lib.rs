//! The daemon of `reuseport run`, as a library: the `reuseport` command (src/main.rs) is the
//! command line over it, and the fuzz harness (fuzz/) runs it in-process to drive its control
//! sessions directly.

pub mod daemon;
mod metrics;
