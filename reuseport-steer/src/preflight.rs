//! Checks done before touching BPF, so an operator gets "run as root" rather than a raw EPERM
//! from deep inside the loader.

use std::fmt;

use crate::{error::Error, policy::AttachMode, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// A kernel release as `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    /// Parses the leading `major.minor` of a release string such as `6.18.44-fc-v657`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// The running kernel (uname).
    pub fn current() -> Option<Self> {
        // SAFETY: zeroed utsname is a valid out-parameter for uname.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid utsname.
        if unsafe { libc::uname(&mut uts) } != 0 {
            return None;
        }
        // SAFETY: uname NUL-terminates `release`.
        let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
        Self::parse(&release.to_string_lossy())
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Refuses kernels that cannot run `mode`: the socket array needs 4.19 (the program reads
/// `sk`/`migrating_sk`, which need 5.14, only in the migrate variant's context).
pub fn check_kernel(have: KernelVersion, mode: AttachMode) -> Result<()> {
    let (need, need_str, feature, hint) = match mode {
        AttachMode::Select => (
            KernelVersion {
                major: 4,
                minor: 19,
            },
            "4.19",
            "SK_REUSEPORT programs with a socket array",
            "",
        ),
        AttachMode::SelectOrMigrate => (
            KernelVersion {
                major: 5,
                minor: 14,
            },
            "5.14",
            "connection migration (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)",
            ", or attach in select mode (no migration of queued connections)",
        ),
    };
    if have < need {
        return Err(Error::KernelTooOld {
            feature,
            have: have.to_string(),
            need: need_str,
            hint,
        });
    }
    Ok(())
}

/// Refuses to go on without the capabilities that loading an SK_REUSEPORT program needs.
pub fn check_privileges() -> Result<()> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        Ok(())
    } else {
        Err(Error::NotPermitted)
    }
}

/// The effective capability set from /proc/self/status (read once, at load time).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v657"),
            Some(KernelVersion {
                major: 6,
                minor: 18
            })
        );
        assert_eq!(
            KernelVersion::parse("5.4.0"),
            Some(KernelVersion { major: 5, minor: 4 })
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_with_the_version_they_need() {
        let old = KernelVersion { major: 5, minor: 4 };
        let err = check_kernel(old, AttachMode::SelectOrMigrate)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("5.4") && err.contains("5.14"), "{err}");
        assert!(check_kernel(old, AttachMode::Select).is_ok());
        let older = KernelVersion {
            major: 4,
            minor: 14,
        };
        assert!(matches!(
            check_kernel(older, AttachMode::Select),
            Err(Error::KernelTooOld { need: "4.19", .. })
        ));
        let current = KernelVersion::current();
        assert!(current.is_some());
    }
}
