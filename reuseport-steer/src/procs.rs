//! Process ancestry from /proc, for the daemon's rule on whose pid a registration may name: its
//! own, or that of a descendant with the same uid (a launcher such as `reuseport spawn`
//! registers the server it started). Anything else would let a worker pass itself off as an
//! unrelated process, whose state the daemon would then read and show.

use std::{fs, io};

/// The parent pid from /proc/PID/stat (0 for the first process).
pub fn parent(pid: u32) -> io::Result<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_ppid(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no parent pid in {stat:?}"),
        )
    })
}

/// The ppid field of a /proc/PID/stat line. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // State, then ppid.
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The effective uid from /proc/PID/status.
pub fn effective_uid(pid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_effective_uid(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status: no Uid line"),
        )
    })
}

/// The second number of the `Uid:` line (real, effective, saved, filesystem).
fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` descends from `ancestor` (a child, grandchild, ...). A process is not its own
/// descendant. A `pid` that does not exist is an error (NotFound); a chain that ends at pid 0
/// without meeting `ancestor` is `false`. A process that exits while the chain is read makes
/// the answer `false` or NotFound, never a wrong `true`: every link read was a live parent.
pub fn is_descendant(ancestor: u32, pid: u32) -> io::Result<bool> {
    let mut current = parent(pid)?;
    // Bounded: pids are finite and a parent is always older, but /proc is read live.
    for _ in 0..4096 {
        if current == ancestor {
            return Ok(true);
        }
        if current == 0 {
            return Ok(false);
        }
        current = match parent(current) {
            Ok(p) => p,
            // The link exited meanwhile (its children were reparented): not provably ours.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
    }
    Ok(false)
}

/// Whether a registering process (`registrant`, with `registrant_uid` from SO_PEERCRED) may
/// name `pid` as the worker's process: its own pid, or a descendant's with the same effective
/// uid. The daemon refuses any other `pid` in `register`.
pub fn may_name(registrant: u32, registrant_uid: u32, pid: u32) -> io::Result<bool> {
    if pid == registrant {
        return Ok(true);
    }
    Ok(is_descendant(registrant, pid)? && effective_uid(pid)? == registrant_uid)
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::process::CommandExt,
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;

    const NOBODY: u32 = 65534;

    /// Kills and reaps on drop, so a failing assertion leaves no process behind.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> io::Result<Reaped> {
        Ok(Reaped(Command::new("sleep").arg("30").spawn()?))
    }

    #[test]
    fn stat_and_status_lines_are_read_whatever_the_command_name() {
        let stat = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 95 0 0 0";
        assert_eq!(parse_ppid(stat), Some(17));
        assert_eq!(parse_ppid("garbage"), None);
        let status = "Name:\tx\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t65534\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(65534));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn a_child_and_a_grandchild_descend_from_this_process_and_not_the_reverse() -> io::Result<()> {
        let me = std::process::id();
        let child = sleeper()?;
        let pid = child.0.id();
        assert!(is_descendant(me, pid)?);
        assert!(!is_descendant(pid, me)?);
        assert!(!is_descendant(me, me)?);
        // pid 1 descends from nobody; nothing descends from a process without children.
        assert!(!is_descendant(me, 1)?);
        assert!(!is_descendant(pid, 1)?);

        // A grandchild: sh starts sleep and waits for it.
        let sh = Reaped(
            Command::new("sh")
                .args(["-c", "sleep 30 & echo $!; wait"])
                .stdout(Stdio::piped())
                .spawn()?,
        );
        let grandchild = {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let children =
                    fs::read_to_string(format!("/proc/{0}/task/{0}/children", sh.0.id()))?;
                if let Some(p) = children.split_whitespace().next() {
                    break p.parse::<u32>().map_err(io::Error::other)?;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other("sh started no child"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        assert!(is_descendant(sh.0.id(), grandchild)?);
        assert!(is_descendant(me, grandchild)?);
        assert!(!is_descendant(pid, grandchild)?);
        Ok(())
    }

    #[test]
    fn a_pid_that_does_not_exist_is_not_found() {
        // Above the kernel's largest pid_max (4194304).
        let e = is_descendant(1, 5_000_000).err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn a_registrant_may_name_itself_or_a_descendant_of_its_own_uid_only() -> io::Result<()> {
        let me = std::process::id();
        let my_uid = effective_uid(me)?;
        let child = sleeper()?;
        assert!(may_name(me, my_uid, me)?);
        assert!(may_name(me, my_uid, child.0.id())?);
        // Not an ancestor: the child may not name this process, nor this process pid 1.
        assert!(!may_name(child.0.id(), my_uid, me)?);
        assert!(!may_name(me, my_uid, 1)?);
        // A descendant of another uid (a server that dropped its rights), when we can start one.
        if my_uid == 0 {
            let other = Reaped(
                Command::new("sleep")
                    .arg("30")
                    .uid(NOBODY)
                    .gid(NOBODY)
                    .spawn()?,
            );
            assert!(is_descendant(me, other.0.id())?);
            assert!(!may_name(me, my_uid, other.0.id())?);
        }
        Ok(())
    }
}
