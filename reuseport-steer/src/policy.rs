//! The user-facing names of what the program can be told to do. The enums live in
//! `reuseport-common`, next to the map fields that store them, so the kernel program, this crate,
//! the command line and the control protocol share one list of names.

pub use reuseport_common::{AttachMode, OnEmpty, ParseError, Policy, SlotState};
