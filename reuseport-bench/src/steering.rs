//! Who picks the listener (or the worker) of a new connection, in every scenario: the
//! kernel's hash, or the reuseport program with a policy, loaded by the bench itself for a
//! listener pool ([`crate::cell`]) or by a daemon for `reuseport echo` workers
//! ([`crate::cluster`]); and the anchors every figure is read against: the object's no-op
//! program (what running any program costs), one socket shared by every worker (prefork: a
//! central accept queue) and HAProxy in front of workers on their own ports.

use reuseport_steer::Policy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// No program attached (no daemon, workers unregistered): the kernel's hash of the 4-tuple
    /// over the whole group.
    KernelHash,
    /// The reuseport program with this policy; `flags` go to the daemon where one runs it
    /// (e.g. `--on-stuck skip`).
    Program {
        policy: Policy,
        flags: &'static [&'static str],
    },
    /// The object's program that returns SK_PASS without choosing (the kernel then hashes):
    /// the cost of running a program at all. Listener pools only.
    Noop,
    /// One listening socket shared by every worker, no program: a work-conserving central
    /// queue (the classic prefork server). Worker processes only.
    Prefork,
    /// HAProxy (`mode tcp`, `nbthread` = cores) in front of workers listening on their own
    /// ports. Worker processes only.
    Haproxy(Balance),
}

/// HAProxy's `balance` algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

impl Balance {
    /// The keyword in HAProxy's configuration.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::RoundRobin => "roundrobin",
            Self::LeastConn => "leastconn",
        }
    }
}

impl Steering {
    /// The program with `policy` and no extra flags.
    pub const fn policy(policy: Policy) -> Self {
        Self::Program { policy, flags: &[] }
    }

    /// Whether this is one of the anchors the tool is compared with, rather than the tool.
    pub fn is_anchor(&self) -> bool {
        matches!(self, Self::Noop | Self::Prefork | Self::Haproxy(_))
    }

    /// "kernel hash", the policy's name, or the policy's name and the daemon's flags.
    pub fn label(&self) -> String {
        match self {
            Self::KernelHash => "kernel hash".into(),
            Self::Program { policy, flags: [] } => policy.name().into(),
            Self::Program { policy, flags } => format!("{} ({})", policy.name(), flags.join(" ")),
            Self::Noop => "no-op program".into(),
            Self::Prefork => "prefork (shared socket)".into(),
            Self::Haproxy(balance) => format!("haproxy {}", balance.keyword()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_policy_and_the_flags() {
        assert_eq!(Steering::KernelHash.label(), "kernel hash");
        assert_eq!(Steering::policy(Policy::P2c).label(), "p2c");
        let skip = Steering::Program {
            policy: Policy::RoundRobin,
            flags: &["--on-stuck", "skip"],
        };
        assert_eq!(skip.label(), "round-robin (--on-stuck skip)");
    }

    #[test]
    fn anchors_are_labelled_apart_from_the_tool() {
        assert_eq!(Steering::Noop.label(), "no-op program");
        assert_eq!(
            Steering::Haproxy(Balance::LeastConn).label(),
            "haproxy leastconn"
        );
        assert!(Steering::Prefork.is_anchor() && Steering::Noop.is_anchor());
        assert!(!Steering::KernelHash.is_anchor());
        assert!(!Steering::policy(Policy::Hash).is_anchor());
    }
}
