//! The control protocol spoken on the daemon's Unix socket (see docs/protocol.md, which is the
//! reference for writing a client in another language).
//!
//! One JSON object per line, both ways; every request gets exactly one reply line. A worker
//! registers by sending a `register` line with its listening socket attached (SCM_RIGHTS) and
//! then keeps the connection open: closing it unregisters the worker.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use reuseport_common::{AttachMode, OnEmpty, Policy, Protocol, SlotState};

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
    /// Workers that took a counters map ([`Request::Counters`]) need not send it.
    Load {
        inflight: u32,
    },
    /// A map of the worker's own counters, to publish its load by writing memory: the reply
    /// carries its descriptor (SCM_RIGHTS) and its layout ([`CountersLayout`]). For the
    /// connection's worker in `slot` (may be left out when the connection holds one worker).
    Counters {
        #[serde(default)]
        slot: Option<u32>,
    },
    Status,
    PolicyGet {
        #[serde(default)]
        group: Option<GroupRef>,
    },
    PolicySet {
        policy: Lenient<Policy>,
        #[serde(default)]
        group: Option<GroupRef>,
    },
    Weight {
        slot: u32,
        weight: u32,
        #[serde(default)]
        group: Option<GroupRef>,
    },
    Drain {
        slot: u32,
        #[serde(default)]
        group: Option<GroupRef>,
        /// Also shut the listener down, so its queued connections move to the others now.
        #[serde(default)]
        close: Option<bool>,
    },
    Undrain {
        slot: u32,
        #[serde(default)]
        group: Option<GroupRef>,
    },
    /// Re-read the daemon's configuration file and apply what changed (the daemon's uid only).
    Reload,
    /// Adopt the listening sockets a running process holds on the daemon's groups (an admin's
    /// request): each goes into a slot shown with the process that accepts from it.
    Adopt {
        pid: u32,
    },
    /// Stream the steering program's decisions: an `ok` reply, then one line per decision
    /// (`trace`), until `count` of them (if given) or the client sends anything or closes; then
    /// a last `ok` line with `lost`.
    Trace {
        #[serde(default)]
        group: Option<GroupRef>,
        #[serde(default)]
        count: Option<u64>,
    },
    /// Install the policy program in the eBPF object at `path` (absolute, readable by the
    /// client's uid), live (docs/experiments.md). `policy_set` goes back to a built-in policy.
    PolicyLoad {
        path: String,
        #[serde(default)]
        group: Option<GroupRef>,
    },
}

/// The `group` field of a request: a group's address, `ADDR:PORT`.
pub type GroupRef = Lenient<SocketAddr>;

/// A request field taken leniently: a string that does not name a `T` is kept as written, so
/// the daemon can refuse it with a reply that names the valid choices (an unknown policy, a
/// `group` that is not an `ADDR:PORT`) and keep the connection, as the protocol says. A value
/// of the wrong JSON type is still a malformed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lenient<T> {
    Known(T),
    Unknown(String),
}

impl<T> From<T> for Lenient<T> {
    fn from(value: T) -> Self {
        Self::Known(value)
    }
}

/// Never fails: what does not parse is kept as `Unknown` (so the command line can take a
/// `Lenient` and leave the verdict to the daemon).
impl<T: FromStr> FromStr for Lenient<T> {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.parse()
            .map_or_else(|_| Self::Unknown(s.to_owned()), Self::Known))
    }
}

impl<T: fmt::Display> fmt::Display for Lenient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Known(value) => value.fmt(f),
            Self::Unknown(text) => f.write_str(text),
        }
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Known(value) => value.serialize(serializer),
            Self::Unknown(text) => serializer.serialize_str(text),
        }
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.parse() {
            Ok(value) => Self::Known(value),
            Err(_) => Self::Unknown(text),
        })
    }
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
    /// The daemon already serves `--max-connections` control connections.
    TooManyConnections,
    /// Part of a line waited longer than the daemon's line deadline for its end.
    LineTimeout,
    /// A connection holding no worker sent no request within the daemon's idle deadline.
    IdleTimeout,
    // Who may do what (docs/security.md).
    /// The slot belongs to another uid (the one that registered its worker).
    NotOwner,
    /// A group-wide setting: only the daemon's uid and `--admin-uid` uids may change it.
    NotAdmin,
    // Refusals of the daemon's registry.
    /// A worker name that is too long or holds control characters.
    BadName,
    /// `register` named a pid that is not the registrant's or its descendant's.
    ForeignPid,
    /// `adopt`: no such process, or it holds no listener on any group's address.
    NoListener,
    NoGroup,
    UnknownGroup,
    AmbiguousGroup,
    UnknownPolicy,
    /// `policy_load`: the object is not an absolute path to a file the client may read.
    BadPolicyProgram,
    NotRegistered,
    // The socket a worker sent.
    NoReuseport,
    NotBound,
    NotListening,
    WrongProtocol,
    WrongFamily,
    WrongAddress,
    #[serde(rename = "wrong_v6only")]
    WrongV6Only,
    WrongDevice,
    OtherNetns,
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
    PrivateBpffs,
    IncompatiblePin,
    NotAttached,
    NothingToDetach,
    Ebpf,
    Io,
    // Reloading the configuration.
    /// The configuration file is not valid: `error` lists every problem with its line and
    /// column.
    InvalidConfig,
    /// The daemon runs without a configuration file.
    NoConfig,
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

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    pub group: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupStatus>>,
    /// What a `reload` changed, or what an `adopt` skipped, one sentence each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
    /// The slots an `adopt` filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Vec<SlotRef>>,
    /// One decision of a `trace` stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceEvent>,
    /// The end of a `trace` stream: decisions this client missed because it read too slowly
    /// (or the program's ring buffer was full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// The policy program a `policy_load` installed (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// `counters`: the layout of the map whose descriptor comes with the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<CountersLayout>,
}

