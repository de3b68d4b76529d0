//! A process by pidfd: the daemon's handle on the process that serves a slot. Unlike a pid it
//! cannot name another process after a reuse: it turns readable once its process exited, and
//! /proc/PID files opened while it is not readable belong to that very process.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

/// A live process, held by a pidfd, with its /proc/PID/stat opened for the stopped check.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: OwnedFd,
    stat: Option<File>,
}

impl Process {
    /// Opens a pidfd for `pid` (ESRCH: gone already), then its /proc/PID/stat. The stat file is
    /// kept only if the pidfd was still not readable after it was opened: then it is the same
    /// process's, not that of a process which took the pid over.
    pub fn open(pid: u32) -> io::Result<Self> {
        let pidfd = pidfd_open(pid)?;
        let stat = File::open(format!("/proc/{pid}/stat")).ok();
        let process = Self { pid, pidfd, stat };
        if process.exited() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        readable(self.pidfd.as_fd())
    }

    /// Whether the process is stopped (SIGSTOP, a debugger): state T or t. An exited process
    /// is not stopped.
    pub fn stopped(&self) -> bool {
        self.stat.as_ref().is_some_and(stat_stopped) && !self.exited()
    }

    /// A copy of the process's descriptor `fd` (pidfd_getfd: root, or the same uid when ptrace
    /// allows it; EPERM otherwise), close-on-exec.
    pub fn copy_fd(&self, fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd with a pidfd we own; flags must be 0.
        let copy = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                self.pidfd.as_raw_fd(),
                fd as libc::c_int,
                0,
            )
        };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just gave us, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
    }

    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `fd` is readable now (no wait).
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, timeout 0.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Whether the state in a /proc/PID/stat file (read again from its start) is T or t.
pub fn stat_stopped(stat: &File) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut buf = [0u8; 512];
    let Ok(n) = stat.read_at(&mut buf, 0) else {
        return false;
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    // The state follows the command name, which is in parentheses and may hold spaces.
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_pidfd_tells_a_stopped_process_and_turns_readable_when_it_exits() -> io::Result<()> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let process = Process::open(child.id())?;
        assert!(!process.exited() && !process.stopped());
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !process.stopped() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(process.stopped());
        child.kill()?;
        child.wait()?;
        assert!(process.exited() && !process.stopped());
        assert!(Process::open(child.id()).is_err());
        Ok(())
    }

    #[test]
    fn a_copy_of_a_descriptor_is_the_same_socket() -> io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let me = Process::open(std::process::id())?;
        let copy = me.copy_fd(listener.as_raw_fd())?;
        let copy = std::net::TcpListener::from(copy);
        assert_eq!(copy.local_addr()?, listener.local_addr()?);
        Ok(())
    }
}
