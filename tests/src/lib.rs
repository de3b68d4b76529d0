//! Harness for the integration tests of the kernel steering core.
//!
//! Every test runs against the real kernel in its own network namespace, with real sockets: a
//! [`pool::Pool`] of SO_REUSEPORT listeners that answer each connection with their index, a
//! [`client`] driver that counts which listener answered, and helpers for what the tests need
//! around them (a steered group, child processes with fewer rights, a seccomp filter).

pub mod child;
pub mod client;
pub mod expect;
pub mod fixture;
pub mod limits;
pub mod listeners;
pub mod pool;
pub mod seccomp;
pub mod steer;

/// Moves the calling test thread into a fresh network namespace (loopback up). Call it first
/// thing in a test, before creating sockets or threads, which then inherit the namespace.
pub fn fresh_netns() -> anyhow::Result<()> {
    reuseport_steer::netns::enter_new()?;
    Ok(())
}
