//! reuseport-worker: what a server needs to join a reuseport group, and nothing more (no eBPF,
//! no aya; tokio only with the `tokio` feature).
//!
//! [`protocol`] is the wire format of the daemon's control socket (docs/protocol.md),
//! [`client`] a blocking client of it, [`fdpass`] descriptor passing, and [`registration`] a
//! SO_REUSEPORT listener registered with the daemon in one call.

pub mod client;
pub mod counters;
pub mod fdpass;
pub mod names;
pub mod protocol;
pub mod registration;
pub mod trace;

pub use client::{control_path, ClientError, ControlClient};
pub use counters::Counters;
pub use protocol::{ErrorCode, EventStatus, GroupStatus, Reply, Request, WorkerStatus};
#[cfg(feature = "tokio")]
pub use registration::listen_tokio;
pub use registration::{
    bind_listener, bind_listener_with, bind_udp_with, group_v6only, listen, listen_udp,
    Registration, WorkerOptions,
};
