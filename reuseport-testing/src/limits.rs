//! Resource limits: a thousand listeners on one port plus the connections in flight need more
//! file descriptors than the usual soft limit of 1024.

use anyhow::{bail, Context, Result};

/// Raises RLIMIT_NOFILE's soft limit towards `wanted` (raising the hard limit too when allowed,
/// else stopping at it) and returns the new soft limit; fails if that is below `needed`.
pub fn raise_nofile(wanted: u64, needed: u64) -> Result<u64> {
    let current = get()?;
    if current.rlim_cur >= wanted {
        return Ok(current.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: current.rlim_max.max(wanted),
    };
    if set(&raised).is_ok() {
        return Ok(wanted);
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; the hard limit itself may be enough.
    let at_hard = libc::rlimit {
        rlim_cur: current.rlim_max,
        rlim_max: current.rlim_max,
    };
    set(&at_hard).context("setrlimit(RLIMIT_NOFILE) to the hard limit")?;
    if at_hard.rlim_cur < needed {
        bail!(
            "RLIMIT_NOFILE hard limit is {}, {needed} descriptors are needed",
            at_hard.rlim_cur
        );
    }
    Ok(at_hard.rlim_cur)
}

fn get() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(limit)
}

fn set(limit: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_already_high_enough_is_kept() -> Result<()> {
        let current = get()?.rlim_cur;
        assert_eq!(raise_nofile(current.min(64), 1)?, current);
        Ok(())
    }
}
