//! The daemon's control socket: wire format, descriptor passing and a blocking client.

pub mod client;
pub mod fdpass;
pub mod protocol;

pub use client::{control_path, ClientError, ControlClient};
pub use protocol::{EventStatus, GroupStatus, Reply, Request, WorkerStatus};
