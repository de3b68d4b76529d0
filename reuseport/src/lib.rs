//! The daemon of `reuseport run` and its configuration file, as a library: the `reuseport`
//! command (src/main.rs) is the command line over it, and the fuzz harness (fuzz/) runs the
//! daemon in-process to drive its control sessions directly.

pub mod config;
pub mod daemon;
mod metrics;
