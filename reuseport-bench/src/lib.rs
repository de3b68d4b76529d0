//! Benchmarks of the reuseport steering program, run against the real kernel on loopback inside a
//! private network namespace.
//!
//! Each scenario is a small module registered in [`scenario::registry`]; they share the listener
//! pool and client drivers of `reuseport_testing`, one measured run of a load ([`cell`]), the
//! processes of [`cluster`], one [`steering::Steering`] and the report writer ([`report`]).

pub mod bpf_stats;
pub mod cell;
pub mod cli;
pub mod cluster;
pub mod cpu;
pub mod doc;
pub mod haproxy;
pub mod machine;
pub use reuseport_testing::netstat;
pub mod plot;
pub mod progress;
pub mod report;
pub mod samples;
pub mod scenario;
pub mod scenarios;
pub mod steering;

pub use scenario::{registry, Options, Scenario};
