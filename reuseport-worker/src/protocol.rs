//! The control protocol spoken on the daemon's Unix socket (see docs/protocol.md, which is the
//! reference for writing a client in another language).
//!
//! One JSON object per line, both ways; every request gets exactly one reply line. A worker
//! registers by sending a `register` line with its listening socket attached (SCM_RIGHTS) and
//! then keeps the connection open: closing it unregisters the worker.

use serde::{Deserialize, Serialize};

/// Longest line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// Default control socket path; `REUSEPORT_CONTROL` or `--control` override it.
pub const DEFAULT_CONTROL_PATH: &str = "/run/reuseport/control.sock";
/// Environment variable naming the control socket.
pub const CONTROL_ENV: &str = "REUSEPORT_CONTROL";

/// A request line: `{"op": "...", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Unknown fields are ignored, so newer clients can add some.
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Join the group the attached socket belongs to.
    Register {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        weight: Option<u32>,
        /// The worker's pid, for display; the daemon trusts SO_PEERCRED, not this.
        #[serde(default)]
        pid: Option<u32>,
    },
    /// Requests the worker is serving right now (workers send this whenever it changes).
    Load {
        inflight: u32,
    },
    Status,
    PolicyGet {
        #[serde(default)]
        group: Option<String>,
    },
    PolicySet {
        policy: String,
        #[serde(default)]
        group: Option<String>,
    },
    Weight {
        slot: u32,
        weight: u32,
        #[serde(default)]
        group: Option<String>,
    },
    Drain {
        slot: u32,
        #[serde(default)]
        group: Option<String>,
        /// Also shut the listener down, so its queued connections move to the others now.
        #[serde(default)]
        close: Option<bool>,
    },
    Undrain {
        slot: u32,
        #[serde(default)]
        group: Option<String>,
    },
}

/// Why a request was refused: the `code` of a refusal, stable and meant for programs (the
/// `error` beside it is for people). docs/protocol.md lists when each is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The connection broke the protocol; the daemon closes it after the reply.
    Forbidden,
    BadRequest,
    TooLarge,
    Truncated,
    FdMissing,
    TooManyFds,
    UnexpectedFd,
    // Refusals of the daemon's registry.
    NoGroup,
    UnknownGroup,
    AmbiguousGroup,
    UnknownPolicy,
    NotRegistered,
    // The socket a worker sent.
    NoReuseport,
    NotBound,
    NotListening,
    WrongProtocol,
    WrongFamily,
    WrongAddress,
    UnsupportedSocket,
    AlreadyInGroup,
    HeldElsewhere,
    // Slots, weights and the schedule.
    SlotOutOfRange,
    SlotsFull,
    SlotTaken,
    SlotEmpty,
    InvalidWeight,
    ScheduleTooLong,
    // The kernel and the program.
    NotPermitted,
    BpfUnavailable,
    KernelTooOld,
    BpffsMissing,
    IncompatiblePin,
    NotAttached,
    NothingToDetach,
    Ebpf,
    Io,
    /// A code this build does not know (from a newer daemon): still a refusal, shown by its
    /// `error`.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Other(code) => code.as_str().into(),
            known => serde_json::to_value(known)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
                .into(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A reply line. `ok` says whether the request was carried out; `error` and `code` say why
/// not; the other fields depend on the request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// Stable machine-readable reason (see docs/protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Human-readable reason, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// The group's listen address, `ADDR:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupStatus>>,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            code: Some(code),
            error: Some(message.into()),
            ..Self::default()
        }
    }
}

/// One group in a `status` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `ADDR:PORT`.
    pub listen: String,
    /// `tcp`.
    pub proto: String,
    pub policy: String,
    /// `pass` or `drop`.
    pub on_empty: String,
    /// `select` or `select-or-migrate`.
    pub mode: String,
    pub workers: Vec<WorkerStatus>,
    /// Connections handed to the kernel's hash because no active slot took them.
    pub fallbacks: u64,
    pub drops: u64,
    /// Failed selections by errno name.
    pub select_errors: std::collections::BTreeMap<String, u64>,
    /// Times a worker was found stuck.
    #[serde(default)]
    pub stuck_events: u64,
    /// Program runs and time spent in it (non-zero while kernel.bpf_stats_enabled is on).
    #[serde(default)]
    pub program_runs: u64,
    #[serde(default)]
    pub program_run_ns: u64,
    /// The latest health events, oldest first.
    #[serde(default)]
    pub events: Vec<EventStatus>,
}

/// Something that happened to a worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventStatus {
    /// Unix time, seconds.
    pub at: f64,
    pub slot: u32,
    pub pid: u32,
    pub name: String,
    /// `stuck`, `recovered`, `evicted` or `closed`.
    pub what: String,
    pub why: String,
}

/// One registered worker in a `status` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: u32,
    pub pid: u32,
    pub uid: u32,
    pub name: String,
    /// `active` or `draining`.
    pub state: String,
    pub weight: u32,
    /// Connections the program sent to this slot.
    pub selected: u64,
    /// Queued connections moved to this slot from closing listeners.
    pub migrated: u64,
    /// Requests in flight, as last reported by the worker.
    pub inflight: u32,
    /// Connections waiting in its accept queue at the last sample.
    #[serde(default)]
    pub queue: u32,
    /// The load `least-loaded` and `p2c` see.
    #[serde(default)]
    pub load: u64,
    /// For `stuck` and `evicted`: since when (Unix time, seconds) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() -> Result<(), serde_json::Error> {
        let r: Request = serde_json::from_str(r#"{"op":"register","name":"w1","weight":2}"#)?;
        assert_eq!(
            r,
            Request::Register {
                name: Some("w1".into()),
                weight: Some(2),
                pid: None
            }
        );
        let line = serde_json::to_string(&Request::PolicySet {
            policy: "weighted".into(),
            group: None,
        })?;
        assert_eq!(
            line,
            r#"{"op":"policy_set","policy":"weighted","group":null}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        let r: Request = serde_json::from_str(r#"{"op":"status","x":1}"#)?;
        assert_eq!(r, Request::Status);
        Ok(())
    }

    #[test]
    fn error_codes_are_snake_case_and_unknown_ones_still_parse() -> Result<(), serde_json::Error> {
        let line = serde_json::to_string(&Reply::error(ErrorCode::TooManyFds, "x"))?;
        assert_eq!(line, r#"{"ok":false,"code":"too_many_fds","error":"x"}"#);
        let reply: Reply = serde_json::from_str(r#"{"ok":false,"code":"no_group","error":"x"}"#)?;
        assert_eq!(reply.code, Some(ErrorCode::NoGroup));
        let reply: Reply = serde_json::from_str(r#"{"ok":false,"code":"on_fire","error":"x"}"#)?;
        assert_eq!(reply.code, Some(ErrorCode::Other("on_fire".into())));
        assert_eq!(ErrorCode::Other("on_fire".into()).to_string(), "on_fire");
        assert_eq!(ErrorCode::UnexpectedFd.to_string(), "unexpected_fd");
        Ok(())
    }

    #[test]
    fn replies_omit_what_they_do_not_carry() -> Result<(), serde_json::Error> {
        let line = serde_json::to_string(&Reply {
            slot: Some(3),
            ..Reply::ok()
        })?;
        assert_eq!(line, r#"{"ok":true,"slot":3}"#);
        Ok(())
    }
}
