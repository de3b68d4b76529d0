//! Checks done before touching BPF, so an operator gets "run as root" rather than a raw EPERM
//! from deep inside the loader.

use std::fmt;

use crate::{error::Error, policy::AttachMode, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
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

/// What the program needs from the kernel, newest last: the first one `have` lacks is named.
/// Selection alone needs the socket array (4.19), but the program is built on newer features:
/// memory-mapped arrays for counters and loads (5.5), a ring buffer for its log (5.8) and the
/// atomic fetch-and-add of round-robin's ticket (5.12). Migration needs 5.14.
const NEEDS: [(KernelVersion, &str); 4] = [
    (
        KernelVersion { major: 5, minor: 5 },
        "memory-mapped BPF arrays (BPF_F_MMAPABLE, Linux 5.5)",
    ),
    (
        KernelVersion { major: 5, minor: 8 },
        "the BPF ring buffer the program logs through (Linux 5.8)",
    ),
    (
        KernelVersion {
            major: 5,
            minor: 12,
        },
        "atomic fetch-and-add in BPF programs (Linux 5.12)",
    ),
    (
        KernelVersion {
            major: 5,
            minor: 14,
        },
        "connection migration (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, Linux 5.14)",
    ),
];

/// The oldest kernel that runs the program in `mode`.
pub fn minimum_kernel(mode: AttachMode) -> KernelVersion {
    match mode {
        AttachMode::Select => NEEDS[2].0,
        AttachMode::SelectOrMigrate => NEEDS[3].0,
    }
}

/// Refuses kernels that cannot run the program in `mode`, naming the first missing feature.
pub fn check_kernel(have: KernelVersion, mode: AttachMode) -> Result<()> {
    let need = minimum_kernel(mode);
    let Some(&(_, feature)) = NEEDS.iter().find(|(v, _)| have < *v && *v <= need) else {
        return Ok(());
    };
    let hint = if mode == AttachMode::SelectOrMigrate && have >= minimum_kernel(AttachMode::Select)
    {
        ", or attach in select mode (no migration of queued connections)"
    } else {
        ""
    };
    Err(Error::KernelTooOld {
        feature,
        have: have.to_string(),
        need: format!("{need} in {mode} mode"),
        hint,
    })
}

/// Refuses to go on without the capabilities that loading an SK_REUSEPORT program needs.
pub fn check_privileges() -> Result<()> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // Without CAP_SYS_ADMIN the verifier wants CAP_PERFMON too for this program (measured:
    // CAP_BPF and CAP_NET_ADMIN alone load it with EPERM).
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN) && has(CAP_PERFMON)) {
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
        let v = |major, minor| KernelVersion { major, minor };
        let err = |have, mode| {
            check_kernel(have, mode)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        // 5.4 has the socket array but not the memory-mapped maps the program uses.
        let e = err(v(5, 4), AttachMode::Select);
        assert!(
            e.contains("5.4") && e.contains("BPF_F_MMAPABLE") && e.contains("5.12"),
            "{e}"
        );
        let e = err(v(5, 10), AttachMode::Select);
        assert!(e.contains("fetch-and-add") && e.contains("5.12"), "{e}");
        assert!(check_kernel(v(5, 12), AttachMode::Select).is_ok());
        let e = err(v(5, 13), AttachMode::SelectOrMigrate);
        assert!(e.contains("migration") && e.contains("select mode"), "{e}");
        let e = err(v(4, 19), AttachMode::SelectOrMigrate);
        assert!(!e.contains("select mode"), "{e}");
        assert!(check_kernel(v(5, 14), AttachMode::SelectOrMigrate).is_ok());
        assert!(check_kernel(v(6, 18), AttachMode::SelectOrMigrate).is_ok());
        assert!(KernelVersion::current().is_some());
    }
}