/// A slot of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRef {
    pub group: SocketAddr,
    pub slot: u32,
}

/// Where a worker's counters are in the map a `counters` reply carries: byte offsets of
/// native-endian 64-bit words, each written whole (one aligned 8-byte store) by the worker
/// alone. `size` is the map's value size; map it shared, read-write, at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersLayout {
    pub size: u32,
    /// Requests being served now: what `least-loaded` and `p2c` add to the slot's load.
    pub inflight: u32,
    /// Connections accepted so far.
    pub accepted: u32,
    /// Requests finished so far.
    pub finished: u32,
}

impl CountersLayout {
    /// The layout the program reads (`reuseport_common::signals::WorkerCounters`).
    pub const CURRENT: Self = {
        use reuseport_common::signals::WorkerCounters;
        Self {
            size: core::mem::size_of::<WorkerCounters>() as u32,
            inflight: WorkerCounters::INFLIGHT_OFFSET as u32,
            accepted: WorkerCounters::ACCEPTED_OFFSET as u32,
            finished: WorkerCounters::FINISHED_OFFSET as u32,
        }
    };
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `ADDR:PORT`.
    pub listen: SocketAddr,
    pub proto: Protocol,
    pub policy: Policy,
    pub on_empty: OnEmpty,
    pub mode: AttachMode,
    /// IPv6 groups: `true` for an IPv6-only group (its sockets set IPV6_V6ONLY=1), `false` for
    /// a dual-stack one (IPV6_V6ONLY=0, IPv4 clients too). Always `false` for IPv4 groups.
    #[serde(default)]
    pub v6only: bool,
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

impl GroupStatus {
    /// How the group is named in `top` and in metrics labels: `ADDR:PORT` for TCP (as ever),
    /// `udp://ADDR:PORT` for UDP, as `run --listen` takes it.
    pub fn name(&self) -> String {
        match self.proto {
            Protocol::Tcp => self.listen.to_string(),
            Protocol::Udp => format!("udp://{}", self.listen),
        }
    }

    /// A group with no worker and nothing counted yet.
    pub fn new(listen: SocketAddr, policy: Policy, on_empty: OnEmpty, mode: AttachMode) -> Self {
        Self {
            listen,
            proto: Protocol::Tcp,
            policy,
            on_empty,
            mode,
            v6only: false,
            workers: Vec::new(),
            fallbacks: 0,
            drops: 0,
            select_errors: Default::default(),
            stuck_events: 0,
            program_runs: 0,
            program_run_ns: 0,
            events: Vec::new(),
        }
    }
}

/// Something that happened to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventStatus {
    /// Unix time, seconds.
    pub at: f64,
    pub slot: u32,
    pub pid: u32,
    pub name: String,
    pub what: EventKind,
    pub why: String,
}

/// What happened to a worker, in a `status` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Found not accepting with connections queued: out of rotation.
    Stuck,
    /// Accepting again with an empty queue: back in rotation.
    Recovered,
    /// Stuck, and its listener shut down (`--on-stuck evict`).
    Evicted,
    /// Its listener shut down by `drain --close`.
    Closed,
}

/// A worker's state in a `status` reply: its slot's state, or `evicted` once the daemon shut
/// its listener down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Gets new connections.
    #[default]
    Active,
    /// Keeps what it has, gets nothing new.
    Draining,
    /// Out of rotation: accepts nothing.
    Stuck,
    /// Its listener was shut down; the worker has not registered a new one yet.
    Evicted,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Stuck => "stuck",
            Self::Evicted => "evicted",
        }
    }
}

impl From<SlotState> for WorkerState {
    fn from(state: SlotState) -> Self {
        match state {
            SlotState::Active => Self::Active,
            SlotState::Draining => Self::Draining,
            SlotState::Stuck => Self::Stuck,
        }
    }
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stuck => "stuck",
            Self::Recovered => "recovered",
            Self::Evicted => "evicted",
            Self::Closed => "closed",
        }
    }
}

