//! Who picks the listener (or the worker) of a new connection, in every scenario: the
//! kernel's hash, or the reuseport program with a policy, loaded by the bench itself for a
//! listener pool ([`crate::cell`]) or by a daemon for `reuseport echo` workers
//! ([`crate::cluster`]).

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
}

impl Steering {
    /// The program with `policy` and no extra flags.
    pub const fn policy(policy: Policy) -> Self {
        Self::Program { policy, flags: &[] }
    }

    /// "kernel hash", the policy's name, or the policy's name and the daemon's flags.
    pub fn label(&self) -> String {
        match self {
            Self::KernelHash => "kernel hash".into(),
            Self::Program { policy, flags: [] } => policy.name().into(),
            Self::Program { policy, flags } => format!("{} ({})", policy.name(), flags.join(" ")),
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
}
