//! The errors of the library. Each message names the problem and the fix, because these end up
//! in front of an operator (CLI output, a worker's registration reply).

use std::{io, net::SocketAddr};

use crate::socket::{Family, Protocol};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "permission denied: loading the eBPF program needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); \
         run as root, e.g. with sudo"
    )]
    NotPermitted,

    #[error(
        "the bpf() system call is unavailable ({0}): the kernel was built without \
         CONFIG_BPF_SYSCALL or a seccomp/container policy blocks it; run on a host kernel with BPF \
         enabled, outside such a sandbox"
    )]
    BpfUnavailable(io::Error),

    #[error(
        "kernel {have} is too old for {feature}: it needs Linux {need} or later; upgrade the \
         kernel{hint}"
    )]
    KernelTooOld {
        feature: &'static str,
        have: String,
        need: String,
        hint: &'static str,
    },

    #[error(
        "no bpf filesystem at {} ({reason}): mount one with `mount -t bpf bpf /sys/fs/bpf` \
         (as root), or pick a pin directory on a bpffs",
        path.display()
    )]
    BpffsMissing {
        path: std::path::PathBuf,
        reason: String,
    },

    #[error(
        "pin directory {}: /sys/fs/bpf has no bpffs in this process's own mount namespace \
         (`ip netns exec` gives its command one, with a fresh /sys), and a bpffs mounted here \
         would die with the daemon, taking the pinned state with it. Mount bpffs on the host \
         (`mount -t bpf bpf /sys/fs/bpf`), run the daemon with `nsenter --net=/run/netns/NAME` \
         instead of `ip netns exec`, or pass --no-pin",
        path.display()
    )]
    PrivateBpffs { path: std::path::PathBuf },

    #[error(
        "the pinned state in {0} was written by a build with another map layout: stop the \
         workers of that group, remove the directory (rm -r {0}) and start again",
        path.display()
    )]
    IncompatiblePin { path: std::path::PathBuf },

    #[error(
        "socket has no SO_REUSEPORT: set SO_REUSEPORT (setsockopt SOL_SOCKET/SO_REUSEPORT = 1) \
         before bind()"
    )]
    NoReuseport,

    #[error("socket is not bound to a port: bind() it to the group's address first")]
    NotBound,

    #[error("TCP socket is not listening: call listen() before handing it over")]
    NotListening,

    #[error("socket is {got}, the group is {want}: use a {want} socket")]
    WrongProtocol { want: Protocol, got: Protocol },

    #[error("socket is {got}, the group is {want}: use an {want} socket")]
    WrongFamily { want: Family, got: Family },

    #[error(
        "socket is bound to {got}, the group listens on {want}: bind to {want} (same address and \
         port)"
    )]
    WrongAddress { want: SocketAddr, got: SocketAddr },

    #[error(
        "socket is {}, the group is {}: the kernel keeps the two kinds in separate reuseport \
         groups; set IPV6_V6ONLY to {} on the socket before bind() (workers: {}), or serve \
         the group {} (the daemon's --v6only, or v6only in its [[group]])",
        stack(*got), stack(*want), u8::from(*want),
        if *want { "--v6only" } else { "no --v6only" },
        if *got { "IPv6-only" } else { "dual-stack" }
    )]
    WrongV6Only { want: bool, got: bool },

    #[error(
        "socket is bound to {}, the group's sockets to {}: the kernel keeps them in separate \
         reuseport groups; bind (SO_BINDTODEVICE) to the same device as the others",
        device(*got), device(*want)
    )]
    WrongDevice { want: u32, got: u32 },

    #[error(
        "socket belongs to another network namespace than the daemon, so it is in another \
         group whatever its address: create it in the daemon's namespace, or run a daemon in its \
         namespace"
    )]
    OtherNetns,

    #[error("unsupported socket type: only TCP and UDP sockets can join a group")]
    UnsupportedSocket,

    #[error("slot {slot} is out of range: slots are 0..{max}")]
    SlotOutOfRange { slot: u32, max: u32 },

    #[error("all {max} slots are taken: remove a worker first")]
    SlotsFull { max: u32 },

    #[error("slot {0} is already taken: remove it first or pick a free slot")]
    SlotTaken(u32),

    #[error("slot {0} is empty: no socket to act on")]
    SlotEmpty(u32),

    #[error("socket is already in the group (slot {0}): a socket can hold one slot only")]
    AlreadyInGroup(u32),

    #[error(
        "socket is held by another reuseport socket array (the program of an earlier daemon \
         still attached to the group): attach this group's program first, then retry"
    )]
    HeldElsewhere,

    #[error("weight {weight} is out of range: weights are 1..={max}")]
    InvalidWeight { weight: u32, max: u32 },

    #[error(
        "the weights of the active slots reduce to a schedule of {len} entries, more than \
         {max}: use smaller weights"
    )]
    ScheduleTooLong { len: u64, max: u32 },

    #[error("the program is not attached to a group: attach it to a socket of the group first")]
    NotAttached,

    #[error("the group has no program attached (SO_DETACH_REUSEPORT_BPF: {0})")]
    NothingToDetach(io::Error),

    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },

    #[error("{what}: {cause}")]
    Ebpf {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A stable snake_case name for the error, used as `code` in control replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotPermitted => "not_permitted",
            Self::BpfUnavailable(_) => "bpf_unavailable",
            Self::KernelTooOld { .. } => "kernel_too_old",
            Self::BpffsMissing { .. } => "bpffs_missing",
            Self::PrivateBpffs { .. } => "private_bpffs",
            Self::IncompatiblePin { .. } => "incompatible_pin",
            Self::NoReuseport => "no_reuseport",
            Self::NotBound => "not_bound",
            Self::NotListening => "not_listening",
            Self::WrongProtocol { .. } => "wrong_protocol",
            Self::WrongFamily { .. } => "wrong_family",
            Self::WrongAddress { .. } => "wrong_address",
            Self::WrongV6Only { .. } => "wrong_v6only",
            Self::WrongDevice { .. } => "wrong_device",
            Self::OtherNetns => "other_netns",
            Self::UnsupportedSocket => "unsupported_socket",
            Self::SlotOutOfRange { .. } => "slot_out_of_range",
            Self::SlotsFull { .. } => "slots_full",
            Self::SlotTaken(_) => "slot_taken",
            Self::SlotEmpty(_) => "slot_empty",
            Self::AlreadyInGroup(_) => "already_in_group",
            Self::HeldElsewhere => "held_elsewhere",
            Self::InvalidWeight { .. } => "invalid_weight",
            Self::ScheduleTooLong { .. } => "schedule_too_long",
            Self::NotAttached => "not_attached",
            Self::NothingToDetach(_) => "nothing_to_detach",
            Self::Io { .. } => "io",
            Self::Ebpf { .. } => "ebpf",
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            cause: source,
        }
    }

    /// Wraps an aya error, turning the errno cases an operator can fix into their own variants.
    pub(crate) fn ebpf<E>(what: impl Into<String>, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match errno_in(&source) {
            // As root, EACCES is the verifier refusing the program (its log is in the cause),
            // not a missing privilege.
            // SAFETY: geteuid has no preconditions.
            Some(libc::EPERM | libc::EACCES) if unsafe { libc::geteuid() } != 0 => {
                Self::NotPermitted
            }
            Some(libc::ENOSYS) => Self::BpfUnavailable(io::Error::from_raw_os_error(libc::ENOSYS)),
            _ => Self::Ebpf {
                what: what.into(),
                cause: Box::new(source),
            },
        }
    }
}

/// The errno of the first `io::Error` in an error's source chain.
pub(crate) fn errno_in(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = e.source();
    }
    None
}

fn stack(v6only: bool) -> &'static str {
    if v6only {
        "IPv6-only (IPV6_V6ONLY=1)"
    } else {
        "dual-stack (IPV6_V6ONLY=0)"
    }
}

fn device(index: u32) -> String {
    if index == 0 {
        "no device".into()
    } else {
        format!("interface index {index}")
    }
}