/// The names pad, so tables line up.
impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One registered worker in a `status` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: u32,
    pub pid: u32,
    pub uid: u32,
    pub name: String,
    pub state: WorkerState,
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
    /// Connections open on the slot now, counted in the kernel (when the daemon counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<u64>,
    /// The worker publishes its in-flight count through its own counters map (`inflight` is
    /// then read from it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counters: bool,
    /// For `stuck` and `evicted`: since when (Unix time, seconds) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The daemon adopted the socket from a running server (`run --adopt`, `adopt PID`) rather
    /// than a worker registering it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
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
            policy: Policy::Weighted.into(),
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
        assert_eq!(ErrorCode::NotOwner.to_string(), "not_owner");
        assert_eq!(ErrorCode::NotAdmin.to_string(), "not_admin");
        assert_eq!(
            ErrorCode::TooManyConnections.to_string(),
            "too_many_connections"
        );
        assert_eq!(ErrorCode::LineTimeout.to_string(), "line_timeout");
        assert_eq!(ErrorCode::IdleTimeout.to_string(), "idle_timeout");
        Ok(())
    }

    #[test]
    fn a_value_the_daemon_does_not_know_is_kept_for_its_refusal() -> Result<(), serde_json::Error> {
        let r: Request = serde_json::from_str(r#"{"op":"policy_set","policy":"fastest"}"#)?;
        assert_eq!(
            r,
            Request::PolicySet {
                policy: Lenient::Unknown("fastest".into()),
                group: None
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"undrain","slot":1,"group":"[::1]:8080"}"#)?;
        let addr: SocketAddr = "[::1]:8080".parse().map_err(serde::de::Error::custom)?;
        assert_eq!(
            r,
            Request::Undrain {
                slot: 1,
                group: Some(Lenient::Known(addr))
            }
        );
        assert_eq!(
            serde_json::to_string(&r)?,
            r#"{"op":"undrain","slot":1,"group":"[::1]:8080"}"#
        );
        let r: Request = serde_json::from_str(r#"{"op":"adopt","pid":4242}"#)?;
        assert_eq!(r, Request::Adopt { pid: 4242 });
        assert_eq!(serde_json::to_string(&r)?, r#"{"op":"adopt","pid":4242}"#);
        let r: Request = serde_json::from_str(r#"{"op":"drain","slot":1,"group":"nowhere"}"#)?;
        assert!(
            matches!(r, Request::Drain { group: Some(Lenient::Unknown(ref g)), .. } if g == "nowhere")
        );
        // The wrong JSON type is still a malformed line.
        assert!(serde_json::from_str::<Request>(r#"{"op":"policy_set","policy":5}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"policy_get","group":8080}"#).is_err());
        Ok(())
    }

    /// The typed status is written exactly as docs/protocol.md shows it.
    #[test]
    fn status_has_its_documented_wire_form() -> Result<(), serde_json::Error> {
        let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let reply = Reply {
            groups: Some(vec![GroupStatus {
                workers: vec![
                    WorkerStatus {
                        slot: 0,
                        pid: 31028,
                        name: "rs-1".into(),
                        state: WorkerState::Draining,
                        weight: 1,
                        ..WorkerStatus::default()
                    },
                    WorkerStatus {
                        slot: 1,
                        pid: 31031,
                        name: "rs-2".into(),
                        state: WorkerState::Evicted,
                        since: Some(1.5),
                        reason: Some("stopped".into()),
                        ..WorkerStatus::default()
                    },
                ],
                stuck_events: 1,
                events: vec![EventStatus {
                    at: 1.5,
                    slot: 1,
                    pid: 31031,
                    name: "rs-2".into(),
                    what: EventKind::Evicted,
                    why: "stopped".into(),
                }],
                ..GroupStatus::new(
                    listen,
                    Policy::LeastLoaded,
                    OnEmpty::Drop,
                    AttachMode::Select,
                )
            }]),
            ..Reply::ok()
        };
        let line = serde_json::to_string(&reply)?;
        assert_eq!(
            line,
            concat!(
                r#"{"ok":true,"groups":[{"listen":"127.0.0.1:8080","proto":"tcp","#,
                r#""policy":"least-loaded","on_empty":"drop","mode":"select","v6only":false,"workers":["#,
                r#"{"slot":0,"pid":31028,"uid":0,"name":"rs-1","state":"draining","weight":1,"#,
                r#""selected":0,"migrated":0,"inflight":0,"queue":0,"load":0},"#,
                r#"{"slot":1,"pid":31031,"uid":0,"name":"rs-2","state":"evicted","weight":0,"#,
                r#""selected":0,"migrated":0,"inflight":0,"queue":0,"load":0,"since":1.5,"#,
                r#""reason":"stopped"}],"fallbacks":0,"drops":0,"select_errors":{},"#,
                r#""stuck_events":1,"program_runs":0,"program_run_ns":0,"events":["#,
                r#"{"at":1.5,"slot":1,"pid":31031,"name":"rs-2","what":"evicted","why":"stopped"}"#,
                r#"]}]}"#
            )
        );
        assert_eq!(serde_json::from_str::<Reply>(&line)?, reply);
        let policy = serde_json::to_string(&Reply {
            group: Some(listen),
            policy: Some(Policy::RoundRobin),
            ..Reply::ok()
        })?;
        assert_eq!(
            policy,
            r#"{"ok":true,"group":"127.0.0.1:8080","policy":"round-robin"}"#
        );
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
