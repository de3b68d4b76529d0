//! One module per scenario.

pub mod churn;
pub mod cost;
pub mod fairness;
pub mod file;
pub mod latency;
pub mod monitor;
pub mod throughput;
pub mod udp;
