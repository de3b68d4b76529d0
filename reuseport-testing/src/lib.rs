//! reuseport-testing: the harness the integration tests, the bench and the demo share, one
//! module per job.
//!
//! - [`netns`]: a fresh network namespace per test or run.
//! - [`listeners`]: SO_REUSEPORT listeners, and a [`listeners::Pool`] of them served by accept
//!   threads that count (and answer with their index) every connection.
//! - [`clients`]: connection drivers for a pool: which listener answered, or just the handshake.
//! - [`loadgen`]: HTTP load for `reuseport echo` workers (blocking, open-loop, closed-loop).
//! - [`daemon`]: real processes, a `reuseport run` daemon and `reuseport echo` workers.
//! - [`servers`]: nginx, gunicorn and uvicorn for `reuseport spawn`, and the apps they serve.
//! - [`steer`]: a [`reuseport_steer::Group`] steering a whole pool.
//! - [`limits`], [`wait`]: RLIMIT_NOFILE, and waiting for a condition with a deadline.
//! - [`child`], [`seccomp`]: re-running a test with fewer rights.
//! - [`held`]: a registered worker, in a process of its own, that accepts nothing until it
//!   exits or shuts its listener down.
//! - [`distribution`], [`expect`]: fairness figures and exact-distribution predicates.
//! - [`binary`]: finding the `reuseport` binary, and making a binary runnable by another uid.

pub mod binary;
pub mod child;
pub mod clients;
pub mod daemon;
pub mod distribution;
pub mod expect;
pub mod held;
pub mod limits;
pub mod listeners;
pub mod loadgen;
pub mod netns;
pub mod netstat;
pub mod seccomp;
pub mod servers;
pub mod steer;
pub mod wait;

pub use netns::fresh as fresh_netns;

/// What a test returns: any error, printed by the test harness.
pub type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;
